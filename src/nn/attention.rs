//! The one attention core of every family: multi-head scaled dot-product attention with
//! q/k/v from one fused projection (timm, NesT, CLIP) or three (CMT), keys and values from
//! another (shorter) sequence (CMT's reduced tokens), an additive bias (CMT's relative position
//! bias), a boolean or additive mask (CLIP's causal text mask), queries for the leading prefix
//! tokens alone, and the post-softmax weights on request.
//!
//! Which path runs: the fused CPU kernel (`kernels::attention`) wherever it applies — fused
//! qkv, self-attention over the whole sequence, no bias or mask, no active attention dropout;
//! on a GPU in inference, the backend's own attention operation for the same plain case;
//! otherwise Burn's operations (`composed`). Asking for the weights never changes the output:
//! they come from the composed path beside the kernel.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{Bool, Device, Tensor};

use super::timm_linear;

/// How q, k and v are projected. The parameter names follow the family's reference
/// implementation: `qkv` (fused, rows q | k | v, each head-major, as timm) or `q`, `k`, `v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projections {
    Fused,
    Separate,
    /// Multi-query attention (Shazeer 2019; NesT's CIFAR models): `q` per head, one key and
    /// one value of `head_dim` channels (`k`, `v`) shared by all heads.
    MultiQuery,
}

/// A mask over `[queries, keys]`, broadcast over batch and heads.
#[derive(Debug, Clone)]
pub enum Mask {
    /// `true` where a query must not see a key.
    Hide(Tensor<2, Bool>),
    /// Added to the scaled logits (`-inf` hides), as PyTorch's float `attn_mask`.
    Additive(Tensor<2>),
}

impl Mask {
    /// The causal mask of a sequence of `n` tokens: token `i` sees tokens `0..=i`.
    pub fn causal(n: usize, device: &Device) -> Self {
        // `tril_mask` is true above the diagonal: exactly what is hidden.
        Mask::Hide(Tensor::<2, Bool>::tril_mask([n, n], 0, device))
    }

    fn additive(&self) -> Tensor<2> {
        match self {
            Mask::Additive(m) => m.clone(),
            Mask::Hide(hide) => {
                Tensor::<2>::zeros(hide.dims(), &hide.device()).mask_fill(hide.clone(), f32::NEG_INFINITY)
            }
        }
    }
}

/// Which queries are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Queries {
    #[default]
    All,
    /// The first `n` tokens only (keys and values still from every token): what pooling on
    /// prefix tokens (a class token, SiT's two tokens) needs from the last block.
    Prefix(usize),
}

impl Queries {
    /// `x` cut to these queries along axis `dim` (the token axis of whatever is given per query).
    pub fn select<const D: usize>(&self, x: Tensor<D>, dim: usize) -> Tensor<D> {
        match self {
            Queries::All => x,
            Queries::Prefix(p) => x.narrow(dim, 0, *p),
        }
    }
}

/// Everything about one attention call beyond its input.
#[derive(Debug, Clone, Default)]
pub struct AttentionArgs {
    /// Keys and values from this sequence `[B, M, D]` instead of the input (M may differ from
    /// the input's length). Needs [`Projections::Separate`].
    pub kv: Option<Tensor<3>>,
    /// Added to the scaled logits; `[1 or B, heads, N, keys]`, for every query (cut to the
    /// prefix with [`Queries::Prefix`]).
    pub bias: Option<Tensor<4>>,
    /// `[N, keys]`, for every query (cut like the bias).
    pub mask: Option<Mask>,
    pub queries: Queries,
    /// Also hand back the post-softmax weights `[B, heads, queries, keys]`.
    pub keep_weights: bool,
}

impl AttentionArgs {
    /// Whether this call is plain self-attention: what the fused kernels serve.
    fn is_plain(&self) -> bool {
        self.kv.is_none() && self.bias.is_none() && self.mask.is_none() && self.queries == Queries::All
    }
}

