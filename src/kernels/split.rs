//! How a threaded product is cut into one part per thread.

use gemm::Parallelism;
use rayon::prelude::*;

use super::views::{View, ViewMut};

/// A single-threaded product, `dst (+)= s · a · b` (`matmul::product`, handed in: the parts of
/// a cut product are products themselves).
pub type Product = unsafe fn(ViewMut, View, View, f32, bool, Parallelism);

/// Rows of the gemm crate's micro-kernel tile (16 f32 lanes x 4 registers with AVX-512).
const KERNEL_ROWS: usize = 64;

/// Fewest rows (or columns) of each part of a product the packed kernels or the system BLAS
/// run: shorter outputs stay on one thread.
const PART_MIN: usize = 96;

/// Elements of the packed operand (1 MiB of f32) below which gemm's own threading is kept:
/// it stays in cache, its duplicated packing is cheap, and gemm balances small shapes better.
const SPLIT_MIN_PACKED: usize = 1 << 18;

/// The threads `par` asks for (1 for none).
fn threads(par: Parallelism) -> usize {
    match par {
        Parallelism::None => 1,
        Parallelism::Rayon(0) => rayon::current_num_threads(),
        Parallelism::Rayon(n) => n,
    }
}

/// One part per thread of a threaded product, cut along the output dimension that gemm walks
/// with its micro-kernel's rows (the one `dst` is contiguous in), or `None` to let gemm thread
/// it. Why: gemm's own threads split the other dimension, so every thread packs the whole of
/// the operand it walks by rows (a weight matrix, for a linear layer); cut this way, each
/// packs its share. For one 224px image through ViT-B/16 that took 31% off the inference step.
pub fn output_parts(dst: ViewMut, a: View, b: View, par: Parallelism) -> Option<Vec<(ViewMut, View, View)>> {
    let threads = threads(par);
    if !super::enabled(super::Fused::SplitProducts) || threads < 2 {
        return None;
    }
    let by_cols = dst.cols > dst.rows;
    let (by_cols, len, align) = if let Some(align) = super::blas::part_align(&dst, by_cols) {
        // The packed kernel or the system BLAS runs one part per thread: cut the longer side
        // of the output.
        let len = dst.cols.max(dst.rows);
        if len < threads * PART_MIN {
            return None;
        }
        (by_cols, len, align)
    } else {
        let (_, rs, cs) = dst.raw();
        let by_cols = cs.unsigned_abs() < rs.unsigned_abs();
        let len = if by_cols { dst.cols } else { dst.rows };
        if len < threads * 2 * KERNEL_ROWS || len * a.cols < SPLIT_MIN_PACKED {
            return None;
        }
        (by_cols, len, KERNEL_ROWS)
    };
    let step = len.div_ceil(threads).div_ceil(align) * align;
    Some(
        (0..len)
            .step_by(step)
            .map(|start| (start, step.min(len - start)))
            .map(|(start, n)| {
                if by_cols {
                    (
                        dst.window(0, start, dst.rows, n),
                        a,
                        b.window(0, start, b.rows, n),
                    )
                } else {
                    (
                        dst.window(start, 0, n, dst.cols),
                        a.window(start, 0, n, a.cols),
                        b,
                    )
                }
            })
            .collect(),
    )
}

/// How many times longer than the output's longer side the sum must be before a threaded
/// product is cut along the sum instead (see [`sum_parts`]).
const SUM_SPLIT_RATIO: usize = 4;

/// Per thread, the output's longer side from which a threaded product cuts the output rather
/// than the sum: 192 on two threads, where session 19 measured the sum cut slower for ViT.
const SUM_SPLIT_MAX_SIDE: usize = 96;

/// Steps of the sum each part gets at least when the sum is cut.
const SUM_PART_MIN: usize = 256;

/// `dst (+)= s · a · b` cut along the sum, one part per thread, when the output is too small
/// to give every thread two aligned parts of it (under 192 columns and rows on two threads)
/// while the sum is long: the weight gradients of CMT's narrow layers (16–128 channels, a sum
/// over 100,000 positions), which [`output_parts`] would leave on one thread, and which gemm's
/// own threading cuts poorly. Returns whether it ran. Measured on two Zen 3 cores with the
/// packed kernel: a 64 × 16 gradient over 100,352 rows ran at 61 GFLOP/s cut this way and 38–44
/// on one thread; for ViT's 192–768-wide gradients cutting the output was as fast or faster.
/// With gemm's AVX-512 kernels on two Zen 5 cores: 1.3–2.4x gemm's own threading on CMT-sized
/// gradients (16–128 wide, sums of 25,088–100,352), though level within noise in whole steps.
/// The partial sums are added in the parts' order, so the result does not depend on scheduling
/// (it does on the thread count, as any cut of a sum).
///
/// # Safety
/// As `matmul::product`; `product` must be a product with those guarantees.
pub unsafe fn sum_parts(
    dst: ViewMut,
    a: View,
    b: View,
    s: f32,
    accumulate: bool,
    par: Parallelism,
    product: Product,
) -> bool {
    let threads = threads(par);
    let (m, n, k) = (dst.rows, dst.cols, a.cols);
    if threads < 2
        || !super::enabled(super::Fused::SplitSum)
        || m.max(n) >= threads * SUM_SPLIT_MAX_SIDE
        || k < SUM_SPLIT_RATIO * m.max(n)
        || k < threads * SUM_PART_MIN
    {
        return false;
    }
    let step = k.div_ceil(threads);
    let parts = k.div_ceil(step);
    // Part 0 goes to `dst` itself; the others to row-major scratch outputs.
    let mut partial: Vec<f32> = Vec::with_capacity((parts - 1) * m * n);
    let scratch = &mut partial.spare_capacity_mut()[..(parts - 1) * m * n];
    let mut outputs = vec![dst];
    outputs.extend(
        scratch
            .chunks_exact_mut(m * n)
            .map(|chunk| ViewMut::strided(chunk, 0, m, n, n as isize, 1)),
    );
    outputs.into_par_iter().enumerate().for_each(|(i, out)| {
        let (start, len) = (i * step, step.min(k - i * step));
        // SAFETY: each part writes its own output (part 0: `dst`, as the caller allows); the
        // scratch ones are fresh, so they are written, not accumulated onto.
        unsafe {
            product(
                out,
                a.window(0, start, m, len),
                b.window(start, 0, len, n),
                s,
                accumulate && i == 0,
                Parallelism::None,
            )
        };
    });
    // SAFETY: every scratch output was written in full above.
    unsafe { partial.set_len((parts - 1) * m * n) };
    let (ptr, rs, cs) = dst.raw();
    let rows_per_task = (16 * 1024 / n.max(1)).max(1);
    let tasks = m.div_ceil(rows_per_task);
    let ptr = ptr as usize;
    (0..tasks).into_par_iter().for_each(|t| {
        for r in t * rows_per_task..(m.min((t + 1) * rows_per_task)) {
            for c in 0..n {
                let sum = partial
                    .chunks_exact(m * n)
                    .map(|p| p[r * n + c])
                    .fold(0.0, |acc, v| acc + v);
                // SAFETY: (r, c) inside `dst`, written by part 0; each task owns its rows.
                unsafe { *(ptr as *mut f32).offset(r as isize * rs + c as isize * cs) += sum };
            }
        }
    });
    true
}
