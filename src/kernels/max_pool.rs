//! NesT's 3×3, stride-2 max-pool of a channels-last map `[B, H, W, C]`, forward and backward.
//!
//! Why: composed from Burn's operations it is two separable passes of pairwise maxima, each
//! with its strided narrows, a concatenation of −∞ padding and a copy, and under autodiff each
//! maximum's backward is a masked select over the whole map: about 5% of a NesT Fashion-MNIST
//! training step. Here one pass reads each window, vectorised over channels, and keeps which of
//! the nine positions won (one byte per output); the backward adds each output's gradient to
//! that position.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::cpu::dispatch_wide;
use super::{contiguous, f32_tensor, shape_of, slice};

#[backend_extension(Flex, Autodiff)]
pub trait MaxPoolOps: Backend {
    /// 3×3, stride-2 max-pool of an even-sized `[B, H, W, C]` map, −∞ outside it; the window of
    /// output `i` starts at input `2i` (`same`: TensorFlow's SAME padding, at the end) or
    /// `2i − 1` (one row and column of padding on each side).
    fn pool_max_3x3_s2(x: FloatTensor<Self>, same: bool) -> FloatTensor<Self>;
}

/// The max-pool where the fused kernel runs (f32 on the CPU, not switched off); `None`
/// elsewhere.
pub fn max_pool_3x3_s2(x: Tensor<4>, same: bool) -> Option<Tensor<4>> {
    let [_, h, w, _] = x.dims();
    if !super::applies(&x, super::Fused::MaxPool) || !h.is_multiple_of(2) || !w.is_multiple_of(2) {
        return None;
    }
    Some(Tensor::from_dispatch(<Dispatch as MaxPoolOps>::pool_max_3x3_s2(
        x.into_dispatch(),
        same,
    )))
}

/// Sizes of one pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub same: bool,
}

impl Pool {
    fn of(x: &FlexTensor, same: bool) -> Self {
        let s = shape_of(x);
        assert!(
            s.num_dims() == 4 && s[1].is_multiple_of(2) && s[2].is_multiple_of(2),
            "max-pool input must be [B, H, W, C] with even H and W"
        );
        Self {
            batch: s[0],
            height: s[1],
            width: s[2],
            channels: s[3],
            same,
        }
    }

    fn out_height(&self) -> usize {
        self.height / 2
    }

    fn out_width(&self) -> usize {
        self.width / 2
    }

    /// The input coordinate of window offset `d` (0..3) for output coordinate `o`, if inside.
    fn input_at(&self, o: usize, d: usize, size: usize) -> Option<usize> {
        super::depthwise::window_input(o, d, 2, usize::from(!self.same), size)
    }
}

/// Whether `v` replaces the window's best so far: larger, or the first NaN (PyTorch's rule).
#[inline(always)]
fn wins(v: f32, best: f32) -> bool {
    v > best || (v.is_nan() && !best.is_nan())
}

// Output rows from `first` on (as many as `out` holds), and with `arg` their winning
// positions. Compiled for AVX2 / AVX-512 too: the compare-and-select over channels vectorises
// there (built for the baseline x86-64 alone, it was 2.7% of a NesT training step).
dispatch_wide!(pool_rows(x: &[f32], p: Pool, first: usize, out: &mut [f32], arg: Option<&mut [u8]>) {
    let (ho, wo, c) = (p.out_height(), p.out_width(), p.channels);
    let row = wo * c;
    let mut arg = arg;
    for (r, out_row) in out.chunks_exact_mut(row).enumerate() {
        let (b, oy) = ((first + r) / ho, (first + r) % ho);
        out_row.fill(f32::NEG_INFINITY);
        for dy in 0..3 {
            let Some(iy) = p.input_at(oy, dy, p.height) else {
                continue;
            };
            let x_row = &x[(b * p.height + iy) * p.width * c..][..p.width * c];
            for ox in 0..wo {
                let best = &mut out_row[ox * c..(ox + 1) * c];
                let mut won = arg.as_deref_mut().map(|a| &mut a[r * row + ox * c..][..c]);
                for dx in 0..3 {
                    let Some(ix) = p.input_at(ox, dx, p.width) else {
                        continue;
                    };
                    let v = &x_row[ix * c..(ix + 1) * c];
                    let tap = (3 * dy + dx) as u8;
                    match won.as_deref_mut() {
                        Some(won) => {
                            for ((b, &v), w) in best.iter_mut().zip(v).zip(won.iter_mut()) {
                                let take = wins(v, *b);
                                *b = if take { v } else { *b };
                                *w = if take { tap } else { *w };
                            }
                        }
                        None => {
                            for (b, &v) in best.iter_mut().zip(v) {
                                let take = wins(v, *b);
                                *b = if take { v } else { *b };
                            }
                        }
                    }
                }
            }
        }
    }
});

/// The pooled map `[B, H/2, W/2, C]` and, with `keep_arg`, for every output value the window
/// position (`3 * dy + dx`) it came from: the first maximum in row-major order, or the first
/// NaN (as PyTorch's max-pool).
pub fn forward(x: &[f32], p: Pool, keep_arg: bool) -> (Vec<f32>, Option<Vec<u8>>) {
    let (ho, wo, c) = (p.out_height(), p.out_width(), p.channels);
    assert_eq!(
        x.len(),
        p.batch * p.height * p.width * c,
        "input does not match the shape"
    );
    let row = wo * c;
    let mut out = vec![0.0f32; p.batch * ho * row];
    let mut arg = vec![0u8; if keep_arg { out.len() } else { 0 }];
    if row == 0 {
        return (out, keep_arg.then_some(arg));
    }
    let rows_per_task = (16_384 / row).max(1);
    let task_len = rows_per_task * row;
    if keep_arg {
        out.par_chunks_mut(task_len)
            .zip(arg.par_chunks_mut(task_len))
            .enumerate()
            .for_each(|(i, (o, a))| pool_rows(x, p, i * rows_per_task, o, Some(a)));
    } else {
        out.par_chunks_mut(task_len)
            .enumerate()
            .for_each(|(i, o)| pool_rows(x, p, i * rows_per_task, o, None));
    }
    (out, keep_arg.then_some(arg))
}

