//! How a threaded product is cut into parts: windows of its output, or stretches of its sum
//! added in order afterwards. Rayon hands the parts to whichever thread is free.

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

/// Most parts per thread. Why more than one: the two cores of a shared machine do not run at
/// the same speed from one millisecond to the next, and with one part each the faster thread
/// waited for the slower: in a NesT training step on two Zen 5 cores (AVX2 build), 7% of the
/// products' time, ~20 ms a step, counted from which thread ran each part and when.
const MAX_PARTS_PER_THREAD: usize = 4;

/// Multiply-adds of the whole product per value that each further part repeats (its own
/// packing of the operand an output cut does not divide, or one more partial output of a sum
/// cut): a further part is taken only when its repeated work stays near 2% of the product's.
const MACS_PER_REPEATED_VALUE: usize = 512;

/// How many parts `threads` threads cut a product of `macs` multiply-adds into: one per thread,
/// or more (a multiple of `threads`, at most [`MAX_PARTS_PER_THREAD`] each) while each further
/// part repeats at most `macs / MACS_PER_REPEATED_VALUE` values of `repeated` and every part
/// keeps `min_len` of the `len` being cut.
fn part_count(threads: usize, macs: usize, repeated: usize, len: usize, min_len: usize) -> usize {
    if !super::enabled(super::Fused::Balance) {
        return threads;
    }
    let affordable = 1 + macs / MACS_PER_REPEATED_VALUE.saturating_mul(repeated.max(1));
    let most = affordable
        .min(len / min_len.max(1))
        .min(threads * MAX_PARTS_PER_THREAD);
    (most / threads).max(1) * threads
}

/// The threads `par` asks for (1 for none).
fn threads(par: Parallelism) -> usize {
    match par {
        Parallelism::None => 1,
        Parallelism::Rayon(0) => rayon::current_num_threads(),
        Parallelism::Rayon(n) => n,
    }
}

