//! Matrix products for the linear layers, without Burn's matmul: one entry point, `product`,
//! which cuts a threaded product into parts (`split.rs`) and runs each on the code `blas.rs`
//! chose (vitkit's packed AVX2 kernel, a system OpenBLAS, or the gemm crate).
//!
//! Why not Burn's matmul: flex allocates every product's output zeroed and then copies it once
//! more to realign it (`FlexTensor::empty`), adds the bias in a separate pass, and a `[out, in]`
//! weight's gradient comes back transposed. Here each output is written once, in place: the
//! bias is laid down first and the product accumulated onto it.

use std::mem::MaybeUninit;

use gemm::Parallelism;
use rayon::prelude::*;

use super::views::{View, ViewMut, assume_written, fresh_matrix};

/// Products below this many multiply-adds run on one thread (splitting costs more).
const PARALLEL_MACS: usize = 192 * 192 * 192;

/// Whether a product is split across threads: only large ones, and only from a thread that
/// drives (`device::on_driving_thread`), never from the pool's own workers. Products that run
/// inside a task of an already split operation (one attention head, one block of rows) are
/// given `Parallelism::None` by their callers.
pub fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    if m.saturating_mul(n).saturating_mul(k) >= PARALLEL_MACS && crate::device::on_driving_thread() {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    }
}

/// `dst = s · a · b`, or `dst += s · a · b` when `accumulate` (then `dst` must be initialised).
///
/// # Safety
/// `dst` must not overlap `a` or `b`, and no other thread may touch `dst` meanwhile. The
/// storage behind all three views must outlive the call (guaranteed when they were built from
/// borrows still held by the caller).
pub unsafe fn product(dst: ViewMut, a: View, b: View, s: f32, accumulate: bool, par: Parallelism) {
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    assert_eq!((dst.rows, dst.cols), (a.rows, b.cols), "output shape differs");
    if dst.rows == 0 || dst.cols == 0 {
        return;
    }
    if a.cols == 0 {
        // An empty sum: gemm leaves dst alone, so clear it here unless accumulating.
        if !accumulate {
            let (ptr, rs, cs) = dst.raw();
            for r in 0..dst.rows {
                for c in 0..dst.cols {
                    // SAFETY: in bounds by construction of `dst`.
                    unsafe { *ptr.offset(r as isize * rs + c as isize * cs) = 0.0 };
                }
            }
        }
        return;
    }
    // SAFETY: the caller's guarantees carry over.
    if unsafe { super::split::sum_parts(dst, a, b, s, accumulate, par, product) } {
        return;
    }
    if let Some(parts) = super::split::output_parts(dst, a, b, par) {
        // SAFETY: the parts write disjoint windows of `dst`; the caller's guarantees carry over.
        parts
            .into_par_iter()
            .with_max_len(1)
            .for_each(|(dst, a, b)| unsafe { product(dst, a, b, s, accumulate, Parallelism::None) });
        return;
    }
    // One thread's product: the packed kernel or the system BLAS where chosen (see `blas.rs`).
    // SAFETY: the caller's guarantees are `blas::product`'s.
    if matches!(par, Parallelism::None) && unsafe { super::blas::product(dst, a, b, s, accumulate) } {
        return;
    }
    // SAFETY: the caller's guarantees carry over.
    if unsafe { narrow_through_scratch(dst, a, b, s, accumulate, par) } {
        return;
    }
    // SAFETY: the caller's guarantees, and the shapes checked above.
    unsafe { gemm_product(dst, a, b, s, accumulate, par) }
}

/// [`product`] through the gemm crate, as it is.
///
/// # Safety
/// As [`product`], with shapes that match.
unsafe fn gemm_product(dst: ViewMut, a: View, b: View, s: f32, accumulate: bool, par: Parallelism) {
    let ((dp, drs, dcs), (ap, ars, acs), (bp, brs, bcs)) = (dst.raw(), a.raw(), b.raw());
    // SAFETY: bounds were checked when the views were built; the rest is the caller's.
    unsafe {
        gemm::gemm(
            dst.rows, dst.cols, a.cols, dp, dcs, drs, accumulate, ap, acs, ars, bp, bcs, brs, 1.0f32, s,
            false, false, false, par,
        )
    }
}

