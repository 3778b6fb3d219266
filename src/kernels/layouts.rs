//! Test support: a product checked against sums in f64 in every layout the kernels take (each
//! operand as stored or transposed, the output row- or column-major, padded strides), with and
//! without accumulation.

use std::mem::MaybeUninit;

use super::views::{View, ViewMut};

/// Storage for an `rows x cols` matrix, row-major with a padded row stride or, when
/// `transposed`, column-major with a padded column stride; the padding holds NaN.
pub fn matrix(rows: usize, cols: usize, transposed: bool, seed: u32) -> (Vec<f32>, isize, isize) {
    let (outer, inner) = if transposed { (cols, rows) } else { (rows, cols) };
    let stride = inner + 3;
    let mut data = vec![f32::NAN; outer * stride];
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    for o in 0..outer {
        for i in 0..inner {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            data[o * stride + i] = (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
        }
    }
    let (rs, cs) = if transposed {
        (1, stride as isize)
    } else {
        (stride as isize, 1)
    };
    (data, rs, cs)
}

fn at(data: &[f32], rs: isize, cs: isize, r: usize, c: usize) -> f32 {
    data[(r as isize * rs + c as isize * cs) as usize]
}

/// Runs `product(dst, a, b, s, accumulate)` (which returns whether it ran) for each
/// `(m, n, k)` in all 16 layouts and checks every output element against an f64 sum, and that
/// the output's padding was never written.
pub fn check_every_layout(
    shapes: &[(usize, usize, usize)],
    product: impl Fn(ViewMut, View, View, f32, bool) -> bool,
) {
    for &(m, n, k) in shapes {
        for bits in 0..16u32 {
            let [ta, tb, td, accumulate] = [0, 1, 2, 3].map(|i| bits >> i & 1 == 1);
            let (a, ars, acs) = matrix(m, k, ta, 1 + bits);
            let (b, brs, bcs) = matrix(k, n, tb, 2 + bits);
            let (d0, drs, dcs) = matrix(m, n, td, 3 + bits);
            let mut d: Vec<MaybeUninit<f32>> = d0.iter().map(|&v| MaybeUninit::new(v)).collect();
            let s = 0.75;
            let ran = product(
                ViewMut::strided(&mut d, 0, m, n, drs, dcs),
                View::strided(&a, 0, m, k, ars, acs),
                View::strided(&b, 0, k, n, brs, bcs),
                s,
                accumulate,
            );
            assert!(ran, "{m}x{n}x{k}, layout bits {bits:04b}: declined");
            // SAFETY: every element was initialised from `d0`.
            let d: Vec<f32> = d.iter().map(|v| unsafe { v.assume_init() }).collect();
            for r in 0..m {
                for c in 0..n {
                    let sum: f64 = (0..k)
                        .map(|i| at(&a, ars, acs, r, i) as f64 * at(&b, brs, bcs, i, c) as f64)
                        .sum();
                    let start = if accumulate {
                        at(&d0, drs, dcs, r, c) as f64
                    } else {
                        0.0
                    };
                    let want = s as f64 * sum + start;
                    let got = at(&d, drs, dcs, r, c) as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{m}x{n}x{k}, layout bits {bits:04b}, ({r}, {c}): {got} vs {want}"
                    );
                }
            }
            let written = d
                .iter()
                .zip(&d0)
                .filter(|(x, y)| y.is_nan() && !x.is_nan())
                .count();
            assert_eq!(written, 0, "{m}x{n}x{k}, layout bits {bits:04b}: padding written");
        }
    }
}
