//! CLIP's contrastive training on image–caption pairs: the symmetric cross-entropy of the
//! scaled cosine similarities (each image against every caption of the batch and the other way
//! round), the learned `logit_scale` clamped to ln 100 after each step, in-batch accuracies in
//! training, and retrieval recall on the test pairs in validation (which picks the best
//! checkpoint).

use std::sync::Arc;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::task::{BestBy, Step, StepContext, Task};
use crate::data::{Batch, BatchSpec, CaptionSplits, DatasetSplits, ImageDataset, Normalize};
use crate::models::clip::normalize;
use crate::models::{ImageText, Model};
use crate::text::Tokenizer;
use crate::{Result, VitError};

/// The largest `logit_scale`: a similarity multiplier of 100 (CLIP's clamp).
pub const MAX_LOGIT_SCALE: f64 = 4.605_170_185_988_091;

pub struct ClipTraining {
    pub captions: Arc<CaptionSplits>,
}

/// Mean symmetric cross-entropy of `scale · I·Tᵀ` for normalised image rows `I` and text rows
/// `T` whose matching pairs share a row index; also the logits `[B, B]`.
pub fn contrastive_loss(image: Tensor<2>, text: Tensor<2>, logit_scale: Tensor<1>) -> (Tensor<1>, Tensor<2>) {
    let [b, _] = image.dims();
    let logits = normalize(image).matmul(normalize(text).transpose()) * logit_scale.exp().unsqueeze::<2>();
    let device = logits.device();
    let eye = Tensor::<2>::from_data(
        TensorData::new(
            (0..b * b)
                .map(|i| if i % (b + 1) == 0 { 1.0f32 } else { 0.0 })
                .collect::<Vec<_>>(),
            [b, b],
        ),
        &device,
    );
    let per_image = (log_softmax(logits.clone(), 1) * eye.clone()).sum().neg();
    let per_text = (log_softmax(logits.clone(), 0) * eye).sum().neg();
    ((per_image + per_text).div_scalar(2.0 * b as f64), logits)
}

/// Shares of rows (image → text) and columns (text → image) of square `logits` whose largest
/// entry is on the diagonal.
fn diagonal_accuracy(logits: Tensor<2>) -> Result<(f64, f64)> {
    let [b, _] = logits.dims();
    let hits = |idx: Tensor<2, Int>| -> Result<f64> {
        let v = idx
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .map_err(|e| VitError::Other(format!("reading predictions: {e:?}")))?;
        Ok(v.iter().enumerate().filter(|(i, p)| **p == *i as i64).count() as f64 / b.max(1) as f64)
    };
    Ok((
        hits(logits.clone().argmax(1))?,
        hits(logits.argmax(0).transpose())?,
    ))
}

/// The normalised features of every image of `data` `[N, E]`, in order, on the host.
pub fn embed_images(
    towers: &dyn ImageText,
    data: Arc<ImageDataset>,
    norm: &Normalize,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<f32>> {
    let (rows, _) = super::eval::rows_in_order(data, batch_size, norm, device, |x| {
        Ok(normalize(towers.encode_image(x)))
    })?;
    Ok(rows)
}

/// The normalised features of `texts` `[N, E]` on the host, tokenised to the model's context.
pub fn embed_texts<S: AsRef<str>>(
    towers: &dyn ImageText,
    texts: &[S],
    batch_size: usize,
) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for chunk in texts.chunks(batch_size.max(1)) {
        let tokens = Tokenizer::clip().tokenize(chunk, towers.context_length());
        out.extend(crate::nn::host_values(normalize(
            towers.encode_text(&tokens.ids, chunk.len())?,
        ))?);
    }
    Ok(out)
}

/// Retrieval recall@k in both directions over pairs `i ↔ i` (image rows and text rows of
/// normalised features, width `e`). A retrieved item counts as right when its caption is the
/// query's (the same sentence said of several images). Returns `([i→t], [t→i])` per k.
pub fn recall_at(
    images: &[f32],
    texts: &[f32],
    e: usize,
    captions: &[String],
    ks: &[usize],
) -> (Vec<f64>, Vec<f64>) {
    let n = captions.len();
    let sim: Vec<f32> = (0..n * n)
        .map(|k| {
            let (i, j) = (k / n, k % n);
            images[i * e..(i + 1) * e]
                .iter()
                .zip(&texts[j * e..(j + 1) * e])
                .map(|(a, b)| a * b)
                .sum()
        })
        .collect();
    // Rank of the best right answer: how many wrong items score strictly higher.
    let rank = |score: &dyn Fn(usize) -> f32, query: usize| -> usize {
        let best = (0..n)
            .filter(|&j| captions[j] == captions[query])
            .map(score)
            .fold(f32::MIN, f32::max);
        (0..n)
            .filter(|&j| captions[j] != captions[query] && score(j) > best)
            .count()
    };
    let i2t: Vec<usize> = (0..n).map(|i| rank(&|j| sim[i * n + j], i)).collect();
    let t2i: Vec<usize> = (0..n).map(|j| rank(&|i| sim[i * n + j], j)).collect();
    let recall = |ranks: &[usize]| -> Vec<f64> {
        ks.iter()
            .map(|&k| ranks.iter().filter(|&&r| r < k).count() as f64 / n.max(1) as f64)
            .collect()
    };
    (recall(&i2t), recall(&t2i))
}