/// Widest output side, along the side `dst` is contiguous in, that gemm covers with its
/// narrowest tile only (one AVX-512 register: 16 lanes × 6 columns, six accumulators).
const NARROW_SIDE: usize = 16;
/// The scratch detour is taken only for long sums into small outputs (weight gradients): its
/// copy is then a vanishing part of the work, and the scratch stays in cache.
const NARROW_MIN_SUM: usize = 1024;
const NARROW_MAX_OUTPUT: usize = 1 << 16;

/// gemm walks the output side `dst` is contiguous in with its micro-kernel's rows (up to 64
/// with AVX-512) and the other side 6 columns at a time. When the contiguous side is at most
/// 16 wide and the other long, every tile is the narrowest, with too few accumulators to keep
/// the FMA units busy: the weight gradients of CMT's 16-channel stem (`[144, 16]`, a sum over
/// 131,072 positions). Such a product is written into a scratch matrix contiguous along the
/// long side, then copied (or added) into `dst`. Two Zen 5 cores, `examples/products.rs`, best
/// of 10, alternated: a 144 × 16 gradient over 131,072 rows 189–224 GFLOP/s this way, 94–145
/// without. Returns whether it ran.
///
/// # Safety
/// As [`product`].
unsafe fn narrow_through_scratch(
    dst: ViewMut,
    a: View,
    b: View,
    s: f32,
    accumulate: bool,
    par: Parallelism,
) -> bool {
    let (ptr, rs, cs) = dst.raw();
    let (m, n) = (dst.rows, dst.cols);
    let (narrow, long) = match (rs, cs) {
        (_, 1) => (n, m),
        (1, _) => (m, n),
        _ => return false,
    };
    if narrow > NARROW_SIDE
        || long < 4 * NARROW_SIDE
        || a.cols < NARROW_MIN_SUM
        || m * n > NARROW_MAX_OUTPUT
        || !super::enabled(super::Fused::NarrowScratch)
    {
        return false;
    }
    // Contiguous along the long side: column-major when `dst` is row-major, and the reverse.
    let (srs, scs) = if cs == 1 { (1, m) } else { (n, 1) };
    let mut scratch: Vec<f32> = Vec::with_capacity(m * n);
    let spare = &mut scratch.spare_capacity_mut()[..m * n];
    let view = ViewMut::strided(spare, 0, m, n, srs as isize, scs as isize);
    // SAFETY: the scratch is fresh and written in full (not accumulated onto); the inputs as
    // the caller guarantees.
    unsafe {
        gemm_product(view, a, b, s, false, par);
        scratch.set_len(m * n);
    }
    for r in 0..m {
        for c in 0..n {
            let v = scratch[r * srs + c * scs];
            // SAFETY: (r, c) inside `dst`, which nobody else touches meanwhile.
            unsafe {
                let at = ptr.offset(r as isize * rs + c as isize * cs);
                *at = if accumulate { *at + v } else { v };
            }
        }
    }
    true
}

/// `y = x · w + bias` for `x: [rows, w.rows]` row-major and `w: [d_in, d_out]` (any strides):
/// the bias rows are written first and the product accumulated onto them (or, for few rows
/// and an `[out, in]` weight, see [`weight_in_place`]).
pub fn linear(x: &[f32], rows: usize, w: View, bias: Option<&[f32]>) -> Vec<f32> {
    let (d_in, d_out) = (w.rows, w.cols);
    if super::bf16::applies(w) {
        let mut out = match bias {
            Some(bias) => {
                assert_eq!(bias.len(), d_out, "bias length differs from the output width");
                bias.repeat(rows)
            }
            None => vec![0.0; rows * d_out],
        };
        super::bf16::accumulate(&mut out, x, rows, w);
        return out;
    }
    let x = View::row_major(x, rows, d_in);
    let mut out = Vec::with_capacity(rows * d_out);
    let spare = &mut out.spare_capacity_mut()[..rows * d_out];
    if weight_in_place(rows, w) {
        product_by_columns(spare, x, w, bias, false);
        // SAFETY: written in full just above.
        unsafe { out.set_len(rows * d_out) };
        return out;
    }
    if let Some(bias) = bias {
        assert_eq!(bias.len(), d_out, "bias length differs from the output width");
        let rows_per_task = (64 * 1024 / d_out.max(1)).max(1);
        spare
            .par_chunks_mut(rows_per_task * d_out.max(1))
            .for_each(|chunk| {
                for row in chunk.chunks_exact_mut(d_out) {
                    for (o, &b) in row.iter_mut().zip(bias) {
                        o.write(b);
                    }
                }
            });
    }
    let dst = ViewMut::strided(spare, 0, rows, d_out, d_out as isize, 1);
    // SAFETY: `out` is fresh and written completely (the bias was laid down when accumulating).
    unsafe {
        product(dst, x, w, 1.0, bias.is_some(), parallelism(rows, d_out, d_in));
        out.set_len(rows * d_out);
    }
    out
}

