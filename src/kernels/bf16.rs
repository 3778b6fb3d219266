//! Linear-layer products in bf16 with f32 sums, on AVX-512 BF16 (`vdpbf16ps`): what PyTorch's
//! CPU autocast does for inference, off unless switched on (`set_bf16_products`).
//!
//! Why: on a CPU with AVX-512 BF16 one `vdpbf16ps` does twice the multiply-adds of an f32 FMA;
//! measured on vit_base's layers (docs/performance.md), such a kernel ran 2.2–3x faster than the
//! f32 gemm. Inputs and weights are rounded to bf16 (8 bits of mantissa); sums stay in f32.
//!
//! Layout: the weight is read as PyTorch stores it, `[out, in]`, and packed into panels of 64
//! output features holding bf16 pairs of consecutive inputs (`[k / 2][64]`), once per weight
//! (see [`pin`]); the input is packed per call into tiles of 6 tokens (`[k / 2][6]`). One
//! micro-tile (64 features x 6 tokens) keeps 24 accumulators in registers and adds onto the
//! row-major output.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use burn::backend::flex::FlexTensor;

use rayon::prelude::*;

use super::SendPtr;
use super::views::View;

/// Output features per micro-tile: four registers of sixteen f32 lanes.
const FEATURES: usize = 64;
/// Tokens per micro-tile, each broadcast against the four weight registers.
const TOKENS: usize = 6;
/// Token tiles per pass over a weight panel, so that their packed rows stay in cache.
const TILES_PER_GROUP: usize = 16;

static ON: AtomicBool = AtomicBool::new(false);

