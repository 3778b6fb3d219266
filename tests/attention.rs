//! The one attention core (`vitkit::nn::Attention`): every path it takes — the fused CPU
//! kernel, Burn's composed operations, separate projections, keys and values from a shorter
//! sequence, an additive bias, boolean and additive masks, prefix queries, weights on request —
//! against an independent attention computed on the host in f64.

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Distribution, Tensor};
use vitkit::nn::{Attention, AttentionArgs, Mask, Projections, Queries};

const HEADS: usize = 2;
const DIM: usize = 8;

fn host<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data()
        .try_to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// `x [n, d_in] · W [d_in, d_out] + b` on the host.
fn linear(x: &[f64], n: usize, layer: &Linear) -> Vec<f64> {
    let w = host(layer.weight.val());
    let [d_in, d_out] = layer.weight.val().dims();
    let b = layer.bias.as_ref().map(|b| host(b.val()));
    let mut out = vec![0.0; n * d_out];
    for i in 0..n {
        for o in 0..d_out {
            let s: f64 = (0..d_in).map(|k| x[i * d_in + k] * w[k * d_out + o]).sum();
            out[i * d_out + o] = s + b.as_ref().map_or(0.0, |b| b[o]);
        }
    }
    out
}

/// softmax(q kᵀ / sqrt(dh) + bias[h] + mask) v per head, heads merged, then `proj`; for one
/// image: `q: [nq, D]`, `k`, `v: [nk, D]`, `bias: [heads, nq, nk]`, `mask: [nq, nk]` additive.
/// Returns the output `[nq, D]` and the weights `[heads, nq, nk]`.
fn reference(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    [nq, nk]: [usize; 2],
    bias: Option<&[f64]>,
    mask: Option<&[f64]>,
    proj: &Linear,
) -> (Vec<f64>, Vec<f64>) {
    let dh = DIM / HEADS;
    let mut merged = vec![0.0; nq * DIM];
    let mut weights = vec![0.0; HEADS * nq * nk];
    for h in 0..HEADS {
        for i in 0..nq {
            let logits: Vec<f64> = (0..nk)
                .map(|j| {
                    let dot: f64 = (0..dh)
                        .map(|c| q[i * DIM + h * dh + c] * k[j * DIM + h * dh + c])
                        .sum();
                    dot / (dh as f64).sqrt()
                        + bias.map_or(0.0, |b| b[(h * nq + i) * nk + j])
                        + mask.map_or(0.0, |m| m[i * nk + j])
                })
                .collect();
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            for j in 0..nk {
                let p = exps[j] / sum;
                weights[(h * nq + i) * nk + j] = p;
                for c in 0..dh {
                    merged[i * DIM + h * dh + c] += p * v[j * DIM + h * dh + c];
                }
            }
        }
    }
    (linear(&merged, nq, proj), weights)
}

