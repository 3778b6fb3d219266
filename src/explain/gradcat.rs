//! GradCAT ("gradient-based class-aware tree traversal", NesT paper): from the root block
//! down, pick at each level the child block (of 4) with the highest class-specific
//! activation × gradient score, ending at one block of the bottom level.
//!
//! **A reconstruction.** The paper's pseudo-code could not be retrieved (see
//! `../shared/spec/nest_gradcat_generator.md`); what is certain is the tree (4 children per
//! node, blocks row-major, quadrant (r, c) of a parent over child block (r, c)). The uncertain
//! choices are options: the gradient's sign, how channels reduce to one score per token, and
//! whose activations score a child. The defaults: activation × (−gradient), as two of the
//! three third-party versions write it (and the setting whose final block lands on the garment
//! most often on Fashion-MNIST, `tools/gradcat_localisation.py`), the mean over channels, each
//! child scored by its own tokens at its own level, and the descent restricted to the chosen
//! block's children (third-party versions pool the whole map at every level; restricting is
//! what a tree traversal means).

use burn::module::Module;
use burn::tensor::Tensor;
use serde::Serialize;

use super::cam::pick_class;
use crate::models::{Model, TreeLayout};
use crate::nn::host_values;
use crate::{Result, VitError};

/// The sign of the gradient in the score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GradSign {
    /// activation × ∂score/∂activation.
    Plus,
    /// activation × (−∂score/∂activation), as two third-party versions write it.
    Minus,
}

/// How a token's channels reduce to one score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelReduce {
    /// The mean over channels of activation × gradient.
    Mean,
    /// Grad-CAM's: each channel weighted by its gradient averaged over the level's tokens.
    GradCam,
}

/// Whose activations score a child block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreFrom {
    /// The child level's tokens inside the child block.
    Child,
    /// The parent level's tokens in the parent block's quadrant over the child.
    Parent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GradCatOptions {
    pub sign: GradSign,
    pub reduce: ChannelReduce,
    pub score_from: ScoreFrom,
}

impl GradSign {
    pub fn name(self) -> &'static str {
        match self {
            GradSign::Plus => "+grad",
            GradSign::Minus => "-grad",
        }
    }
}

impl ChannelReduce {
    pub fn name(self) -> &'static str {
        match self {
            ChannelReduce::Mean => "channel mean",
            ChannelReduce::GradCam => "Grad-CAM weights",
        }
    }
}

impl ScoreFrom {
    pub fn name(self) -> &'static str {
        match self {
            ScoreFrom::Child => "child tokens",
            ScoreFrom::Parent => "parent quadrant",
        }
    }
}

impl Default for GradCatOptions {
    fn default() -> Self {
        Self {
            sign: GradSign::Minus,
            reduce: ChannelReduce::Mean,
            score_from: ScoreFrom::Child,
        }
    }
}

impl GradCatOptions {
    /// From the command line's words (`None` keeps the default).
    pub fn parse(sign: Option<&str>, reduce: Option<&str>, score_from: Option<&str>) -> Result<Self> {
        let bad = |what: &str, got: &str, valid: &str| {
            VitError::Config(format!("unknown GradCAT {what} '{got}'; valid: {valid}"))
        };
        let mut o = Self::default();
        if let Some(s) = sign {
            o.sign = match s {
                "plus" => GradSign::Plus,
                "minus" => GradSign::Minus,
                _ => return Err(bad("sign", s, "plus, minus")),
            };
        }
        if let Some(s) = reduce {
            o.reduce = match s {
                "mean" => ChannelReduce::Mean,
                "gradcam" => ChannelReduce::GradCam,
                _ => return Err(bad("channel reduction", s, "mean, gradcam")),
            };
        }
        if let Some(s) = score_from {
            o.score_from = match s {
                "child" => ScoreFrom::Child,
                "parent" => ScoreFrom::Parent,
                _ => return Err(bad("score source", s, "child, parent")),
            };
        }
        Ok(o)
    }
}

/// One chosen block.
#[derive(Debug, Clone, Serialize)]
pub struct TreeStep {
    /// Level of the block (0 = bottom, the most blocks).
    pub level: usize,
    /// Row and column in that level's block grid.
    pub block: [usize; 2],
    /// Its score, and its 3 siblings' (row-major quadrants of the parent).
    pub score: f64,
    pub sibling_scores: [f64; 4],
    /// Pixels covered: `[top, left, bottom, right)` on the model's input.
    pub pixels: [usize; 4],
}

/// One image's traversal.
#[derive(Debug, Clone, Serialize)]
pub struct GradCat {
    pub class: usize,
    pub options: GradCatOptions,
    /// From the top level's children down to a bottom-level block.
    pub path: Vec<TreeStep>,
}

/// A level's per-token scores `[h, w]`, row-major.
struct ScoreMap {
    side: usize,
    values: Vec<f64>,
}

impl ScoreMap {
    /// The mean over the `size`×`size` square at `(top, left)` tokens.
    fn mean(&self, top: usize, left: usize, size: usize) -> f64 {
        let mut s = 0.0;
        for y in top..top + size {
            s += self.values[y * self.side + left..y * self.side + left + size]
                .iter()
                .sum::<f64>();
        }
        s / (size * size) as f64
    }
}

