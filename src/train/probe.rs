//! A linear probe on cached features: the frozen backbone runs once over the training and
//! test images, each feature column is standardised with the training images' mean and
//! standard deviation, and the heads train on those rows — a fraction of a second per epoch
//! instead of a backbone pass per batch. Checkpoints hold the heads folded back onto the raw
//! features, so a saved probe is the plain classifier that `eval` and `predict` read.
//!
//! Why standardise: a frozen backbone's feature columns differ in offset and scale, and a
//! head fitted to them by a first-order optimizer moves the large columns' logits fast and
//! the small ones' hardly at all (MAE's linear probe puts a BatchNorm without affine
//! parameters before the head for this reason). The map is affine, so the probe stays linear.

use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

use super::classify::{Classification, correct_predictions, heads_loss, smoothed_targets};
use super::eval::{Tally, rows_in_order};
use super::log::EpochRecord;
use super::run_dir::{EpochCloser, OpenedRun, Schedule, open_run};
use super::task::Task;
use super::{BestBy, RunConfig, Session, TrainOutcome, clip_grad_norm, freeze_backbone};
use crate::data::DatasetSplits;
use crate::io::ParamPath;
use crate::models::Model;
use crate::{Result, VitError};

/// Images per backbone pass while caching, and feature rows per head pass in validation.
const CACHE_BATCH: usize = 256;
/// Added to each column's variance (BatchNorm's default), so a constant column stays finite.
const VARIANCE_EPS: f64 = 1e-5;

/// Per-column mean and standard deviation of the training features.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Standardizer {
    /// The statistics of `rows` (`[N, width]`, row-major).
    pub fn fit(rows: &[f32], width: usize) -> Self {
        let n = (rows.len() / width.max(1)).max(1) as f64;
        let mut sum = vec![0f64; width];
        let mut sq = vec![0f64; width];
        for row in rows.chunks_exact(width) {
            for (j, &v) in row.iter().enumerate() {
                sum[j] += v as f64;
                sq[j] += v as f64 * v as f64;
            }
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| ((q / n - m * m).max(0.0) + VARIANCE_EPS).sqrt() as f32)
            .collect();
        Self {
            mean: mean.into_iter().map(|m| m as f32).collect(),
            std,
        }
    }

    /// Standardises `rows` in place.
    pub fn apply(&self, rows: &mut [f32]) {
        let width = self.mean.len();
        for row in rows.chunks_exact_mut(width) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = (*v - m) / s;
            }
        }
    }
}

/// Which way [`refold`] moves the heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// Heads that read raw features (what a checkpoint holds).
    Raw,
    /// Heads that read standardised features (what the probe trains).
    Standardized,
}

/// The linear heads of `model` (named by its configuration's head parameters, `NAME.weight`
/// `[in, out]` and `NAME.bias`, in the order of the feature columns they read) moved into
/// `to` from the other space: for `z = (f − m) / s`, a head `W·z + b` reads raw features as
/// `(W / s)·f + (b − Σ W·m / s)`. Errors if the heads do not cover the features' columns.
pub fn refold(model: Model, heads: &[String], stats: &Standardizer, to: Space) -> Result<Model> {
    let mut mapper = Refold {
        path: ParamPath::default(),
        heads: head_columns(&model, heads, stats.mean.len())?,
        stats,
        to,
        weight: None,
        error: None,
    };
    let model = model.map(&mut mapper);
    match mapper.error {
        Some(e) => Err(e),
        None => Ok(model),
    }
}

/// Each head module with the feature columns it reads: consecutive, by its weight's rows.
fn head_columns(model: &Model, heads: &[String], width: usize) -> Result<Vec<(String, Range<usize>)>> {
    let shapes: std::collections::HashMap<String, Vec<usize>> = crate::io::named_tensors(model)
        .into_iter()
        .map(|(name, _, data)| (name, data.shape().to_vec()))
        .collect();
    let mut out = Vec::new();
    let mut start = 0;
    for head in heads.iter().filter_map(|p| p.strip_suffix(".weight")) {
        // Saved layout is PyTorch's `[out, in]`.
        let inputs = match shapes.get(&format!("{head}.weight")).map(Vec::as_slice) {
            Some(&[_, inputs]) => inputs,
            _ => {
                return Err(VitError::Config(format!(
                    "the head {head} is not a linear layer: a probe on cached features needs linear heads"
                )));
            }
        };
        out.push((head.to_string(), start..start + inputs));
        start += inputs;
    }
    if start != width || out.is_empty() {
        return Err(VitError::Config(format!(
            "the heads read {start} feature columns but the backbone gives {width}"
        )));
    }
    Ok(out)
}

