//! One AdamW step for one parameter in one threaded pass, updating the parameter and both
//! moments in place where nothing else holds them; and the sum of squares and the scaling that
//! gradient clipping needs, threaded too.
//!
//! Why: Burn's AdamW composes the update from a dozen tensor operations, each a pass over memory
//! with a fresh output, on one thread for flex's elementwise operations; clipping adds two more
//! passes per gradient. In a NesT training step (Fashion-MNIST preset, 2.5 M parameters, AVX2
//! build on two Zen 5 cores) the two took ~17 ms of ~680, with the second core idle throughout.

use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Bytes, DType, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::{contiguous, f32_tensor, shape_of, slice};

/// Values per rayon task: small parameters (biases, norms) run as one task.
const CHUNK: usize = 1 << 15;

/// The scalars of one AdamW step, as Burn's `AdamW` computes them.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// `1 - lr · weight_decay`: the decoupled decay's factor on the parameter.
    pub decay: f32,
    pub lr: f32,
    /// `1 - beta1^t` and `1 - beta2^t` for this step `t` (from 1): the bias corrections.
    pub correction1: f32,
    pub correction2: f32,
}

#[backend_extension(Flex)]
pub trait AdamWOps: Backend {
    /// The updated parameter and first and second moments.
    fn adamw_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment1: FloatTensor<Self>,
        moment2: FloatTensor<Self>,
        step: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    /// `Σ x²` (accumulated in f64) as a one-element tensor.
    fn sum_of_squares(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `x · factor`, in place where nothing else holds `x`.
    fn scaled(x: FloatTensor<Self>, factor: f32) -> FloatTensor<Self>;
}

/// Whether [`adamw_update`] runs for these tensors: enabled, f32, all on flex.
pub fn adamw_applies<const D: usize>(tensors: &[&Tensor<D>]) -> bool {
    tensors.iter().all(|t| super::applies(*t, super::Fused::AdamW))
}

/// The updated parameter and moments after one AdamW step (see [`AdamWStep`]). Only where
/// [`adamw_applies`].
pub fn adamw_update<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    moment1: Tensor<D>,
    moment2: Tensor<D>,
    step: AdamWStep,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    assert!(
        adamw_applies(&[&param, &grad, &moment1, &moment2]),
        "no fused AdamW for these tensors"
    );
    let (p, m, v) = <Dispatch as AdamWOps>::adamw_update(
        param.into_dispatch(),
        grad.into_dispatch(),
        moment1.into_dispatch(),
        moment2.into_dispatch(),
        step,
    );
    (
        Tensor::from_dispatch(p),
        Tensor::from_dispatch(m),
        Tensor::from_dispatch(v),
    )
}

/// `Σ x²`, threaded and summed in f64, where the fused kernels apply to `x`.
pub fn sum_of_squares<const D: usize>(x: &Tensor<D>) -> Option<f64> {
    if !super::applies(x, super::Fused::AdamW) {
        return None;
    }
    let sum = Tensor::<1>::from_dispatch(<Dispatch as AdamWOps>::sum_of_squares(x.clone().into_dispatch()));
    Some(sum.into_scalar::<f32>() as f64)
}

/// `x · factor`: threaded (and in place where nothing else holds `x`) where the fused kernels
/// apply to `x`, Burn's operation otherwise.
pub fn scaled<const D: usize>(x: Tensor<D>, factor: f64) -> Tensor<D> {
    if super::applies(&x, super::Fused::AdamW) {
        Tensor::from_dispatch(<Dispatch as AdamWOps>::scaled(x.into_dispatch(), factor as f32))
    } else {
        x.mul_scalar(factor)
    }
}

/// Whether `t`'s values fill its storage exactly, each once, in some order of its dimensions:
/// a contiguous tensor, or a permutation of one (a channels-last convolution's weight gradient,
/// `[out, in, kh, kw]` over `[kh, kw, in, out]` storage). Elementwise work on such a tensor can
/// run over the storage as it lies.
fn dense(t: &FlexTensor) -> bool {
    let l = t.layout();
    if l.start_offset() != 0 || t.storage::<f32>().len() != l.num_elements() {
        return false;
    }
    let mut dims: Vec<(isize, usize)> = (0..l.num_dims())
        .map(|i| (l.strides()[i], l.shape()[i]))
        .filter(|&(_, n)| n > 1)
        .collect();
    dims.sort_unstable();
    let mut expected = 1isize;
    for (stride, n) in dims {
        if stride != expected {
            return false;
        }
        expected *= n as isize;
    }
    true
}