/// Whether this CPU has the instructions (AVX-512 F and BF16).
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Switches bf16 products on or off for every fused linear layer of this process (forward
/// passes only; gradients stay f32). Fails on a CPU without AVX-512 BF16.
pub fn set_bf16_products(on: bool) -> Result<(), String> {
    if on && !supported() {
        return Err("bf16 products need a CPU with AVX-512 BF16 (avx512_bf16), which this one lacks".into());
    }
    ON.store(on, Ordering::Relaxed);
    if !on {
        *PINNED.lock().unwrap_or_else(|e| e.into_inner()) = (Vec::new(), 0);
    }
    Ok(())
}

/// Whether bf16 products are switched on.
pub fn bf16_products() -> bool {
    ON.load(Ordering::Relaxed)
}

/// A weight packed into bf16 panels, kept with a handle on the weight's storage: while the
/// handle lives, flex copies the storage before any write through another handle
/// (`Arc::make_mut`), and the memory cannot be freed and reused, so a view with the same key
/// reads exactly the values that were packed.
struct Pinned {
    _weight: FlexTensor,
    key: (usize, usize, usize, isize, isize),
    panels: Arc<Vec<u32>>,
}

/// Packed weights kept between calls, and their total size in bytes.
static PINNED: Mutex<(Vec<Pinned>, usize)> = Mutex::new((Vec::new(), 0));

/// Packed bf16 bytes kept at most; past it the cache starts again (a model is packed on its
/// first forward pass, ViT-B/16 in 172 MB).
const PINNED_MAX_BYTES: usize = 1 << 30;

/// Packs `weight` (seen through `view`) once and keeps it for later calls, when bf16 products
/// apply to it. Why: for one image, packing ViT-B/16's 86 M weights on every forward pass took
/// as long as its products.
pub fn pin(weight: &FlexTensor, view: View) {
    if !applies(view) {
        return;
    }
    if pinned(view).is_some() {
        return;
    }
    // Packed outside the lock: the packing runs on rayon's threads.
    let panels = pack_weight(view);
    let bytes = panels.len() * 4;
    let key = view.key();
    let mut pinned = PINNED.lock().unwrap_or_else(|e| e.into_inner());
    if pinned.0.iter().any(|p| p.key == key) {
        return;
    }
    if pinned.1 + bytes > PINNED_MAX_BYTES {
        *pinned = (Vec::new(), 0);
    }
    pinned.1 += bytes;
    pinned.0.push(Pinned {
        _weight: weight.clone(),
        key,
        panels: Arc::new(panels),
    });
}

fn pinned(view: View) -> Option<Arc<Vec<u32>>> {
    let key = view.key();
    let pinned = PINNED.lock().unwrap_or_else(|e| e.into_inner());
    pinned.0.iter().find(|p| p.key == key).map(|p| p.panels.clone())
}

/// Every 64-feature panel of the weight, in order, packed in parallel.
fn pack_weight(w: View) -> Vec<u32> {
    let half = w.rows / 2;
    let mut panels = vec![0u32; w.cols * half];
    panels
        .par_chunks_mut(half * FEATURES)
        .enumerate()
        .for_each(|(panel, dst)| pack_panel(w, panel, dst));
    panels
}

/// Panel `panel` of the weight (64 output features) as `[k / 2][64]` pairs.
fn pack_panel(w: View, panel: usize, dst: &mut [u32]) {
    for f in 0..FEATURES {
        pack_pairs(w.contiguous_column(panel * FEATURES + f), &mut dst[f..], FEATURES);
    }
}

/// Whether a product `[rows, d_in] · w` takes the bf16 path: switched on, and a weight that
/// [`fits`]. Other layers (a 1000-class head, say) stay f32.
pub fn applies(w: View) -> bool {
    bf16_products() && fits(w)
}

/// A weight stored `[out, in]` (`w` viewed `[d_in, d_out]` with unit row stride) with an even
/// input width and an output width in whole 64-feature panels.
fn fits(w: View) -> bool {
    w.row_stride() == 1 && w.rows.is_multiple_of(2) && w.cols.is_multiple_of(FEATURES) && w.rows > 0
}

/// f32 to bf16, rounded to nearest even; NaN stays NaN.
fn bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// Two bf16 values in one word, the lower `k` in the lower half (`vdpbf16ps`'s order).
fn pair(lo: f32, hi: f32) -> u32 {
    bf16(lo) as u32 | (bf16(hi) as u32) << 16
}

/// `out += x · w` for `x: [rows, d_in]` row-major, `w` as in [`applies`], `out: [rows, d_out]`
/// row-major and initialised (zeros, bias rows or a residual).
pub fn accumulate(out: &mut [f32], x: &[f32], rows: usize, w: View) {
    assert!(
        fits(w) && supported(),
        "bf16 products do not apply to this weight or CPU"
    );
    let (d_in, d_out) = (w.rows, w.cols);
    assert_eq!(x.len(), rows * d_in, "input does not match its shape");
    assert_eq!(out.len(), rows * d_out, "output does not match its shape");
    if rows == 0 {
        return;
    }
    let half = d_in / 2;
    let tiles = rows.div_ceil(TOKENS);
    let mut packed_x = vec![0u32; tiles * half * TOKENS];
    packed_x
        .par_chunks_mut(half * TOKENS)
        .enumerate()
        .for_each(|(tile, packed)| {
            for j in 0..TOKENS.min(rows - tile * TOKENS) {
                pack_pairs(&x[(tile * TOKENS + j) * d_in..][..d_in], &mut packed[j..], TOKENS);
            }
        });

    let panels = d_out / FEATURES;
    // A pinned weight is packed already; any other is packed here, for this call.
    let packed_w = pinned(w).unwrap_or_else(|| Arc::new(pack_weight(w)));
    let threads = rayon::current_num_threads().clamp(1, panels);
    let out_at = SendPtr(out.as_mut_ptr());
    (0..threads).into_par_iter().for_each(|thread| {
        let mine = thread * panels / threads..(thread + 1) * panels / threads;
        for group in (0..tiles).step_by(TILES_PER_GROUP) {
            for panel in mine.clone() {
                for tile in group..(group + TILES_PER_GROUP).min(tiles) {
                    let tokens = TOKENS.min(rows - tile * TOKENS);
                    // SAFETY: the CPU was checked above; the packed panel and tile hold
                    // `half * 64` and `half * 6` words; each thread writes only its own panels'
                    // columns of `out`, rows `tile * 6 ..` of which `tokens` exist.
                    unsafe {
                        micro_tile(
                            half,
                            packed_w.as_ptr().add(panel * half * FEATURES),
                            packed_x.as_ptr().add(tile * half * TOKENS),
                            out_at.get().add(tile * TOKENS * d_out + panel * FEATURES),
                            d_out,
                            tokens,
                        )
                    };
                }
            }
        }
    });
}

/// `dst[q * stride] = pair(src[2q], src[2q + 1])` for every pair of `src` (even length).
fn pack_pairs(src: &[f32], dst: &mut [u32], stride: usize) {
    let pairs = src.len() / 2;
    assert!(
        pairs == 0 || (pairs - 1) * stride < dst.len(),
        "packed pairs reach past their panel"
    );
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if supported() {
        // SAFETY: the CPU has the instructions; bounds checked above.
        done = unsafe { pack_pairs_avx512(src, dst, stride) };
    }
    for q in done..pairs {
        dst[q * stride] = pair(src[2 * q], src[2 * q + 1]);
    }
}

/// [`pack_pairs`] sixteen pairs at a time (`vcvtne2ps2bf16` rounds to nearest even, as
/// [`bf16`] does); returns how many pairs it packed.
///
/// # Safety
/// The CPU has AVX-512 F and BF16; `dst` holds `(src.len() / 2 - 1) * stride + 1` words.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_pairs_avx512(src: &[f32], dst: &mut [u32], stride: usize) -> usize {
    use std::arch::x86_64::*;
    let blocks = src.len() / 32;
    let mut words = [0u32; 16];
    for b in 0..blocks {
        // SAFETY: 32 floats of `src` from `32 b`; `words` holds 16 words.
        unsafe {
            let lo = _mm512_loadu_ps(src.as_ptr().add(32 * b));
            let hi = _mm512_loadu_ps(src.as_ptr().add(32 * b + 16));
            // Lanes 0..16 from `lo`, 16..32 from `hi`: in order, so word q holds pair q.
            let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(words.as_mut_ptr().cast(), packed);
        }
        for (q, &word) in words.iter().enumerate() {
            dst[(16 * b + q) * stride] = word;
        }
    }
    16 * blocks
}

