//! Attention rollout (Abnar & Zuidema 2020), in the form the ViT authors used: heads averaged,
//! the identity added for the residual path, rows renormalised, layers multiplied with the
//! newer layer on the left.

use super::Matrix;

/// Mean over heads of one image's attention `[heads, T, T]` (row-major).
pub fn head_mean(attn: &[f32], heads: usize, tokens: usize) -> Matrix {
    let tt = tokens * tokens;
    let mut data = vec![0.0; tt];
    for h in 0..heads {
        for (d, &a) in data.iter_mut().zip(&attn[h * tt..(h + 1) * tt]) {
            *d += a as f64;
        }
    }
    data.iter_mut().for_each(|d| *d /= heads as f64);
    Matrix { n: tokens, data }
}

/// `(A + I)` with rows renormalised: for row-stochastic `A` this is `0.5·A + 0.5·I`.
pub fn residual_mix(a: &Matrix) -> Matrix {
    let n = a.n;
    let mut data = a.data.clone();
    for i in 0..n {
        data[i * n + i] += 1.0;
        let sum: f64 = data[i * n..(i + 1) * n].iter().sum();
        data[i * n..(i + 1) * n].iter_mut().for_each(|v| *v /= sum);
    }
    Matrix { n, data }
}

/// Joint attention through all layers, `aug[L-1] · … · aug[0]`, from per-layer attention
/// already fused over heads.
pub fn attention_rollout(layers: &[Matrix]) -> Option<Matrix> {
    let mut joint: Option<Matrix> = None;
    for a in layers {
        let aug = residual_mix(a);
        joint = Some(match joint {
            None => aug,
            Some(j) => aug.matmul(&j),
        });
    }
    joint
}

/// Row `token` (a prefix token, e.g. the class token 0) over the patch tokens (columns
/// `prefix..`), as a `grid` map.
pub fn class_token_map(joint: &Matrix, token: usize, prefix: usize) -> Vec<f64> {
    joint.row(token)[prefix..].to_vec()
}