/// GradCAT for the single image `x` `[1, C, H, W]` and `class` (default: the predicted one),
/// with `model` in inference mode on a device without autodiff.
pub fn grad_cat(
    model: &Model,
    x: Tensor<4>,
    class: Option<usize>,
    options: GradCatOptions,
) -> Result<GradCat> {
    let none = || {
        VitError::Config(format!(
            "GradCAT traverses a tree of image blocks, which only NesT has; a {} model has none",
            model.family()
        ))
    };
    let tree = model.block_tree().ok_or_else(none)?;
    let layout = tree.tree();
    if options.score_from == ScoreFrom::Parent && layout.block_size % 2 == 1 {
        return Err(VitError::Config(format!(
            "GradCAT scored from the parent splits a parent block into quadrants: blocks of \
             {0}x{0} tokens have none; use --gradcat-score child",
            layout.block_size
        )));
    }
    let outputs = tree.level_outputs(x);
    if outputs.first().is_none_or(|o| o.dims()[0] != 1) {
        return Err(VitError::Config("GradCAT takes one image".into()));
    }
    let device = outputs[0].device().autodiff();
    let differentiable = model.valid().fork(&device);
    let upper = differentiable.block_tree().ok_or_else(none)?;
    let top = layout.levels - 1;
    let logits = upper.logits_from(top, outputs[top].clone().autodiff());
    let class = pick_class(logits, class)?;
    let scores = outputs
        .iter()
        .enumerate()
        .map(|(level, map)| {
            let leaf = map.clone().autodiff().require_grad();
            let logits = upper.logits_from(level, leaf.clone());
            let grads = logits.narrow(1, class, 1).sum().backward();
            let grad = leaf
                .grad(&grads)
                .ok_or_else(|| VitError::Other(format!("the logits do not depend on level {level}")))?;
            score_map(map.clone(), grad, options)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(GradCat {
        class,
        options,
        path: traverse(&scores, &layout, options.score_from),
    })
}

/// Per-token scores of one level from its activations and gradients (channels-last).
fn score_map(act: Tensor<4>, grad: Tensor<4>, options: GradCatOptions) -> Result<ScoreMap> {
    let [_, h, w, c] = act.dims();
    let sign = match options.sign {
        GradSign::Plus => 1.0,
        GradSign::Minus => -1.0,
    };
    let a = host_values(act)?;
    let g = host_values(grad)?;
    let weights: Vec<f64> = match options.reduce {
        ChannelReduce::Mean => Vec::new(),
        ChannelReduce::GradCam => (0..c)
            .map(|ch| (0..h * w).map(|t| g[t * c + ch] as f64).sum::<f64>() / (h * w) as f64)
            .collect(),
    };
    let values = (0..h * w)
        .map(|t| {
            let (a, g) = (&a[t * c..(t + 1) * c], &g[t * c..(t + 1) * c]);
            sign * match options.reduce {
                ChannelReduce::Mean => {
                    a.iter().zip(g).map(|(&a, &g)| a as f64 * g as f64).sum::<f64>() / c as f64
                }
                ChannelReduce::GradCam => a.iter().zip(&weights).map(|(&a, &w)| a as f64 * w).sum::<f64>(),
            }
        })
        .collect();
    Ok(ScoreMap { side: w, values })
}

/// The greedy descent from the root: at each level the best of the current block's 4 children.
fn traverse(scores: &[ScoreMap], layout: &TreeLayout, from: ScoreFrom) -> Vec<TreeStep> {
    let b = layout.block_size;
    let mut parent = [0usize, 0usize]; // the root, in the top level's 1x1 block grid
    let mut path = Vec::new();
    for level in (0..layout.levels - 1).rev() {
        let children = [[0, 0], [0, 1], [1, 0], [1, 1]].map(|[r, c]| [2 * parent[0] + r, 2 * parent[1] + c]);
        let sibling_scores = children.map(|[r, c]| match from {
            ScoreFrom::Child => scores[level].mean(r * b, c * b, b),
            ScoreFrom::Parent => {
                let half = b / 2;
                let (pr, pc) = (r - 2 * parent[0], c - 2 * parent[1]);
                scores[level + 1].mean(parent[0] * b + pr * half, parent[1] * b + pc * half, half)
            }
        });
        let best = (0..4).fold(0, |best, i| {
            if sibling_scores[i] > sibling_scores[best] {
                i
            } else {
                best
            }
        });
        let block = children[best];
        let px = (b * layout.patch_size) << level;
        path.push(TreeStep {
            level,
            block,
            score: sibling_scores[best],
            sibling_scores,
            pixels: [
                block[0] * px,
                block[1] * px,
                (block[0] + 1) * px,
                (block[1] + 1) * px,
            ],
        });
        parent = block;
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3-level tree of 2x2-token blocks: levels of 8x8, 4x4 and 2x2 tokens.
    fn maps(hot: [usize; 2]) -> Vec<ScoreMap> {
        (0..3)
            .map(|l| {
                let side = 8 >> l;
                let mut values = vec![0.0; side * side];
                values[(hot[0] >> l) * side + (hot[1] >> l)] = 1.0;
                ScoreMap { side, values }
            })
            .collect()
    }

    #[test]
    fn descends_to_the_block_holding_the_evidence() {
        let layout = TreeLayout {
            levels: 3,
            block_size: 2,
            patch_size: 4,
        };
        for hot in [[0, 0], [7, 7], [2, 5], [5, 2], [3, 4]] {
            for from in [ScoreFrom::Child, ScoreFrom::Parent] {
                let path = traverse(&maps(hot), &layout, from);
                assert_eq!(path.len(), 2);
                // Level 1 blocks are 4x4 tokens of level 0; level 0 blocks 2x2.
                assert_eq!(path[0].block, [hot[0] / 4, hot[1] / 4], "{hot:?} {from:?}");
                assert_eq!(path[1].block, [hot[0] / 2, hot[1] / 2], "{hot:?} {from:?}");
                assert_eq!(path[1].pixels[0], hot[0] / 2 * 8);
                assert!(path[1].score > 0.0);
            }
        }
    }
}
