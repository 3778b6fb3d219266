use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};

use crate::data::{BatchLoader, ImageDataset, Normalize};
use crate::models::Classifier;
use crate::{Result, VitError};

/// Accuracy, loss and confusion counts over a dataset.
#[derive(Debug, Clone)]
pub struct EvalResult {
    pub count: usize,
    pub loss: f64,
    pub top1: f64,
    pub top5: f64,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

impl EvalResult {
    /// Accuracy per true class (NaN for a class with no samples).
    pub fn per_class(&self) -> Vec<f64> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let n: u64 = row.iter().sum();
                if n == 0 {
                    f64::NAN
                } else {
                    row[i] as f64 / n as f64
                }
            })
            .collect()
    }
}

/// Softmax probabilities of `logits` rows (host side; rows are short).
pub struct Predictions {
    pub probs: Vec<Vec<f32>>,
}

fn softmax_rows(values: &[f32], classes: usize) -> Vec<Vec<f32>> {
    values
        .chunks_exact(classes)
        .map(|row| {
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            exps.into_iter().map(|e| e / sum).collect()
        })
        .collect()
}

/// Runs `model` on one batch `[B, C, H, W]` and returns the class probabilities.
pub fn predict_batch(
    model: &dyn Classifier,
    images: Vec<f32>,
    shape: [usize; 4],
    device: &Device,
) -> Result<Predictions> {
    let [_, _, h, w] = shape;
    if [h, w] != model.input_size() {
        return Err(VitError::Config(format!(
            "input is {h}x{w} but the model takes {:?}",
            model.input_size()
        )));
    }
    let x = Tensor::<4>::from_data(TensorData::new(images, shape), device);
    let logits = model.logits(x);
    let [_, classes] = logits.dims();
    let values = crate::nn::host_values(logits)?;
    Ok(Predictions {
        probs: softmax_rows(&values, classes),
    })
}

/// Running loss, top-1, top-5 and confusion counts of scored rows.
pub(crate) struct Tally {
    confusion: Vec<Vec<u64>>,
    loss: f64,
    top1: usize,
    top5: usize,
    count: usize,
}

impl Tally {
    pub(crate) fn new(classes: usize) -> Self {
        Self {
            confusion: vec![vec![0u64; classes]; classes],
            loss: 0.0,
            top1: 0,
            top5: 0,
            count: 0,
        }
    }

    /// Adds rows of class probabilities with their labels.
    pub(crate) fn add(&mut self, probs: &[Vec<f32>], labels: &[u32]) -> Result<()> {
        if probs.len() != labels.len() {
            return Err(VitError::Other(format!(
                "{} predictions for {} labels",
                probs.len(),
                labels.len()
            )));
        }
        for (p, &label) in probs.iter().zip(labels) {
            let label = label as usize;
            if label >= p.len() || label >= self.confusion.len() {
                return Err(VitError::Config(format!(
                    "label {label} but the model has {} classes",
                    p.len()
                )));
            }
            self.loss -= (p[label].max(1e-12)).ln() as f64;
            let target = p[label];
            // Rank of the true class: how many classes score strictly higher.
            let rank = p.iter().filter(|&&q| q > target).count();
            self.top1 += (rank == 0) as usize;
            self.top5 += (rank < 5) as usize;
            let predicted = p
                .iter()
                .enumerate()
                .fold(0, |best, (i, &q)| if q > p[best] { i } else { best });
            self.confusion[label][predicted] += 1;
            self.count += 1;
        }
        Ok(())
    }

    /// Adds rows of logits `[N, K]` (host, row-major) with their labels.
    pub(crate) fn add_logits(&mut self, logits: &[f32], classes: usize, labels: &[u32]) -> Result<()> {
        self.add(&softmax_rows(logits, classes), labels)
    }

    pub(crate) fn finish(self) -> EvalResult {
        let n = self.count.max(1) as f64;
        EvalResult {
            count: self.count,
            loss: self.loss / n,
            top1: self.top1 as f64 / n,
            top5: self.top5 as f64 / n,
            confusion: self.confusion,
        }
    }
}

/// Evaluates `model` (in validation mode) on every image of `data`.
pub fn evaluate(
    model: &dyn Classifier,
    data: Arc<ImageDataset>,
    norm: &Normalize,
    batch_size: usize,
    num_classes: usize,
    device: &Device,
) -> Result<EvalResult> {
    let loader = BatchLoader::in_order(data, batch_size, norm.clone());
    let mut tally = Tally::new(num_classes);
    for batch in loader {
        let labels = batch.labels()?.to_vec();
        let shape = batch.shape;
        let images = batch.into_images();
        let preds = predict_batch(model, images, shape, device)?;
        tally.add(&preds.probs, &labels)?;
    }
    Ok(tally.finish())
}

/// `f` of every image of `data` in order (normalised by `norm`, `batch_size` at a time): the
/// rows on the host `[N, F]` and their width F (feature extraction for retrieval and FID).
pub fn rows_in_order(
    data: Arc<ImageDataset>,
    batch_size: usize,
    norm: &Normalize,
    device: &Device,
    f: impl Fn(Tensor<4>) -> Result<Tensor<2>>,
) -> Result<(Vec<f32>, usize)> {
    let mut out = Vec::new();
    let mut width = 0;
    for batch in BatchLoader::in_order(data, batch_size, norm.clone()) {
        let shape = batch.shape;
        let rows = f(Tensor::<4>::from_data(
            TensorData::new(batch.into_images(), shape),
            device,
        ))?;
        width = rows.dims()[1];
        out.extend(crate::nn::host_values(rows)?);
    }
    Ok((out, width))
}