struct Refold<'a> {
    path: ParamPath,
    heads: Vec<(String, Range<usize>)>,
    stats: &'a Standardizer,
    to: Space,
    /// The current head's name and weight in standardised space `[in, out]`, for its bias.
    weight: Option<(String, Vec<f32>)>,
    error: Option<VitError>,
}

impl Refold<'_> {
    /// The head whose weight or bias `name` is, with its columns.
    fn head_of(&self, name: &str) -> Option<(String, Range<usize>)> {
        self.heads
            .iter()
            .find(|(h, _)| {
                name.strip_prefix(h.as_str())
                    .is_some_and(|r| r == ".weight" || r == ".bias")
            })
            .cloned()
    }

    /// The new values of the parameter `name` holding `values` of `dims`, if it is a head's.
    fn moved(&mut self, name: &str, values: Vec<f32>, dims: &[usize]) -> Result<Option<Vec<f32>>> {
        let Some((head, cols)) = self.head_of(name) else {
            return Ok(None);
        };
        let (mean, std) = (&self.stats.mean[cols.clone()], &self.stats.std[cols]);
        if name.ends_with(".weight") {
            let outputs = dims.get(1).copied().unwrap_or(0);
            if dims.len() != 2 || dims[0] != mean.len() {
                return Err(VitError::Other(format!(
                    "{name} has shape {dims:?}, not [{}, _]",
                    mean.len()
                )));
            }
            let mut moved = values.clone();
            for (i, row) in moved.chunks_exact_mut(outputs).enumerate() {
                let s = std[i];
                row.iter_mut()
                    .for_each(|w| *w = if self.to == Space::Raw { *w / s } else { *w * s });
            }
            let standardized = if self.to == Space::Raw {
                values
            } else {
                moved.clone()
            };
            self.weight = Some((head, standardized));
            return Ok(Some(moved));
        }
        let Some((_, w)) = self.weight.take().filter(|(h, _)| *h == head) else {
            return Err(VitError::Other(format!("{name} came before its weight")));
        };
        let outputs = values.len();
        let mut shift = vec![0f64; outputs];
        for (i, row) in w.chunks_exact(outputs).enumerate() {
            let a = (mean[i] / std[i]) as f64;
            for (t, &v) in shift.iter_mut().zip(row) {
                *t += a * v as f64;
            }
        }
        let sign = if self.to == Space::Raw { -1.0 } else { 1.0 };
        Ok(Some(
            values
                .iter()
                .zip(&shift)
                .map(|(&b, &t)| (b as f64 + sign * t) as f32)
                .collect(),
        ))
    }
}

impl ModuleMapper for Refold<'_> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() {
            return param;
        }
        let name = self.path.name();
        if self.head_of(&name).is_none() {
            return param;
        }
        let t = param.val();
        let dims = t.dims().to_vec();
        let values = match crate::nn::host_values(t.inner()) {
            Ok(v) => v,
            Err(e) => {
                self.error = Some(e);
                return param;
            }
        };
        match self.moved(&name, values, &dims) {
            Ok(Some(new)) => param.map(|t| {
                let (autodiff, require_grad) = (t.is_autodiff(), t.is_require_grad());
                let device = t.inner().device();
                let t = Tensor::<D>::from_data(TensorData::new(new, dims), &device);
                let t = if autodiff { t.autodiff() } else { t };
                if require_grad { t.require_grad() } else { t }
            }),
            Ok(None) => param,
            Err(e) => {
                self.error = Some(e);
                param
            }
        }
    }
}

/// Standardised features of the training and test images, with the statistics.
struct Cache {
    train: Vec<f32>,
    test: Vec<f32>,
    width: usize,
    stats: Standardizer,
}