/// Rows up to which a linear layer whose weight is stored `[out, in]` (PyTorch's layout, what
/// vitkit's layers keep) computes its output transposed, in a scratch buffer: gemm then reads
/// the weight where it lies instead of packing (copying) it on every call. Packing ViT-B/16's
/// 344 MB of weights for one 224px image's 197 tokens was 29% of its inference profile; from
/// two images on, the copy is amortised enough that gemm's usual orientation wins (measured).
/// The packed AVX2 kernel packs the weight either way; on this path it measured level with
/// gemm or ahead (197 rows through ViT-B/16's qkv: 156 against 151 GFLOP/s, two Zen 3 cores).
const WEIGHT_IN_PLACE_MAX_ROWS: usize = 256;

fn weight_in_place(rows: usize, w: View) -> bool {
    let (_, rs, cs) = w.raw();
    rs == 1
        && cs != 1
        && rows <= WEIGHT_IN_PLACE_MAX_ROWS
        && rows * w.rows * w.cols >= PARALLEL_MACS
        && super::enabled(super::Fused::WeightInPlace)
}

/// `out = x · w (+ bias)`, or `out += x · w` when `accumulate` (then `out` must be
/// initialised), for `out: [rows, w.cols]` row-major: the product is computed column-major (one
/// output feature's values for every row contiguous) into a scratch buffer, then written
/// transposed, tile by tile.
fn product_by_columns(
    out: &mut [MaybeUninit<f32>],
    x: View,
    w: View,
    bias: Option<&[f32]>,
    accumulate: bool,
) {
    let (rows, d_in, d_out) = (x.rows, w.rows, w.cols);
    let mut t = Vec::with_capacity(rows * d_out);
    // One block of output features per thread, so that each thread reads its own part of the
    // weight (splitting the rows instead would have every thread stream all of it).
    let threads = match parallelism(rows, d_out, d_in) {
        Parallelism::None => 1,
        _ => rayon::current_num_threads().max(1),
    };
    let features = d_out.div_ceil(threads).max(1);
    t.spare_capacity_mut()[..rows * d_out]
        .par_chunks_mut(features * rows.max(1))
        .enumerate()
        .for_each(|(i, block)| {
            let n = block.len() / rows.max(1);
            let dst = ViewMut::strided(block, 0, rows, n, 1, rows as isize);
            // SAFETY: each task owns its block of `t` and writes all of it.
            unsafe {
                product(
                    dst,
                    x,
                    w.window(0, i * features, d_in, n),
                    1.0,
                    false,
                    Parallelism::None,
                )
            };
        });
    // SAFETY: the blocks together cover every element.
    unsafe { t.set_len(rows * d_out) };
    super::cpu::write_transposed(out, &t, rows, d_out, bias, accumulate);
}

/// Rows per task when a product is followed by a row-wise epilogue, so that the epilogue finds
/// what the product just wrote still in cache; `None` when there are too few rows for every
/// thread to get a block of useful size (then one parallel product and a separate pass win).
pub fn epilogue_block_rows(rows: usize) -> Option<usize> {
    const MIN_ROWS: usize = 256;
    const TARGET_ROWS: usize = 512;
    let threads = rayon::current_num_threads().max(1);
    if rows < threads * MIN_ROWS || !crate::device::on_driving_thread() {
        return None;
    }
    let blocks = (rows / TARGET_ROWS).max(threads).div_ceil(threads) * threads;
    Some(rows.div_ceil(blocks))
}

