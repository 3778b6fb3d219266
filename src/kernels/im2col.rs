//! Gathering a channels-last map's convolution windows into rows (`im2col`) and scattering row
//! gradients back (`col2im`), for a dense convolution run as one matrix product.
//!
//! Why: flex's direct convolution on NCHW maps is slow for CMT's stem (3×3, 16 channels, at
//! the full input resolution: a fifth of a small CMT's multiply-adds). As rows
//! `[B·Ho·Wo, k·k·C]` (window position major, channel minor) the convolution is a linear layer,
//! which vitkit's matrix kernels run at full speed, forward and backward. A window's row of `k`
//! pixels is `k·C` contiguous values in both layouts, so the copies and sums run over whole
//! window rows where the window lies inside the map.

use rayon::prelude::*;

use super::cpu::dispatch_wide;
use super::depthwise::{Geometry, min_rows};

/// The first input column of output column `ox`'s window, when the whole window row lies
/// inside the map.
fn interior(g: &Geometry, ox: usize) -> Option<usize> {
    let first = (ox * g.stride).checked_sub(g.padding)?;
    (first + g.kernel <= g.width).then_some(first)
}

// Output row `(b, oy)`'s windows into `out` (`[Wo, k·k·C]`, zeroed).
dispatch_wide!(gather_row(x: &[f32], out: &mut [f32], g: Geometry, b: usize, oy: usize) {
    let (c, k) = (g.channels, g.kernel);
    let width = k * k * c;
    for (ox, window) in out.chunks_exact_mut(width).enumerate() {
        for ky in 0..k {
            let Some(iy) = g.input_at(oy, ky, g.height) else { continue };
            let row = &x[(b * g.height + iy) * g.width * c..];
            let dst = &mut window[ky * k * c..(ky + 1) * k * c];
            match interior(&g, ox) {
                Some(first) => {
                    for (d, &v) in dst.iter_mut().zip(&row[first * c..(first + k) * c]) {
                        *d = v;
                    }
                }
                None => {
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
});

// Adds image `b`'s window gradients (`cols`, `[Ho·Wo, k·k·C]`) into its map gradient `dx`.
dispatch_wide!(scatter_image(cols: &[f32], dx: &mut [f32], g: Geometry) {
    let (c, k) = (g.channels, g.kernel);
    let (ho, wo) = (g.out_height(), g.out_width());
    let width = k * k * c;
    for oy in 0..ho {
        for ox in 0..wo {
            let window = &cols[(oy * wo + ox) * width..(oy * wo + ox + 1) * width];
            for ky in 0..k {
                let Some(iy) = g.input_at(oy, ky, g.height) else { continue };
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

/// `x: [B, H, W, C]` → rows `[B·Ho·Wo, k·k·C]`, zeros where a window leaves the map.
pub fn im2col(x: &[f32], g: Geometry) -> Vec<f32> {
    let (ho, wo) = (g.out_height(), g.out_width());
    let width = g.kernel * g.kernel * g.channels;
    let mut cols = vec![0.0f32; g.batch * ho * wo * width];
    if width == 0 {
        return cols;
    }
    cols.par_chunks_mut(wo * width)
        .enumerate()
        .with_min_len(min_rows(wo * width))
        .for_each(|(row, out)| gather_row(x, out, g, row / ho, row % ho));
    cols
}

/// The gradient of the map from the gradient of its rows: each window's values added back
/// where they were read, one image per task.
pub fn col2im(cols: &[f32], g: Geometry) -> Vec<f32> {
    let (ho, wo) = (g.out_height(), g.out_width());
    let width = g.kernel * g.kernel * g.channels;
    let plane = g.height * g.width * g.channels;
    let mut dx = vec![0.0f32; g.batch * plane];
    if plane == 0 || width == 0 {
        return dx;
    }
    dx.par_chunks_mut(plane)
        .zip(cols.par_chunks(ho * wo * width))
        .for_each(|(d, c)| scatter_image(c, d, g));
    dx
}
