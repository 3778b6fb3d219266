//! vitkit's CUDA kernels give Burn's composed results, forward and backward. Built only with
//! the `cuda` feature and run on a machine with an NVIDIA GPU (CI has none): on the device
//! machine, `bench/build_cuda.sh --test gpu` then the test binary it names.
#![cfg(feature = "cuda")]

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};

mod support;
use support::{bias_and_layer_norm_gaps, max_diff, unary_gaps};

/// The first GPU, or a failure that says there is no NVIDIA driver (rather than the CUDA
/// runtime's panic deep inside its first call).
fn cuda() -> Device {
    vitkit::device::parse_device("cuda").unwrap_or_else(|e| panic!("these tests need an NVIDIA GPU: {e}"))
}

/// `softmax(factor * x)` over the last axis through vitkit's CUDA kernel and through Burn
/// ([`unary_gaps`]): the largest output and input-gradient gaps.
fn softmax_gaps(shape: [usize; 3], scale: f64, factor: f32) -> (f32, f32) {
    let device = cuda().autodiff();
    assert!(vitkit::kernels::gpu_softmax_applies(&Tensor::<1>::zeros(
        [1],
        &device
    )));
    let reference = |x: Tensor<3>| burn::tensor::activation::softmax(x.mul_scalar(factor), 2);
    if factor == 1.0 {
        unary_gaps(&device, shape, scale, vitkit::kernels::softmax_last, reference)
    } else {
        unary_gaps(
            &device,
            shape,
            scale,
            |x| vitkit::kernels::gpu_softmax_scaled(x, factor),
            reference,
        )
    }
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
    let device = cuda();
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
    let config = vitkit::models::preset("vit_tiny_patch4_32").unwrap();
    let cpu = Device::flex();
    let model = config.build(&cpu).unwrap();
    let images = Tensor::<4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &cpu);
    let expected = model.classifier().unwrap().logits(images.clone());
    let gpu = cuda();
    let on_gpu = model.to_device(&gpu);
    let on_gpu = on_gpu
        .classifier()
        .unwrap()
        .logits(images.to_device(&gpu))
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
        for (name, gaps) in bias_and_layer_norm_gaps(&cuda().autodiff(), shape) {
            assert!(gaps.iter().all(|g| *g < 1e-4), "{shape:?} {name}: {gaps:?}");
        }
    }
}
