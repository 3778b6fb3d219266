//! Spectrally normalised layers (Miyato et al. 2018): each weight, read as a matrix
//! `[out, in·k·k]`, is divided by its largest singular value, so every layer is at most
//! 1-Lipschitz. What keeps a GAN discriminator's gradients tame.
//!
//! Why no saved vector: the usual implementation keeps the power iteration's left vector as a
//! buffer and runs one iteration per forward pass. Here every forward pass runs
//! [`POWER_ITERATIONS`] from a fixed start vector on the detached weight instead, so a layer has
//! no state besides its parameters (nothing to save, resume or average); the extra products are
//! matrix–vector ones, negligible next to the convolutions.

use burn::module::{Module, Param};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData};

/// Power iterations per forward pass.
pub const POWER_ITERATIONS: usize = 10;

/// The largest singular value of `w` `[out, in]` as `[1]`: `uᵀ W v` with `u`, `v` from power
/// iteration on the detached weight, so the gradient flows through `W` alone (as PyTorch's
/// `spectral_norm`).
pub fn spectral_norm(w: Tensor<2>) -> Tensor<1> {
    let [out, _] = w.dims();
    let device = w.device();
    let fixed = w.clone().detach();
    // A fixed start with no symmetry that could make it orthogonal to the top singular vector.
    let start: Vec<f32> = (0..out).map(|i| 1.0 + 0.5 * ((i as f32) * 0.7).sin()).collect();
    let mut u = unit(Tensor::<2>::from_data(TensorData::new(start, [out, 1]), &device));
    let mut v = unit(fixed.clone().transpose().matmul(u.clone()));
    for _ in 1..POWER_ITERATIONS {
        u = unit(fixed.clone().matmul(v.clone()));
        v = unit(fixed.clone().transpose().matmul(u.clone()));
    }
    u = unit(fixed.matmul(v.clone()));
    u.transpose().matmul(w.matmul(v)).reshape([1])
}

fn unit(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powi_scalar(2).sum().sqrt().add_scalar(1e-12);
    x / norm.unsqueeze::<2>()
}

/// A spectrally normalised convolution (`weight` `[out, in, k, k]`, `bias` `[out]`).
#[derive(Module, Debug)]
pub struct SnConv2d {
    pub weight: Param<Tensor<4>>,
    pub bias: Param<Tensor<1>>,
    pub stride: usize,
    pub padding: usize,
}

impl SnConv2d {
    pub fn new(c_in: usize, c_out: usize, k: usize, stride: usize, padding: usize, device: &Device) -> Self {
        let init = super::torch_default_init(c_in * k * k);
        Self {
            weight: init.init([c_out, c_in, k, k], device),
            bias: init.init([c_out], device),
            stride,
            padding,
        }
    }

    /// The normalised weight.
    pub fn normalized(&self) -> Tensor<4> {
        let w = self.weight.val();
        let [o, i, kh, kw] = w.dims();
        let sigma = spectral_norm(w.clone().reshape([o, i * kh * kw]));
        w / sigma.reshape([1, 1, 1, 1])
    }

    /// `[B, C, H, W]` → `[B, out, H', W']`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let options = ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1);
        burn::tensor::module::conv2d(x, self.normalized(), Some(self.bias.val()), options)
    }
}

/// A spectrally normalised linear layer (`weight` `[out, in]` as PyTorch saves it).
#[derive(Module, Debug)]
pub struct SnLinear {
    pub weight: Param<Tensor<2>>,
    pub bias: Param<Tensor<1>>,
}

impl SnLinear {
    pub fn new(d_in: usize, d_out: usize, device: &Device) -> Self {
        let init = super::torch_default_init(d_in);
        Self {
            weight: init.init([d_out, d_in], device),
            bias: init.init([d_out], device),
        }
    }

    /// `[B, in]` → `[B, out]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let w = self.weight.val();
        let sigma = spectral_norm(w.clone());
        x.matmul((w / sigma.unsqueeze::<2>()).transpose()) + self.bias.val().unsqueeze::<2>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spectral_norm_finds_the_largest_singular_value() {
        // diag(3, 2, 1) rotated by a permutation: singular values 3, 2, 1.
        let w = Tensor::<2>::from_data(
            TensorData::new(
                vec![0.0f32, 2.0, 0.0, 0.0, 0.0, 1.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                [4, 3],
            ),
            &Device::flex(),
        );
        let s = spectral_norm(w).into_scalar::<f32>();
        assert!((s - 3.0).abs() < 1e-3, "{s}");
        let layer = SnLinear::new(7, 5, &Device::flex());
        let normalized = layer.weight.val() / spectral_norm(layer.weight.val()).unsqueeze::<2>();
        let again = spectral_norm(normalized).into_scalar::<f32>();
        assert!((again - 1.0).abs() < 1e-3, "{again}");
    }
}
