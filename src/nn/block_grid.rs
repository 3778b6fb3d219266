//! Image blocks (NesT's): a channels-last map cut into non-overlapping square blocks and put
//! back, on tensors and on the host, and the 3×3 stride-2 max-pool of block aggregation with
//! either padding convention.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// How a 3×3 stride-2 max-pool pads an even-sized map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolPadding {
    /// PyTorch's `padding=1`: windows start at 2i−1 (timm's `nest_*`).
    Symmetric,
    /// TensorFlow's "SAME": nothing before, one after, windows start at 2i (the JAX models
    /// and timm's `nest_*_jx`, which carry the official weights).
    Same,
}

/// A 3×3, stride-2 max-pool of an even-sized channels-last map `[B, H, W, C]` → `[B, H/2,
/// W/2, C]`, padded with −∞: along rows, then along columns (max is separable).
pub fn max_pool_3x3_s2(x: Tensor<4>, padding: PoolPadding) -> Tensor<4> {
    if let Some(y) = crate::kernels::max_pool_3x3_s2(x.clone(), padding == PoolPadding::Same) {
        return y;
    }
    max_pool_axis(max_pool_axis(x, 1, padding), 2, padding)
}

/// A 3-wide, stride-2 max-pool along `axis` (1: rows, 2: columns) of an even-sized
/// channels-last map, padded with −∞. A 3×3 max-pool is this along rows, then along columns.
fn max_pool_axis(x: Tensor<4>, axis: usize, padding: PoolPadding) -> Tensor<4> {
    let dims = x.dims();
    let half = dims[axis] / 2;
    // Pair up positions along the axis: even ones at 2i, odd ones at 2i+1.
    let mut paired = [0usize; 5];
    paired[..axis].copy_from_slice(&dims[..axis]);
    paired[axis] = half;
    paired[axis + 1] = 2;
    paired[axis + 2..].copy_from_slice(&dims[axis + 1..]);
    let pairs = x.reshape(paired);
    let even = pairs.clone().narrow(axis + 1, 0, 1);
    let odd = pairs.narrow(axis + 1, 1, 1);
    let mut out = even.clone().max_pair(odd.clone());
    // The third element of window i: position 2i−1 (symmetric) or 2i+2 (SAME); −∞ (left
    // out) at the edge.
    if half > 1 {
        let shifted = match padding {
            PoolPadding::Symmetric => {
                let inner = odd.narrow(axis, 0, half - 1);
                let edge = neg_inf_like(&inner, axis);
                Tensor::cat(vec![edge, inner], axis)
            }
            PoolPadding::Same => {
                let inner = even.narrow(axis, 1, half - 1);
                let edge = neg_inf_like(&inner, axis);
                Tensor::cat(vec![inner, edge], axis)
            }
        };
        out = out.max_pair(shifted);
    }
    let mut result = dims;
    result[axis] = half;
    out.reshape(result)
}

/// −∞ in the shape of one slice of `like` along `axis`.
fn neg_inf_like(like: &Tensor<5>, axis: usize) -> Tensor<5> {
    let mut dims = like.dims();
    dims[axis] = 1;
    Tensor::full(dims, f32::NEG_INFINITY, &like.device())
}

/// `[B, H, W, C]` → `[B, T, N, C]`: blocks of `b`×`b` tokens in row-major order over the
/// block grid, tokens row-major inside a block.
pub fn blockify(x: Tensor<4>, b: usize) -> Tensor<4> {
    let [n, h, w, c] = x.dims();
    let (gh, gw) = (h / b, w / b);
    if gh == 1 && gw == 1 {
        return x.reshape([n, 1, b * b, c]);
    }
    x.reshape([n, gh, b, gw, b, c])
        .swap_dims(2, 3)
        .reshape([n, gh * gw, b * b, c])
}

/// The inverse of [`blockify`] for a square block grid.
pub fn deblockify(x: Tensor<4>, b: usize) -> Tensor<4> {
    let [n, t, _, c] = x.dims();
    // The block grid is square (NesT's validation makes it so).
    let g = (t as f64).sqrt().round() as usize;
    assert_eq!(g * g, t, "a square block grid");
    if g == 1 {
        return x.reshape([n, b, b, c]);
    }
    x.reshape([n, g, g, b, b, c])
        .swap_dims(2, 3)
        .reshape([n, g * b, g * b, c])
}

/// `[g·g blocks, b·b tokens, c]` → `[(g·b)², c]` row-major, on the host.
pub fn host_deblockify(values: &[f32], g: usize, b: usize, c: usize) -> Vec<f32> {
    let side = g * b;
    let mut out = vec![0f32; side * side * c];
    for (block, chunk) in values.chunks(b * b * c).enumerate() {
        let (by, bx) = (block / g, block % g);
        for (token, v) in chunk.chunks(c).enumerate() {
            let (y, x) = (by * b + token / b, bx * b + token % b);
            out[(y * side + x) * c..(y * side + x + 1) * c].copy_from_slice(v);
        }
    }
    out
}

/// The inverse of [`host_deblockify`].
pub fn host_blockify(values: &[f32], g: usize, b: usize, c: usize) -> Vec<f32> {
    let side = g * b;
    let mut out = Vec::with_capacity(values.len());
    for block in 0..g * g {
        let (by, bx) = (block / g, block % g);
        for token in 0..b * b {
            let (y, x) = (by * b + token / b, bx * b + token % b);
            out.extend_from_slice(&values[(y * side + x) * c..(y * side + x + 1) * c]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_blocks_round_trip_and_follow_timm_order() {
        // A 4x4 map of 1 channel with value = y*4+x, blocks of 2: block 1 (top right) holds
        // 2, 3, 6, 7.
        let map: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let blocks = host_blockify(&map, 2, 2, 1);
        assert_eq!(&blocks[4..8], &[2.0, 3.0, 6.0, 7.0]);
        assert_eq!(host_deblockify(&blocks, 2, 2, 1), map);
    }
}
