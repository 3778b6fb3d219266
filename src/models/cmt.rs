//! CMT (Guo et al., CVPR 2022): a convolutional stem, then four stages of patch aggregation
//! and CMT blocks (local perception unit, attention with spatially reduced keys and values plus
//! a learned relative position bias, inverted-residual feed-forward network), and a 1×1
//! expansion with BatchNorm and Swish before the pooled head. Shaped and named as the official
//! code's `CMT` (`stem_conv1.weight`, `blocks_a.0.attn.sr.1.running_var`, `relative_pos_a`,
//! `_fc.weight`, …) so its `state_dict` loads as is.
//!
//! Inside the stages the tokens stay channels-last (`[B, N, C]`, the map row-major), which is
//! what the linear layers, LayerNorm and the depthwise kernel want; only the stem runs NCHW.
//! Small images: `stem_stride` 1 (the official stem has stride 2) keeps a 32×32 input at
//! 2×2 after the four aggregations instead of 1×1.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::state::{shape_of, square_side};
use super::{Adaptation, Architecture, Classifier, Family, Model, SpatialMap, StateDict};
use crate::nn::{
    Attention, AttentionArgs, BatchNorm, ConvWeights, DropPath, LayerNorm, Projections, Resample, SeqLayer,
    normal_param, reduce_tokens, timm_linear,
};
use crate::{Result, VitError};

/// BatchNorm epsilon everywhere, the patch-aggregation LayerNorm's (PyTorch's default) and the
/// blocks' LayerNorms'.
const BN_EPS: f64 = 1e-5;
const PATCH_NORM_EPS: f64 = 1e-5;
const BLOCK_NORM_EPS: f64 = 1e-6;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CmtConfig {
    /// The input size, which also fixes the relative-position tables' shapes.
    pub img_size: [usize; 2],
    pub in_chans: usize,
    pub num_classes: usize,
    pub embed_dims: [usize; 4],
    pub stem_channels: usize,
    /// Stride of the first stem convolution: 2 as the official models, 1 for small images.
    pub stem_stride: usize,
    /// Width of the 1×1 expansion before pooling (1280 in every official model).
    pub fc_dim: usize,
    pub num_heads: [usize; 4],
    pub mlp_ratios: [f64; 4],
    pub depths: [usize; 4],
    /// Keys and values of stage i come from its map reduced `sr_ratios[i]` times per side.
    pub sr_ratios: [usize; 4],
    pub qkv_bias: bool,
    pub drop_rate: f64,
    pub attn_drop_rate: f64,
    pub drop_path_rate: f64,
    /// Dropout before the head (`dp`: 0.1, 0.3 for CMT-B).
    pub head_drop: f64,
}

impl CmtConfig {
    /// The official defaults (CMT-Ti's widths) at `img` pixels.
    pub fn tiny(img: usize) -> Self {
        Self {
            img_size: [img, img],
            in_chans: 3,
            num_classes: 1000,
            embed_dims: [46, 92, 184, 368],
            stem_channels: 16,
            stem_stride: 2,
            fc_dim: 1280,
            num_heads: [1, 2, 4, 8],
            mlp_ratios: [3.6; 4],
            depths: [2, 2, 10, 2],
            sr_ratios: [8, 4, 2, 1],
            qkv_bias: true,
            drop_rate: 0.0,
            attn_drop_rate: 0.0,
            drop_path_rate: 0.0,
            head_drop: 0.1,
        }
    }

    /// Downsampling of stage `i`'s map relative to the input.
    fn stage_stride(&self, i: usize) -> usize {
        self.stem_stride << (i + 1)
    }

    /// Stage `i`'s map `[rows, columns]`.
    pub fn stage_grid(&self, i: usize) -> [usize; 2] {
        self.img_size.map(|s| s / self.stage_stride(i))
    }

    /// The relative-position table of stage `i`: `[heads, N, N / sr²]`.
    pub fn relative_pos_shape(&self, i: usize) -> [usize; 3] {
        let [h, w] = self.stage_grid(i);
        let r = self.sr_ratios[i];
        [self.num_heads[i], h * w, (h / r) * (w / r)]
    }

    /// Every side this configuration's image must be a multiple of.
    fn side_multiple(&self) -> usize {
        (0..4).fold(1, |m, i| lcm(m, self.stage_stride(i) * self.sr_ratios[i]))
    }