impl ClipTraining {
    fn captions_of<'a>(&'a self, split: &'a [String], indices: &[usize]) -> Vec<&'a str> {
        indices.iter().map(|&i| split[i].as_str()).collect()
    }
}

impl Task for ClipTraining {
    fn batch_spec(&self) -> BatchSpec {
        BatchSpec::LABELLED
    }

    fn check(&self, model: &Model, data: &DatasetSplits) -> Result<()> {
        let towers = model.image_text()?;
        if data.train.len() != self.captions.train.len() || data.test.len() != self.captions.test.len() {
            return Err(VitError::Config(
                "the images and their captions differ in number".into(),
            ));
        }
        let context = towers.context_length();
        let cut = Tokenizer::clip()
            .tokenize(&self.captions.train, context)
            .truncated;
        if cut > 0 {
            println!(
                "{cut} of {} training captions are longer than the {context}-token context and are cut \
                 (as open_clip does: the end token kept last)",
                self.captions.train.len()
            );
        }
        Ok(())
    }

    fn train_columns(&self) -> Vec<&'static str> {
        vec!["i2t_acc", "t2i_acc", "temperature"]
    }

    fn step(&self, model: &Model, batch: Batch, ctx: &StepContext) -> Result<Step> {
        let towers = model.image_text()?;
        let texts = self.captions_of(&self.captions.train, &batch.indices);
        let tokens = Tokenizer::clip().tokenize(&texts, towers.context_length());
        let shape = batch.shape;
        let x = Tensor::<4>::from_data(TensorData::new(batch.into_images(), shape), ctx.device);
        let image = towers.encode_image(x);
        let text = towers.encode_text(&tokens.ids, texts.len())?;
        let scale = towers.logit_scale();
        let (loss, logits) = contrastive_loss(image, text, scale.clone());
        let (i2t, t2i) = diagonal_accuracy(logits.inner())?;
        let temperature = crate::nn::host_values(scale.inner().neg().exp())?
            .first()
            .copied()
            .unwrap_or(f32::NAN);
        Ok(Step {
            loss,
            values: vec![i2t, t2i, temperature as f64],
        })
    }

    /// CLIP's clamp: `logit_scale` stays in [0, ln 100].
    fn after_step(&self, model: Model) -> Model {
        model.clamp_logit_scale(MAX_LOGIT_SCALE)
    }

    fn val_columns(&self) -> Vec<&'static str> {
        vec![
            "loss",
            "i2t_r1",
            "i2t_r5",
            "t2i_r1",
            "t2i_r5",
            "t2i_r10",
            "mean_recall",
        ]
    }

    fn validate(
        &self,
        model: &Model,
        data: Arc<ImageDataset>,
        norm: &Normalize,
        batch_size: usize,
        device: &Device,
    ) -> Result<Vec<f64>> {
        let towers = model.image_text()?;
        let captions = &self.captions.test;
        let images = embed_images(towers, data, norm, batch_size, device)?;
        let texts = embed_texts(towers, captions, batch_size)?;
        let e = images.len() / captions.len().max(1);
        // The loss over test batches of the training batch size.
        let scale = crate::nn::host_values(towers.logit_scale())?[0].exp();
        let mut loss = 0.0;
        let mut batches = 0;
        for start in (0..captions.len()).step_by(batch_size.max(1)) {
            let end = (start + batch_size).min(captions.len());
            let rows = |v: &[f32]| {
                Tensor::<2>::from_data(
                    TensorData::new(v[start * e..end * e].to_vec(), [end - start, e]),
                    device,
                )
            };
            let (l, _) = contrastive_loss(
                rows(&images),
                rows(&texts),
                Tensor::from_data([scale.ln()], device),
            );
            loss += crate::nn::host_values(l)?[0] as f64;
            batches += 1;
        }
        let (i2t, t2i) = recall_at(&images, &texts, e, captions, &[1, 5, 10]);
        let mean = (i2t.iter().sum::<f64>() + t2i.iter().sum::<f64>()) / 6.0;
        Ok(vec![
            loss / batches.max(1) as f64,
            i2t[0],
            i2t[1],
            t2i[0],
            t2i[1],
            t2i[2],
            mean,
        ])
    }

    fn best_by(&self) -> BestBy {
        BestBy {
            column: "val_mean_recall",
            higher_is_better: true,
        }
    }
}
