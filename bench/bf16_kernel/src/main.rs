//! `y = x · wᵀ` for `x: [rows, d_in]` and a weight `w: [d_out, d_in]` (PyTorch's layout), once
//! with a bf16 micro-kernel (`vdpbf16ps`: pairs of bf16 products summed into f32 lanes) on
//! operands packed beforehand, once with the `gemm` crate in f32 (packing included, as vitkit
//! calls it). Prints the median time and GFLOP/s of each and their largest relative gap.
//!
//! Usage: bf16_kernel ROWS D_IN D_OUT [REPEATS]   (D_IN even, D_OUT a multiple of 64)

use std::time::Instant;

use rayon::prelude::*;

/// Output features per micro-tile: four registers of sixteen f32 lanes.
const FEATURES: usize = 64;
/// Tokens per micro-tile, each broadcast against the four registers of weights.
const TOKENS: usize = 6;
/// Token tiles per pass over a weight panel, so that their packed rows stay in cache.
const TILES_PER_GROUP: usize = 16;

/// f32 to bf16, rounding to nearest even (inputs here are finite).
fn bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// Two bf16 values in one 32-bit word, the lower `k` in the lower half (`vdpbf16ps`'s order).
fn pair(lo: f32, hi: f32) -> u32 {
    bf16(lo) as u32 | (bf16(hi) as u32) << 16
}

/// The weight as panels of 64 output features: `[panel][k / 2][64]` pairs.
fn pack_weight(w: &[f32], d_out: usize, d_in: usize) -> Vec<u32> {
    let half = d_in / 2;
    let mut packed = vec![0u32; d_out * half];
    for (panel, out) in packed.chunks_exact_mut(half * FEATURES).enumerate() {
        for q in 0..half {
            for f in 0..FEATURES {
                let row = &w[(panel * FEATURES + f) * d_in..];
                out[q * FEATURES + f] = pair(row[2 * q], row[2 * q + 1]);
            }
        }
    }
    packed
}

/// The input as tiles of 6 tokens: `[tile][k / 2][6]` pairs (missing tokens of the last tile 0).
fn pack_input(x: &[f32], rows: usize, d_in: usize) -> Vec<u32> {
    let half = d_in / 2;
    let tiles = rows.div_ceil(TOKENS);
    let mut packed = vec![0u32; tiles * half * TOKENS];
    for t in 0..rows {
        for q in 0..half {
            packed[(t / TOKENS) * half * TOKENS + q * TOKENS + t % TOKENS] =
                pair(x[t * d_in + 2 * q], x[t * d_in + 2 * q + 1]);
        }
    }
    packed
}

/// One 64-feature x 6-token tile over the whole depth, written to `y` (row stride `ldy`) for
/// the first `tokens` tokens.
///
/// # Safety
/// The CPU has AVX-512 F and BF16; `w` holds `half * 64` and `x` `half * 6` pairs; `y` has
/// room for `tokens` rows of 64 floats at stride `ldy`.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile(half: usize, w: *const u32, x: *const u32, y: *mut f32, ldy: usize, tokens: usize) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); TOKENS]; 4];
    for q in 0..half {
        // SAFETY: within the panels, by the caller's sizes.
        unsafe {
            let wq = w.add(q * FEATURES);
            let lanes: [__m512bh; 4] =
                std::array::from_fn(|r| std::mem::transmute(_mm512_loadu_si512(wq.add(16 * r).cast())));
            for (j, x) in std::slice::from_raw_parts(x.add(q * TOKENS), TOKENS)
                .iter()
                .enumerate()
            {
                let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(*x as i32));
                for r in 0..4 {
                    acc[r][j] = _mm512_dpbf16_ps(acc[r][j], lanes[r], b);
                }
            }
        }
    }
    for j in 0..tokens {
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: row `j` of the tile, inside `y` by the caller's sizes.
            unsafe { _mm512_storeu_ps(y.add(j * ldy + 16 * r), acc[j]) };
        }
    }
}

