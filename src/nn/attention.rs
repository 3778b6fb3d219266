use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{Device, Tensor};

use super::timm_linear;

/// Multi-head self-attention with a fused qkv projection, laid out as timm's: the rows of
/// `qkv.weight` are all q rows, then all k rows, then all v rows, each head-major.
#[derive(Module, Debug)]
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    pub attn_drop: Dropout,
    pub proj_drop: Dropout,
    pub num_heads: usize,
}

impl Attention {
    pub fn new(
        dim: usize,
        num_heads: usize,
        qkv_bias: bool,
        attn_drop: f64,
        proj_drop: f64,
        device: &Device,
    ) -> Self {
        Self {
            qkv: timm_linear(dim, 3 * dim, qkv_bias, device),
            proj: timm_linear(dim, dim, true, device),
            attn_drop: DropoutConfig::new(attn_drop).init(),
            proj_drop: DropoutConfig::new(proj_drop).init(),
            num_heads,
        }
    }

    /// `x: [B, N, D]` → `[B, N, D]`, plus, when `keep_attention`, the post-softmax attention
    /// `[B, heads, N, N]`.
    pub fn forward(&self, x: Tensor<3>, keep_attention: bool) -> (Tensor<3>, Option<Tensor<4>>) {
        let (heads, attn) = self.heads(x, keep_attention);
        (
            self.proj_drop.forward(crate::kernels::linear(heads, &self.proj)),
            attn,
        )
    }

    /// The heads' outputs merged, `[B, N, D]`, before the output projection (and the maps
    /// when `keep_attention`).
    ///
    /// Without attention dropout, a fused kernel (where one exists for the device) reads q, k
    /// and v in place and writes the heads merged; the maps, when asked for, then come from the
    /// composed path beside it, so asking for them never changes the output.
    pub fn heads(&self, x: Tensor<3>, keep_attention: bool) -> (Tensor<3>, Option<Tensor<4>>) {
        let qkv = crate::kernels::linear(x, &self.qkv);
        let attn_dropout_active = self.attn_drop.prob > 0.0 && qkv.device().is_autodiff();
        if !attn_dropout_active && crate::kernels::attention_applies(&qkv) {
            let maps = keep_attention.then(|| self.composed(qkv.clone()).1);
            (crate::kernels::attention(qkv, self.num_heads), maps)
        } else if !keep_attention
            && !qkv.device().is_autodiff()
            && !crate::kernels::on_flex(&qkv)
            && !crate::kernels::gpu_softmax_applies(&qkv)
        {
            (self.backend_attention(qkv), None)
        } else {
            let (out, attn) = self.composed(qkv);
            (out, keep_attention.then_some(attn))
        }
    }

    /// [`Self::heads`] for the first token's query alone, `[B, 1, D]` (keys and values from
    /// every token): what class-token pooling needs from the last block.
    pub fn first_query_heads(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, _, d] = x.dims();
        let qkv = crate::kernels::linear(x, &self.qkv);
        let h = self.num_heads;
        let q = head_part(qkv.clone().narrow(1, 0, 1), h, 0);
        let [k, v] = [1, 2].map(|i| head_part(qkv.clone(), h, i));
        self.attn_drop
            .forward(probabilities(q, k))
            .matmul(v)
            .reshape([b, 1, d])
    }

    /// Inference through the backend's own attention operation (on CUDA a flash-attention
    /// kernel chosen by autotune where the query length suits it, see [`attention_padded`];
    /// otherwise Burn's composed fallback). Burn differentiates that operation through its
    /// composed fallback, so training keeps [`Self::composed`]. On the CPU flex's attention
    /// operation measured no faster than the composed path (which the fused kernel's tests
    /// compare against), so the CPU keeps the composed one.
    fn backend_attention(&self, qkv: Tensor<3>) -> Tensor<3> {
        let [b, n, d3] = qkv.dims();
        let (h, d) = (self.num_heads, d3 / 3);
        let [q, k, v] = split_heads(qkv, h);
        let out = attention_padded(q, k, v, query_padding());
        out.swap_dims(1, 2).reshape([b, n, d])
    }

    /// Attention from Burn's operations: heads split, scores, softmax, dropout, heads merged.
    /// Returns the merged output `[B, N, D]` and the probabilities `[B, heads, N, N]`.
    fn composed(&self, qkv: Tensor<3>) -> (Tensor<3>, Tensor<4>) {
        let [b, n, d3] = qkv.dims();
        let (h, d) = (self.num_heads, d3 / 3);
        let [q, k, v] = split_heads(qkv, h);
        let attn = probabilities(q, k);
        let out = self.attn_drop.forward(attn.clone()).matmul(v);
        (out.swap_dims(1, 2).reshape([b, n, d]), attn)
    }
}

