//! The dense convolution of a channels-last map as matrix products over its gathered windows
//! (`im2col`), forward and backward, one chunk of output rows at a time.
//!
//! Why products: flex's direct convolution on NCHW maps is slow for CMT's stem (3×3, 16
//! channels, at the full input resolution: a fifth of a small CMT's multiply-adds). As rows
//! `[positions, k·k·C]` (window position major, channel minor) the convolution is a linear
//! layer, which vitkit's matrix kernels run at full speed. A window's row of `k` pixels is `k·C`
//! contiguous values in both layouts, so the copies and sums run over whole window rows where
//! the window lies inside the map.
//!
//! Why chunks: the gathered windows are `k·k` times the map (9× for a 3×3 kernel: 231 MB for
//! CMT-Ti's stem at batch 32). Gathered for the whole batch, they went out to memory and came
//! back for the product, and were kept for the backward pass. Gathered a chunk of output rows at
//! a time (`CHUNK_BYTES`), they stay in the core's L2 cache between the gathering and the product,
//! and the backward pass gathers them again from the input rather than keeping them. A chunk may
//! span images, so that small maps still give each product enough rows (`MIN_POSITIONS`).

use std::cell::RefCell;

use gemm::Parallelism;
use rayon::prelude::*;

use super::cpu::{add_in_order, column_sums, dispatch_wide};
use super::depthwise::Geometry;
use super::matmul::product;
use super::views::{View, ViewMut};

/// Bytes of gathered windows per chunk: with its share of the output, within a Zen 3's 512 KiB
/// L2.
const CHUNK_BYTES: usize = 256 * 1024;

/// Output positions per chunk at the least, whatever their windows' size: each chunk's products
/// pack the whole weight again (and, backward, read and write the whole weight gradient), which
/// over NesT's 8×8 maps' 64 positions (1,152-long windows) took a third of the products' time.
/// NesT-mini training, AVX2 build, 10 steps: the convolutions' products 3.02 s with chunks of
/// at most `CHUNK_BYTES`, 2.76 s with 512 positions, 2.72 s with 1,024.
const MIN_POSITIONS: usize = 512;

/// The first input column of output column `ox`'s window, when the whole window row lies
/// inside the map.
fn interior(g: &Geometry, ox: usize) -> Option<usize> {
    let first = (ox * g.stride).checked_sub(g.padding)?;
    (first + g.kernel <= g.width).then_some(first)
}

/// Values per gathered window, `k·k·C`.
fn window_len(g: &Geometry) -> usize {
    g.kernel * g.kernel * g.channels
}

/// Output rows per chunk, counted over the whole batch (row `r` is image `r / Ho`'s row `r %
/// Ho`): enough to fill `CHUNK_BYTES` with gathered windows, and more, up to `MIN_POSITIONS`
/// positions, as long as each thread still gets two chunks.
fn chunk_rows(g: &Geometry) -> usize {
    let (wo, total) = (g.out_width().max(1), (g.batch * g.out_height()).max(1));
    let row_bytes = wo * window_len(g) * std::mem::size_of::<f32>();
    let by_bytes = (CHUNK_BYTES / row_bytes.max(1)).max(1);
    let spread = total.div_ceil(2 * rayon::current_num_threads());
    MIN_POSITIONS.div_ceil(wo).min(spread).max(by_bytes).min(total)
}

/// The windows of output rows `r0..` (counted over the batch, as [`chunk_rows`]) into `out`,
/// as many rows as it holds.
fn gather_chunk(x: &[f32], out: &mut [f32], g: Geometry, r0: usize) {
    let ho = g.out_height();
    for (i, row) in out.chunks_exact_mut(g.out_width() * window_len(&g)).enumerate() {
        gather_rows(x, row, g, (r0 + i) / ho, (r0 + i) % ho);
    }
}