/// The parts of a threaded product ([`part_count`] of them), cut along the output dimension
/// that gemm walks with its micro-kernel's rows (the one `dst` is contiguous in), or `None` to
/// let gemm thread it. Why: gemm's own threads split the other dimension, so every thread
/// packs the whole of the operand it walks by rows (a weight matrix, for a linear layer); cut
/// this way, each packs its share. For one 224px image through ViT-B/16 that took 31% off the inference step.
pub fn output_parts(dst: ViewMut, a: View, b: View, par: Parallelism) -> Option<Vec<(ViewMut, View, View)>> {
    let threads = threads(par);
    if !super::enabled(super::Fused::SplitProducts) || threads < 2 {
        return None;
    }
    let by_cols = dst.cols > dst.rows;
    let (by_cols, len, align, min_len) = if let Some(align) = super::blas::part_align(&dst, by_cols) {
        // The packed kernel or the system BLAS runs each part on one thread: cut the longer
        // side of the output.
        let len = dst.cols.max(dst.rows);
        if len < threads * PART_MIN {
            return None;
        }
        (by_cols, len, align, PART_MIN)
    } else {
        let (_, rs, cs) = dst.raw();
        let by_cols = cs.unsigned_abs() < rs.unsigned_abs();
        let len = if by_cols { dst.cols } else { dst.rows };
        if len < threads * 2 * KERNEL_ROWS || len * a.cols < SPLIT_MIN_PACKED {
            return None;
        }
        (by_cols, len, KERNEL_ROWS, 2 * KERNEL_ROWS)
    };
    // Each part packs all of the operand whose other side is not cut.
    let repeated = a.cols * if by_cols { dst.rows } else { dst.cols };
    let macs = dst.rows * dst.cols * a.cols;
    let parts = part_count(threads, macs, repeated, len, min_len);
    let step = len.div_ceil(parts).div_ceil(align) * align;
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

/// `dst (+)= s · a · b` cut along the sum (into [`part_count`] parts), when the output is too
/// small to give every thread two aligned parts of it (under 192 columns and rows on two
/// threads) while the sum is long: the weight gradients of CMT's narrow layers (16–128
/// channels, a sum over 100,000 positions), which [`output_parts`] would leave on one thread,
/// and which gemm's own threading cuts poorly. Returns whether it ran. Measured on two Zen 3 cores with the
/// packed kernel: a 64 × 16 gradient over 100,352 rows ran at 61 GFLOP/s cut this way and 38–44
/// on one thread; for ViT's 192–768-wide gradients cutting the output was as fast or faster.
/// With gemm's AVX-512 kernels on two Zen 5 cores: 1.3–2.4x gemm's own threading on CMT-sized
/// gradients (16–128 wide, sums of 25,088–100,352), though level within noise in whole steps.
/// The partial sums are added in the parts' order, so the result does not depend on scheduling
/// (it does on the thread count and the shape, which set the parts, as any cut of a sum).
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
    let parts = part_count(threads, m * n * k, m * n, k, SUM_PART_MIN);
    let step = k.div_ceil(parts);
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
    outputs
        .into_par_iter()
        .with_max_len(1)
        .enumerate()
        .for_each(|(i, out)| {
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

/// Products cut across threads (`split.rs`) against the same product on one thread.
#[cfg(test)]
mod tests {
    use std::mem::MaybeUninit;

    use super::*;
    use crate::kernels::layouts::matrix;
    use crate::kernels::matmul::product;

    /// `s · a · b` (+ `start`) for an `m × k` and a `k × n` matrix, into a fresh output laid
    /// out as `template`'s strides say, threaded as `par` says.
    fn run(dims: (usize, usize, usize), transposed_out: bool, par: Parallelism, s: f32) -> Vec<f32> {
        let (m, n, k) = dims;
        let (a, ars, acs) = matrix(m, k, false, 7);
        let (b, brs, bcs) = matrix(k, n, true, 8);
        let (d, drs, dcs) = matrix(m, n, transposed_out, 9);
        let mut d: Vec<MaybeUninit<f32>> = d.iter().map(|&v| MaybeUninit::new(v)).collect();
        let dst = ViewMut::strided(&mut d, 0, m, n, drs, dcs);
        // SAFETY: distinct buffers, held across the call; `d` is initialised (accumulate).
        unsafe {
            product(
                dst,
                View::strided(&a, 0, m, k, ars, acs),
                View::strided(&b, 0, k, n, brs, bcs),
                s,
                true,
                par,
            )
        };
        // SAFETY: initialised from `matrix`'s values.
        d.iter().map(|v| unsafe { v.assume_init() }).collect()
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!(
                x.is_nan() && y.is_nan() || (x - y).abs() < 1e-4 * (1.0 + y.abs()),
                "{x} vs {y}"
            );
        }
    }

    /// How many parts [`output_parts`] cuts an `m × k` by `k × n` product into on two threads
    /// (`None`: left to gemm's own threading).
    fn output_part_count(dims: (usize, usize, usize), transposed_out: bool) -> Option<usize> {
        let (m, n, k) = dims;
        let (d, drs, dcs) = matrix(m, n, transposed_out, 9);
        let mut d: Vec<MaybeUninit<f32>> = d.iter().map(|&v| MaybeUninit::new(v)).collect();
        let (a, b) = (vec![0.0; m * k], vec![0.0; k * n]);
        output_parts(
            ViewMut::strided(&mut d, 0, m, n, drs, dcs),
            View::row_major(&a, m, k),
            View::row_major(&b, k, n),
            Parallelism::Rayon(2),
        )
        .map(|parts| parts.len())
    }

    #[test]
    fn products_cut_along_the_output_match_one_thread() {
        // Sizes past the split thresholds of every product code (gemm cuts a column-major
        // output by rows: 300 of them, each 900 long), output sides that halve unevenly.
        let (m, n, k) = (300, 1000, 900);
        for transposed_out in [false, true] {
            assert_eq!(output_part_count((m, n, k), transposed_out), Some(2));
            let threaded = run((m, n, k), transposed_out, Parallelism::Rayon(2), 0.5);
            close(&threaded, &run((m, n, k), transposed_out, Parallelism::None, 0.5));
        }
    }

    #[test]
    fn products_cut_into_several_parts_per_thread_match_one_thread() {
        // Many rows and a small weight: each further part repeats little packing, so two
        // threads take four parts each (when the switch is on, as by default), unevenly sized.
        // A column-major output: every product code cuts it by rows.
        let (m, n, k) = (4001, 64, 96);
        if crate::kernels::enabled(crate::kernels::Fused::Balance) {
            assert_eq!(output_part_count((m, n, k), true), Some(8));
        }
        for transposed_out in [false, true] {
            let threaded = run((m, n, k), transposed_out, Parallelism::Rayon(2), 0.5);
            close(&threaded, &run((m, n, k), transposed_out, Parallelism::None, 0.5));
        }
    }

    #[test]
    fn products_cut_along_the_sum_match_one_thread() {
        // A weight gradient's shape: the sum far longer than the output, cut unevenly (into
        // four parts on two threads).
        let (m, n, k) = (48, 40, 2001);
        let (a, b) = (vec![0.0; m * k], vec![0.0; k * n]);
        let mut d = vec![MaybeUninit::new(0.0f32); m * n];
        let dst = ViewMut::strided(&mut d, 0, m, n, n as isize, 1);
        let (av, bv) = (View::row_major(&a, m, k), View::row_major(&b, k, n));
        // SAFETY: distinct buffers held across the call.
        let cut = unsafe { sum_parts(dst, av, bv, 1.0, false, Parallelism::Rayon(2), product) };
        assert!(cut, "a 48 x 40 output with a sum of 2001 is cut along the sum");
        for transposed_out in [false, true] {
            let threaded = run((m, n, k), transposed_out, Parallelism::Rayon(2), 0.5);
            close(&threaded, &run((m, n, k), transposed_out, Parallelism::None, 0.5));
        }
    }
}
