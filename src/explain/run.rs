//! `vitkit explain`: per-image rollout maps and the model-level figures, as PNG plus the
//! numbers behind them as JSON/CSV.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use super::{
    Cam, GradCam, GradCat, GradCatOptions, Matrix, attention_rollout, class_activation_map, class_token_map,
    grad_cam, grad_cat, grid_distances, head_mean, mean_attention_distance, patch_embedding_components,
    position_similarity,
};
use crate::app::{Loaded, ModelSource, load_data, load_model};
use crate::data::{DataSource, ImageDataset, Normalize};
use crate::draw::{Series, TileGrid, tile_grid_png, viridis, xy_chart_png};
use crate::io::{write_atomic, write_json_atomic};
use crate::models::{GlobalAttention, Model, Pooled, TokenLayout};
use crate::nn::host_values;
use crate::train::RunConfig;
use crate::{Result, VitError};

/// What `explain` can draw for a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Attention rollout (and the raw attention of one block), for models with global attention.
    Rollout,
    /// Grad-CAM on the feature map the head pools.
    GradCam,
    /// The class activation map: the head on each position of the map it pools (heads that
    /// are mean pooling and one linear layer).
    Cam,
    /// GradCAT: the greedy descent through NesT's block tree (a reconstruction).
    GradCat,
}

impl Method {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "rollout" => Ok(Method::Rollout),
            "gradcam" | "grad-cam" => Ok(Method::GradCam),
            "cam" => Ok(Method::Cam),
            "gradcat" => Ok(Method::GradCat),
            other => Err(VitError::Config(format!(
                "unknown explain method '{other}'; valid: rollout, gradcam, cam, gradcat"
            ))),
        }
    }

    /// The name in file names and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Method::Rollout => "rollout",
            Method::GradCam => "gradcam",
            Method::Cam => "cam",
            Method::GradCat => "gradcat",
        }
    }
}

/// A loaded model with what is needed to feed it.
pub struct Explainer {
    model: Model,
    pub run: RunConfig,
    norm: Normalize,
    device: Device,
}

impl Explainer {
    /// The model (in inference mode), its input normalisation and device.
    pub(crate) fn parts(&self) -> (&Model, &Normalize, &Device) {
        (&self.model, &self.norm, &self.device)
    }

    pub fn load(source: &ModelSource, device: &Device) -> Result<Self> {
        let Loaded { model, run, norm } = load_model(source, device)?;
        Ok(Self {
            model,
            run,
            norm,
            device: device.clone(),
        })
    }

    /// Whether the model has pretext heads (a SiT pretraining run).
    pub fn has_pretext(&self) -> bool {
        self.model.pretext().is_some()
    }

    /// The methods this model supports.
    pub fn methods(&self) -> Vec<Method> {
        let mut m = Vec::new();
        if self.model.global_attention().is_some() {
            m.push(Method::Rollout);
        }
        if let Some(spatial) = self.model.spatial_map() {
            m.push(Method::GradCam);
            if spatial.pooled_linear_head() {
                m.push(Method::Cam);
            }
        }
        if self.model.block_tree().is_some() {
            m.push(Method::GradCat);
        }
        m
    }

    /// What `explain` draws per image unless told: CAM and GradCAT for a block tree (NesT),
    /// else rollout where the model has global attention, else Grad-CAM.
    pub fn default_methods(&self) -> Result<Vec<Method>> {
        if self.model.block_tree().is_some() {
            return Ok(vec![Method::Cam, Method::GradCat]);
        }
        Ok(vec![self.default_method()?])
    }

    /// A class by name (as the data names it) or index, or an error listing the classes.
    pub fn class_index(&self, name: &str) -> Result<usize> {
        let names = &self.run.data.class_names;
        let classes = self.run.model.num_classes().unwrap_or(names.len());
        if let Some(k) = names.iter().position(|n| n == name) {
            return Ok(k);
        }
        if let Ok(k) = name.parse::<usize>()
            && k < classes
        {
            return Ok(k);
        }
        let listed = if names.is_empty() {
            format!("0 to {}", classes.saturating_sub(1))
        } else {
            names.join(", ")
        };
        Err(VitError::Config(format!(
            "class '{name}' is not one of this model's {classes} classes: {listed}"
        )))
    }

    /// The class activation map of the predicted class (or `class`), for one image.
    pub fn cam(&self, image: &[u8], class: Option<usize>) -> Result<Cam> {
        self.check_method(Method::Cam)?;
        class_activation_map(&self.model, self.input(&[image]), class)
    }