/// Trains the heads of `model` (a classifier whose backbone stays frozen) on cached,
/// standardised features of `splits` into `run_dir`; `run`'s recipe must have no augmentation.
pub fn train_probe(
    model: Model,
    run: RunConfig,
    splits: &DatasetSplits,
    run_dir: &Path,
    session: &Session,
    device: &Device,
) -> Result<TrainOutcome> {
    let classes = run.model.classes()?;
    // The classification task's checks: a classifier, and labels it has classes for.
    Classification {
        classes,
        label_smoothing: 0.0,
    }
    .check(&model, splits)?;
    let norm = run.normalize()?;
    norm.check_channels(splits.train.channels)?;
    let heads = run.model.head_params();
    let model_config = run.model.clone();
    let inner = device.clone().inner();
    let mut cache = None;
    let best_by = BestBy {
        column: "val_acc",
        higher_is_better: true,
    };
    let OpenedRun {
        mut model,
        mut optim,
        mut state,
        run,
        cfg,
    } = open_run(
        model,
        run,
        run_dir,
        session.resume,
        best_by.column,
        |model, cfg, restored| {
            if cfg.augment.is_some() || cfg.accum_steps > 1 {
                return Err(VitError::Config(
                    "a probe on cached features sees each image once, as it is: no augmentation and no \
                 gradient accumulation"
                        .into(),
                ));
            }
            if splits.train.len() < cfg.batch_size {
                return Err(VitError::Config(format!(
                    "batch size {} is larger than the {} training images",
                    cfg.batch_size,
                    splits.train.len()
                )));
            }
            let started = Instant::now();
            let backbone = model.valid();
            let features = |data: &crate::data::ImageDataset| {
                let classifier = backbone.classifier()?;
                rows_in_order(
                    std::sync::Arc::new(data.clone()),
                    CACHE_BATCH,
                    &norm,
                    &inner,
                    |x| Ok(classifier.features(x)),
                )
            };
            let (mut train, width) = features(&splits.train)?;
            let (mut test, _) = features(&splits.test)?;
            let stats = Standardizer::fit(&train, width);
            stats.apply(&mut train);
            stats.apply(&mut test);
            eprintln!(
                "cached {width} features of {} training and {} test images in {:.0}s",
                splits.train.len(),
                splits.test.len(),
                started.elapsed().as_secs_f64()
            );
            // A checkpoint's heads read raw features; the probe trains them on standardised ones.
            let model = if restored {
                refold(model, &heads, &stats, Space::Standardized)?
            } else {
                head_columns(&model, &heads, width)?;
                model
            };
            cache = Some(Cache {
                train,
                test,
                width,
                stats,
            });
            Ok(freeze_backbone(model, &model_config))
        },
    )?;
    let cache = cache.ok_or_else(|| VitError::Other("the features were not cached".into()))?;
    let width = cache.width;
    let n = splits.train.len();
    let full_steps = n / cfg.batch_size;
    let schedule = Schedule::new(&cfg, full_steps, session);
    let steps_per_epoch = schedule.steps_per_epoch;
    let mut closer = EpochCloser::new(run_dir, &run, cfg.epochs, best_by, &state);
    while state.epoch < schedule.last_epoch {
        let epoch = state.epoch;
        let epoch_start = Instant::now();
        let order = schedule.epoch_order(&cfg, n, epoch, device);
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        let mut lr = cfg.lr;
        for batch in order.chunks_exact(cfg.batch_size).take(steps_per_epoch) {
            lr = schedule.lr(&cfg, state.step);
            let b = batch.len();
            let rows: Vec<f32> = batch
                .iter()
                .flat_map(|&i| cache.train[i * width..(i + 1) * width].iter().copied())
                .collect();
            let labels: Vec<u32> = batch.iter().map(|&i| splits.train.labels[i]).collect();
            let x = Tensor::<2>::from_data(TensorData::new(rows, [b, width]), device);
            let targets = Tensor::<2>::from_data(
                TensorData::new(
                    smoothed_targets(&labels, classes, cfg.label_smoothing),
                    [b, classes],
                ),
                device,
            );
            let (loss, mean_logits) = heads_loss(model.classifier()?.head_logits(x), &targets)?;
            let loss_value = loss.clone().into_scalar::<f32>() as f64;
            if !loss_value.is_finite() {
                closer.progress.end();
                return Err(VitError::Diverged(format!(
                    "the probe's loss became {loss_value} at epoch {}, step {} (lr {lr:.3e})",
                    epoch + 1,
                    state.step
                )));
            }
            correct += correct_predictions(mean_logits, &labels)?;
            let mut grads = GradientsParams::from_grads(loss.backward(), &model);
            clip_grad_norm(&model, &mut grads, cfg.grad_clip);
            model = optim.step(lr, model, grads);
            state.step += 1;
            loss_sum += loss_value * b as f64;
            seen += b;
        }
        let train_s = epoch_start.elapsed().as_secs_f64();
        let val = validate(&model.valid(), &cache, &splits.test.labels, classes, &inner)?;
        state.epoch += 1;
        state.elapsed_s = closer.elapsed_s();
        let seen_f = seen.max(1) as f64;
        let rec = EpochRecord {
            epoch: state.epoch,
            step: state.step,
            lr,
            columns: vec![
                ("train_loss".into(), loss_sum / seen_f),
                ("train_acc".into(), correct as f64 / seen_f),
                ("val_loss".into(), val.loss),
                ("val_acc".into(), val.top1),
                ("val_top5".into(), val.top5),
            ],
            images_per_s: seen as f64 / train_s,
            epoch_s: epoch_start.elapsed().as_secs_f64(),
            elapsed_s: state.elapsed_s,
        };
        let raw = refold(model.clone(), &heads, &cache.stats, Space::Raw)?;
        closer.close(rec, &mut state, &raw, &optim)?;
    }
    Ok(closer.finish(state))
}