/// The input gradient: each output's gradient added to the input value it came from.
pub fn backward(grad: &[f32], arg: &[u8], p: Pool) -> Vec<f32> {
    let (ho, wo, c) = (p.out_height(), p.out_width(), p.channels);
    assert_eq!(
        grad.len(),
        p.batch * ho * wo * c,
        "gradient does not match the shape"
    );
    assert_eq!(
        arg.len(),
        grad.len(),
        "window positions do not match the gradient"
    );
    let image = p.height * p.width * c;
    let mut dx = vec![0.0f32; p.batch * image];
    if image == 0 {
        return dx;
    }
    // One task per image: windows overlap inside an image, never across images.
    dx.par_chunks_mut(image).enumerate().for_each(|(b, dx)| {
        for oy in 0..ho {
            for ox in 0..wo {
                let at = ((b * ho + oy) * wo + ox) * c;
                let (g, a) = (&grad[at..at + c], &arg[at..at + c]);
                for ch in 0..c {
                    let tap = a[ch] as usize;
                    let iy = p.input_at(oy, tap / 3, p.height);
                    let ix = p.input_at(ox, tap % 3, p.width);
                    if let (Some(iy), Some(ix)) = (iy, ix) {
                        dx[(iy * p.width + ix) * c + ch] += g[ch];
                    }
                }
            }
        }
    });
    dx
}

fn flex_forward(x: &FlexTensor, p: Pool, keep_arg: bool) -> (FlexTensor, Option<Vec<u8>>) {
    let (out, arg) = forward(slice(x), p, keep_arg);
    let shape = [p.batch, p.out_height(), p.out_width(), p.channels];
    (f32_tensor(out, shape.into()), arg)
}

impl MaxPoolOps for Flex {
    fn pool_max_3x3_s2(x: FlexTensor, same: bool) -> FlexTensor {
        let x = contiguous(x);
        flex_forward(&x, Pool::of(&x, same), false).0
    }
}

#[derive(Debug)]
struct MaxPoolBackward;

impl Backward<Flex, 1> for MaxPoolBackward {
    /// Which window position each output came from, and the sizes.
    type State = (Vec<u8>, Pool);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let (arg, p) = ops.state;
            let dx = backward(slice(&grad), &arg, p);
            let shape = [p.batch, p.height, p.width, p.channels];
            grads.register::<Flex>(node.id, f32_tensor(dx, shape.into()));
        }
    }
}

impl<C: CheckpointStrategy> MaxPoolOps for Autodiff<Flex, C> {
    fn pool_max_3x3_s2(x: FloatTensor<Self>, same: bool) -> FloatTensor<Self> {
        let input = contiguous(x.primitive().clone());
        let p = Pool::of(&input, same);
        match MaxPoolBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, arg) = flex_forward(&input, p, true);
                prep.finish((arg.expect("window positions kept"), p), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(flex_forward(&input, p, false).0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each output by a direct loop over its window; the backward of `<out, w>` by the same
    /// rule, position by position.
    #[test]
    fn forward_and_backward_match_a_direct_loop() {
        for same in [true, false] {
            let p = Pool {
                batch: 2,
                height: 6,
                width: 4,
                channels: 3,
                same,
            };
            let x: Vec<f32> = (0..2 * 6 * 4 * 3).map(|i| ((i as f32) * 0.917).sin()).collect();
            let (out, arg) = forward(&x, p, true);
            let arg = arg.expect("kept");
            let at = |b: usize, y: usize, xx: usize, ch: usize| ((b * 6 + y) * 4 + xx) * 3 + ch;
            let w: Vec<f32> = (0..out.len()).map(|i| ((i as f32) * 0.37).cos()).collect();
            let mut want_dx = vec![0.0f32; x.len()];
            for b in 0..2 {
                for oy in 0..3 {
                    for ox in 0..2 {
                        for ch in 0..3 {
                            let mut best = (f32::NEG_INFINITY, usize::MAX);
                            for dy in 0..3 {
                                for dx in 0..3 {
                                    let off = if same { 0 } else { 1 };
                                    let (iy, ix) =
                                        ((2 * oy + dy) as isize - off, (2 * ox + dx) as isize - off);
                                    if iy < 0 || ix < 0 || iy >= 6 || ix >= 4 {
                                        continue;
                                    }
                                    let v = x[at(b, iy as usize, ix as usize, ch)];
                                    if v > best.0 {
                                        best = (v, at(b, iy as usize, ix as usize, ch));
                                    }
                                }
                            }
                            let o = ((b * 3 + oy) * 2 + ox) * 3 + ch;
                            assert_eq!(out[o], best.0, "same={same} output {o}");
                            want_dx[best.1] += w[o];
                        }
                    }
                }
            }
            assert_eq!(forward(&x, p, false).0, out);
            assert_eq!(backward(&w, &arg, p), want_dx, "same={same}");
        }
    }

    #[test]
    fn nan_wins_its_window_as_in_pytorch() {
        let p = Pool {
            batch: 1,
            height: 2,
            width: 2,
            channels: 1,
            same: true,
        };
        let (out, _) = forward(&[1.0, f32::NAN, 3.0, 2.0], p, false);
        assert!(out[0].is_nan());
    }
}
