//! The arithmetic behind `vitkit explain`, checked against independent computations.

use std::path::Path;

use vitkit::explain::{
    Matrix, attention_rollout, grid_distances, head_mean, mean_attention_distance, position_similarity,
    residual_mix,
};

fn row_sums(m: &Matrix) -> Vec<f64> {
    (0..m.n).map(|i| m.row(i).iter().sum()).collect()
}

#[test]
fn rollout_matches_the_reference_implementation() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rollout.json");
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (layers, t) = (
        fixture["layers"].as_u64().unwrap() as usize,
        fixture["tokens"].as_u64().unwrap() as usize,
    );
    let att: Vec<f64> = fixture["attention"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let want: Vec<f64> = fixture["joint"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let mats: Vec<Matrix> = (0..layers)
        .map(|l| Matrix {
            n: t,
            data: att[l * t * t..(l + 1) * t * t].to_vec(),
        })
        .collect();
    for m in &mats {
        let mixed = residual_mix(m);
        assert!(row_sums(&mixed).iter().all(|s| (s - 1.0).abs() < 1e-12));
        // For row-stochastic A, (A + I) renormalised is 0.5·A + 0.5·I.
        for i in 0..t {
            for j in 0..t {
                let expect = 0.5 * m.at(i, j) + if i == j { 0.5 } else { 0.0 };
                assert!((mixed.at(i, j) - expect).abs() < 1e-12);
            }
        }
    }
    let joint = attention_rollout(&mats).unwrap();
    assert!(row_sums(&joint).iter().all(|s| (s - 1.0).abs() < 1e-9));
    let max = joint
        .data
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(max < 1e-12, "max |Δ| = {max}");
}

#[test]
fn head_mean_averages_heads() {
    // Two heads over 2 tokens: identity and swap.
    let attn = [1.0f32, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0];
    assert_eq!(head_mean(&attn, 2, 2).data, vec![0.5; 4]);
}

/// `[heads, T, T]` attention with a class token, from a per-query rule over patches.
fn attention(heads: usize, grid: usize, rule: impl Fn(usize, usize) -> f32) -> Vec<f32> {
    let n = grid * grid;
    let t = n + 1;
    let mut a = vec![0f32; heads * t * t];
    for h in 0..heads {
        a[h * t * t] = 1.0; // the class token attends to itself
        for i in 0..n {
            for j in 0..n {
                a[h * t * t + (i + 1) * t + j + 1] = rule(i, j);
            }
        }
    }
    a
}

#[test]
fn identity_attention_has_zero_distance() {
    let grid = 4;
    let a = attention(3, grid, |i, j| if i == j { 1.0 } else { 0.0 });
    let d = mean_attention_distance(&a, 3, grid * grid + 1, 1, &grid_distances([grid, grid], 7));
    assert_eq!(d, vec![0.0; 3]);
}

#[test]
fn uniform_attention_gives_the_mean_pairwise_patch_distance() {
    let (grid, patch) = (4usize, 7usize);
    let n = grid * grid;
    let a = attention(2, grid, |_, _| 1.0 / n as f32);
    let got = mean_attention_distance(&a, 2, n + 1, 1, &grid_distances([grid, grid], patch));
    // Brute force over patch-centre coordinates in pixels.
    let centre = |k: usize| {
        (
            ((k / grid) as f64 + 0.5) * patch as f64,
            ((k % grid) as f64 + 0.5) * patch as f64,
        )
    };
    let mut total = 0.0;
    for i in 0..n {
        for j in 0..n {
            let ((y0, x0), (y1, x1)) = (centre(i), centre(j));
            total += ((y0 - y1).powi(2) + (x0 - x1).powi(2)).sqrt();
        }
    }
    let want = total / (n * n) as f64;
    for g in got {
        assert!((g - want).abs() < 1e-5, "{g} vs {want}");
    }
}

#[test]
fn position_similarity_has_a_unit_diagonal_and_is_symmetric() {
    let (t, d) = (10, 6);
    let pos: Vec<f32> = (0..t * d).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.1).collect();
    let s = position_similarity(&pos, t, d, 1);
    assert_eq!(s.n, t - 1);
    for i in 0..s.n {
        assert!((s.at(i, i) - 1.0).abs() < 1e-12);
        for j in 0..s.n {
            assert!((s.at(i, j) - s.at(j, i)).abs() < 1e-12);
            assert!(s.at(i, j).abs() <= 1.0 + 1e-12);
        }
    }
}