    fn hidden(&self, i: usize) -> usize {
        // `int(dim * mlp_ratio)` as the official code, in the same f64 arithmetic.
        (self.embed_dims[i] as f64 * self.mlp_ratios[i]) as usize
    }

    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(VitError::Config(m));
        if self.stem_stride == 0 || self.sr_ratios.contains(&0) || self.num_heads.contains(&0) {
            return err("CMT stem stride, reduction ratios and heads must be positive".into());
        }
        let m = self.side_multiple();
        if self.img_size.iter().any(|&s| s == 0 || !s.is_multiple_of(m)) {
            return err(format!(
                "a CMT with stem stride {} and reduction ratios {:?} takes image sides that are \
                 multiples of {m} (e.g. {}, {}, {}); got {}x{}",
                self.stem_stride,
                self.sr_ratios,
                m,
                2 * m,
                m * (self.img_size[0] / m).max(3),
                self.img_size[0],
                self.img_size[1]
            ));
        }
        for i in 0..4 {
            if self.embed_dims[i] == 0 || !self.embed_dims[i].is_multiple_of(self.num_heads[i]) {
                return err(format!(
                    "stage {i}: width {} is not divisible by {} heads",
                    self.embed_dims[i], self.num_heads[i]
                ));
            }
        }
        if self.in_chans == 0 || self.num_classes == 0 || self.stem_channels == 0 || self.fc_dim == 0 {
            return err("in_chans, num_classes, stem_channels and fc_dim must be positive".into());
        }
        for (name, p) in [
            ("drop_rate", self.drop_rate),
            ("attn_drop_rate", self.attn_drop_rate),
            ("drop_path_rate", self.drop_path_rate),
            ("head_drop", self.head_drop),
        ] {
            if !(0.0..1.0).contains(&p) {
                return err(format!("{name} must be in [0, 1), got {p}"));
            }
        }
        Ok(())
    }

    pub fn init(&self, device: &Device) -> Result<Cmt> {
        self.validate()?;
        let total: usize = self.depths.iter().sum();
        // Stochastic depth rises linearly over all blocks (`torch.linspace(0, rate, total)`).
        let dpr = |k: usize| {
            if total > 1 {
                self.drop_path_rate * k as f64 / (total - 1) as f64
            } else {
                0.0
            }
        };
        let mut first = 0;
        let mut stage = |i: usize| {
            let in_dim = if i == 0 {
                self.stem_channels
            } else {
                self.embed_dims[i - 1]
            };
            let dim = self.embed_dims[i];
            let blocks = (0..self.depths[i])
                .map(|j| CmtBlock::new(self, i, dpr(first + j), device))
                .collect();
            first += self.depths[i];
            let merge = PatchMerge {
                proj: ConvWeights::kaiming_fan_out(dim, in_dim, 2, device),
                norm: LayerNorm::new(dim, PATCH_NORM_EPS, device),
            };
            (
                merge,
                normal_param(self.relative_pos_shape(i), 1.0, device),
                blocks,
            )
        };
        let (pa, ra, ba) = stage(0);
        let (pb, rb, bb) = stage(1);
        let (pc, rc, bc) = stage(2);
        let (pd, rd, bd) = stage(3);
        let s = self.stem_channels;
        Ok(Cmt {
            stem_conv1: ConvWeights::kaiming_fan_out(s, self.in_chans, 3, device),
            stem_norm1: BatchNorm::new(s, BN_EPS, device),
            stem_conv2: ConvWeights::kaiming_fan_out(s, s, 3, device),
            stem_norm2: BatchNorm::new(s, BN_EPS, device),
            stem_conv3: ConvWeights::kaiming_fan_out(s, s, 3, device),
            stem_norm3: BatchNorm::new(s, BN_EPS, device),
            patch_embed_a: pa,
            patch_embed_b: pb,
            patch_embed_c: pc,
            patch_embed_d: pd,
            relative_pos_a: ra,
            relative_pos_b: rb,
            relative_pos_c: rc,
            relative_pos_d: rd,
            blocks_a: ba,
            blocks_b: bb,
            blocks_c: bc,
            blocks_d: bd,
            _fc: ConvWeights::kaiming_fan_out(self.fc_dim, self.embed_dims[3], 1, device),
            _bn: BatchNorm::new(self.fc_dim, BN_EPS, device),
            _drop: DropoutConfig::new(self.head_drop).init(),
            head: timm_linear(self.fc_dim, self.num_classes, true, device),
            stem_stride: self.stem_stride,
            img_size: self.img_size,
        })
    }
}