// The windows of image `b`'s output rows from `oy0` on into `out` (`[rows·Wo, k·k·C]`, as many
// rows as it holds), zeros where a window leaves the map; every value of `out` is written.
dispatch_wide!(gather_rows(x: &[f32], out: &mut [f32], g: Geometry, b: usize, oy0: usize) {
    let (c, k) = (g.channels, g.kernel);
    let width = k * k * c;
    for (i, out_row) in out.chunks_exact_mut(g.out_width() * width).enumerate() {
        for (ox, window) in out_row.chunks_exact_mut(width).enumerate() {
            for ky in 0..k {
                let dst = &mut window[ky * k * c..(ky + 1) * k * c];
                let Some(iy) = g.input_at(oy0 + i, ky, g.height) else {
                    dst.fill(0.0);
                    continue;
                };
                let row = &x[(b * g.height + iy) * g.width * c..];
                match interior(&g, ox) {
                    Some(first) => {
                        for (d, &v) in dst.iter_mut().zip(&row[first * c..(first + k) * c]) {
                            *d = v;
                        }
                    }
                    None => {
                        dst.fill(0.0);
                        for kx in 0..k {
                            let Some(ix) = g.input_at(ox, kx, g.width) else { continue };
                            for (d, &v) in dst[kx * c..(kx + 1) * c].iter_mut().zip(&row[ix * c..(ix + 1) * c]) {
                                *d = v;
                            }
                        }
                    }
                }
            }
        }
    }
});

// Adds the window gradients of one image's output rows from `oy0` on (`cols`, `[rows·Wo,
// k·k·C]`) into that image's map gradient `dx` (`[H, W, C]`).
dispatch_wide!(scatter_rows(cols: &[f32], dx: &mut [f32], g: Geometry, oy0: usize) {
    let (c, k) = (g.channels, g.kernel);
    let width = k * k * c;
    for (i, cols_row) in cols.chunks_exact(g.out_width() * width).enumerate() {
        for (ox, window) in cols_row.chunks_exact(width).enumerate() {
            for ky in 0..k {
                let Some(iy) = g.input_at(oy0 + i, ky, g.height) else { continue };
                let row = &mut dx[iy * g.width * c..(iy + 1) * g.width * c];
                let src = &window[ky * k * c..(ky + 1) * k * c];
                match interior(&g, ox) {
                    Some(first) => {
                        for (d, &v) in row[first * c..(first + k) * c].iter_mut().zip(src) {
                            *d += v;
                        }
                    }
                    None => {
                        for kx in 0..k {
                            let Some(ix) = g.input_at(ox, kx, g.width) else { continue };
                            for (d, &v) in row[ix * c..(ix + 1) * c].iter_mut().zip(&src[kx * c..(kx + 1) * c]) {
                                *d += v;
                            }
                        }
                    }
                }
            }
        }
    }
});