#[test]
fn filter_components_find_the_dominant_direction() {
    // 50 filters of 4 inputs: large spread along (1, 1, 0, 0), small along (0, 0, 1, -1).
    let mut w = Vec::new();
    for k in 0..50 {
        let a = (k as f32 - 25.0) * 0.2;
        let b = if k % 2 == 0 { 0.1 } else { -0.1 };
        w.extend([a, a, b, -b]);
    }
    let (components, explained) = vitkit::explain::patch_embedding_components(&w, 50, 4, 2);
    let s = 1.0 / 2f64.sqrt();
    let first = &components[0];
    let dot = (first[0] * s + first[1] * s).abs();
    assert!((dot - 1.0).abs() < 1e-6, "{first:?}");
    let second = &components[1];
    assert!(
        ((second[2] * s - second[3] * s).abs() - 1.0).abs() < 1e-6,
        "{second:?}"
    );
    assert!(explained[0] > 0.99 && explained[0] + explained[1] > 0.999999);
}

/// Grad-CAM's channel weights are the mean gradient of the class score over the map's
/// positions: checked against central differences of the head on the feature map, and the map
/// against ReLU(Σ α_c A_c) recomputed here.
#[test]
fn grad_cam_weights_are_the_class_score_gradient() {
    use burn::tensor::{Device, Distribution, Tensor, TensorData};
    use vitkit::models::{GlobalPool, ModelConfig, VitConfig};
    let device = Device::flex();
    let config = ModelConfig::Vit(VitConfig {
        num_classes: 3,
        global_pool: GlobalPool::Avg,
        ..VitConfig::new(16, 4, 16, 2, 2)
    });
    let model = config.build(&device).unwrap();
    let x = Tensor::<4>::random([1, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    let class = 2;
    let cam = vitkit::explain::grad_cam(&model, x.clone(), Some(class)).unwrap();
    assert_eq!(cam.grid, [4, 4]);
    assert_eq!((cam.weights.len(), cam.map.len()), (16, 16));

    let spatial = model.spatial_map().unwrap();
    let map = spatial.feature_map(x);
    let values: Vec<f32> = map.clone().into_data().try_to_vec().unwrap();
    let score = |v: &[f32]| -> f64 {
        let m = Tensor::<4>::from_data(TensorData::new(v.to_vec(), [1, 16, 4, 4]), &device);
        let logits: Vec<f32> = spatial.classify_map(m).into_data().try_to_vec().unwrap();
        logits[class] as f64
    };
    let eps = 1e-2;
    for c in [0, 5, 11] {
        // Every position of channel c at once: the mean gradient times 16 positions.
        let shifted = |sign: f32| -> Vec<f32> {
            let mut v = values.clone();
            v[c * 16..(c + 1) * 16].iter_mut().for_each(|x| *x += sign * eps);
            v
        };
        let numeric = (score(&shifted(1.0)) - score(&shifted(-1.0))) / (2.0 * eps as f64) / 16.0;
        let got = cam.weights[c];
        assert!(
            (got - numeric).abs() < 2e-3 * (1.0 + numeric.abs()),
            "channel {c}: {got} vs {numeric}"
        );
    }
    assert!(
        cam.weights.iter().any(|w| w.abs() > 1e-4),
        "the weights are not all zero"
    );
    for i in 0..16 {
        let s: f64 = (0..16).map(|c| cam.weights[c] * values[c * 16 + i] as f64).sum();
        assert!((cam.map[i] - s.max(0.0)).abs() < 1e-6, "position {i}");
    }
    // A class-token ViT has no map the head pools: a clear error.
    let token = ModelConfig::Vit(VitConfig::new(16, 4, 16, 2, 2))
        .build(&device)
        .unwrap();
    let x = Tensor::<4>::zeros([1, 3, 16, 16], &device);
    let err = vitkit::explain::grad_cam(&token, x, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("spatial feature map"), "{err}");
}
