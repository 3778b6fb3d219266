//! Helpers shared by the kernel test files (`kernels.rs` on the CPU, `gpu.rs` on CUDA).
#![allow(dead_code)] // each test file uses its own subset

pub mod cli;
pub mod parity;

use burn::tensor::{Device, Distribution, Tensor};

pub fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

/// The largest gap relative to the reference's largest magnitude (at least 1): for sums over
/// thousands of rows, whose rounding grows with their size and differs with summation order.
pub fn relative_diff<const D: usize>(a: Tensor<D>, reference: Tensor<D>) -> f32 {
    let scale = reference.clone().abs().max().into_scalar::<f32>().max(1.0);
    max_diff(a, reference) / scale
}

/// `ours` against `reference` on the same input on `device` (an autodiff device; the input a
/// non-contiguous `[a, b, c]` view, as attention hands over, values spread by `scale`) with a
/// random upstream gradient: the largest output and input-gradient gaps.
pub fn unary_gaps(
    device: &Device,
    shape: [usize; 3],
    scale: f64,
    ours: impl Fn(Tensor<3>) -> Tensor<3>,
    reference: impl Fn(Tensor<3>) -> Tensor<3>,
) -> (f32, f32) {
    let [a, b, c] = shape;
    let base = Tensor::<3>::random([a, c, b], Distribution::Normal(0.0, scale), device).swap_dims(1, 2);
    let upstream = Tensor::<3>::random(shape, Distribution::Normal(0.0, 1.0), device);
    let run = |f: &dyn Fn(Tensor<3>) -> Tensor<3>| {
        let x = base.clone().detach().require_grad();
        let y = f(x.clone());
        let grads = (y.clone() * upstream.clone()).sum().backward();
        (y.detach(), x.grad(&grads).expect("input gradient"))
    };
    let (y1, g1) = run(&ours);
    let (y2, g2) = run(&reference);
    (max_diff(y1, y2), max_diff(g1, g2))
}

/// An operation on `x: [a, b, d]` and two `[d]` parameters.
pub type WithParams<'a> = &'a dyn Fn(Tensor<3>, Tensor<1>, Tensor<1>) -> Tensor<3>;

/// `ours` against `reference` on the same random inputs on `device` (an autodiff device), with
/// a random upstream gradient: the gaps of the outputs and of the gradients of `x` (both
/// absolute) and of the two parameters (relative, [`relative_diff`]; 0 for a parameter
/// neither uses).
pub fn gradient_gaps(
    device: &Device,
    x_shape: [usize; 3],
    ours: WithParams,
    reference: WithParams,
) -> [f32; 4] {
    let d = x_shape[2];
    let x0 = Tensor::<3>::random(x_shape, Distribution::Normal(0.5, 2.0), device);
    let p0 = Tensor::<1>::random([d], Distribution::Normal(1.0, 0.5), device);
    let q0 = Tensor::<1>::random([d], Distribution::Normal(0.0, 0.5), device);
    let upstream = Tensor::<3>::random(x_shape, Distribution::Normal(0.0, 1.0), device);
    let run = |f: WithParams| {
        let (x, p, q) = (
            x0.clone().require_grad(),
            p0.clone().require_grad(),
            q0.clone().require_grad(),
        );
        let y = f(x.clone(), p.clone(), q.clone());
        let grads = (y.clone() * upstream.clone()).sum().backward();
        (
            y.detach(),
            x.grad(&grads).unwrap(),
            p.grad(&grads).unwrap(),
            q.grad(&grads),
        )
    };
    let (y1, x1, p1, q1) = run(ours);
    let (y2, x2, p2, q2) = run(reference);
    [
        max_diff(y1, y2),
        max_diff(x1, x2),
        relative_diff(p1, p2),
        match (q1, q2) {
            (Some(a), Some(b)) => relative_diff(a, b),
            (None, None) => 0.0,
            _ => f32::INFINITY, // one side found the parameter used and the other did not
        },
    ]
}

/// The bias add and LayerNorm of the GPU path (`vitkit::kernels::add_bias`,
/// `layer_norm_composed`) against Burn's, on `device`: each case's name and gaps.
pub fn bias_and_layer_norm_gaps(device: &Device, shape: [usize; 3]) -> Vec<(&'static str, [f32; 4])> {
    vec![
        (
            "bias",
            gradient_gaps(
                device,
                shape,
                &|x, b, _| vitkit::kernels::add_bias(x, b),
                &|x, b, _| x + b.unsqueeze::<3>(),
            ),
        ),
        (
            "layer norm",
            gradient_gaps(
                device,
                shape,
                &|x, g, b| vitkit::kernels::layer_norm_composed(x, g, b, 1e-6),
                &|x, g, b| burn::tensor::module::layer_norm(x, g, Some(b), 1e-6),
            ),
        ),
    ]
}