fn lcm(a: usize, b: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    a / gcd(a, b) * b
}

/// Patch aggregation: a 2×2, stride-2 convolution and LayerNorm (`patch_embed_*`).
#[derive(Module, Debug)]
pub struct PatchMerge {
    pub proj: ConvWeights,
    pub norm: LayerNorm,
}

impl PatchMerge {
    /// A channels-last map `[B, H, W, C]` → tokens `[B, (H/2)(W/2), D]`.
    fn forward(&self, map: Tensor<4>) -> Tensor<3> {
        self.norm.forward(self.proj.patchify(map))
    }
}

/// The inverted residual feed-forward network (`mlp`): 1×1 expansion, GELU, BN; depthwise
/// 3×3 with its own residual, GELU, BN; 1×1 projection, BN.
#[derive(Module, Debug)]
pub struct Irffn {
    /// `[conv 1×1, GELU, BN]`.
    pub conv1: Vec<SeqLayer>,
    pub proj: ConvWeights,
    pub proj_bn: BatchNorm,
    /// `[conv 1×1, BN]`.
    pub conv2: Vec<SeqLayer>,
    pub drop: Dropout,
}

impl Irffn {
    fn new(dim: usize, hidden: usize, drop: f64, device: &Device) -> Self {
        Self {
            conv1: vec![
                SeqLayer::Conv(ConvWeights::kaiming_fan_out(hidden, dim, 1, device)),
                SeqLayer::Gelu(burn::nn::Gelu::new()),
                SeqLayer::Norm(BatchNorm::new(hidden, BN_EPS, device)),
            ],
            proj: ConvWeights::kaiming_fan_out(hidden, 1, 3, device),
            proj_bn: BatchNorm::new(hidden, BN_EPS, device),
            conv2: vec![
                SeqLayer::Conv(ConvWeights::kaiming_fan_out(dim, hidden, 1, device)),
                SeqLayer::Norm(BatchNorm::new(dim, BN_EPS, device)),
            ],
            drop: DropoutConfig::new(drop).init(),
        }
    }

    /// `resid + IRFFN(x)`: in inference the last BatchNorm is folded into the last 1×1
    /// convolution and the residual added in its pass.
    fn forward_residual(
        &self,
        resid: Tensor<3>,
        x: Tensor<3>,
        grid: [usize; 2],
        drop_path: &DropPath,
    ) -> Tensor<3> {
        let (conv2, norm2) = (self.conv2[0].conv(), self.conv2[1].norm());
        let inference = !norm2.is_training(&x) && !drop_path.active(&x);
        let z = self.middle(x, grid);
        if inference {
            conv2.pointwise_norm_residual(resid, z, norm2)
        } else {
            resid + drop_path.forward(self.drop.forward(norm2.forward_tokens(conv2.pointwise(z))))
        }
    }

    /// Everything before the last 1×1 convolution.
    fn middle(&self, x: Tensor<3>, [h, w]: [usize; 2]) -> Tensor<3> {
        let z = self
            .drop
            .forward(self.conv1[0].conv().pointwise_gelu_norm(x, self.conv1[2].norm()));
        let [b, n, e] = z.dims();
        let map = z.reshape([b, h, w, e]);
        let fused = (!self.proj_bn.is_training(&map))
            .then(|| {
                let (scale, shift) = self.proj_bn.affine();
                let (weight, bias) = (self.proj.weight.val(), self.proj.bias.val());
                crate::kernels::depthwise_residual_gelu_affine(map.clone(), weight, bias, scale, shift)
            })
            .flatten();
        match fused {
            Some(z) => z.reshape([b, n, e]),
            None => {
                let local = self.proj.depthwise_residual(map).reshape([b, n, e]);
                self.proj_bn.forward_tokens(crate::kernels::gelu(local))
            }
        }
    }
}

/// A CMT block: local perception unit (`proj`, depthwise 3×3 with a residual), then pre-norm
/// attention and IRFFN, each on a stochastic-depth residual branch.
#[derive(Module, Debug)]
pub struct CmtBlock {
    pub proj: ConvWeights,
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub mlp: Irffn,
    pub drop_path: DropPath,
}

