//! Position embeddings at another resolution: the grid part resized as timm's
//! `resample_abs_pos_embed` does, the prefix (class-token) rows kept. Shared by every family
//! with a learned position grid.

/// How the position-embedding grid is resized (timm's `resample_abs_pos_embed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// Bicubic with antialiasing, as timm's `checkpoint_filter_fn` for .pth/safetensors files.
    BicubicAntialias,
    /// Bilinear without antialiasing (align_corners=False), as timm's loader for Google .npz files.
    Bilinear,
    /// Plain bicubic (`F.interpolate(mode='bicubic', align_corners=False)`: a = −0.75, edge
    /// indices clamped), as timm's NesT `resize_pos_embed`.
    Bicubic,
}

/// PyTorch's plain bicubic kernel (a = −0.75).
fn cubic(x: f64) -> f64 {
    let a = -0.75;
    let x = x.abs();
    if x <= 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// PyTorch's antialiased bicubic kernel (a = -0.5, as PIL).
fn cubic_aa(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// Interpolation weights of each output index over the input indices along one axis:
/// (first input index, weights). Mirrors `F.interpolate(..., align_corners=False)`.
fn axis_weights(input: usize, output: usize, mode: Resample) -> Vec<(usize, Vec<f64>)> {
    let scale = input as f64 / output as f64;
    (0..output)
        .map(|i| match mode {
            Resample::BicubicAntialias => {
                // Separable antialias filter: widened by the scale when shrinking.
                let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
                let inv = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
                let centre = scale * (i as f64 + 0.5);
                let lo = ((centre - support + 0.5).floor().max(0.0)) as usize;
                let hi = ((centre + support + 0.5).floor() as usize).min(input);
                let mut w: Vec<f64> = (lo..hi)
                    .map(|j| cubic_aa((j as f64 - centre + 0.5) * inv))
                    .collect();
                let total: f64 = w.iter().sum();
                if total != 0.0 {
                    w.iter_mut().for_each(|v| *v /= total);
                }
                (lo, w)
            }
            Resample::Bicubic => {
                let src = (i as f64 + 0.5) * scale - 0.5;
                let floor = src.floor();
                let t = src - floor;
                // Four taps at floor−1 … floor+2, clamped to the edge (repeated edge values).
                let taps = [-1.0, 0.0, 1.0, 2.0].map(|k| {
                    let index = (floor + k).clamp(0.0, (input - 1) as f64) as usize;
                    (index, cubic(t - k))
                });
                let lo = taps.iter().map(|&(j, _)| j).min().unwrap_or(0);
                let hi = taps.iter().map(|&(j, _)| j).max().unwrap_or(0);
                let mut w = vec![0.0; hi - lo + 1];
                for (j, weight) in taps {
                    w[j - lo] += weight;
                }
                (lo, w)
            }
            Resample::Bilinear => {
                let src = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
                let lo = (src.floor() as usize).min(input - 1);
                let hi = (lo + 1).min(input - 1);
                let t = src - lo as f64;
                if hi == lo {
                    (lo, vec![1.0])
                } else {
                    (lo, vec![1.0 - t, t])
                }
            }
        })
        .collect()
}

/// Resizes the patch part of a `[T, D]` position embedding from `old` to `new` grid; the
/// `prefix` class-token rows are copied unchanged.
pub fn resample_pos_embed(
    pos: &[f32],
    dim: usize,
    prefix: usize,
    old: [usize; 2],
    new: [usize; 2],
    mode: Resample,
) -> Vec<f32> {
    let grid = &pos[prefix * dim..];
    let rows = axis_weights(old[0], new[0], mode);
    let cols = axis_weights(old[1], new[1], mode);
    // Width pass, then height pass, in f64.
    let mut wide = vec![0f64; old[0] * new[1] * dim];
    for y in 0..old[0] {
        for (x, (lo, w)) in cols.iter().enumerate() {
            let out = &mut wide[(y * new[1] + x) * dim..(y * new[1] + x + 1) * dim];
            for (k, wk) in w.iter().enumerate() {
                let src = &grid[(y * old[1] + lo + k) * dim..(y * old[1] + lo + k + 1) * dim];
                out.iter_mut().zip(src).for_each(|(o, &s)| *o += wk * s as f64);
            }
        }
    }
    let mut result: Vec<f32> = pos[..prefix * dim].to_vec();
    let mut tall = vec![0f64; new[0] * new[1] * dim];
    for (y, (lo, w)) in rows.iter().enumerate() {
        for x in 0..new[1] {
            let out = &mut tall[(y * new[1] + x) * dim..(y * new[1] + x + 1) * dim];
            for (k, wk) in w.iter().enumerate() {
                let src = &wide[((lo + k) * new[1] + x) * dim..((lo + k) * new[1] + x + 1) * dim];
                out.iter_mut().zip(src).for_each(|(o, &s)| *o += wk * s);
            }
        }
    }
    result.extend(tall.into_iter().map(|v| v as f32));
    result
}
