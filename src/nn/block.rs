use burn::module::{Flag, Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{Device, Distribution, Tensor};

use super::{Attention, AttentionArgs, HeadOrder, LayerNorm, Projections, timm_linear};

/// Stochastic depth: drops the whole residual branch of a sample with probability `prob`
/// while training, and rescales the kept ones.
#[derive(Module, Debug)]
pub struct DropPath {
    pub prob: f64,
    pub training: Param<Flag>,
}

impl DropPath {
    pub fn new(prob: f64) -> Self {
        Self {
            prob,
            training: Param::from_bool(true),
        }
    }

    /// Whether `forward` may drop anything for this input.
    pub fn active(&self, x: &Tensor<3>) -> bool {
        self.prob > 0.0 && self.training.is_enabled() && x.device().is_autodiff()
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        if !self.active(&x) {
            return x;
        }
        let keep = 1.0 - self.prob;
        let [b, _, _] = x.dims();
        let mask = Tensor::<3>::random([b, 1, 1], Distribution::Bernoulli(keep), &x.device());
        x * mask.div_scalar(keep)
    }
}

/// The transformer MLP: fc1, exact (erf) GELU (or OpenAI CLIP's QuickGELU), dropout, fc2,
/// dropout.
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
    pub drop: Dropout,
    /// `x·σ(1.702x)` instead of GELU: what OpenAI trained CLIP with.
    pub quick_gelu: bool,
}

impl Mlp {
    pub fn new(dim: usize, hidden: usize, drop: f64, device: &Device) -> Self {
        Self {
            fc1: timm_linear(dim, hidden, true, device),
            fc2: timm_linear(hidden, dim, true, device),
            drop: DropoutConfig::new(drop).init(),
            quick_gelu: false,
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.drop
            .forward(crate::kernels::linear(self.hidden(x), &self.fc2))
    }

    /// The hidden activations, `Dropout(GELU(fc1(x)))`; fc1 and GELU run as one operation
    /// where a fused kernel exists.
    pub fn hidden(&self, x: Tensor<3>) -> Tensor<3> {
        let h = if self.quick_gelu {
            let h = crate::kernels::linear(x, &self.fc1);
            h.clone() * burn::tensor::activation::sigmoid(h.mul_scalar(1.702))
        } else if crate::kernels::epilogue_applies(&x, &self.fc1) {
            crate::kernels::linear_gelu(x, &self.fc1)
        } else {
            crate::kernels::gelu(crate::kernels::linear(x, &self.fc1))
        };
        self.drop.forward(h)
    }
}

#[derive(Debug, Clone)]
pub struct BlockConfig {
    pub dim: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    pub drop: f64,
    pub attn_drop: f64,
    pub drop_path: f64,
    pub norm_eps: f64,
    /// `Fused` (timm's `qkv`) or `MultiQuery`.
    pub projections: Projections,
    pub merge: HeadOrder,
}

/// Pre-LN transformer block: `x + DropPath(Attn(LN(x)))`, then `x + DropPath(MLP(LN(x)))`.
#[derive(Module, Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
    pub drop_path: DropPath,
}

impl Block {
    pub fn new(c: &BlockConfig, device: &Device) -> Self {
        let hidden = (c.dim as f64 * c.mlp_ratio) as usize;
        Self {
            norm1: LayerNorm::new(c.dim, c.norm_eps, device),
            attn: Attention::new(
                c.dim,
                c.num_heads,
                c.projections,
                c.qkv_bias,
                c.attn_drop,
                c.drop,
                device,
            )
            .with_merge(c.merge),
            norm2: LayerNorm::new(c.dim, c.norm_eps, device),
            mlp: Mlp::new(c.dim, hidden, c.drop, device),
            drop_path: DropPath::new(c.drop_path),
        }
    }

    /// The block output and, when `args.keep_weights`, the block's post-softmax attention.
    /// With [`Queries::Prefix`](super::Queries::Prefix) only the prefix tokens' outputs are computed (what pooling on
    /// prefix tokens reads from the last block; equal to the same rows of the full output).
    pub fn forward(&self, x: Tensor<3>, args: &AttentionArgs) -> (Tensor<3>, Option<Tensor<4>>) {
        let (heads, attn) = self.attn.heads(self.norm1.forward(x.clone()), args);
        let proj = self.attn.proj_weights();
        let x = self.residual(args.queries.select(x, 1), heads, proj, &self.attn.proj_drop);
        let hidden = self.mlp.hidden(self.norm2.forward(x.clone()));
        let fc2 = (
            self.mlp.fc2.weight.val(),
            self.mlp.fc2.bias.as_ref().map(|b| b.val()),
        );
        (self.residual(x, hidden, fc2, &self.mlp.drop), attn)
    }

    /// `x + DropPath(Dropout(h · weight + bias))`; one fused operation when nothing can be
    /// dropped.
    fn residual(
        &self,
        x: Tensor<3>,
        h: Tensor<3>,
        (weight, bias): (Tensor<2>, Option<Tensor<1>>),
        drop: &Dropout,
    ) -> Tensor<3> {
        let dropout_active = drop.prob > 0.0 && x.device().is_autodiff();
        match bias {
            Some(bias)
                if !self.drop_path.active(&x)
                    && !dropout_active
                    && crate::kernels::epilogue_applies_to(&h) =>
            {
                crate::kernels::linear_residual_with(x, h, weight, bias)
            }
            bias => {
                x + self
                    .drop_path
                    .forward(drop.forward(crate::kernels::linear_with(h, weight, bias)))
            }
        }
    }
}

/// Runs `blocks` in order on `x`, handing back every block's attention when `keep_attention`.
/// When only the first `pooled` tokens of the output are read (class-token or prefix-token
/// pooling) and no attention map is wanted, the last block runs for those queries alone (its
/// keys and values still come from every token): the pooled tokens are the same, and most of
/// one block's work is not done.
pub fn run_blocks(
    blocks: &[Block],
    mut x: Tensor<3>,
    pooled: Option<usize>,
    keep_attention: bool,
) -> (Tensor<3>, Vec<Tensor<4>>) {
    let prefix_only =
        pooled.filter(|_| !keep_attention && crate::kernels::enabled(crate::kernels::Fused::ClassTokenOnly));
    let depth = blocks.len();
    let mut attentions = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let args = AttentionArgs {
            queries: match prefix_only {
                Some(p) if i + 1 == depth => super::Queries::Prefix(p),
                _ => super::Queries::All,
            },
            keep_weights: keep_attention,
            ..Default::default()
        };
        let (y, attn) = block.forward(x, &args);
        x = y;
        attentions.extend(attn);
    }
    (x, attentions)
}