/// Burn's attention operation with the query length padded by zero rows to a multiple of
/// `multiple` (nothing is padded when it is 0 or 1); the padded rows' outputs are dropped, and
/// keys and values are left as they are, so the result is the unpadded attention's.
///
/// Why: Burn's CUDA flash-attention kernels need the query length to be a multiple of their
/// row block (32, 64 or 128) and otherwise fall back to a composed path of separate passes; a
/// ViT's 197 tokens are not. `VITKIT_PAD_QUERIES=128` turns it on; measured on an H100
/// (vit_base, batch 256) it was slower than no padding (228 against 216 ms), so it is off. With
/// vitkit's CUDA softmax (the default) inference does not come here at all, only when
/// `VITKIT_FUSED` leaves softmax out.
pub fn attention_padded(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, multiple: usize) -> Tensor<4> {
    let [b, h, n, dh] = q.dims();
    let padded = n.next_multiple_of(multiple.max(1));
    let q = if padded > n {
        let zeros = Tensor::<4>::zeros([b, h, padded - n, dh], &q.device()).cast(q.dtype());
        Tensor::cat(vec![q, zeros], 2)
    } else {
        q
    };
    let out = burn::tensor::module::attention(q, k, v, None, None, Default::default());
    if padded > n { out.narrow(2, 0, n) } else { out }
}

/// The query padding for [`attention_padded`] in inference off the CPU: the environment
/// variable `VITKIT_PAD_QUERIES` (a row multiple), 1 (none) when unset or unreadable.
fn query_padding() -> usize {
    static PADDING: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PADDING.get_or_init(|| {
        std::env::var("VITKIT_PAD_QUERIES")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(1)
    })
}

/// `qkv: [B, N, 3 * D]` → q, k and v, each `[B, heads, N, D / heads]`.
fn split_heads(qkv: Tensor<3>, heads: usize) -> [Tensor<4>; 3] {
    [0, 1, 2].map(|i| head_part(qkv.clone(), heads, i))
}

/// Part `i` (0: q, 1: k, 2: v) of `qkv: [B, N, 3 * D]`, as `[B, heads, N, D / heads]`.
fn head_part(qkv: Tensor<3>, heads: usize, i: usize) -> Tensor<4> {
    let [b, n, d3] = qkv.dims();
    let dh = d3 / 3 / heads;
    qkv.reshape([b, n, 3, heads, dh])
        .permute([2, 0, 3, 1, 4])
        .narrow(0, i, 1)
        .reshape([b, heads, n, dh])
}

/// `softmax(q kᵀ / sqrt(head_dim))` for `q: [B, heads, Nq, head_dim]`, `k: [B, heads, N, head_dim]`.
fn probabilities(q: Tensor<4>, k: Tensor<4>) -> Tensor<4> {
    let [_, _, _, dh] = q.dims();
    let scale = (dh as f64).powf(-0.5);
    if crate::kernels::gpu_softmax_applies(&q) {
        // The scale inside the softmax kernel: no pass over q for it.
        crate::kernels::gpu_softmax_scaled(q.matmul(k.swap_dims(2, 3)), scale as f32)
    } else {
        crate::kernels::softmax_last(q.mul_scalar(scale).matmul(k.swap_dims(2, 3)))
    }
}
