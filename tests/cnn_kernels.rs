//! The convolutional kernels (channels-last depthwise convolution, BatchNorm over rows) against
//! Burn's own operations: outputs and every gradient, on shapes that exercise the edges
//! (stride 2, even kernels, channel counts that are not a vector multiple, residuals).

mod support;

use burn::tensor::{Device, Distribution, Tensor};
use support::{max_diff, relative_diff};
use vitkit::kernels::{depthwise_conv, depthwise_conv_residual, depthwise_residual_gelu_affine};

/// Burn's grouped convolution on the NCHW view of a channels-last map.
fn reference_depthwise(x: Tensor<4>, w: Tensor<4>, b: Tensor<1>, stride: usize, padding: usize) -> Tensor<4> {
    let c = w.dims()[0];
    let options = burn::tensor::ops::ConvOptions::new([stride; 2], [padding; 2], [1, 1], c);
    burn::tensor::module::conv2d(x.permute([0, 3, 1, 2]), w, Some(b), options).permute([0, 2, 3, 1])
}

#[test]
fn depthwise_matches_grouped_conv_with_gradients() {
    let device = Device::flex().autodiff();
    // (batch, height, width, channels, kernel, stride, padding, residual)
    for (b, h, w, c, k, s, p, residual) in [
        (3, 7, 5, 19, 3, 1, 1, false),
        (2, 8, 8, 37, 3, 1, 1, true),
        (2, 16, 12, 5, 4, 4, 0, false),
        (1, 9, 9, 33, 2, 2, 0, false),
        (2, 6, 6, 8, 3, 2, 1, false),
    ] {
        let x0 = Tensor::<4>::random([b, h, w, c], Distribution::Normal(0.0, 1.0), &device);
        let w0 = Tensor::<4>::random([c, 1, k, k], Distribution::Normal(0.0, 0.5), &device);
        let b0 = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.5), &device);
        let run = |ours: bool| {
            let (x, wt, bias) = (
                x0.clone().require_grad(),
                w0.clone().require_grad(),
                b0.clone().require_grad(),
            );
            let y = match (ours, residual) {
                (true, true) => depthwise_conv_residual(x.clone(), wt.clone(), bias.clone()),
                (true, false) => depthwise_conv(x.clone(), wt.clone(), bias.clone(), s, p),
                (false, true) => reference_depthwise(x.clone(), wt.clone(), bias.clone(), s, p) + x.clone(),
                (false, false) => reference_depthwise(x.clone(), wt.clone(), bias.clone(), s, p),
            };
            let upstream = Tensor::<4>::random(y.dims(), Distribution::Normal(0.0, 1.0), &Device::flex());
            let upstream = Tensor::from_data(upstream.into_data(), &device);
            (y.clone(), upstream, x, wt, bias)
        };
        let (y1, up, x1, w1, b1) = run(true);
        let (y2, _, x2, w2, b2) = run(false);
        let g1 = (y1.clone() * up.clone()).sum().backward();
        let g2 = (y2.clone() * up).sum().backward();
        let case = format!("b{b} {h}x{w}x{c} k{k} s{s} p{p} residual {residual}");
        assert!(max_diff(y1.detach(), y2.detach()) < 1e-4, "{case}: output");
        assert!(
            max_diff(x1.grad(&g1).unwrap(), x2.grad(&g2).unwrap()) < 1e-4,
            "{case}: input gradient"
        );
        assert!(
            relative_diff(w1.grad(&g1).unwrap(), w2.grad(&g2).unwrap()) < 1e-5,
            "{case}: weight gradient"
        );
        assert!(
            relative_diff(b1.grad(&g1).unwrap(), b2.grad(&g2).unwrap()) < 1e-5,
            "{case}: bias gradient"
        );
    }
}

#[test]
fn fused_depthwise_epilogue_matches_composed_inference() {
    let device = Device::flex();
    let (b, h, w, c) = (2, 6, 5, 23);
    let x = Tensor::<4>::random([b, h, w, c], Distribution::Normal(0.0, 1.0), &device);
    let wt = Tensor::<4>::random([c, 1, 3, 3], Distribution::Normal(0.0, 0.5), &device);
    let bias = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.5), &device);
    let scale = Tensor::<1>::random([c], Distribution::Normal(1.0, 0.3), &device);
    let shift = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.3), &device);
    let fused =
        depthwise_residual_gelu_affine(x.clone(), wt.clone(), bias.clone(), scale.clone(), shift.clone())
            .expect("the fused kernel runs for CPU inference");
    let composed = burn::tensor::activation::gelu(reference_depthwise(x.clone(), wt, bias, 1, 1) + x)
        * scale.unsqueeze::<4>()
        + shift.unsqueeze::<4>();
    assert!(max_diff(fused, composed) < 1e-5);
}