    /// GradCAT of the predicted class (or `class`), for one image.
    pub fn grad_cat(&self, image: &[u8], class: Option<usize>, options: GradCatOptions) -> Result<GradCat> {
        self.check_method(Method::GradCat)?;
        grad_cat(&self.model, self.input(&[image]), class, options)
    }

    fn what_it_can_do(&self) -> String {
        let methods = self.methods();
        if methods.is_empty() {
            return format!("explain has nothing to draw for a {} model", self.model.family());
        }
        let names: Vec<&str> = methods
            .iter()
            .map(|m| match m {
                Method::Rollout => "attention rollout and the figures (--figures)",
                Method::GradCam => "Grad-CAM (--method gradcam)",
                Method::Cam => "the class activation map (--method cam)",
                Method::GradCat => "GradCAT (--method gradcat)",
            })
            .collect();
        format!(
            "for this {} model explain can draw: {}",
            self.model.family(),
            names.join(", ")
        )
    }

    /// The model's global attention, or an error naming what explain can do instead.
    fn global(&self) -> Result<&dyn GlobalAttention> {
        self.model
            .global_attention()
            .ok_or_else(|| self.unsupported(Method::Rollout))
    }

    /// Checks `method` applies to this model.
    pub fn check_method(&self, method: Method) -> Result<()> {
        if self.methods().contains(&method) {
            Ok(())
        } else {
            Err(self.unsupported(method))
        }
    }

    /// Why `method` does not apply, and what does.
    fn unsupported(&self, method: Method) -> VitError {
        VitError::Config(match method {
            Method::Rollout => format!(
                "attention rollout needs global attention maps, which a {} model does not have; {}",
                self.model.family(),
                self.what_it_can_do()
            ),
            Method::GradCam => format!(
                "Grad-CAM needs a model whose head pools a spatial feature map (a ViT with \
                 --global-pool avg, CMT, NesT); {}",
                self.what_it_can_do()
            ),
            Method::Cam => format!(
                "a class activation map needs a head that is mean pooling and one linear layer \
                 (CMT, NesT); {}",
                self.what_it_can_do()
            ),
            Method::GradCat => format!(
                "GradCAT traverses a tree of image blocks, which a {} model does not have (NesT \
                 has one); {}",
                self.model.family(),
                self.what_it_can_do()
            ),
        })
    }

    /// Rollout when the model has global attention, else Grad-CAM when it applies.
    pub fn default_method(&self) -> Result<Method> {
        self.methods()
            .first()
            .copied()
            .ok_or_else(|| VitError::Config(self.what_it_can_do()))
    }

    pub fn layout(&self) -> Result<TokenLayout> {
        Ok(self.global()?.layout())
    }

    pub fn img_size(&self) -> [usize; 2] {
        self.run.model.img_size()
    }

    /// A batch of byte images (the data's channels) as the model's input.
    pub(super) fn input(&self, images: &[&[u8]]) -> Tensor<4> {
        let [h, w] = self.img_size();
        let channels = self.run.data.channels;
        let out = self.norm.out_channels;
        let mut x = Vec::with_capacity(images.len() * out * h * w);
        for img in images {
            x.extend(self.norm.image(img, channels, h, w));
        }
        Tensor::<4>::from_data(TensorData::new(x, [images.len(), out, h, w]), &self.device)
    }

    /// Post-softmax attention of every block for a batch of byte images: one
    /// `[B, heads, T, T]` vector per block.
    pub fn attention(&self, images: &[&[u8]]) -> Result<Vec<Vec<f32>>> {
        let global = self.global()?;
        global
            .attention_maps(self.input(images))
            .into_iter()
            .map(host_values)
            .collect()
    }

    /// The rollout map over the patch grid for one image.
    pub fn rollout(&self, image: &[u8]) -> Result<Vec<f64>> {
        let layout = self.layout()?;
        let layers: Vec<Matrix> = self
            .attention(&[image])?
            .iter()
            .map(|a| head_mean(a, layout.heads, layout.tokens()))
            .collect();
        let joint =
            attention_rollout(&layers).ok_or_else(|| VitError::Other("model has no blocks".into()))?;
        Ok(pooled_row(&joint, &layout))
    }

    /// Grad-CAM of the predicted class (or `class`) over the head's feature map, for one
    /// image.
    pub fn grad_cam(&self, image: &[u8], class: Option<usize>) -> Result<GradCam> {
        self.check_method(Method::GradCam)?;
        grad_cam(&self.model, self.input(&[image]), class)
    }

