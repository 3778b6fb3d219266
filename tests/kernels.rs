//! The fused CPU operations give Burn's composed results, forward and backward.

use burn::tensor::{Device, Distribution, Tensor};

mod support;
use support::{bias_and_layer_norm_gaps, max_diff, relative_diff, unary_gaps};

/// [`unary_gaps`] on the CPU, where the fused kernels apply.
fn compare(
    shape: [usize; 3],
    scale: f64,
    fused: impl Fn(Tensor<3>) -> Tensor<3>,
    reference: impl Fn(Tensor<3>) -> Tensor<3>,
) -> (f32, f32) {
    let device = Device::flex().autodiff();
    let probe = Tensor::<1>::zeros([1], &device);
    assert!(vitkit::kernels::applies(&probe, vitkit::kernels::Fused::Gelu));
    unary_gaps(&device, shape, scale, fused, reference)
}

#[test]
fn fused_gelu_matches_burn() {
    let (out, grad) = compare(
        [4, 33, 70],
        3.0,
        vitkit::kernels::gelu,
        burn::tensor::activation::gelu,
    );
    assert!(out < 2e-6, "forward {out}");
    assert!(grad < 2e-6, "backward {grad}");
}

#[test]
fn fused_softmax_matches_burn() {
    let (out, grad) = compare([3, 17, 65], 4.0, vitkit::kernels::softmax_last, |x| {
        burn::tensor::activation::softmax(x, 2)
    });
    assert!(out < 1e-6, "forward {out}");
    // The gradient sums 65 products of unit-scale numbers in a different order from Burn's;
    // rounding alone reaches about 1.5e-6 on some random draws.
    assert!(grad < 5e-6, "backward {grad}");
}

#[test]
fn fused_layer_norm_matches_burn_including_parameter_gradients() {
    let device = Device::flex().autodiff();
    let x = Tensor::<3>::random([5, 9, 48], Distribution::Normal(1.0, 2.0), &device);
    let gamma = Tensor::<1>::random([48], Distribution::Normal(1.0, 0.5), &device);
    let beta = Tensor::<1>::random([48], Distribution::Normal(0.0, 0.5), &device);
    let upstream = Tensor::<3>::random([5, 9, 48], Distribution::Normal(0.0, 1.0), &device);
    let run = |fused: bool| {
        let (x, g, b) = (
            x.clone().require_grad(),
            gamma.clone().require_grad(),
            beta.clone().require_grad(),
        );
        let y = if fused {
            vitkit::kernels::layer_norm(x.clone(), g.clone(), b.clone(), 1e-6)
        } else {
            burn::tensor::module::layer_norm(x.clone(), g.clone(), Some(b.clone()), 1e-6)
        };
        let grads = (y.clone() * upstream.clone()).sum().backward();
        (
            y.detach(),
            x.grad(&grads).unwrap(),
            g.grad(&grads).unwrap(),
            b.grad(&grads).unwrap(),
        )
    };
    let (y1, dx1, dg1, db1) = run(true);
    let (y2, dx2, dg2, db2) = run(false);
    assert!(max_diff(y1, y2) < 2e-6);
    assert!(max_diff(dx1, dx2) < 2e-5);
    assert!(max_diff(dg1, dg2) < 2e-5);
    assert!(max_diff(db1, db2) < 2e-5);
}

#[test]
fn fused_operations_work_without_autodiff() {
    let device = Device::flex();
    let x = Tensor::<2>::random([7, 30], Distribution::Normal(0.0, 2.0), &device);
    let gelu = max_diff(
        vitkit::kernels::gelu(x.clone()),
        burn::tensor::activation::gelu(x.clone()),
    );
    let softmax = max_diff(
        vitkit::kernels::softmax_last(x.clone()),
        burn::tensor::activation::softmax(x.clone(), 1),
    );
    assert!(gelu < 2e-6 && softmax < 1e-6, "{gelu} {softmax}");
}

