//! A state dict on the host: named f32 tensors, as a weights file holds them. What a family
//! reads facts from (head shape, pooling, position grid) before it is built, and what its
//! weights are resampled in.

use std::collections::BTreeMap;

/// One tensor of a weights file, converted to f32, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Tensors by parameter path (`blocks.0.attn.qkv.weight`).
pub type StateDict = BTreeMap<String, HostTensor>;

/// The shape of `name` in `file` when it has `rank` axes.
pub fn shape_of<'a>(file: &'a StateDict, name: &str, rank: usize) -> Option<&'a [usize]> {
    file.get(name)
        .map(|t| t.shape.as_slice())
        .filter(|s| s.len() == rank)
}

/// The side of a square grid of `n > 0` positions, when `n` is a square.
pub fn square_side(n: usize) -> Option<usize> {
    let side = (n as f64).sqrt().round() as usize;
    (side > 0 && side * side == n).then_some(side)
}
