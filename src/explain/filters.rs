//! Position-embedding similarity (ViT paper Fig. 7 centre) and the principal components of
//! the patch-embedding filters (Fig. 7 left).

use super::Matrix;

/// Cosine similarity between the position embeddings of every pair of patch positions:
/// `pos_embed` is `[T, D]` row-major, the first `prefix` rows belong to class tokens.
pub fn position_similarity(pos_embed: &[f32], tokens: usize, dim: usize, prefix: usize) -> Matrix {
    let n = tokens - prefix;
    let rows: Vec<&[f32]> = (prefix..tokens)
        .map(|t| &pos_embed[t * dim..(t + 1) * dim])
        .collect();
    let norms: Vec<f64> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|&v| (v as f64).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-12)
        })
        .collect();
    let mut data = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            let dot: f64 = rows[i]
                .iter()
                .zip(rows[j])
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
            data[i * n + j] = dot / (norms[i] * norms[j]);
        }
    }
    Matrix { n, data }
}

/// The top `k` principal components of the patch-embedding filters (`weight` is `[D, K]`:
/// D filters of K = C·P·P inputs), with the fraction of variance each explains.
/// Subspace iteration on the K×K covariance of the mean-centred filters.
pub fn patch_embedding_components(
    weight: &[f32],
    filters: usize,
    inputs: usize,
    k: usize,
) -> (Vec<Vec<f64>>, Vec<f64>) {
    let k = k.min(inputs).min(filters);
    let mut mean = vec![0.0; inputs];
    for f in weight.chunks_exact(inputs) {
        for (m, &v) in mean.iter_mut().zip(f) {
            *m += v as f64 / filters as f64;
        }
    }
    let mut cov = vec![0.0; inputs * inputs];
    for f in weight.chunks_exact(inputs) {
        let c: Vec<f64> = f.iter().zip(&mean).map(|(&v, m)| v as f64 - m).collect();
        for i in 0..inputs {
            for j in 0..inputs {
                cov[i * inputs + j] += c[i] * c[j];
            }
        }
    }
    let total_variance: f64 = (0..inputs).map(|i| cov[i * inputs + i]).sum::<f64>().max(1e-30);
    // Deterministic start: a spread of unit-ish vectors.
    let mut q: Vec<Vec<f64>> = (0..k)
        .map(|c| {
            (0..inputs)
                .map(|i| (((i * 7 + c * 13) % 17) as f64 - 8.0) + if i == c { 10.0 } else { 0.0 })
                .collect()
        })
        .collect();
    for _ in 0..300 {
        let mut z: Vec<Vec<f64>> = q
            .iter()
            .map(|v| {
                (0..inputs)
                    .map(|i| (0..inputs).map(|j| cov[i * inputs + j] * v[j]).sum())
                    .collect()
            })
            .collect();
        // Gram-Schmidt keeps the columns orthonormal (ordered by eigenvalue as they converge).
        for c in 0..k {
            for p in 0..c {
                let d: f64 = z[c].iter().zip(&z[p]).map(|(a, b)| a * b).sum();
                let prev = z[p].clone();
                z[c].iter_mut().zip(&prev).for_each(|(a, b)| *a -= d * b);
            }
            let norm = z[c].iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-300);
            z[c].iter_mut().for_each(|a| *a /= norm);
        }
        q = z;
    }
    let explained = q
        .iter()
        .map(|v| {
            let cv: f64 = (0..inputs)
                .map(|i| v[i] * (0..inputs).map(|j| cov[i * inputs + j] * v[j]).sum::<f64>())
                .sum();
            cv / total_variance
        })
        .collect();
    (q, explained)
}