/// Input, weight and bias gradients of the fused linear, and of the rows-folded product used
/// off the CPU, against Burn's `Linear`, for both weight layouts, with and without bias, on a
/// 3-d input.
#[test]
fn fused_linear_matches_burn_including_parameter_gradients() {
    use burn::nn::{LinearConfig, LinearLayout};
    let device = Device::flex().autodiff();
    for (layout, bias) in [
        (LinearLayout::Col, true),
        (LinearLayout::Row, true),
        (LinearLayout::Col, false),
    ] {
        let layer = LinearConfig::new(40, 70)
            .with_layout(layout)
            .with_bias(bias)
            .init(&device);
        let x = Tensor::<3>::random([3, 50, 40], Distribution::Normal(0.0, 1.0), &device);
        let upstream = Tensor::<3>::random([3, 50, 70], Distribution::Normal(0.0, 1.0), &device);
        let run = |variant: &str| {
            let x = x.clone().require_grad();
            let y = match variant {
                "fused" => vitkit::kernels::linear(x.clone(), &layer),
                "rows" => vitkit::kernels::linear_rows(
                    x.clone(),
                    layer.weight.val(),
                    layer.bias.as_ref().map(|b| b.val()),
                ),
                _ => layer.forward(x.clone()),
            };
            let grads = (y.clone() * upstream.clone()).sum().backward();
            let db = layer.bias.as_ref().map(|b| b.grad(&grads).unwrap());
            (
                y.detach(),
                x.grad(&grads).unwrap(),
                layer.weight.grad(&grads).unwrap(),
                db,
            )
        };
        let (y2, dx2, dw2, db2) = run("burn");
        for variant in ["fused", "rows"] {
            let (y1, dx1, dw1, db1) = run(variant);
            assert_eq!(y1.dims(), y2.dims());
            assert_eq!(dw1.dims(), dw2.dims());
            assert!(max_diff(y1, y2.clone()) < 1e-5, "{variant} {layout:?} forward");
            assert!(
                max_diff(dx1, dx2.clone()) < 1e-5,
                "{variant} {layout:?} input gradient"
            );
            assert!(
                relative_diff(dw1, dw2.clone()) < 1e-5,
                "{variant} {layout:?} weight gradient"
            );
            if let (Some(a), Some(b)) = (db1, db2.clone()) {
                assert!(relative_diff(a, b) < 1e-5, "{variant} {layout:?} bias gradient");
            }
        }
    }
}

/// Attention composed from Burn's operations, as timm writes it.
fn composed_attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    let [b, n, d3] = qkv.dims();
    let (d, dh) = (d3 / 3, d3 / 3 / heads);
    let qkv = qkv.reshape([b, n, 3, heads, dh]).permute([2, 0, 3, 1, 4]);
    let q = qkv.clone().narrow(0, 0, 1).reshape([b, heads, n, dh]);
    let k = qkv.clone().narrow(0, 1, 1).reshape([b, heads, n, dh]);
    let v = qkv.narrow(0, 2, 1).reshape([b, heads, n, dh]);
    let attn =
        burn::tensor::activation::softmax(q.mul_scalar((dh as f64).powf(-0.5)).matmul(k.swap_dims(2, 3)), 3);
    attn.matmul(v).swap_dims(1, 2).reshape([b, n, d])
}

#[test]
fn fused_attention_matches_burn_forward_and_backward() {
    let device = Device::flex().autodiff();
    let (b, n, heads, dh) = (3, 17, 4, 8);
    let qkv = Tensor::<3>::random([b, n, 3 * heads * dh], Distribution::Normal(0.0, 1.5), &device);
    let upstream = Tensor::<3>::random([b, n, heads * dh], Distribution::Normal(0.0, 1.0), &device);
    assert!(vitkit::kernels::attention_applies(&qkv));
    let run = |fused: bool| {
        let x = qkv.clone().require_grad();
        let y = if fused {
            vitkit::kernels::attention(x.clone(), heads)
        } else {
            composed_attention(x.clone(), heads)
        };
        let grads = (y.clone() * upstream.clone()).sum().backward();
        (y.detach(), x.grad(&grads).unwrap())
    };
    let (y1, g1) = run(true);
    let (y2, g2) = run(false);
    assert!(max_diff(y1, y2) < 1e-5, "forward");
    assert!(max_diff(g1, g2) < 1e-5, "backward");
    // Without autodiff too.
    let plain = Tensor::<3>::from_data(qkv.to_data(), &Device::flex());
    let gap = max_diff(
        vitkit::kernels::attention(plain.clone(), heads),
        composed_attention(plain, heads),
    );
    assert!(gap < 1e-5, "inference forward {gap}");
}

