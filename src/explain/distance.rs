//! Mean attention distance (ViT paper Fig. 7/11): the attention-weighted pixel distance
//! between a query patch and the patches it attends to.
//!
//! As probing-vits computes it: the class token is dropped from both axes and the remaining
//! rows are **not** renormalised (so a query that attends to the class token contributes less),
//! distances are Euclidean on the patch grid times the patch size (pixels).

use super::Matrix;

/// Pixel distance between the centres of patches `i` and `j` of a `grid` (row-major).
pub fn grid_distances(grid: [usize; 2], patch: usize) -> Matrix {
    let n = grid[0] * grid[1];
    let mut data = vec![0.0; n * n];
    for i in 0..n {
        let (yi, xi) = ((i / grid[1]) as f64, (i % grid[1]) as f64);
        for j in 0..n {
            let (yj, xj) = ((j / grid[1]) as f64, (j % grid[1]) as f64);
            data[i * n + j] = patch as f64 * ((yi - yj).powi(2) + (xi - xj).powi(2)).sqrt();
        }
    }
    Matrix { n, data }
}

/// Per head, the mean over queries of `Σ_j A[i, j] · dist(i, j)` for one image's attention
/// `[heads, T, T]` with `prefix` leading non-patch tokens.
pub fn mean_attention_distance(
    attn: &[f32],
    heads: usize,
    tokens: usize,
    prefix: usize,
    dist: &Matrix,
) -> Vec<f64> {
    let n = tokens - prefix;
    assert_eq!(dist.n, n, "distance matrix must match the patch count");
    (0..heads)
        .map(|h| {
            let head = &attn[h * tokens * tokens..(h + 1) * tokens * tokens];
            let mut total = 0.0;
            for i in 0..n {
                let row = &head[(i + prefix) * tokens + prefix..(i + prefix + 1) * tokens];
                total += row
                    .iter()
                    .zip(dist.row(i))
                    .map(|(&a, &d)| a as f64 * d)
                    .sum::<f64>();
            }
            total / n as f64
        })
        .collect()
}