/// Loss, top-1 and top-5 of the heads of `model` (in inference mode) on the cached test rows.
fn validate(
    model: &Model,
    cache: &Cache,
    labels: &[u32],
    classes: usize,
    device: &Device,
) -> Result<super::EvalResult> {
    let classifier = model.classifier()?;
    let mut tally = Tally::new(classes);
    let rows_per_pass = CACHE_BATCH * 16;
    for (chunk, labels) in cache
        .test
        .chunks(rows_per_pass * cache.width)
        .zip(labels.chunks(rows_per_pass))
    {
        let x = Tensor::<2>::from_data(
            TensorData::new(chunk.to_vec(), [labels.len(), cache.width]),
            device,
        );
        let logits = crate::nn::host_values(classifier.head(x))?;
        tally.add_logits(&logits, classes, labels)?;
    }
    Ok(tally.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SiT classifier (two linear heads, each reading half of the features) and its head
    /// parameters.
    fn sit() -> (Model, Vec<String>, usize) {
        let config = crate::models::preset("sit_nano_patch8_32").unwrap();
        let model = config.build(&Device::flex()).unwrap();
        let width = 2 * crate::io::named_tensors(&model)
            .into_iter()
            .find(|(n, _, _)| n == "rot_head.weight")
            .map(|(_, _, d)| d.shape()[1])
            .unwrap();
        (model, config.head_params(), width)
    }

    /// Rows whose columns have offsets and scales far apart, as a backbone's do.
    fn skewed_rows(n: usize, width: usize) -> Vec<f32> {
        let mut state = 12345u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        (0..n * width)
            .map(|k| {
                let j = (k % width) as f32;
                3.0 * (j * 0.37).sin() + (0.05 + (j * 0.11).cos().abs() * 4.0) * next()
            })
            .collect()
    }

    fn logits(model: &Model, rows: &[f32], width: usize) -> Vec<Vec<f32>> {
        let x = Tensor::<2>::from_data(
            TensorData::new(rows.to_vec(), [rows.len() / width, width]),
            &Device::flex(),
        );
        model
            .classifier()
            .unwrap()
            .head_logits(x)
            .into_iter()
            .map(|t| crate::nn::host_values(t).unwrap())
            .collect()
    }

    fn max_gap(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn standardised_columns_have_zero_mean_and_unit_variance() {
        let width = 7;
        let mut rows = skewed_rows(500, width);
        let stats = Standardizer::fit(&rows, width);
        stats.apply(&mut rows);
        for j in 0..width {
            let col: Vec<f64> = rows.chunks_exact(width).map(|r| r[j] as f64).collect();
            let mean = col.iter().sum::<f64>() / col.len() as f64;
            let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / col.len() as f64;
            assert!(mean.abs() < 1e-5, "column {j}: mean {mean}");
            assert!((var - 1.0).abs() < 1e-3, "column {j}: variance {var}");
        }
    }

    #[test]
    fn folded_heads_read_raw_features_as_the_trained_heads_read_standardised_ones() {
        let (model, heads, width) = sit();
        let raw_rows = skewed_rows(64, width);
        let stats = Standardizer::fit(&raw_rows, width);
        let mut z = raw_rows.clone();
        stats.apply(&mut z);
        let trained = logits(&model, &z, width);
        let folded = refold(model.clone(), &heads, &stats, Space::Raw).unwrap();
        let gap = max_gap(&logits(&folded, &raw_rows, width), &trained);
        assert!(gap < 1e-4, "folded heads differ by {gap}");
        // Not vacuous: the unfolded heads on raw features give other logits.
        assert!(max_gap(&logits(&model, &raw_rows, width), &trained) > 1e-2);
        // And back: a resumed probe continues from the heads it trained.
        let back = refold(folded, &heads, &stats, Space::Standardized).unwrap();
        let gap = max_gap(&logits(&back, &z, width), &trained);
        assert!(gap < 1e-4, "unfolded heads differ by {gap}");
    }

    #[test]
    fn heads_that_do_not_cover_the_features_are_refused() {
        let (model, heads, width) = sit();
        let stats = Standardizer::fit(&skewed_rows(8, width + 1), width + 1);
        let err = refold(model, &heads, &stats, Space::Raw).unwrap_err().to_string();
        assert!(err.contains(&format!("read {width} feature columns")), "{err}");
    }
}