/// Adds one 64-feature x 6-token tile over the whole depth onto `out` (row stride `ld`), for
/// its first `tokens` tokens.
///
/// # Safety
/// The CPU has AVX-512 F and BF16; `w` holds `half * 64` and `x` `half * 6` words; `out` has
/// `tokens` initialised rows of 64 floats at stride `ld`, touched by no other thread.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn micro_tile(half: usize, w: *const u32, x: *const u32, out: *mut f32, ld: usize, tokens: usize) {
    use std::arch::x86_64::*;
    // One row of four registers (64 features) per token.
    let mut acc = [[_mm512_setzero_ps(); 4]; TOKENS];
    for q in 0..half {
        // SAFETY: inside the packed panel and tile, by the caller's sizes.
        unsafe {
            let wq = w.add(q * FEATURES);
            let lanes: [__m512bh; 4] =
                std::array::from_fn(|r| std::mem::transmute(_mm512_loadu_si512(wq.add(16 * r).cast())));
            let xq = x.add(q * TOKENS);
            for (j, acc) in acc.iter_mut().enumerate() {
                let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(*xq.add(j) as i32));
                for (a, lane) in acc.iter_mut().zip(lanes) {
                    *a = _mm512_dpbf16_ps(*a, lane, b);
                }
            }
        }
    }
    for (j, acc) in acc.iter().enumerate().take(tokens) {
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: row `j` of the tile, inside `out` by the caller's sizes.
            unsafe {
                let p = out.add(j * ld + 16 * r);
                _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), *a));
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn micro_tile(_: usize, _: *const u32, _: *const u32, _: *mut f32, _: usize, _: usize) {
    unreachable!("bf16 products are refused on CPUs without AVX-512 BF16")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_to_bf16_is_to_nearest_even() {
        assert_eq!(bf16(1.0), 0x3f80);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16(-2.5), 0xc020);
        assert!(f32::from_bits((bf16(f32::NAN) as u32) << 16).is_nan());
        assert_eq!(pair(1.0, -2.5), 0xc020_3f80);
    }

    #[test]
    #[cfg_attr(no_avx512_bf16, ignore = "this CPU has no AVX-512 BF16")]
    fn vector_packing_rounds_as_the_scalar_conversion() {
        assert!(
            supported(),
            "built where AVX-512 BF16 exists, run where it does not"
        );
        // 70 values: two blocks of 32 through the vector path, three pairs after it; ties
        // (x.5 in the last kept bit) in both.
        let src: Vec<f32> = (0..70)
            .map(|i| match i % 5 {
                0 => 1.0 + 1.0 / 256.0,
                1 => -(1.0 + 3.0 / 256.0),
                _ => (i as f32 * 0.377).sin() * 3.1,
            })
            .collect();
        let mut packed = vec![0u32; 35 * 3];
        pack_pairs(&src, &mut packed, 3);
        for q in 0..35 {
            assert_eq!(packed[3 * q], pair(src[2 * q], src[2 * q + 1]), "pair {q}");
        }
    }

    /// Against sums in f64 of the bf16-rounded inputs' products, which the kernel must match up
    /// to f32 rounding of its sums (products of two bf16 values are exact in f32). Shapes with a
    /// partial token tile (13 = 6 + 6 + 1 rows) and two weight panels, onto a non-zero start.
    #[test]
    #[cfg_attr(no_avx512_bf16, ignore = "this CPU has no AVX-512 BF16")]
    fn bf16_products_match_sums_of_rounded_inputs() {
        assert!(
            supported(),
            "built where AVX-512 BF16 exists, run where it does not"
        );
        let (rows, d_in, d_out) = (13, 70, 128);
        let value = |i: usize, seed: usize| (((i * 7919 + seed) % 1000) as f32 / 500.0 - 1.0) * 1.7;
        let x: Vec<f32> = (0..rows * d_in).map(|i| value(i, 1)).collect();
        let w_out_in: Vec<f32> = (0..d_out * d_in).map(|i| value(i, 2)).collect();
        let start: Vec<f32> = (0..rows * d_out).map(|i| value(i, 3)).collect();
        let w = View::row_major(&w_out_in, d_out, d_in).t();
        assert!(fits(w));
        let mut out = start.clone();
        accumulate(&mut out, &x, rows, w);
        let round = |v: f32| f32::from_bits((bf16(v) as u32) << 16) as f64;
        for r in 0..rows {
            for o in 0..d_out {
                let sum: f64 = (0..d_in)
                    .map(|k| round(x[r * d_in + k]) * round(w_out_in[o * d_in + k]))
                    .sum();
                let expected = start[r * d_out + o] as f64 + sum;
                let got = out[r * d_out + o] as f64;
                assert!(
                    (got - expected).abs() < 1e-4 * (1.0 + expected.abs()),
                    "row {r}, feature {o}: {got} vs {expected}"
                );
            }
        }
    }
}