/// Multi-head attention with its projections: `proj(attend(q(x), k(kv), v(kv)))`.
#[derive(Module, Debug)]
pub struct Attention {
    pub qkv: Option<Linear>,
    pub q: Option<Linear>,
    pub k: Option<Linear>,
    pub v: Option<Linear>,
    pub proj: Linear,
    pub attn_drop: Dropout,
    pub proj_drop: Dropout,
    /// Keys and values from a spatially reduced map (CMT's `attn.sr`); the caller applies it
    /// (see [`super::reduce_tokens`]) and passes the result as [`AttentionArgs::kv`], since
    /// only it knows the map's shape.
    pub sr: Option<super::SpatialReduction>,
    pub num_heads: usize,
    /// The order of the merged heads' channels that `proj` reads.
    #[module(skip)]
    pub merge: HeadOrder,
}

/// The channel order of the heads' merged output, which `proj`'s input columns follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadOrder {
    /// Channel `h * head_dim + d` (timm's ViT, CMT, CLIP).
    #[default]
    HeadMajor,
    /// Channel `d * heads + h`: timm's NesT merges its heads this way (a permute before the
    /// reshape), so its `proj` weights only fit this order. vitkit keeps the attention
    /// head-major and reorders `proj`'s input rows instead (C² values, not B·N·C).
    HeadMinor,
}

impl Attention {
    /// Projections initialised as timm's (N(0, 0.02) weights, zero biases).
    pub fn new(
        dim: usize,
        num_heads: usize,
        projections: Projections,
        qkv_bias: bool,
        attn_drop: f64,
        proj_drop: f64,
        device: &Device,
    ) -> Self {
        let one = |d_out| Some(timm_linear(dim, d_out, qkv_bias, device));
        let (qkv, q, k, v) = match projections {
            Projections::Fused => (one(3 * dim), None, None, None),
            Projections::Separate => (None, one(dim), one(dim), one(dim)),
            Projections::MultiQuery => {
                let head_dim = dim / num_heads.max(1);
                (None, one(dim), one(head_dim), one(head_dim))
            }
        };
        Self {
            qkv,
            q,
            k,
            v,
            proj: timm_linear(dim, dim, true, device),
            attn_drop: DropoutConfig::new(attn_drop).init(),
            proj_drop: DropoutConfig::new(proj_drop).init(),
            sr: None,
            num_heads,
            merge: HeadOrder::HeadMajor,
        }
    }

    /// With the merged heads' channels in `order` for `proj`.
    pub fn with_merge(mut self, order: HeadOrder) -> Self {
        self.merge = order;
        self
    }

    /// `proj`'s weight `[D, D]` (input rows first) in the head-major order the attention
    /// produces, and its bias.
    pub fn proj_weights(&self) -> (Tensor<2>, Option<Tensor<1>>) {
        let weight = self.proj.weight.val();
        let bias = self.proj.bias.as_ref().map(|b| b.val());
        match self.merge {
            HeadOrder::HeadMajor => (weight, bias),
            HeadOrder::HeadMinor => {
                let [d_in, d_out] = weight.dims();
                let h = self.num_heads;
                let reordered = weight
                    .reshape([d_in / h, h, d_out])
                    .swap_dims(0, 1)
                    .reshape([d_in, d_out]);
                (reordered, bias)
            }
        }
    }

    /// With a spatial reduction of keys and values by `ratio` (none for a ratio of 1).
    pub fn with_reduction(mut self, dim: usize, ratio: usize, bn_eps: f64, device: &Device) -> Self {
        self.sr = (ratio > 1).then(|| super::spatial_reduction(dim, ratio, bn_eps, device));
        self
    }

    /// `x: [B, N, D]` → `[B, N, D]` (or `[B, P, D]` for [`Queries::Prefix`]) and the weights
    /// when asked for.
    pub fn forward(&self, x: Tensor<3>, args: &AttentionArgs) -> (Tensor<3>, Option<Tensor<4>>) {
        let (heads, weights) = self.heads(x, args);
        let (weight, bias) = self.proj_weights();
        (
            self.proj_drop
                .forward(crate::kernels::linear_with(heads, weight, bias)),
            weights,
        )
    }

    /// The heads' outputs merged, `[B, queries, D]`, before the output projection (and the
    /// weights when asked for).
    pub fn heads(&self, x: Tensor<3>, args: &AttentionArgs) -> (Tensor<3>, Option<Tensor<4>>) {
        match &self.qkv {
            Some(fused) => {
                assert!(
                    args.kv.is_none(),
                    "keys and values from another sequence need separate q/k/v projections"
                );
                self.fused_heads(crate::kernels::linear(x, fused), args)
            }
            None => self.separate_heads(x, args),
        }
    }