#[test]
fn batch_norm_rows_match_burns_batch_norm() {
    let device = Device::flex().autodiff();
    for (rows, c) in [(300, 19), (4096, 48), (7, 3)] {
        let x0 = Tensor::<2>::random([rows, c], Distribution::Normal(0.7, 2.0), &device);
        let g0 = Tensor::<1>::random([c], Distribution::Normal(1.0, 0.3), &device);
        let b0 = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.3), &device);
        let up = Tensor::<2>::random([rows, c], Distribution::Normal(0.0, 1.0), &device);
        let (x1, gm1, bt1) = (
            x0.clone().require_grad(),
            g0.clone().require_grad(),
            b0.clone().require_grad(),
        );
        let (y1, mean1, var1) =
            vitkit::kernels::batch_norm_rows_train(x1.clone(), gm1.clone(), bt1.clone(), 1e-5)
                .expect("the fused kernel runs on the CPU");
        let (x2, gm2, bt2) = (
            x0.clone().require_grad(),
            g0.clone().require_grad(),
            b0.clone().require_grad(),
        );
        let r = burn::tensor::module::batch_norm_train(x2.clone(), gm2.clone(), bt2.clone(), 1e-5);
        let g1 = (y1.clone() * up.clone()).sum().backward();
        let g2 = (r.output.clone() * up).sum().backward();
        let case = format!("{rows}x{c}");
        assert!(max_diff(y1.detach(), r.output.detach()) < 1e-4, "{case}: output");
        assert!(max_diff(mean1, r.mean.detach()) < 1e-5, "{case}: mean");
        assert!(
            relative_diff(var1, r.variance.detach()) < 1e-5,
            "{case}: variance"
        );
        assert!(
            max_diff(x1.grad(&g1).unwrap(), x2.grad(&g2).unwrap()) < 1e-4,
            "{case}: input gradient"
        );
        assert!(
            relative_diff(gm1.grad(&g1).unwrap(), gm2.grad(&g2).unwrap()) < 1e-4,
            "{case}: gamma gradient"
        );
        assert!(
            relative_diff(bt1.grad(&g1).unwrap(), bt2.grad(&g2).unwrap()) < 1e-4,
            "{case}: beta gradient"
        );
    }
}

#[test]
fn channels_last_dense_conv_matches_burns_conv2d() {
    let device = Device::flex().autodiff();
    // (batch, height, width, in, out, kernel, stride, padding)
    for (b, h, w, ci, co, k, s, p) in [
        (2, 9, 7, 3, 16, 3, 2, 1),
        (3, 8, 8, 16, 12, 3, 1, 1),
        (1, 6, 10, 5, 7, 2, 2, 0),
        // More images than threads, and maps whose windows are gathered in several bands of
        // output rows (256 KiB each: 12 rows of 36 here, 14 of 32 with stride 2).
        (5, 40, 36, 16, 16, 3, 1, 1),
        (2, 130, 64, 16, 8, 3, 2, 1),
        // Small maps with long windows: chunks of output rows that span images and end inside
        // one (14 rows of 8 on two threads), forward and in the backward pass's runs of images.
        (7, 8, 8, 64, 16, 3, 1, 1),
    ] {
        let x0 = Tensor::<4>::random([b, h, w, ci], Distribution::Normal(0.0, 1.0), &device);
        let w0 = Tensor::<4>::random([co, ci, k, k], Distribution::Normal(0.0, 0.5), &device);
        let b0 = Tensor::<1>::random([co], Distribution::Normal(0.0, 0.5), &device);
        let run = |ours: bool| {
            let (x, wt, bias) = (
                x0.clone().require_grad(),
                w0.clone().require_grad(),
                b0.clone().require_grad(),
            );
            let y = if ours {
                vitkit::kernels::conv2d_channels_last(x.clone(), wt.clone(), bias.clone(), s, p)
            } else {
                let options = burn::tensor::ops::ConvOptions::new([s; 2], [p; 2], [1, 1], 1);
                burn::tensor::module::conv2d(
                    x.clone().permute([0, 3, 1, 2]),
                    wt.clone(),
                    Some(bias.clone()),
                    options,
                )
                .permute([0, 2, 3, 1])
            };
            (y, x, wt, bias)
        };
        let (y1, x1, w1, b1) = run(true);
        let (y2, x2, w2, b2) = run(false);
        let up = Tensor::<4>::random(y1.dims(), Distribution::Normal(0.0, 1.0), &device);
        let g1 = (y1.clone() * up.clone()).sum().backward();
        let g2 = (y2.clone() * up).sum().backward();
        let case = format!("b{b} {h}x{w} {ci}->{co} k{k} s{s} p{p}");
        assert!(max_diff(y1.detach(), y2.detach()) < 1e-4, "{case}: output");
        assert!(
            max_diff(x1.grad(&g1).unwrap(), x2.grad(&g2).unwrap()) < 1e-4,
            "{case}: input gradient"
        );
        assert!(
            relative_diff(w1.grad(&g1).unwrap(), w2.grad(&g2).unwrap()) < 1e-5,
            "{case}: weight gradient"
        );
        assert!(
            relative_diff(b1.grad(&g1).unwrap(), b2.grad(&g2).unwrap()) < 1e-5,
            "{case}: bias gradient"
        );
    }
}