/// `y = x · wᵀ` from packed operands, the weight panels split between the threads.
fn product_bf16(w: &[u32], x: &[u32], y: &mut [f32], rows: usize, d_in: usize, d_out: usize) {
    let half = d_in / 2;
    let tiles = rows.div_ceil(TOKENS);
    let panels = d_out / FEATURES;
    let threads = rayon::current_num_threads();
    let y_at = y.as_mut_ptr() as usize;
    (0..threads).into_par_iter().for_each(|thread| {
        let mine = thread * panels / threads..(thread + 1) * panels / threads;
        for group in (0..tiles).step_by(TILES_PER_GROUP) {
            for panel in mine.clone() {
                for t in group..(group + TILES_PER_GROUP).min(tiles) {
                    let tokens = TOKENS.min(rows - t * TOKENS);
                    // SAFETY: detected features checked in main; every thread writes its own
                    // panels' columns of `y`, whose sizes match the packing.
                    unsafe {
                        tile(
                            half,
                            w.as_ptr().add(panel * half * FEATURES),
                            x.as_ptr().add(t * half * TOKENS),
                            (y_at as *mut f32).add(t * TOKENS * d_out + panel * FEATURES),
                            d_out,
                            tokens,
                        )
                    };
                }
            }
        }
    });
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let [rows, d_in, d_out] = args[..3] else {
        eprintln!("usage: bf16_kernel ROWS D_IN D_OUT [REPEATS]");
        std::process::exit(2);
    };
    let repeats = args.get(3).copied().unwrap_or(7);
    if d_in % 2 != 0 || d_out % FEATURES != 0 {
        eprintln!("D_IN must be even and D_OUT a multiple of {FEATURES}");
        std::process::exit(2);
    }
    if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")) {
        eprintln!("this CPU has no AVX-512 BF16");
        std::process::exit(1);
    }
    let x: Vec<f32> = (0..rows * d_in)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
        .collect();
    let w: Vec<f32> = (0..d_out * d_in)
        .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1)
        .collect();
    let (pw, px) = (pack_weight(&w, d_out, d_in), pack_input(&x, rows, d_in));
    let (mut y_bf16, mut y_f32) = (vec![0f32; rows * d_out], vec![0f32; rows * d_out]);
    let (mut t_bf16, mut t_f32) = (vec![], vec![]);
    for _ in 0..repeats + 2 {
        let start = Instant::now();
        product_bf16(&pw, &px, &mut y_bf16, rows, d_in, d_out);
        t_bf16.push(start.elapsed().as_secs_f64());
        let start = Instant::now();
        // SAFETY: shapes and strides describe the three buffers exactly.
        unsafe {
            gemm::gemm(
                rows,
                d_out,
                d_in,
                y_f32.as_mut_ptr(),
                1,
                d_out as isize,
                false,
                x.as_ptr(),
                1,
                d_in as isize,
                w.as_ptr(),
                d_in as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            )
        };
        t_f32.push(start.elapsed().as_secs_f64());
    }
    let gap = y_bf16
        .iter()
        .zip(&y_f32)
        .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
        .fold(0f32, f32::max);
    let flop = 2.0 * (rows * d_in * d_out) as f64;
    let (b, f) = (median(t_bf16.split_off(2)), median(t_f32.split_off(2)));
    println!(
        "[{rows} x {d_in}] . [{d_in} x {d_out}], {} threads: bf16 {:.2} ms ({:.0} GFLOP/s, operands packed beforehand), \
         f32 gemm {:.2} ms ({:.0} GFLOP/s), speed-up {:.2}x, largest relative gap {gap:.1e}",
        rayon::current_num_threads(),
        b * 1e3,
        flop / b / 1e9,
        f * 1e3,
        flop / f / 1e9,
        f / b
    );
}