    /// The raw attention over the patches in block `layer` (of the pooled tokens), for one
    /// head or averaged over heads.
    pub fn raw_attention(&self, image: &[u8], layer: usize, head: Option<usize>) -> Result<Vec<f64>> {
        self.check_layer_head(Some(layer), head)?;
        let layout = self.layout()?;
        let attn = &self.attention(&[image])?[layer];
        let t = layout.tokens();
        let m = match head {
            Some(h) => Matrix {
                n: t,
                data: attn[h * t * t..(h + 1) * t * t]
                    .iter()
                    .map(|&v| v as f64)
                    .collect(),
            },
            None => head_mean(attn, layout.heads, t),
        };
        Ok(pooled_row(&m, &layout))
    }

    pub fn check_layer_head(&self, layer: Option<usize>, head: Option<usize>) -> Result<()> {
        if layer.is_none() && head.is_none() {
            return Ok(());
        }
        let layout = self.layout()?;
        if let Some(l) = layer
            && l >= layout.depth
        {
            return Err(VitError::Config(format!(
                "--layer {l} is out of range: valid 0..={}",
                layout.depth - 1
            )));
        }
        if let Some(h) = head
            && h >= layout.heads
        {
            return Err(VitError::Config(format!(
                "--head {h} is out of range: valid 0..={}",
                layout.heads - 1
            )));
        }
        Ok(())
    }

    /// Mean attention distance per (layer, head), averaged over `images`.
    pub fn attention_distances(&self, data: &ImageDataset, samples: usize) -> Result<Vec<Vec<f64>>> {
        let layout = self.layout()?;
        let n = samples.min(data.len()).max(1);
        let dist = grid_distances(layout.grid, layout.patch_size);
        let (heads, t, prefix) = (layout.heads, layout.tokens(), layout.prefix);
        let mut sums = vec![vec![0.0; heads]; layout.depth];
        for start in (0..n).step_by(32) {
            let batch: Vec<&[u8]> = (start..(start + 32).min(n)).map(|i| data.image(i)).collect();
            for (layer, attn) in self.attention(&batch)?.iter().enumerate() {
                for b in 0..batch.len() {
                    let one = &attn[b * heads * t * t..(b + 1) * heads * t * t];
                    for (s, d) in sums[layer]
                        .iter_mut()
                        .zip(mean_attention_distance(one, heads, t, prefix, &dist))
                    {
                        *s += d;
                    }
                }
            }
        }
        Ok(sums
            .into_iter()
            .map(|row| row.into_iter().map(|s| s / n as f64).collect())
            .collect())
    }

    pub fn position_similarity(&self) -> Result<Matrix> {
        let layout = self.layout()?;
        let pos = self
            .global()?
            .position_embedding()
            .ok_or_else(|| VitError::Config("the model has no learned position embedding".into()))?;
        let [_, t, d] = pos.dims();
        Ok(position_similarity(&host_values(pos)?, t, d, layout.prefix))
    }

    /// Top principal components of the patch-embedding filters, each `[C, P, P]`.
    pub fn filter_components(&self, k: usize) -> Result<(Vec<Vec<f64>>, Vec<f64>)> {
        let w = self
            .global()?
            .patch_filters()
            .ok_or_else(|| VitError::Config("the model has no patch-embedding filters".into()))?;
        let [d, c, p, q] = w.dims();
        Ok(patch_embedding_components(&host_values(w)?, d, c * p * q, k))
    }
}

/// What the pooled feature attends to over the patches: the pooled prefix tokens' rows
/// (averaged), or for average pooling the mean of the patch tokens' rows, since those are
/// what is pooled.
fn pooled_row(m: &Matrix, layout: &TokenLayout) -> Vec<f64> {
    let p = layout.prefix;
    match &layout.pooled {
        Pooled::Tokens(rows) => {
            let maps: Vec<Vec<f64>> = rows.iter().map(|&r| class_token_map(m, r, p)).collect();
            (0..m.n - p)
                .map(|j| maps.iter().map(|row| row[j]).sum::<f64>() / maps.len().max(1) as f64)
                .collect()
        }
        Pooled::Patches => {
            let n = m.n - p;
            (p..m.n)
                .map(|j| (p..m.n).map(|i| m.at(i, j)).sum::<f64>() / n as f64)
                .collect()
        }
    }
}

/// Numbers behind the position-embedding figure.
#[derive(Debug, Clone, Serialize)]
pub struct PositionSimilaritySummary {
    pub grid: [usize; 2],
    /// Mean cosine similarity of 4-neighbour positions.
    pub neighbour_mean: f64,
    /// Mean cosine similarity of positions at least 3 patches apart (Euclidean on the grid).
    pub far_mean: f64,
    pub similarity: Vec<Vec<f64>>,
}