impl CmtBlock {
    fn new(c: &CmtConfig, stage: usize, drop_path: f64, device: &Device) -> Self {
        let dim = c.embed_dims[stage];
        let attn = Attention::new(
            dim,
            c.num_heads[stage],
            Projections::Separate,
            c.qkv_bias,
            c.attn_drop_rate,
            c.drop_rate,
            device,
        )
        .with_reduction(dim, c.sr_ratios[stage], BN_EPS, device);
        Self {
            proj: ConvWeights::kaiming_fan_out(dim, 1, 3, device),
            norm1: LayerNorm::new(dim, BLOCK_NORM_EPS, device),
            attn,
            norm2: LayerNorm::new(dim, BLOCK_NORM_EPS, device),
            mlp: Irffn::new(dim, c.hidden(stage), c.drop_rate, device),
            drop_path: DropPath::new(drop_path),
        }
    }

    /// Tokens `[B, N, C]` of a `grid` map, with the stage's relative position bias `[h, N, M]`.
    fn forward(&self, x: Tensor<3>, grid: [usize; 2], relative_pos: Tensor<4>) -> Tensor<3> {
        let [b, n, c] = x.dims();
        let x = self
            .proj
            .depthwise_residual(x.reshape([b, grid[0], grid[1], c]))
            .reshape([b, n, c]);
        let y = self.norm1.forward(x.clone());
        let kv = self.attn.sr.as_ref().map(|sr| reduce_tokens(sr, y.clone(), grid));
        let args = AttentionArgs {
            kv,
            bias: Some(relative_pos),
            ..Default::default()
        };
        let (heads, _) = self.attn.heads(y, &args);
        let proj = &self.attn.proj;
        // The output projection adds onto the residual stream in its own pass, unless a
        // dropout or stochastic depth sits in between.
        let x = if !self.drop_path.active(&x)
            && (self.attn.proj_drop.prob == 0.0 || !x.device().is_autodiff())
            && crate::kernels::epilogue_applies(&heads, proj)
        {
            crate::kernels::linear_residual(x, heads, proj)
        } else {
            let out = self.attn.proj_drop.forward(crate::kernels::linear(heads, proj));
            x + self.drop_path.forward(out)
        };
        let y = self.norm2.forward(x.clone());
        self.mlp.forward_residual(x, y, grid, &self.drop_path)
    }
}

#[derive(Module, Debug)]
pub struct Cmt {
    pub stem_conv1: ConvWeights,
    pub stem_norm1: BatchNorm,
    pub stem_conv2: ConvWeights,
    pub stem_norm2: BatchNorm,
    pub stem_conv3: ConvWeights,
    pub stem_norm3: BatchNorm,
    pub patch_embed_a: PatchMerge,
    pub patch_embed_b: PatchMerge,
    pub patch_embed_c: PatchMerge,
    pub patch_embed_d: PatchMerge,
    pub relative_pos_a: Param<Tensor<3>>,
    pub relative_pos_b: Param<Tensor<3>>,
    pub relative_pos_c: Param<Tensor<3>>,
    pub relative_pos_d: Param<Tensor<3>>,
    pub blocks_a: Vec<CmtBlock>,
    pub blocks_b: Vec<CmtBlock>,
    pub blocks_c: Vec<CmtBlock>,
    pub blocks_d: Vec<CmtBlock>,
    pub _fc: ConvWeights,
    pub _bn: BatchNorm,
    pub _drop: Dropout,
    pub head: Linear,
    pub stem_stride: usize,
    pub img_size: [usize; 2],
}

impl Cmt {
    fn stages(&self) -> [(&PatchMerge, &Param<Tensor<3>>, &Vec<CmtBlock>); 4] {
        [
            (&self.patch_embed_a, &self.relative_pos_a, &self.blocks_a),
            (&self.patch_embed_b, &self.relative_pos_b, &self.blocks_b),
            (&self.patch_embed_c, &self.relative_pos_c, &self.blocks_c),
            (&self.patch_embed_d, &self.relative_pos_d, &self.blocks_d),
        ]
    }