fn gap(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// q, k and v of `x` (`[n, D]`) through a fused projection, on the host.
fn fused_qkv(att: &Attention, x: &[f64], n: usize) -> [Vec<f64>; 3] {
    let qkv = linear(x, n, att.qkv.as_ref().unwrap());
    [0, 1, 2].map(|p| {
        (0..n)
            .flat_map(|i| qkv[i * 3 * DIM + p * DIM..i * 3 * DIM + (p + 1) * DIM].to_vec())
            .collect()
    })
}

fn random(shape: [usize; 3], device: &Device) -> Tensor<3> {
    Tensor::<3>::random(shape, Distribution::Normal(0.0, 1.0), device)
}

#[test]
fn fused_projection_paths_match_the_reference() {
    let device = Device::flex();
    let att = Attention::new(DIM, HEADS, Projections::Fused, true, 0.0, 0.0, &device);
    let n = 7;
    let x = random([1, n, DIM], &device);
    let xs = host(x.clone());
    let [q, k, v] = fused_qkv(&att, &xs, n);
    let (want, want_w) = reference(&q, &k, &v, [n, n], None, None, &att.proj);

    // Plain: the fused CPU kernel serves it.
    let qkv = vitkit::kernels::linear(x.clone(), att.qkv.as_ref().unwrap());
    assert!(vitkit::kernels::attention_applies(&qkv));
    let (out, none) = att.forward(x.clone(), &AttentionArgs::default());
    assert!(none.is_none());
    assert!(gap(&host(out), &want) < 1e-5);

    // Weights on request: the composed path's, beside the same output.
    let args = AttentionArgs {
        keep_weights: true,
        ..Default::default()
    };
    let (out, weights) = att.forward(x.clone(), &args);
    assert!(gap(&host(out), &want) < 1e-5);
    assert!(gap(&host(weights.unwrap()), &want_w) < 1e-5);

    // Prefix queries: the first rows of the full output (keys and values from every token).
    let args = AttentionArgs {
        queries: Queries::Prefix(2),
        ..Default::default()
    };
    let (out, _) = att.forward(x.clone(), &args);
    assert_eq!(out.dims(), [1, 2, DIM]);
    assert!(gap(&host(out), &want[..2 * DIM]) < 1e-5);
}

/// Separate q/k/v projections holding the fused layer's weights give the fused layer's output.
#[test]
fn separate_projections_equal_the_fused_ones() {
    let device = Device::flex();
    let fused = Attention::new(DIM, HEADS, Projections::Fused, true, 0.0, 0.0, &device);
    let mut separate = Attention::new(DIM, HEADS, Projections::Separate, true, 0.0, 0.0, &device);
    let qkv = fused.qkv.as_ref().unwrap();
    let (w, b) = (qkv.weight.val(), qkv.bias.as_ref().unwrap().val());
    for (i, layer) in [&mut separate.q, &mut separate.k, &mut separate.v]
        .into_iter()
        .enumerate()
    {
        let layer = layer.as_mut().unwrap();
        let (wi, bi) = (
            w.clone().narrow(1, i * DIM, DIM),
            b.clone().narrow(0, i * DIM, DIM),
        );
        layer.weight = Param::from_tensor(wi);
        layer.bias = Some(Param::from_tensor(bi));
    }
    separate.proj = fused.proj.clone();
    let x = random([2, 5, DIM], &device);
    for keep_weights in [false, true] {
        let args = AttentionArgs {
            keep_weights,
            ..Default::default()
        };
        let (a, wa) = fused.forward(x.clone(), &args);
        let (b, wb) = separate.forward(x.clone(), &args);
        assert!(gap(&host(a), &host(b)) < 1e-5);
        if keep_weights {
            assert!(gap(&host(wa.unwrap()), &host(wb.unwrap())) < 1e-6);
        }
    }
}

/// CMT's attention: keys and values from a shorter sequence, plus a relative position bias.
#[test]
fn reduced_keys_and_an_additive_bias_match_the_reference() {
    let device = Device::flex();
    let att = Attention::new(DIM, HEADS, Projections::Separate, true, 0.0, 0.0, &device);
    let (n, m) = (6, 3);
    let x = random([1, n, DIM], &device);
    let kv = random([1, m, DIM], &device);
    let bias = Tensor::<4>::random([1, HEADS, n, m], Distribution::Normal(0.0, 1.0), &device);
    let (xs, kvs) = (host(x.clone()), host(kv.clone()));
    let q = linear(&xs, n, att.q.as_ref().unwrap());
    let k = linear(&kvs, m, att.k.as_ref().unwrap());
    let v = linear(&kvs, m, att.v.as_ref().unwrap());
    let bias_host = host(bias.clone());
    for with_bias in [false, true] {
        let args = AttentionArgs {
            kv: Some(kv.clone()),
            bias: with_bias.then(|| bias.clone()),
            keep_weights: true,
            ..Default::default()
        };
        let (out, weights) = att.forward(x.clone(), &args);
        let (want, want_w) = reference(
            &q,
            &k,
            &v,
            [n, m],
            with_bias.then_some(bias_host.as_slice()),
            None,
            &att.proj,
        );
        assert_eq!(out.dims(), [1, n, DIM]);
        assert!(gap(&host(out), &want) < 1e-5, "bias {with_bias}");
        assert!(gap(&host(weights.unwrap()), &want_w) < 1e-5, "bias {with_bias}");
    }
    // Prefix queries with reduced keys and the bias given for every query: the first rows.
    let args = AttentionArgs {
        kv: Some(kv.clone()),
        bias: Some(bias.clone()),
        queries: Queries::Prefix(2),
        keep_weights: true,
        ..Default::default()
    };
    let (out, weights) = att.forward(x, &args);
    let (want, want_w) = reference(&q, &k, &v, [n, m], Some(&bias_host), None, &att.proj);
    assert!(gap(&host(out), &want[..2 * DIM]) < 1e-5);
    let weights = host(weights.unwrap());
    for head in 0..HEADS {
        let rows = &want_w[head * n * m..head * n * m + 2 * m];
        assert!(gap(&weights[head * 2 * m..(head + 1) * 2 * m], rows) < 1e-5);
    }
}

/// CLIP's causal text mask, as booleans or as an additive `-inf` matrix: the same attention,
/// and no token sees a later one.
#[test]
fn causal_masks_match_the_reference() {
    let device = Device::flex();
    let att = Attention::new(DIM, HEADS, Projections::Fused, true, 0.0, 0.0, &device);
    let n = 5;
    let x = random([2, n, DIM], &device);
    let additive: Vec<f64> = (0..n * n)
        .map(|i| if i % n > i / n { f64::NEG_INFINITY } else { 0.0 })
        .collect();
    let additive_tensor = Tensor::<2>::from_data(
        burn::tensor::TensorData::new(additive.iter().map(|&v| v as f32).collect::<Vec<_>>(), [n, n]),
        &device,
    );
    let mut outputs = Vec::new();
    for mask in [Mask::causal(n, &device), Mask::Additive(additive_tensor)] {
        let args = AttentionArgs {
            mask: Some(mask),
            keep_weights: true,
            ..Default::default()
        };
        let (out, weights) = att.forward(x.clone(), &args);
        let (out, weights) = (host(out), host(weights.unwrap()));
        for b in 0..2 {
            let xs = host(x.clone().narrow(0, b, 1));
            let [q, k, v] = fused_qkv(&att, &xs, n);
            let (want, want_w) = reference(&q, &k, &v, [n, n], None, Some(&additive), &att.proj);
            let per = HEADS * n * n;
            assert!(gap(&out[b * n * DIM..(b + 1) * n * DIM], &want) < 1e-5);
            assert!(gap(&weights[b * per..(b + 1) * per], &want_w) < 1e-6);
        }
        outputs.push(out);
    }
    assert!(gap(&outputs[0], &outputs[1]) < 1e-6);
    // The mask is given for every query; with prefix queries it is cut to their rows.
    let args = AttentionArgs {
        mask: Some(Mask::causal(n, &device)),
        queries: Queries::Prefix(2),
        ..Default::default()
    };
    let (out, _) = att.forward(x.clone(), &args);
    let out = host(out);
    for b in 0..2 {
        let full = &outputs[0][b * n * DIM..b * n * DIM + 2 * DIM];
        assert!(gap(&out[b * 2 * DIM..(b + 1) * 2 * DIM], full) < 1e-5);
    }
}
