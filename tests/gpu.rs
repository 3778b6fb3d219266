//! vitkit's CUDA kernels give Burn's composed results, forward and backward. Built only with
//! the `cuda` feature and run on a machine with an NVIDIA GPU (CI has none): on the device
//! machine, `bench/build_cuda.sh --test gpu` then the test binary it names.
#![cfg(feature = "cuda")]

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};

mod support;
use support::{bias_and_layer_norm_gaps, max_diff};

/// `softmax(factor * x)` over the last axis of a `[a, b, c]` input (a non-contiguous view, as
/// attention scores can be) through vitkit and through Burn, with a random upstream gradient:
/// the largest output and input-gradient gaps.
fn softmax_gaps(shape: [usize; 3], scale: f64, factor: f32) -> (f32, f32) {
    let device = Device::cuda(0).autodiff();
    let [a, b, c] = shape;
    let base = Tensor::<3>::random([a, c, b], Distribution::Normal(0.0, scale), &device).swap_dims(1, 2);
    let upstream = Tensor::<3>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    assert!(vitkit::kernels::gpu_softmax_applies(&base));
    let run = |f: &dyn Fn(Tensor<3>) -> Tensor<3>| {
        let x = base.clone().detach().require_grad();
        let y = f(x.clone());
        let grads = (y.clone() * upstream.clone()).sum().backward();
        (y.detach(), x.grad(&grads).expect("input gradient"))
    };
    let (y1, g1) = if factor == 1.0 {
        run(&vitkit::kernels::softmax_last)
    } else {
        run(&|x| vitkit::kernels::gpu_softmax_scaled(x, factor))
    };
    let (y2, g2) = run(&|x| burn::tensor::activation::softmax(x.mul_scalar(factor), 2));
    (max_diff(y1, y2), max_diff(g1, g2))
}

#[test]
fn cuda_softmax_matches_burn_forward_and_backward() {
    // Row lengths below, at and well above one plane of 32 lanes, ViT's 197, and one row.
    for (shape, scale) in [
        ([2, 197, 197], 4.0),
        ([3, 17, 65], 4.0),
        ([4, 9, 32], 1.0),
        ([1, 3, 1], 1.0),
        ([2, 5, 1000], 8.0),
    ] {
        let (out, grad) = softmax_gaps(shape, scale, 1.0);
        assert!(
            out < 1e-6 && grad < 1e-5,
            "{shape:?}: output {out}, gradient {grad}"
        );
    }
}

#[test]
fn cuda_softmax_folds_in_the_attention_scale() {
    for factor in [0.125, 3.0] {
        let (out, grad) = softmax_gaps([2, 197, 197], 4.0, factor);
        assert!(
            out < 1e-6 && grad < 1e-5,
            "x{factor}: output {out}, gradient {grad}"
        );
    }
}

#[test]
fn cuda_softmax_rows_sum_to_one_without_autodiff() {
    let device = Device::cuda(0);
    let x = Tensor::<4>::random([2, 3, 197, 197], Distribution::Normal(0.0, 10.0), &device);
    let y = vitkit::kernels::softmax_last(x.clone());
    let sums = y.clone().sum_dim(3);
    let off = (sums - 1.0).abs().max().into_scalar::<f32>();
    assert!(off < 1e-5, "rows sum to 1 within {off}");
    let reference = burn::tensor::activation::softmax(x, 3);
    assert!(max_diff(y, reference) < 1e-6);
}

#[test]
fn cuda_vit_inference_matches_the_cpu() {
    // The whole model on CUDA (its attention through vitkit's softmax) against the CPU, with
    // the same weights: CubeCL multiplies f32 on TF32 tensor cores, hence the tolerance.
    let vitkit::models::ModelConfig::Vit(config) = vitkit::models::preset("vit_tiny_patch4_32").unwrap();
    let cpu = Device::flex();
    let model = config.init(&cpu).unwrap();
    let images = Tensor::<4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &cpu);
    let expected = model.forward(images.clone());
    let cuda = Device::cuda(0);
    let on_gpu = model
        .to_device(&cuda)
        .forward(images.to_device(&cuda))
        .to_device(&cpu);
    let scale = expected.clone().abs().max().into_scalar::<f32>().max(1.0);
    let gap = max_diff(on_gpu, expected) / scale;
    assert!(gap < 2e-2, "logits differ by {gap} of their scale");
}

#[test]
fn cuda_bias_add_and_layer_norm_backward_match_burn() {
    // What the GPU's linear layers and LayerNorms run: their parameter gradients are column
    // sums in two stages (rows 4 * 197, chunks of 197) or one (13 rows).
    for shape in [[4, 197, 768], [1, 13, 40]] {
        for (name, gaps) in bias_and_layer_norm_gaps(&Device::cuda(0).autodiff(), shape) {
            assert!(gaps.iter().all(|g| *g < 1e-4), "{shape:?} {name}: {gaps:?}");
        }
    }
}