    /// Three 3×3 convolutions, each followed by GELU then BatchNorm; NCHW in, channels-last
    /// out `[B, H', W', C]`. Channels-last throughout: the convolutions as gathered windows
    /// times a matrix, GELU and BatchNorm on rows.
    fn stem(&self, x: Tensor<4>) -> Tensor<4> {
        let step = |x, conv: &ConvWeights, norm: &BatchNorm, stride| {
            let y = conv.conv2d_channels_last(x, stride, 1);
            let [b, h, w, c] = y.dims();
            let rows = crate::kernels::gelu(y.reshape([b, h * w, c]));
            norm.forward_tokens(rows).reshape([b, h, w, c])
        };
        let x = step(
            x.permute([0, 2, 3, 1]),
            &self.stem_conv1,
            &self.stem_norm1,
            self.stem_stride,
        );
        let x = step(x, &self.stem_conv2, &self.stem_norm2, 1);
        step(x, &self.stem_conv3, &self.stem_norm3, 1)
    }

    /// The expanded map the head pools: `[B, N, fc_dim]` tokens after `_fc`, `_bn` and Swish,
    /// and its grid.
    fn expanded(&self, x: Tensor<4>) -> (Tensor<3>, [usize; 2]) {
        let mut map = self.stem(x);
        for (merge, relative_pos, blocks) in self.stages() {
            let [b, h, w, _] = map.dims();
            let grid = [h / 2, w / 2];
            let mut x = merge.forward(map);
            let bias: Tensor<4> = relative_pos.val().unsqueeze();
            for block in blocks {
                x = block.forward(x, grid, bias.clone());
            }
            let [_, _, c] = x.dims();
            map = x.reshape([b, grid[0], grid[1], c]);
        }
        let [b, h, w, c] = map.dims();
        let x = self._fc.pointwise(map.reshape([b, h * w, c]));
        let x = self._bn.forward_tokens(x);
        (x.clone() * burn::tensor::activation::sigmoid(x), [h, w])
    }

    fn pool(&self, tokens: Tensor<3>) -> Tensor<2> {
        let [b, _, d] = tokens.dims();
        self._drop.forward(tokens.mean_dim(1).reshape([b, d]))
    }
}

impl From<Cmt> for Model {
    fn from(m: Cmt) -> Self {
        Model::Cmt(m)
    }
}

impl Family for Cmt {
    fn family_name(&self) -> &'static str {
        "cmt"
    }
    fn classifier(&self) -> Option<&dyn Classifier> {
        Some(self)
    }
    fn spatial_map(&self) -> Option<&dyn SpatialMap> {
        Some(self)
    }
}

impl Classifier for Cmt {
    fn features(&self, x: Tensor<4>) -> Tensor<2> {
        self.pool(self.expanded(x).0)
    }
    fn head(&self, features: Tensor<2>) -> Tensor<2> {
        crate::kernels::linear(features, &self.head)
    }
    fn input_size(&self) -> [usize; 2] {
        self.img_size
    }
}

impl SpatialMap for Cmt {
    /// The last stage's map after the 1×1 expansion, BatchNorm and Swish: `[B, fc_dim, h, w]`.
    fn feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        let (tokens, [h, w]) = self.expanded(x);
        let [b, _, d] = tokens.dims();
        tokens.reshape([b, h, w, d]).permute([0, 3, 1, 2])
    }
    fn classify_map(&self, map: Tensor<4>) -> Tensor<2> {
        let [b, d, h, w] = map.dims();
        let tokens = map.permute([0, 2, 3, 1]).reshape([b, h * w, d]);
        self.head(self.pool(tokens))
    }
    fn pooled_linear_head(&self) -> bool {
        true
    }
}

