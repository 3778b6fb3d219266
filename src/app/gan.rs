//! What `vitkit sample` and `vitkit fid` do with a GAN run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::Device;

use super::{ModelSource, load_data, load_model};
use crate::data::DataSource;
use crate::train::fid::{FeatureExtractor, FeatureStats};
use crate::train::gan::{fid_against, image_grid, latent_vectors, sample_grid};
use crate::{Result, VitError};

/// Writes a grid of `n` samples of the run's averaged generator (`raw`: the trained generator
/// itself) from the latents of `seed`.
pub fn run_sample(
    checkpoint: &Path,
    n: usize,
    seed: u64,
    raw: bool,
    out: &Path,
    device: &Device,
) -> Result<()> {
    if n == 0 {
        return Err(VitError::Config("--n must be at least 1".into()));
    }
    let loaded = load_model(&ModelSource::Checkpoint(checkpoint.to_path_buf()), device)?;
    sample_grid(loaded.model.generative()?, n, seed, !raw, out, device)
}

/// Spherical interpolation between two unit-free latent vectors (Gaussian latents keep their
/// norm along the arc, unlike a straight line through the origin's low-density region).
fn slerp(a: &[f32], b: &[f32], t: f32) -> Vec<f32> {
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    let cos = (a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / (norm(a) * norm(b))).clamp(-1.0, 1.0);
    let omega = cos.acos();
    if omega.abs() < 1e-6 {
        return a.iter().zip(b).map(|(x, y)| x + t * (y - x)).collect();
    }
    let (wa, wb) = (
        ((1.0 - t) * omega).sin() / omega.sin(),
        (t * omega).sin() / omega.sin(),
    );
    a.iter().zip(b).map(|(x, y)| wa * x + wb * y).collect()
}

/// Writes `rows` latent interpolation strips of `steps` images each: row `r` walks from one
/// latent of `seed` to the next along the sphere.
pub fn run_interpolation(
    checkpoint: &Path,
    rows: usize,
    steps: usize,
    seed: u64,
    raw: bool,
    out: &Path,
    device: &Device,
) -> Result<()> {
    if rows == 0 || steps < 2 {
        return Err(VitError::Config(
            "an interpolation needs at least one row and two steps".into(),
        ));
    }
    let loaded = load_model(&ModelSource::Checkpoint(checkpoint.to_path_buf()), device)?;
    let generator = loaded.model.generative()?;
    let dim = generator.latent_dim();
    let ends = latent_vectors(rows + 1, dim, seed);
    let mut z = Vec::with_capacity(rows * steps * dim);
    for r in 0..rows {
        let (a, b) = (&ends[r * dim..(r + 1) * dim], &ends[(r + 1) * dim..(r + 2) * dim]);
        for s in 0..steps {
            z.extend(slerp(a, b, s as f32 / (steps - 1) as f32));
        }
    }
    let zt =
        burn::tensor::Tensor::<2>::from_data(burn::tensor::TensorData::new(z, [rows * steps, dim]), device);
    let images = crate::nn::host_values(generator.generate(zt, !raw))?;
    let [c, h, w] = generator.image_shape();
    image_grid(&images, c, h, w, steps, out)
}

/// What `vitkit fid` measured.
#[derive(Debug, Clone)]
pub struct FidResult {
    pub fid: f64,
    pub generated: usize,
    pub real: usize,
    pub data: String,
    pub extractor: PathBuf,
}

/// The Fréchet distance between `n` samples of the run's generator and the test split of
/// `data` (default: the run's), on the features of the classifier run `features` (default:
/// the one the run was validated with).
pub fn run_fid(
    checkpoint: &Path,
    data: Option<&str>,
    features: Option<&Path>,
    n: usize,
    seed: u64,
    raw: bool,
    device: &Device,
) -> Result<FidResult> {
    if n < 2 {
        return Err(VitError::Config(
            "FID needs at least two generated images (--n)".into(),
        ));
    }
    let loaded = load_model(&ModelSource::Checkpoint(checkpoint.to_path_buf()), device)?;
    let generator = loaded.model.generative()?;
    let run = &loaded.run;
    // The extractor the run was validated with, unless the user names another.
    let extractor_dir = features
        .map(Path::to_path_buf)
        .or_else(|| run.train.as_ref().and_then(|t| t.fid_features.clone()))
        .ok_or_else(|| {
            VitError::Config(
                "the run names no FID feature extractor: pass --features RUN (a classifier trained on this data)"
                    .into(),
            )
        })?;
    let data = data.map(String::from).unwrap_or_else(|| run.data.name.clone());
    let [c, h, w] = generator.image_shape();
    let splits = load_data(&DataSource::parse(&data)?, [h, w], false)?;
    if splits.test.channels != c {
        return Err(VitError::Config(format!(
            "{data} has {}-channel images; this generator draws {c}-channel ones",
            splits.test.channels
        )));
    }
    let extractor = FeatureExtractor::load(&extractor_dir, c, [h, w], device)?;
    let real = splits.test.len();
    let (rows, dim) = extractor.dataset_features(Arc::new(splits.test), 256, device)?;
    let reference = FeatureStats::of(&rows, dim)?;
    let fid = fid_against(generator, &extractor, &reference, n, seed, !raw, device)?;
    Ok(FidResult {
        fid,
        generated: n,
        real,
        data,
        extractor: extractor_dir,
    })
}