/// The fused epilogues (`gelu(x W + b)` and `r + x W + b`) against Burn's operations, with
/// every input's and parameter's gradient.
#[test]
fn fused_linear_epilogues_match_burn() {
    use burn::nn::{LinearConfig, LinearLayout};
    let device = Device::flex().autodiff();
    let layer = LinearConfig::new(24, 40)
        .with_layout(LinearLayout::Col)
        .init(&device);
    // Few rows (one product, then the epilogue as a pass) and many (product and epilogue in
    // row blocks, one task each).
    for (rows, residual) in [(33, false), (33, true), (2000, false)] {
        let x = Tensor::<3>::random([2, rows, 24], Distribution::Normal(0.0, 1.0), &device);
        let resid = Tensor::<3>::random([2, rows, 40], Distribution::Normal(0.0, 1.0), &device);
        let upstream = Tensor::<3>::random([2, rows, 40], Distribution::Normal(0.0, 1.0), &device);
        assert!(vitkit::kernels::epilogue_applies(&x, &layer));
        let run = |fused: bool| {
            let (x, r) = (x.clone().require_grad(), resid.clone().require_grad());
            let y = match (residual, fused) {
                (false, true) => vitkit::kernels::linear_gelu(x.clone(), &layer),
                (false, false) => burn::tensor::activation::gelu(layer.forward(x.clone())),
                (true, true) => vitkit::kernels::linear_residual(r.clone(), x.clone(), &layer),
                (true, false) => r.clone() + layer.forward(x.clone()),
            };
            let grads = (y.clone() * upstream.clone()).sum().backward();
            let dr = residual.then(|| r.grad(&grads).unwrap());
            let db = layer.bias.as_ref().unwrap().grad(&grads).unwrap();
            (
                y.detach(),
                x.grad(&grads).unwrap(),
                layer.weight.grad(&grads).unwrap(),
                db,
                dr,
            )
        };
        let (y1, dx1, dw1, db1, dr1) = run(true);
        let (y2, dx2, dw2, db2, dr2) = run(false);
        assert!(max_diff(y1, y2) < 1e-5, "residual {residual}: forward");
        assert!(max_diff(dx1, dx2) < 1e-5, "residual {residual}: input gradient");
        let (dw, db) = (relative_diff(dw1, dw2), relative_diff(db1, db2));
        assert!(
            dw < 1e-5,
            "residual {residual}, {rows} rows: weight gradient {dw}"
        );
        assert!(db < 1e-5, "residual {residual}, {rows} rows: bias gradient {db}");
        if let (Some(a), Some(b)) = (dr1, dr2) {
            assert!(max_diff(a, b) < 1e-6, "residual gradient");
        }
    }
    // Inference (no autodiff) takes the in-place GELU path.
    let plain = Device::flex();
    let layer = LinearConfig::new(24, 40).init(&plain);
    for rows in [33, 2000] {
        let x = Tensor::<3>::random([2, rows, 24], Distribution::Normal(0.0, 1.0), &plain);
        let gap = max_diff(
            vitkit::kernels::linear_gelu(x.clone(), &layer),
            burn::tensor::activation::gelu(layer.forward(x)),
        );
        assert!(gap < 1e-5, "inference, {rows} rows: {gap}");
    }
}

/// One 224px image's worth of tokens through a ViT-S-sized layer stored `[out, in]`: the
/// inference path that reads the weight in place and transposes the output (plain linear,
/// linear + GELU, linear onto a residual) against Burn's `Linear`.
#[test]
fn few_row_linears_with_the_weight_in_place_match_burn() {
    use burn::nn::{LinearConfig, LinearLayout};
    let device = Device::flex();
    let layer = LinearConfig::new(384, 1536)
        .with_layout(LinearLayout::Col)
        .init(&device);
    let x = Tensor::<3>::random([1, 197, 384], Distribution::Normal(0.0, 1.0), &device);
    let resid = Tensor::<3>::random([1, 197, 1536], Distribution::Normal(0.0, 1.0), &device);
    let reference = layer.forward(x.clone());
    let plain = relative_diff(vitkit::kernels::linear(x.clone(), &layer), reference.clone());
    assert!(plain < 1e-5, "linear: {plain}");
    let gelu = relative_diff(
        vitkit::kernels::linear_gelu(x.clone(), &layer),
        burn::tensor::activation::gelu(reference.clone()),
    );
    assert!(gelu < 1e-5, "linear + GELU: {gelu}");
    let onto = relative_diff(
        vitkit::kernels::linear_residual(resid.clone(), x, &layer),
        resid + reference,
    );
    assert!(onto < 1e-5, "linear onto a residual: {onto}");
}

#[test]
fn gpu_path_bias_add_and_layer_norm_backward_match_burn() {
    // Rows 2 * 197 (summed in two stages, chunks of 197) and 13 (prime: one stage).
    for shape in [[2, 197, 48], [1, 13, 40]] {
        for (name, gaps) in bias_and_layer_norm_gaps(&Device::flex().autodiff(), shape) {
            assert!(gaps.iter().all(|g| *g < 1e-5), "{shape:?} {name}: {gaps:?}");
        }
    }
}

#[test]
fn gpu_path_scaled_softmax_backward_matches_burn() {
    for factor in [0.125f32, 1.0, 3.0] {
        let (out, grad) = compare(
            [3, 17, 65],
            4.0,
            |x| vitkit::kernels::gpu_softmax_scaled(x, factor),
            |x| burn::tensor::activation::softmax(x.mul_scalar(factor), 2),
        );
        assert!(out < 1e-6 && grad < 1e-5, "x{factor}: {out} {grad}");
    }
}
