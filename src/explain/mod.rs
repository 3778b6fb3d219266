//! Looking inside a model: for transformers with global attention, attention rollout, mean
//! attention distance, position-embedding similarity and the principal components of the
//! patch-embedding filters (the ViT paper's Figures 6, 7 and 11); for models whose head pools
//! a spatial feature map, Grad-CAM and the class activation map; for NesT's tree of blocks,
//! GradCAT (a reconstruction).
//!
//! All of it is host-side arithmetic on small matrices (`T ≤ 577` tokens), in f64.

mod cam;
mod distance;
mod filters;
mod gradcat;
mod images;
mod reconstruct;
mod rollout;
mod run;

pub use cam::{Cam, GradCam, class_activation_map, grad_cam};
pub use distance::{grid_distances, mean_attention_distance};
pub use filters::{patch_embedding_components, position_similarity};
pub use gradcat::{ChannelReduce, GradCat, GradCatOptions, GradSign, ScoreFrom, TreeStep, grad_cat};
pub use images::{ImageRequest, draw, explain_images};
pub use reconstruct::reconstructions;
pub use rollout::{attention_rollout, class_token_map, head_mean, residual_mix};
pub use run::{Explainer, Method, PositionSimilaritySummary, explain_figures, test_images};

/// A row-major square matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub n: usize,
    pub data: Vec<f64>,
}

impl Matrix {
    pub fn identity(n: usize) -> Self {
        let mut data = vec![0.0; n * n];
        for i in 0..n {
            data[i * n + i] = 1.0;
        }
        Self { n, data }
    }

    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.n + j]
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.n..(i + 1) * self.n]
    }

    /// `self · other`.
    pub fn matmul(&self, other: &Matrix) -> Matrix {
        let n = self.n;
        let mut data = vec![0.0; n * n];
        for i in 0..n {
            for k in 0..n {
                let a = self.data[i * n + k];
                if a == 0.0 {
                    continue;
                }
                let row = &other.data[k * n..(k + 1) * n];
                for (out, b) in data[i * n..(i + 1) * n].iter_mut().zip(row) {
                    *out += a * b;
                }
            }
        }
        Matrix { n, data }
    }
}
