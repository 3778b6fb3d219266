//! Fréchet distance between two sets of image features (the FID of Heusel et al. 2017), on the
//! penultimate features of a vitkit classifier: no Inception network is reachable offline, so
//! the numbers are comparable with each other (same extractor), not with published FIDs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use super::RunConfig;
use super::eval::rows_in_order;
use crate::data::{ImageDataset, Normalize};
use crate::io::{Which, find_checkpoint, load_weights, read_json};
use crate::models::Model;
use crate::{Result, VitError};

/// Mean and covariance (with the `n − 1` divisor, as NumPy's `cov`) of feature rows.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    pub dim: usize,
    pub count: usize,
    pub mean: Vec<f64>,
    /// Row-major `[dim, dim]`.
    pub cov: Vec<f64>,
}

impl FeatureStats {
    /// Statistics of `rows` (row-major, `dim` wide); at least two rows.
    pub fn of(rows: &[f32], dim: usize) -> Result<Self> {
        let n = rows.len().checked_div(dim).unwrap_or(0);
        if n < 2 || n * dim != rows.len() {
            return Err(VitError::Config(format!(
                "feature statistics need at least two rows of {dim} values (got {} values)",
                rows.len()
            )));
        }
        let mut mean = vec![0f64; dim];
        for row in rows.chunks(dim) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut cov = vec![0f64; dim * dim];
        let mut centred = vec![0f64; dim];
        for row in rows.chunks(dim) {
            for ((c, &v), m) in centred.iter_mut().zip(row).zip(&mean) {
                *c = v as f64 - m;
            }
            for i in 0..dim {
                let ci = centred[i];
                for j in i..dim {
                    cov[i * dim + j] += ci * centred[j];
                }
            }
        }
        for i in 0..dim {
            for j in i..dim {
                let v = cov[i * dim + j] / (n - 1) as f64;
                cov[i * dim + j] = v;
                cov[j * dim + i] = v;
            }
        }
        Ok(Self {
            dim,
            count: n,
            mean,
            cov,
        })
    }
}

/// `‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½)`.
///
/// Why this way: `tr (Σ₁Σ₂)^½` equals the sum of the square roots of the eigenvalues of the
/// symmetric `Σ₁^½ Σ₂ Σ₁^½` (similar to `Σ₁Σ₂`), so two symmetric eigen-decompositions
/// (Jacobi, exact to rounding) replace SciPy's general `sqrtm`, and tiny negative eigenvalues
/// from rounding are clamped to zero instead of turning complex.
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64> {
    if a.dim != b.dim {
        return Err(VitError::Config(format!(
            "feature sets of different widths ({} and {})",
            a.dim, b.dim
        )));
    }
    let n = a.dim;
    let mean_term: f64 = a.mean.iter().zip(&b.mean).map(|(x, y)| (x - y).powi(2)).sum();
    let (values, vectors) = symmetric_eigen(&a.cov, n);
    // Σ₁^½ = V diag(√λ) Vᵀ.
    let mut root = vec![0f64; n * n];
    for k in 0..n {
        let s = values[k].max(0.0).sqrt();
        for i in 0..n {
            let vik = vectors[i * n + k] * s;
            for j in 0..n {
                root[i * n + j] += vik * vectors[j * n + k];
            }
        }
    }
    let product = matmul(&matmul(&root, &b.cov, n), &root, n);
    let (inner, _) = symmetric_eigen(&product, n);
    let trace_root: f64 = inner.iter().map(|v| v.max(0.0).sqrt()).sum();
    let trace = |m: &[f64]| (0..n).map(|i| m[i * n + i]).sum::<f64>();
    Ok(mean_term + trace(&a.cov) + trace(&b.cov) - 2.0 * trace_root)
}

fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0f64; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            if aik == 0.0 {
                continue;
            }
            for j in 0..n {
                out[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    out
}

/// Eigenvalues and eigenvectors (columns of the row-major `[n, n]` result) of a symmetric
/// matrix, by cyclic Jacobi rotations.
fn symmetric_eigen(m: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = m.to_vec();
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum::<f64>()
            .sqrt();
        if off <= 1e-15 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// A trained vitkit classifier whose pooled features (before the head) FID compares.
pub struct FeatureExtractor {
    pub run_dir: PathBuf,
    pub run: RunConfig,
    model: Model,
    norm: Normalize,
}

impl FeatureExtractor {
    /// The best checkpoint of the classifier run `dir`, for images of `channels` × `size`.
    pub fn load(dir: &Path, channels: usize, size: [usize; 2], device: &Device) -> Result<Self> {
        let ck = find_checkpoint(dir, Which::Best).map_err(|e| {
            VitError::Config(format!(
                "the FID feature extractor {}: {e} (train a classifier on this data first, e.g. `vitkit train \
                 --data … --out DIR`, and pass --fid-features DIR)",
                dir.display()
            ))
        })?;
        let run: RunConfig = read_json(&ck.config())?;
        let norm = run.normalize()?;
        let model = load_weights(run.model.build(device)?, &ck.model(), true)?
            .0
            .valid();
        model.classifier()?;
        if run.data.channels != channels || run.model.img_size() != size {
            return Err(VitError::Config(format!(
                "the FID feature extractor {} reads {}-channel {}x{} images; these are {channels}-channel {}x{} \
                 (use a classifier trained on this dataset)",
                dir.display(),
                run.data.channels,
                run.model.img_size()[0],
                run.model.img_size()[1],
                size[0],
                size[1]
            )));
        }
        Ok(Self {
            run_dir: dir.to_path_buf(),
            run,
            model,
            norm,
        })
    }

    /// Features of dataset images `[N, F]`, in order.
    pub fn dataset_features(
        &self,
        data: Arc<ImageDataset>,
        batch_size: usize,
        device: &Device,
    ) -> Result<(Vec<f32>, usize)> {
        let classifier = self.model.classifier()?;
        rows_in_order(data, batch_size, &self.norm, device, |x| {
            Ok(classifier.features(x))
        })
    }

    /// Features of images in [−1, 1] `[B, C, H, W]` (a generator's output), normalised as the
    /// classifier's training data was.
    pub fn pixel_features(&self, images: Tensor<4>) -> Result<Tensor<2>> {
        let device = images.device();
        let c = self.norm.mean.len();
        let mean = Tensor::<1>::from_data(TensorData::new(self.norm.mean.clone(), [c]), &device)
            .reshape([1, c, 1, 1]);
        let std = Tensor::<1>::from_data(TensorData::new(self.norm.std.clone(), [c]), &device)
            .reshape([1, c, 1, 1]);
        let pixels = images.add_scalar(1.0).mul_scalar(0.5);
        Ok(self.model.classifier()?.features((pixels - mean) / std))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_diagonalises_a_symmetric_matrix() {
        let m = [4.0, 1.0, 2.0, 1.0, 3.0, 0.5, 2.0, 0.5, 5.0];
        let (values, vectors) = symmetric_eigen(&m, 3);
        for k in 0..3 {
            let v: Vec<f64> = (0..3).map(|i| vectors[i * 3 + k]).collect();
            for i in 0..3 {
                let mv: f64 = (0..3).map(|j| m[i * 3 + j] * v[j]).sum();
                assert!((mv - values[k] * v[i]).abs() < 1e-12);
            }
        }
        let trace: f64 = values.iter().sum();
        assert!((trace - 12.0).abs() < 1e-12);
    }

    #[test]
    fn distance_of_a_set_to_itself_is_zero_and_a_shift_adds_its_square() {
        let rows: Vec<f32> = (0..60)
            .map(|i| ((i * 37 % 11) as f32) * 0.3 - (i % 3) as f32)
            .collect();
        let a = FeatureStats::of(&rows, 3).unwrap();
        assert!(frechet_distance(&a, &a).unwrap().abs() < 1e-9);
        let shifted: Vec<f32> = rows
            .iter()
            .enumerate()
            .map(|(i, v)| v + if i % 3 == 0 { 2.0 } else { 0.0 })
            .collect();
        let b = FeatureStats::of(&shifted, 3).unwrap();
        assert!((frechet_distance(&a, &b).unwrap() - 4.0).abs() < 1e-6);
    }
}
