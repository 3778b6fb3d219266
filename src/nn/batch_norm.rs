//! BatchNorm with PyTorch's semantics and names (`weight`, `bias`, `running_mean`,
//! `running_var`, `num_batches_tracked`).
//!
//! Why not Burn's `BatchNorm`: it keeps the *biased* batch variance as its running variance,
//! where PyTorch keeps the unbiased one (`n / (n - 1)` times larger), so a model trained here
//! would evaluate differently from the same weights in PyTorch; it also has no
//! `num_batches_tracked`, which PyTorch's state dicts carry.
//!
//! Training (an autodiff device, not frozen): batch statistics normalise, and the running ones move by
//! `momentum` (0.1): `running = (1 - m) * running + m * batch` with the unbiased batch variance.
//! Otherwise the running statistics normalise. The running statistics and the counter are
//! buffers, not parameters: saved and loaded with the weights, never given gradients, and not
//! counted by [`crate::models::param_count`] (see [`is_buffer`]).

use burn::module::{Flag, Module, Param, RunningState};
use burn::nn::Initializer;
use burn::tensor::{Device, Tensor};

/// The last path segments that name a buffer rather than a parameter, as PyTorch's BatchNorm.
pub const BUFFER_NAMES: [&str; 3] = ["running_mean", "running_var", "num_batches_tracked"];

/// Whether the tensor at `path` is BatchNorm's batch counter (saved as an int64 scalar).
pub fn is_counter(path: &str) -> bool {
    path.rsplit('.').next() == Some("num_batches_tracked")
}

/// Whether the parameter at `path` is a BatchNorm buffer (not a trainable parameter).
pub fn is_buffer(path: &str) -> bool {
    let last = path.rsplit('.').next().unwrap_or(path);
    BUFFER_NAMES.contains(&last)
}

#[derive(Module, Debug)]
pub struct BatchNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub running_mean: RunningState<Tensor<1>>,
    pub running_var: RunningState<Tensor<1>>,
    /// Batches seen in training; a float here, an int64 scalar in a saved file (as PyTorch's).
    pub num_batches_tracked: RunningState<Tensor<1>>,
    pub eps: f64,
    pub momentum: f64,
    /// Cleared by `valid()` and `freeze()`: a frozen or validating BatchNorm normalises with
    /// its running statistics and leaves them alone, even on an autodiff device.
    pub training: Param<Flag>,
}

impl BatchNorm {
    /// PyTorch's defaults: weight 1, bias 0, running mean 0, running variance 1, momentum 0.1.
    pub fn new(channels: usize, eps: f64, device: &Device) -> Self {
        Self {
            weight: Initializer::Ones.init([channels], device),
            bias: Initializer::Zeros.init([channels], device),
            running_mean: RunningState::new(Tensor::zeros([channels], device)),
            running_var: RunningState::new(Tensor::ones([channels], device)),
            num_batches_tracked: RunningState::new(Tensor::zeros([1], device)),
            eps,
            momentum: 0.1,
            training: Param::from_bool(true),
        }
    }

    /// Normalises axis 1 of `x` (`[B, C]` or `[B, C, H, W]`).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if self.is_training(&x) {
            self.forward_train(x)
        } else {
            let device = x.device();
            burn::tensor::module::batch_norm(
                x,
                self.weight.val(),
                self.bias.val(),
                self.running_mean.value().to_device(&device),
                self.running_var.value().to_device(&device),
                self.eps,
            )
        }
    }

    /// Normalises the last axis of channels-last tokens `[B, N, C]` (with the fused row
    /// kernels where they run).
    pub fn forward_tokens(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, n, c] = x.dims();
        let rows = x.reshape([b * n, c]);
        let (w, bias) = (self.weight.val(), self.bias.val());
        let out = if self.is_training(&rows) {
            match crate::kernels::batch_norm_rows_train(rows.clone(), w, bias, self.eps) {
                Some((out, mean, var)) => {
                    self.update_running(mean, var, (b * n) as f64);
                    out
                }
                None => self.forward(rows),
            }
        } else {
            let device = rows.device();
            let (mean, var) = (
                self.running_mean.value().to_device(&device),
                self.running_var.value().to_device(&device),
            );
            match crate::kernels::batch_norm_rows_eval(rows.clone(), w, bias, mean, var, self.eps) {
                Some(out) => out,
                None => self.forward(rows),
            }
        };
        out.reshape([b, n, c])
    }

    /// The evaluation-mode normalisation as `x * scale + shift` per channel.
    pub fn affine(&self) -> (Tensor<1>, Tensor<1>) {
        let var = self.running_var.value();
        let scale = self.weight.val() / var.add_scalar(self.eps).sqrt();
        let shift = self.bias.val() - self.running_mean.value() * scale.clone();
        (scale, shift)
    }

    /// Whether a call on `x` normalises with batch statistics: on an autodiff device, unless
    /// validating or frozen.
    pub fn is_training<const D: usize>(&self, x: &Tensor<D>) -> bool {
        self.training.is_enabled() && x.device().is_autodiff()
    }

    fn forward_train<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let per_channel = (dims.iter().product::<usize>() / dims[1].max(1)) as f64;
        let out = burn::tensor::module::batch_norm_train(x, self.weight.val(), self.bias.val(), self.eps);
        self.update_running(out.mean, out.variance, per_channel);
        out.output
    }

    /// Moves the running statistics towards a batch's mean and biased variance over
    /// `per_channel` values, and counts the batch.
    fn update_running(&self, mean: Tensor<1>, variance: Tensor<1>, per_channel: f64) {
        let m = self.momentum;
        // PyTorch's running variance is the unbiased one.
        let unbiased = variance
            .detach()
            .mul_scalar(per_channel / (per_channel - 1.0).max(1.0));
        let update = |state: &RunningState<Tensor<1>>, batch: Tensor<1>| {
            let old = state.value_sync().to_device(&batch.device());
            state.update(old.mul_scalar(1.0 - m).add(batch.mul_scalar(m)).detach());
            // Made current now, so a checkpoint written after this step saves it.
            state.value_sync();
        };
        update(&self.running_mean, mean.detach());
        update(&self.running_var, unbiased);
        let count = self.num_batches_tracked.value_sync();
        self.num_batches_tracked.update(count.add_scalar(1.0).detach());
        self.num_batches_tracked.value_sync();
    }
}