thread_local! {
    /// Each thread's chunk buffers (gathered windows, and their gradient), kept between calls.
    static CHUNKS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` with this thread's two chunk buffers, each resized to `len`. Taken out of the
/// thread-local while `f` runs, so a nested call (none is expected) would get fresh ones.
fn with_chunk_buffers<R>(len: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    let (mut a, mut b) = CHUNKS.with_borrow_mut(std::mem::take);
    a.resize(len, 0.0);
    b.resize(len, 0.0);
    let out = f(&mut a, &mut b);
    CHUNKS.with_borrow_mut(|bufs| *bufs = (a, b));
    out
}

/// The convolution of `x` (`[B, H, W, C]`) with `wmat` (`[k·k·C, O]`) plus `bias`: `[B·Ho·Wo,
/// O]` row-major. Bands of every image run in parallel, each product on its own thread.
pub fn forward(x: &[f32], wmat: View, bias: &[f32], g: Geometry) -> Vec<f32> {
    let (ho, wo, o) = (g.out_height(), g.out_width(), wmat.cols);
    let width = window_len(&g);
    assert_eq!(wmat.rows, width, "weight rows differ from the window size");
    assert_eq!(bias.len(), o, "bias length differs from the output channels");
    let mut out = vec![0.0f32; g.batch * ho * wo * o];
    if out.is_empty() {
        return out;
    }
    let rows = chunk_rows(&g);
    out.par_chunks_mut(rows * wo * o)
        .enumerate()
        .for_each(|(i, out_chunk)| {
            let positions = out_chunk.len() / o;
            with_chunk_buffers(positions * width, |cols, _| {
                gather_chunk(x, cols, g, i * rows);
                for row in out_chunk.chunks_exact_mut(o) {
                    row.copy_from_slice(bias);
                }
                // SAFETY: distinct buffers held across the call; `out_chunk` is initialised.
                unsafe {
                    product(
                        ViewMut::row_major(out_chunk, positions, o),
                        View::row_major(cols, positions, width),
                        wmat,
                        1.0,
                        true,
                        Parallelism::None,
                    )
                }
            })
        });
    out
}

/// What [`backward`] computes: the input's gradient (`[B, H, W, C]`), the weight's (`[k·k·C,
/// O]`) and the bias's (`[O]`), each only where asked for.
pub struct Gradients {
    pub x: Option<Vec<f32>>,
    pub wmat: Option<Vec<f32>>,
    pub bias: Option<Vec<f32>>,
}

/// Gradients of [`forward`] from the output's gradient `dy` (`[B·Ho·Wo, O]`), for the inputs
/// `need` names (x, wmat, bias), the windows gathered again chunk by chunk. The images are cut
/// into one run per thread, in order: each adds its images' weight gradients into its own sum,
/// and those are added in the runs' order (the result does not depend on scheduling).
pub fn backward(x: &[f32], wmat: View, dy: &[f32], g: Geometry, need: [bool; 3]) -> Gradients {
    let (ho, wo, o) = (g.out_height(), g.out_width(), wmat.cols);
    let width = window_len(&g);
    let plane = g.height * g.width * g.channels;
    assert_eq!(
        dy.len(),
        g.batch * ho * wo * o,
        "output gradient differs from the output's shape"
    );
    let rows = chunk_rows(&g);
    let per_run = g.batch.div_ceil(rayon::current_num_threads()).max(1);
    let mut dx = vec![0.0f32; if need[0] { g.batch * plane } else { 0 }];
    let runs: Vec<(usize, Option<&mut [f32]>)> = if need[0] && plane > 0 {
        dx.chunks_mut(per_run * plane).map(Some).enumerate().collect()
    } else {
        (0..g.batch.div_ceil(per_run)).map(|r| (r, None)).collect()
    };
    let dwt_runs: Vec<Vec<f32>> = runs
        .into_par_iter()
        .map(|(run, mut dx_run)| {
            // The weight gradient transposed, `[O, k·k·C]`: long rows for gemm to walk.
            let mut dwt = vec![0.0f32; if need[1] { o * width } else { 0 }];
            let first_image = run * per_run;
            let run_rows = first_image * ho..g.batch.min(first_image + per_run) * ho;
            for r0 in run_rows.clone().step_by(rows) {
                let positions = rows.min(run_rows.end - r0) * wo;
                let dy_chunk = &dy[r0 * wo * o..][..positions * o];
                let dy_view = View::row_major(dy_chunk, positions, o);
                with_chunk_buffers(positions * width, |cols, dcols| {
                    if need[1] {
                        gather_chunk(x, cols, g, r0);
                        // SAFETY: distinct buffers held across the call; `dwt` initialised.
                        unsafe {
                            product(
                                ViewMut::row_major(&mut dwt, o, width),
                                dy_view.t(),
                                View::row_major(cols, positions, width),
                                1.0,
                                true,
                                Parallelism::None,
                            )
                        };
                    }
                    if let Some(dx_run) = dx_run.as_deref_mut() {
                        // SAFETY: distinct buffers held across the call; written in full.
                        unsafe {
                            product(
                                ViewMut::row_major(dcols, positions, width),
                                dy_view,
                                wmat.t(),
                                1.0,
                                false,
                                Parallelism::None,
                            )
                        };
                        for (i, row) in dcols[..positions * width].chunks_exact(wo * width).enumerate() {
                            let (b, oy) = ((r0 + i) / ho, (r0 + i) % ho);
                            let image = &mut dx_run[(b - first_image) * plane..][..plane];
                            scatter_rows(row, image, g, oy);
                        }
                    }
                });
            }
            dwt
        })
        .collect();
    let wmat = need[1].then(|| {
        let dwt = add_in_order(dwt_runs, o * width);
        (0..width * o).map(|i| dwt[(i % o) * width + i / o]).collect()
    });
    Gradients {
        x: need[0].then_some(dx),
        wmat,
        bias: need[2].then(|| column_sums(dy, g.batch * ho * wo, o)),
    }
}
