//! The image-classification task: one view with its label, cross-entropy against
//! label-smoothed targets, top-1 accuracy in training; loss, top-1 and top-5 in validation,
//! the best checkpoint by validation top-1.

use std::sync::Arc;

use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};

use super::evaluate;
use super::task::{BestBy, Step, StepContext, Task};
use crate::data::{Batch, BatchSpec, DatasetSplits, ImageDataset, Normalize};
use crate::models::Model;
use crate::{Result, VitError};

pub struct Classification {
    pub classes: usize,
    pub label_smoothing: f64,
}

/// `(1-ε)·onehot + ε/K` targets, built on the host.
pub(super) fn smoothed_targets(labels: &[u32], classes: usize, smoothing: f64) -> Vec<f32> {
    let off = (smoothing / classes as f64) as f32;
    let on = (1.0 - smoothing) as f32 + off;
    let mut t = vec![off; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        t[i * classes + l as usize] = on;
    }
    t
}

/// How many rows of `logits` `[B, K]` have their largest value at the row's label. A
/// prediction that cannot be read back, or a row count other than the labels', is an error:
/// never a silently wrong accuracy.
pub fn correct_predictions(logits: Tensor<2>, labels: &[u32]) -> Result<usize> {
    let predicted = logits
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .map_err(|e| VitError::Other(format!("reading the predicted classes: {e:?}")))?;
    if predicted.len() != labels.len() {
        return Err(VitError::Other(format!(
            "{} predictions for {} labels",
            predicted.len(),
            labels.len()
        )));
    }
    Ok(predicted
        .iter()
        .zip(labels)
        .filter(|(p, l)| **p == **l as i64)
        .count())
}

/// Each head trains with its own cross-entropy against `targets` (their sum is the loss); the
/// prediction is the mean of the heads' logits. Returns both.
pub(super) fn heads_loss(heads: Vec<Tensor<2>>, targets: &Tensor<2>) -> Result<(Tensor<1>, Tensor<2>)> {
    let count = heads.len();
    let mut loss = None;
    let mut sum_logits = None;
    for logits in heads {
        let ce = (log_softmax(logits.clone(), 1) * targets.clone())
            .sum_dim(1)
            .mean()
            .neg();
        loss = Some(match loss {
            None => ce,
            Some(l) => l + ce,
        });
        sum_logits = Some(match sum_logits {
            None => logits,
            Some(s) => s + logits,
        });
    }
    match (loss, sum_logits) {
        (Some(loss), Some(sum)) => Ok((loss, sum.div_scalar(count as f64))),
        _ => Err(VitError::Other("the classifier has no head".into())),
    }
}

impl Classification {
    /// The logits of each head of `x` (on the inner device; one head but for SiT's two); with
    /// a frozen backbone the features come from the model in inference mode, and only the
    /// heads are recorded for the backward pass.
    fn head_logits(&self, model: &Model, x: Tensor<4>, ctx: &StepContext) -> Result<Vec<Tensor<2>>> {
        let classifier = model.classifier()?;
        let features = if ctx.frozen_backbone {
            model.valid().classifier()?.features(x).autodiff()
        } else {
            classifier.features(x.autodiff())
        };
        Ok(classifier.head_logits(features))
    }
}

impl Task for Classification {
    fn batch_spec(&self) -> BatchSpec {
        BatchSpec::LABELLED
    }

    fn check(&self, model: &Model, data: &DatasetSplits) -> Result<()> {
        model.classifier()?;
        let classes = self.classes;
        if let Some(&bad) = data.train.labels.iter().find(|&&l| l as usize >= classes) {
            return Err(VitError::Config(format!(
                "dataset has label {bad} but the model has {classes} classes"
            )));
        }
        Ok(())
    }

    fn train_columns(&self) -> Vec<&'static str> {
        vec!["acc"]
    }

    fn step(&self, model: &Model, batch: Batch, ctx: &StepContext) -> Result<Step> {
        let labels = batch.labels()?.to_vec();
        let b = labels.len();
        let classes = self.classes;
        let inner = ctx.device.clone().inner();
        let shape = batch.shape;
        let images = batch.into_images();
        let x = Tensor::<4>::from_data(TensorData::new(images, shape), &inner);
        let targets = Tensor::<2>::from_data(
            TensorData::new(
                smoothed_targets(&labels, classes, self.label_smoothing),
                [b, classes],
            ),
            ctx.device,
        );
        let (loss, mean_logits) = heads_loss(self.head_logits(model, x, ctx)?, &targets)?;
        let correct = correct_predictions(mean_logits, &labels)?;
        Ok(Step {
            loss,
            values: vec![correct as f64 / b.max(1) as f64],
        })
    }

    fn val_columns(&self) -> Vec<&'static str> {
        vec!["loss", "acc", "top5"]
    }

    fn validate(
        &self,
        model: &Model,
        data: Arc<ImageDataset>,
        norm: &Normalize,
        batch_size: usize,
        device: &Device,
    ) -> Result<Vec<f64>> {
        let eval = evaluate(model.classifier()?, data, norm, batch_size, self.classes, device)?;
        Ok(vec![eval.loss, eval.top1, eval.top5])
    }

    fn best_by(&self) -> BestBy {
        BestBy {
            column: "val_acc",
            higher_is_better: true,
        }
    }
}