/// `t`'s values in a storage of their own laid out as `layout` (dense, `t`'s shape): `t` itself
/// when it already is that (then writing its storage in place is safe), a copy otherwise.
fn own_in(t: FlexTensor, layout: &Layout) -> FlexTensor {
    if t.layout() == layout && t.is_unique() && dense(&t) {
        return t;
    }
    let src = contiguous(t);
    let values = slice(&src);
    if layout.is_contiguous() {
        return f32_tensor(values.to_vec(), layout.shape().clone());
    }
    // Row-major order of the logical indices, each value sent to its offset in `layout`.
    let (shape, strides) = (layout.shape(), layout.strides());
    let mut out = vec![0.0f32; values.len()];
    let mut index = vec![0usize; layout.num_dims()];
    for &v in values {
        let offset: isize = index.iter().zip(strides).map(|(&i, &s)| i as isize * s).sum();
        out[offset as usize] = v;
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    FlexTensor::new(Bytes::from_elems(out), layout.clone(), DType::F32)
}

/// The layout elementwise results take: `t`'s own when [`dense`], row-major otherwise.
fn layout_for(t: &FlexTensor) -> Layout {
    if dense(t) {
        t.layout().clone()
    } else {
        Layout::contiguous(shape_of(t))
    }
}

/// The values of a [`dense`] tensor, in storage order.
fn stored(t: &FlexTensor) -> &[f32] {
    t.storage::<f32>()
}

fn stored_mut(t: &mut FlexTensor) -> &mut [f32] {
    t.try_storage_mut::<f32>().expect("a tensor of its own")
}

/// One parameter's AdamW update, in the order of Burn's operations (so the same roundings).
fn update(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], s: &AdamWStep) {
    let (f1, f2) = (1.0 - s.beta1, 1.0 - s.beta2);
    for i in 0..p.len() {
        let g = g[i];
        m[i] = m[i] * s.beta1 + g * f1;
        v[i] = v[i] * s.beta2 + (g * g) * f2;
        let delta = (m[i] / s.correction1) / ((v[i] / s.correction2).sqrt() + s.eps);
        p[i] = p[i] * s.decay - delta * s.lr;
    }
}

impl AdamWOps for Flex {
    fn adamw_update(
        param: FlexTensor,
        grad: FlexTensor,
        moment1: FlexTensor,
        moment2: FlexTensor,
        step: AdamWStep,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        for t in [&param, &moment1, &moment2] {
            assert_eq!(
                shape_of(t),
                shape_of(&grad),
                "AdamW: the parameter, gradient and moments differ in shape"
            );
        }
        // All four laid out as the gradient is (after the first step, the parameter and
        // moments already are): then the update runs over the storage as it lies.
        let layout = layout_for(&grad);
        let grad = own_in(grad, &layout);
        let (mut p, mut m, mut v) = (
            own_in(param, &layout),
            own_in(moment1, &layout),
            own_in(moment2, &layout),
        );
        stored_mut(&mut p)
            .par_chunks_mut(CHUNK)
            .zip(stored_mut(&mut m).par_chunks_mut(CHUNK))
            .zip(stored_mut(&mut v).par_chunks_mut(CHUNK))
            .zip(stored(&grad).par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| update(p, m, v, g, &step));
        (p, m, v)
    }

    fn sum_of_squares(x: FlexTensor) -> FlexTensor {
        // Any order of the values will do, so a dense one is read as it lies.
        let x = if dense(&x) {
            x
        } else {
            let layout = Layout::contiguous(shape_of(&x));
            own_in(x, &layout)
        };
        // The chunks' sums collected in order and added in order: the same total every run.
        let sum: f64 = stored(&x)
            .par_chunks(CHUNK)
            .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
            .collect::<Vec<_>>()
            .into_iter()
            .sum();
        f32_tensor(vec![sum as f32], [1].into())
    }

    fn scaled(x: FlexTensor, factor: f32) -> FlexTensor {
        let layout = layout_for(&x);
        let mut x = own_in(x, &layout);
        stored_mut(&mut x)
            .par_chunks_mut(CHUNK)
            .for_each(|c| c.iter_mut().for_each(|v| *v *= factor));
        x
    }
}