    /// [`Self::heads`] from the fused projection's output `qkv: [B, N, 3 * D]`.
    fn fused_heads(&self, qkv: Tensor<3>, args: &AttentionArgs) -> (Tensor<3>, Option<Tensor<4>>) {
        let (h, keep) = (self.num_heads, args.keep_weights);
        if args.is_plain() && !self.dropout_active(&qkv) && crate::kernels::attention_applies(&qkv) {
            let weights = keep.then(|| {
                let parts = [0, 1, 2].map(|i| fused_part(qkv.clone(), h, i));
                self.composed(parts, args).1
            });
            return (crate::kernels::attention(qkv, h), weights);
        }
        let plain_inference = args.is_plain()
            && !keep
            && !qkv.device().is_autodiff()
            && !crate::kernels::on_flex(&qkv)
            && !crate::kernels::gpu_softmax_applies(&qkv);
        // Only the queries asked for: split them alone out of qkv.
        let q = fused_part(args.queries.select(qkv.clone(), 1), h, 0);
        let [k, v] = [1, 2].map(|i| fused_part(qkv.clone(), h, i));
        if plain_inference {
            return (merge(backend_attention(q, k, v)), None);
        }
        let (out, w) = self.composed([q, k, v], args);
        (out, keep.then_some(w))
    }

    /// [`Self::heads`] through the separate q, k and v projections (keys and values from
    /// `args.kv` when given).
    fn separate_heads(&self, x: Tensor<3>, args: &AttentionArgs) -> (Tensor<3>, Option<Tensor<4>>) {
        let (q, k, v) = self.separate_parts();
        let source = args.kv.clone().unwrap_or_else(|| x.clone());
        let h = self.num_heads;
        if let Some(bias) = self.fused_bias(&x, args) {
            let [q, k, v] = [(x, q), (source.clone(), k), (source, v)]
                .map(|(input, proj)| crate::kernels::linear(input, proj));
            return (crate::kernels::bias_attention(q, k, v, bias, h), None);
        }
        let query = split(crate::kernels::linear(args.queries.select(x, 1), q), h);
        let [_, _, _, head_dim] = query.dims();
        // Keys and values with fewer heads than the queries (one for multi-query attention)
        // are shared: broadcast to every query head.
        let shared = |t: Tensor<3>| {
            let kv_heads = t.dims()[2] / head_dim;
            let t = split(t, kv_heads);
            if kv_heads == h {
                t
            } else {
                // Query head i reads key/value head i / (h / kv_heads), as grouped-query
                // attention does.
                let [b, _, n, _] = t.dims();
                t.unsqueeze_dim::<5>(2)
                    .expand([b, kv_heads, h / kv_heads, n, head_dim])
                    .reshape([b, h, n, head_dim])
            }
        };
        let parts = [
            query,
            shared(crate::kernels::linear(source.clone(), k)),
            shared(crate::kernels::linear(source, v)),
        ];
        let (out, w) = self.composed(parts, args);
        (out, args.keep_weights.then_some(w))
    }

    /// The bias `[heads, N, M]` when this call can run as one fused kernel
    /// (`kernels::bias_attention`): a bias shared by the batch, every query, no mask, no
    /// weights handed back, no attention dropout, and keys and values with as many heads as
    /// the queries — CMT's attention.
    fn fused_bias(&self, x: &Tensor<3>, args: &AttentionArgs) -> Option<Tensor<3>> {
        let (q, k, v) = self.separate_parts();
        let widths = [q, k, v].map(|l| l.weight.dims()[1]);
        let bias = args.bias.as_ref()?;
        let [nb, h, n, m] = bias.dims();
        (nb == 1
            && h == self.num_heads
            && args.mask.is_none()
            && args.queries == Queries::All
            && !args.keep_weights
            && !self.dropout_active(x)
            && widths[1] == widths[0]
            && widths[2] == widths[0]
            && crate::kernels::bias_attention_applies(x))
        .then(|| bias.clone().reshape([h, n, m]))
    }