/// `x · w` (no bias) in blocks of `block_rows` rows, one task each, calling
/// `epilogue(first_row, block)` on each block right after its product.
pub fn linear_blocks(
    x: &[f32],
    rows: usize,
    w: View,
    block_rows: usize,
    epilogue: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let (d_in, d_out) = (w.rows, w.cols);
    let block_len = block_rows.max(1) * d_out.max(1);
    if super::bf16::applies(w) {
        let mut out = vec![0.0; rows * d_out];
        super::bf16::accumulate(&mut out, x, rows, w);
        out.par_chunks_mut(block_len)
            .enumerate()
            .for_each(|(i, block)| epilogue(i * block_rows.max(1), block));
        return out;
    }
    let x = View::row_major(x, rows, d_in);
    let mut out = Vec::with_capacity(rows * d_out);
    out.spare_capacity_mut()[..rows * d_out]
        .par_chunks_mut(block_len)
        .enumerate()
        .for_each(|(i, block)| {
            let first = i * block_rows.max(1);
            let n = block.len() / d_out.max(1);
            let dst = ViewMut::strided(block, 0, n, d_out, d_out as isize, 1);
            // SAFETY: each task owns its block of `out` and writes all of it.
            unsafe { product(dst, x.window(first, 0, n, d_in), w, 1.0, false, Parallelism::None) };
            // SAFETY: just written in full by the product.
            let block = unsafe { assume_written(block) };
            epilogue(first, block);
        });
    // SAFETY: the blocks together cover every element.
    unsafe { out.set_len(rows * d_out) };
    out
}

/// `start + x · w` for `x: [rows, w.rows]` row-major, accumulated in place onto `start`
/// (`[rows, w.cols]`, e.g. a residual plus a bias, or zeros).
pub fn linear_onto(mut start: Vec<f32>, x: &[f32], rows: usize, w: View) -> Vec<f32> {
    let (d_in, d_out) = (w.rows, w.cols);
    assert_eq!(
        start.len(),
        rows * d_out,
        "starting value does not match the output shape"
    );
    if super::bf16::applies(w) {
        super::bf16::accumulate(&mut start, x, rows, w);
        return start;
    }
    let x = View::row_major(x, rows, d_in);
    // SAFETY: `start` is initialised; viewing it as MaybeUninit only forgets that.
    let spare = unsafe { &mut *(start.as_mut_slice() as *mut [f32] as *mut [MaybeUninit<f32>]) };
    if weight_in_place(rows, w) {
        product_by_columns(spare, x, w, None, true);
        return start;
    }
    let dst = ViewMut::strided(spare, 0, rows, d_out, d_out as isize, 1);
    // SAFETY: `start` is owned here and initialised, as accumulating requires.
    unsafe { product(dst, x, w, 1.0, true, parallelism(rows, d_out, d_in)) };
    start
}

/// Gradient of `linear` with respect to `x`: `dy · wᵀ`, `[rows, d_in]`.
pub fn linear_grad_input(dy: &[f32], rows: usize, w: View) -> Vec<f32> {
    let (d_in, d_out) = (w.rows, w.cols);
    let dy = View::row_major(dy, rows, d_out);
    let (mut out, dst) = fresh_matrix(rows, d_in);
    // SAFETY: `out` is fresh and the product writes all of it.
    unsafe {
        product(dst, dy, w.t(), 1.0, false, parallelism(rows, d_in, d_out));
        out.set_len(rows * d_in);
    }
    out
}