impl Architecture for CmtConfig {
    fn family(&self) -> &'static str {
        "cmt"
    }
    fn validate(&self) -> Result<()> {
        CmtConfig::validate(self)
    }
    fn build(&self, device: &Device) -> Result<Model> {
        Ok(self.init(device)?.into())
    }
    fn img_size(&self) -> [usize; 2] {
        self.img_size
    }
    fn in_chans(&self) -> usize {
        self.in_chans
    }
    fn num_classes(&self) -> Option<usize> {
        Some(self.num_classes)
    }
    fn adapt(&mut self, a: &Adaptation) -> Result<()> {
        a.refuse_pretext("cmt")?;
        if a.global_pool.is_some() {
            return Err(VitError::Config(
                "a CMT always average-pools its expanded last map; --global-pool does not apply".into(),
            ));
        }
        self.num_classes = a.num_classes.unwrap_or(self.num_classes);
        self.in_chans = a.in_chans.unwrap_or(self.in_chans);
        self.img_size = a.img_size.unwrap_or(self.img_size);
        self.drop_path_rate = a.drop_path.unwrap_or(self.drop_path_rate);
        Ok(())
    }

    /// Stem, aggregations, q/k/v/proj, reduction, attention scores and their product with v,
    /// IRFFN, the depthwise convolutions, the expansion and the head.
    fn forward_macs(&self) -> f64 {
        let [ih, iw] = self.img_size;
        let stem_px = ((ih / self.stem_stride) * (iw / self.stem_stride)) as f64;
        let s = self.stem_channels as f64;
        let mut macs = stem_px * 9.0 * s * (self.in_chans as f64 + 2.0 * s);
        for i in 0..4 {
            let [_, n, m] = self.relative_pos_shape(i).map(|v| v as f64);
            let d = self.embed_dims[i] as f64;
            let e = self.hidden(i) as f64;
            let r = self.sr_ratios[i] as f64;
            let in_dim = if i == 0 { s } else { self.embed_dims[i - 1] as f64 };
            let per_block = n * 9.0 * d // local perception
                + n * 2.0 * d * d + m * 2.0 * d * d // q, proj; k, v
                + if r > 1.0 { m * r * r * d } else { 0.0 }
                + 2.0 * n * m * d // scores and weighted sum
                + n * (2.0 * d * e + 9.0 * e); // IRFFN
            macs += n * 4.0 * in_dim * d + self.depths[i] as f64 * per_block;
        }
        let [_, n_last, _] = self.relative_pos_shape(3);
        let fc = self.fc_dim as f64;
        macs + n_last as f64 * self.embed_dims[3] as f64 * fc + fc * self.num_classes as f64
    }

    fn head_params(&self) -> Vec<String> {
        vec!["head.weight".into(), "head.bias".into()]
    }

    /// Input channels from the first stem convolution, classes from the head, and the image
    /// size from stage a's relative-position table (square maps).
    fn read_weights(&mut self, file: &StateDict, fixed: &Adaptation) -> Result<()> {
        if fixed.in_chans.is_none()
            && let Some(&[_, c, _, _]) = shape_of(file, "stem_conv1.weight", 4)
        {
            self.in_chans = c;
        }
        if fixed.num_classes.is_none()
            && let Some(&[k, _]) = shape_of(file, "head.weight", 2)
        {
            self.num_classes = k;
        }
        if fixed.img_size.is_none()
            && let Some(&[_, n, _]) = shape_of(file, "relative_pos_a", 3)
            && let Some(side) = square_side(n)
        {
            self.img_size = [side * self.stage_stride(0); 2];
        }
        Ok(())
    }

    /// The relative-position tables are tied to the input size; a file made for another size
    /// is refused (not resampled) with the size it was made for.
    fn fit_weights(&self, file: &mut StateDict, _resample: Resample) -> Result<()> {
        for (i, stage) in ["a", "b", "c", "d"].iter().enumerate() {
            let name = format!("relative_pos_{stage}");
            let want = self.relative_pos_shape(i);
            if let Some(t) = file.get(&name)
                && t.shape.len() == 3
                && t.shape != want
                && t.shape[0] == want[0]
            {
                let made_for = square_side(t.shape[1]).map(|s| s * self.stage_stride(i));
                return Err(VitError::Config(format!(
                    "{name} is {:?}, made for {} input; this model takes {}x{} (needs {want:?}). \
                     CMT's relative position bias is tied to the input size and is not resampled: \
                     use --img-size {}",
                    t.shape,
                    made_for.map_or("another".to_string(), |s| format!("a {s}x{s}")),
                    self.img_size[0],
                    self.img_size[1],
                    made_for.map_or("N".to_string(), |s| s.to_string())
                )));
            }
        }
        Ok(())
    }

    /// ImageNet's mean and std (timm's defaults, as the official code's `_cfg`).
    fn pretrained_mean_std(&self) -> (Vec<f32>, Vec<f32>) {
        let mean = [0.485, 0.456, 0.406];
        let std = [0.229, 0.224, 0.225];
        let pick = |v: [f32; 3]| (0..self.in_chans).map(|c| v[c % 3]).collect();
        (pick(mean), pick(std))
    }
}