fn summarise_similarity(sim: &Matrix, grid: [usize; 2]) -> PositionSimilaritySummary {
    let (mut near, mut nn, mut far, mut nf) = (0.0, 0usize, 0.0, 0usize);
    for i in 0..sim.n {
        for j in 0..sim.n {
            let (dy, dx) = (
                (i / grid[1]) as f64 - (j / grid[1]) as f64,
                (i % grid[1]) as f64 - (j % grid[1]) as f64,
            );
            let d = (dy * dy + dx * dx).sqrt();
            if (d - 1.0).abs() < 1e-9 {
                near += sim.at(i, j);
                nn += 1;
            } else if d >= 3.0 {
                far += sim.at(i, j);
                nf += 1;
            }
        }
    }
    PositionSimilaritySummary {
        grid,
        neighbour_mean: near / nn.max(1) as f64,
        far_mean: far / nf.max(1) as f64,
        similarity: (0..sim.n).map(|i| sim.row(i).to_vec()).collect(),
    }
}

/// The model's test images from `data`, at the size the model takes.
pub fn test_images(ex: &Explainer, data: &str) -> Result<ImageDataset> {
    Ok(load_data(&DataSource::parse(data)?, ex.img_size(), false)?.test)
}

/// The three model-level figures and their numbers; `test` feeds the attention distance.
/// Returns the files written.
pub fn explain_figures(
    ex: &Explainer,
    test: &ImageDataset,
    samples: usize,
    out: &Path,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).map_err(|e| VitError::io(out, e))?;
    let mut written = Vec::new();
    let model_name = &ex.run.model_name;
    let layout = ex.layout()?;
    let (p, ch) = (layout.patch_size, ex.run.model.in_chans());

    // 1. Patch-embedding filters: principal components as image tiles.
    let k = 28.min(ch * p * p);
    let (components, explained) = ex.filter_components(k)?;
    let tiles = components
        .iter()
        .map(|v| {
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
            let scale = |x: f64| (255.0 * (x - lo) / (hi - lo).max(1e-12)).round() as u8;
            (0..p * p)
                .map(|i| {
                    let at = |cc: usize| scale(v[(if ch == 1 { 0 } else { cc }) * p * p + i]);
                    plotters::style::RGBColor(at(0), at(1), at(2))
                })
                .collect()
        })
        .collect();
    let cols = 7.min(k);
    let png = out.join("patch_embedding_filters.png");
    tile_grid_png(
        &png,
        &TileGrid {
            title: &format!("{model_name}: top {k} principal components of the patch embedding"),
            rows: k.div_ceil(cols),
            cols,
            tile: [p, p],
            tiles,
            row_label: "component (row)",
            col_label: "component (column)",
            colour_bar: None,
        },
    )?;
    let json = serde_json::json!({"patch_size": p, "channels": ch, "explained_variance": explained, "components": components});
    write_atomic(
        &out.join("patch_embedding_filters.json"),
        json.to_string().as_bytes(),
    )?;
    written.push(png);

    // 2. Position-embedding similarity: one tile per position.
    let grid = layout.grid;
    let sim = ex.position_similarity()?;
    let tiles = (0..sim.n)
        .map(|i| sim.row(i).iter().map(|&s| viridis((s + 1.0) / 2.0)).collect())
        .collect();
    let png = out.join("position_embedding_similarity.png");
    tile_grid_png(
        &png,
        &TileGrid {
            title: &format!("{model_name}: position embedding similarity"),
            rows: grid[0],
            cols: grid[1],
            tile: grid,
            tiles,
            row_label: "input patch row",
            col_label: "input patch column",
            colour_bar: Some((-1.0, 1.0, "cosine")),
        },
    )?;
    write_json_atomic(
        &out.join("position_embedding_similarity.json"),
        &summarise_similarity(&sim, grid),
    )?;
    written.push(png);

    // 3. Mean attention distance per head and block, over test images.
    let distances = ex.attention_distances(test, samples)?;
    let series: Vec<Series> = (0..layout.heads)
        .map(|h| Series {
            name: format!("head {h}"),
            points: distances
                .iter()
                .enumerate()
                .map(|(l, row)| ((l + 1) as f64, row[h]))
                .collect(),
        })
        .collect();
    let png = out.join("mean_attention_distance.png");
    let n = samples.min(test.len());
    xy_chart_png(
        &png,
        &format!("{model_name}: mean attention distance ({n} test images)"),
        "network depth (block)",
        "mean attention distance (pixels)",
        &series,
        true,
    )?;
    let mut csv = String::from("block,head,mean_distance_px\n");
    for (l, row) in distances.iter().enumerate() {
        for (h, d) in row.iter().enumerate() {
            csv.push_str(&format!("{},{h},{d:.4}\n", l + 1));
        }
    }
    write_atomic(&out.join("mean_attention_distance.csv"), csv.as_bytes())?;
    written.push(png);
    Ok(written)
}