/// Gradient of `linear` with respect to `w`: `xᵀ · dy`, `[d_in, d_out]` row-major. The sum
/// over rows runs inside one product, so its order does not depend on thread scheduling.
pub fn linear_grad_weight(x: &[f32], dy: &[f32], rows: usize, d_in: usize, d_out: usize) -> Vec<f32> {
    let x = View::row_major(x, rows, d_in);
    let dy = View::row_major(dy, rows, d_out);
    let (mut out, dst) = fresh_matrix(d_in, d_out);
    // SAFETY: `out` is fresh and the product writes all of it.
    unsafe {
        product(dst, x.t(), dy, 1.0, false, parallelism(d_in, d_out, rows));
        out.set_len(d_in * d_out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        out
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    /// `[cols, rows]` row-major from `[rows, cols]` row-major.
    fn transposed(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        (0..cols * rows)
            .map(|i| a[(i % rows) * cols + i / rows])
            .collect()
    }

    fn values(len: usize, seed: f32) -> Vec<f32> {
        (0..len).map(|i| ((i as f32 + seed) * 0.731).sin()).collect()
    }

    /// An input `[rows, d_in]` and a weight stored as PyTorch does, `[d_out, d_in]` (to be viewed
    /// transposed as `[d_in, d_out]`), with that weight also laid out `[d_in, d_out]`.
    fn layer(rows: usize, d_in: usize, d_out: usize, seed: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let w_out_in = values(d_out * d_in, seed + 1.0);
        let w_in_out = transposed(&w_out_in, d_out, d_in);
        (values(rows * d_in, seed), w_out_in, w_in_out)
    }

    #[test]
    fn linear_and_its_gradients_match_naive_products() {
        // Large enough to take the multi-threaded path, with an odd width.
        let (rows, d_in, d_out) = (300, 70, 333);
        let (x, w_out_in, w_in_out) = layer(rows, d_in, d_out, 0.0);
        let w = View::row_major(&w_out_in, d_out, d_in).t();
        let bias = values(d_out, 2.0);
        let mut expected = naive(&x, &w_in_out, rows, d_in, d_out);
        for row in expected.chunks_exact_mut(d_out) {
            row.iter_mut().zip(&bias).for_each(|(e, b)| *e += b);
        }
        close(&linear(&x, rows, w, Some(&bias)), &expected);
        close(
            &linear(&x, rows, w, None),
            &naive(&x, &w_in_out, rows, d_in, d_out),
        );

        let dy = values(rows * d_out, 3.0);
        let mut w_t = vec![0.0; d_out * d_in];
        w_t.copy_from_slice(&w_out_in);
        close(
            &linear_grad_input(&dy, rows, w),
            &naive(&dy, &w_t, rows, d_out, d_in),
        );
        let x_t = transposed(&x, rows, d_in);
        close(
            &linear_grad_weight(&x, &dy, rows, d_in, d_out),
            &naive(&x_t, &dy, d_in, rows, d_out),
        );
        let sums: Vec<f32> = (0..d_out)
            .map(|c| (0..rows).map(|r| dy[r * d_out + c]).sum())
            .collect();
        close(&super::super::cpu::column_sums(&dy, rows, d_out), &sums);
    }

    #[test]
    fn linear_with_the_weight_read_in_place_matches_naive_products() {
        // Few rows and a weight stored [out, in]: the transposed-output path. Sizes not
        // multiples of the 8 x 8 transpose tiles.
        let (rows, d_in, d_out) = (197, 200, 333);
        let (x, w_out_in, w_in_out) = layer(rows, d_in, d_out, 6.0);
        let w = View::row_major(&w_out_in, d_out, d_in).t();
        assert!(weight_in_place(rows, w));
        let product = naive(&x, &w_in_out, rows, d_in, d_out);
        close(&linear(&x, rows, w, None), &product);
        let bias = values(d_out, 8.0);
        let start = values(rows * d_out, 9.0);
        let with_bias: Vec<f32> = product
            .iter()
            .enumerate()
            .map(|(i, p)| p + bias[i % d_out])
            .collect();
        close(&linear(&x, rows, w, Some(&bias)), &with_bias);
        let onto: Vec<f32> = product.iter().zip(&start).map(|(p, s)| p + s).collect();
        close(&linear_onto(start, &x, rows, w), &onto);
    }

    #[test]
    fn narrow_outputs_through_a_scratch_match_a_float64_sum() {
        use std::cell::Cell;
        // A 16-wide weight gradient and its transpose: in each, the half of the layouts whose
        // output is contiguous along the 16-wide side goes through the scratch.
        let through_scratch = Cell::new(0);
        crate::kernels::layouts::check_every_layout(
            &[(144, 16, 1100), (16, 80, 1030)],
            |dst, a, b, s, acc| {
                // SAFETY: the checker's buffers are distinct and outlive the call.
                unsafe {
                    if narrow_through_scratch(dst, a, b, s, acc, Parallelism::Rayon(2)) {
                        through_scratch.set(through_scratch.get() + 1);
                    } else {
                        product(dst, a, b, s, acc, Parallelism::None);
                    }
                }
                true
            },
        );
        assert_eq!(
            through_scratch.get(),
            16,
            "8 of each shape's 16 layouts are narrow"
        );
    }
}