    /// Whether attention dropout acts on this call (a positive rate, while training): the fused
    /// kernels have none, so they stand aside then.
    fn dropout_active(&self, x: &Tensor<3>) -> bool {
        self.attn_drop.prob > 0.0 && x.device().is_autodiff()
    }

    fn separate_parts(&self) -> (&Linear, &Linear, &Linear) {
        match (&self.q, &self.k, &self.v) {
            (Some(q), Some(k), Some(v)) => (q, k, v),
            _ => unreachable!("an Attention holds either qkv or all of q, k and v"),
        }
    }

    /// Attention from Burn's operations on split heads whose queries are already the ones
    /// `args.queries` asks for (the bias and mask, given for every query, are cut to them):
    /// the merged output `[B, Nq, D]` and the weights `[B, heads, Nq, Nk]`.
    fn composed(&self, [q, k, v]: [Tensor<4>; 3], args: &AttentionArgs) -> (Tensor<3>, Tensor<4>) {
        let bias = args.bias.clone().map(|b| args.queries.select(b, 2));
        let mask = args.mask.as_ref().map(|m| args.queries.select(m.additive(), 0));
        let weights = weights(q, k, bias, mask);
        let out = self.attn_drop.forward(weights.clone()).matmul(v);
        (merge(out), weights)
    }
}

/// `softmax(q kᵀ / sqrt(head_dim) + bias + mask)` for `q: [B, h, Nq, dh]`, `k: [B, h, Nk, dh]`,
/// with the additive `mask: [Nq, Nk]`.
fn weights(q: Tensor<4>, k: Tensor<4>, bias: Option<Tensor<4>>, mask: Option<Tensor<2>>) -> Tensor<4> {
    let [_, _, _, dh] = q.dims();
    let scale = (dh as f64).powf(-0.5);
    if bias.is_none() && mask.is_none() && crate::kernels::gpu_softmax_applies(&q) {
        // The scale inside the softmax kernel: no pass over q for it.
        return crate::kernels::gpu_softmax_scaled(q.matmul(k.swap_dims(2, 3)), scale as f32);
    }
    let mut logits = q.mul_scalar(scale).matmul(k.swap_dims(2, 3));
    if let Some(b) = bias {
        let [nb, h, n, m] = b.dims();
        if nb == 1 && mask.is_none() {
            // One bias for the whole batch (CMT's): added inside the softmax's pass.
            return crate::kernels::bias_softmax(logits, b.reshape([h, n, m]));
        }
        logits = logits + b;
    }
    if let Some(m) = mask {
        logits = logits + m.unsqueeze::<4>();
    }
    crate::kernels::softmax_last(logits)
}

/// Inference through the backend's own attention operation (on CUDA a flash-attention kernel
/// chosen by autotune where the query length suits it; otherwise Burn's composed fallback).
/// Burn differentiates that operation through its composed fallback, so training keeps the
/// composed path. On the CPU flex's attention operation measured no faster than the composed
/// path, so the CPU never comes here.
fn backend_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    burn::tensor::module::attention(q, k, v, None, None, Default::default())
}

/// `[B, N, D]` → `[B, heads, N, D / heads]`.
fn split(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [b, n, d] = x.dims();
    x.reshape([b, n, heads, d / heads]).swap_dims(1, 2)
}

/// `[B, heads, N, dh]` → `[B, N, heads * dh]`.
fn merge(x: Tensor<4>) -> Tensor<3> {
    let [b, h, n, dh] = x.dims();
    if n == 1 {
        // One query (a class token): the heads are already in order, no transpose needed.
        return x.reshape([b, 1, h * dh]);
    }
    x.swap_dims(1, 2).reshape([b, n, h * dh])
}

/// Part `i` (0: q, 1: k, 2: v) of `qkv: [B, N, 3 * D]` (timm's layout), as
/// `[B, heads, N, D / heads]`.
fn fused_part(qkv: Tensor<3>, heads: usize, i: usize) -> Tensor<4> {
    let [b, n, d3] = qkv.dims();
    let dh = d3 / 3 / heads;
    qkv.reshape([b, n, 3, heads, dh])
        .permute([2, 0, 3, 1, 4])
        .narrow(0, i, 1)
        .reshape([b, heads, n, dh])
}
