//! `vitkit explain`: per-image rollout maps and the model-level figures, as PNG plus the
//! numbers behind them as JSON/CSV.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use super::{
    Matrix, attention_rollout, class_token_map, grid_distances, head_mean, mean_attention_distance,
    patch_embedding_components, position_similarity,
};
use crate::app::{LoadedModel, ModelSource, load_data};
use crate::data::{DataSource, ImageDataset, Normalize, load_image_file};
use crate::io::{RunConfig, write_atomic, write_json_atomic};
use crate::models::{GlobalPool, Vit, VitConfig};
use crate::report::{Series, TileGrid, overlay_png, tile_grid_png, viridis, xy_chart_png};
use crate::{Result, VitError};

/// A loaded ViT with what is needed to feed it.
pub struct Explainer {
    model: Vit,
    config: VitConfig,
    pub run: RunConfig,
    norm: Normalize,
    device: Device,
}

fn to_vec(t: Tensor<4>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| VitError::Other(format!("{e:?}")))
}

impl Explainer {
    pub fn load(source: &ModelSource, device: &Device) -> Result<Self> {
        let (model, run) = LoadedModel::from_source(source, device)?;
        let model = model.into_vit().map_err(|family| {
            VitError::Config(format!(
                "explain needs a model with attention maps (the vit family); this is a {family} model"
            ))
        })?;
        let crate::models::ModelConfig::Vit(config) = run.model.clone();
        let norm = Normalize {
            mean: run.data.mean.clone(),
            std: run.data.std.clone(),
            out_channels: config.in_chans,
        };
        Ok(Self {
            model,
            config,
            run,
            norm,
            device: device.clone(),
        })
    }

    pub fn depth(&self) -> usize {
        self.config.depth
    }
    pub fn heads(&self) -> usize {
        self.config.num_heads
    }
    pub fn grid(&self) -> [usize; 2] {
        self.config.grid()
    }
    fn tokens(&self) -> usize {
        self.config.num_patches() + 1
    }

    /// Post-softmax attention of every block for a batch of byte images (the data's channels):
    /// one `[B, heads, T, T]` vector per block.
    pub fn attention(&self, images: &[&[u8]]) -> Result<Vec<Vec<f32>>> {
        let [h, w] = self.config.img_size;
        let channels = self.run.data.channels;
        let mut x = Vec::with_capacity(images.len() * self.config.in_chans * h * w);
        for img in images {
            x.extend(self.norm.image(img, channels, h, w));
        }
        let input = Tensor::<4>::from_data(
            TensorData::new(x, [images.len(), self.config.in_chans, h, w]),
            &self.device,
        );
        self.model
            .forward_detailed(input, true)
            .attentions
            .into_iter()
            .map(to_vec)
            .collect()
    }

    /// The rollout map over the patch grid for one image.
    pub fn rollout(&self, image: &[u8]) -> Result<Vec<f64>> {
        let layers: Vec<Matrix> = self
            .attention(&[image])?
            .iter()
            .map(|a| head_mean(a, self.heads(), self.tokens()))
            .collect();
        let joint =
            attention_rollout(&layers).ok_or_else(|| VitError::Other("model has no blocks".into()))?;
        Ok(self.pooled_row(&joint))
    }

    /// What the pooled feature attends to over the patches: the class token's row for token
    /// pooling; for average pooling the mean of the patch tokens' rows, since those are what is
    /// pooled.
    fn pooled_row(&self, m: &Matrix) -> Vec<f64> {
        match self.config.global_pool {
            GlobalPool::Token => class_token_map(m, 1),
            GlobalPool::Avg => {
                let n = m.n - 1;
                (1..m.n)
                    .map(|j| (1..m.n).map(|i| m.at(i, j)).sum::<f64>() / n as f64)
                    .collect()
            }
        }
    }

    /// The raw attention over the patches in block `layer` (of the class token, or of the
    /// patch tokens on average for an average-pooled model), for one head or averaged over heads.
    pub fn raw_attention(&self, image: &[u8], layer: usize, head: Option<usize>) -> Result<Vec<f64>> {
        self.check_layer_head(Some(layer), head)?;
        let attn = &self.attention(&[image])?[layer];
        let t = self.tokens();
        let m = match head {
            Some(h) => Matrix {
                n: t,
                data: attn[h * t * t..(h + 1) * t * t]
                    .iter()
                    .map(|&v| v as f64)
                    .collect(),
            },
            None => head_mean(attn, self.heads(), t),
        };
        Ok(self.pooled_row(&m))
    }

    pub fn check_layer_head(&self, layer: Option<usize>, head: Option<usize>) -> Result<()> {
        if let Some(l) = layer
            && l >= self.depth()
        {
            return Err(VitError::Config(format!(
                "--layer {l} is out of range: valid 0..={}",
                self.depth() - 1
            )));
        }
        if let Some(h) = head
            && h >= self.heads()
        {
            return Err(VitError::Config(format!(
                "--head {h} is out of range: valid 0..={}",
                self.heads() - 1
            )));
        }
        Ok(())
    }

    /// Mean attention distance per (layer, head), averaged over `images`.
    pub fn attention_distances(&self, data: &ImageDataset, samples: usize) -> Result<Vec<Vec<f64>>> {
        let n = samples.min(data.len()).max(1);
        let dist = grid_distances(self.grid(), self.config.patch_size);
        let (heads, t) = (self.heads(), self.tokens());
        let mut sums = vec![vec![0.0; heads]; self.depth()];
        for start in (0..n).step_by(32) {
            let batch: Vec<&[u8]> = (start..(start + 32).min(n)).map(|i| data.image(i)).collect();
            for (layer, attn) in self.attention(&batch)?.iter().enumerate() {
                for b in 0..batch.len() {
                    let one = &attn[b * heads * t * t..(b + 1) * heads * t * t];
                    for (s, d) in sums[layer]
                        .iter_mut()
                        .zip(mean_attention_distance(one, heads, t, 1, &dist))
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
        let pos = self.model.pos_embed.val();
        let [_, t, d] = pos.dims();
        let values = pos
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| VitError::Other(format!("{e:?}")))?;
        Ok(position_similarity(&values, t, d, 1))
    }

    /// Top principal components of the patch-embedding filters, each `[C, P, P]`.
    pub fn filter_components(&self, k: usize) -> Result<(Vec<Vec<f64>>, Vec<f64>)> {
        let w = self.model.patch_embed.proj.weight.val();
        let [d, c, p, q] = w.dims();
        Ok(patch_embedding_components(&to_vec(w)?, d, c * p * q, k))
    }
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("image")
        .to_string()
}

/// Writes the rollout overlay (and, with `layer`, the raw attention) of each image file.
pub fn explain_images(
    ex: &Explainer,
    images: &[PathBuf],
    out: &Path,
    layer: Option<usize>,
    head: Option<usize>,
) -> Result<Vec<PathBuf>> {
    ex.check_layer_head(layer, head)?;
    if head.is_some() && layer.is_none() {
        return Err(VitError::Config("--head needs --layer".into()));
    }
    std::fs::create_dir_all(out).map_err(|e| VitError::io(out, e))?;
    let [h, w] = ex.config.img_size;
    let channels = ex.run.data.channels;
    let mut written = Vec::new();
    for path in images {
        let img = load_image_file(path, channels, [h, w])?;
        let name = stem(path);
        let map = ex.rollout(&img)?;
        let png = out.join(format!("{name}_rollout.png"));
        overlay_png(
            &png,
            &format!("{}: attention rollout", path.display()),
            &img,
            channels,
            [h, w],
            &map,
            ex.grid(),
        )?;
        let json = serde_json::json!({"image": path, "grid": ex.grid(), "rollout": map});
        write_atomic(
            &out.join(format!("{name}_rollout.json")),
            json.to_string().as_bytes(),
        )?;
        written.push(png);
        if let Some(l) = layer {
            let raw = ex.raw_attention(&img, l, head)?;
            let which = head.map_or("mean".to_string(), |h| h.to_string());
            let png = out.join(format!("{name}_attn_layer{l}_head{which}.png"));
            let title = format!(
                "{}: class-token attention, block {l}, head {which}",
                path.display()
            );
            overlay_png(&png, &title, &img, channels, [h, w], &raw, ex.grid())?;
            written.push(png);
        }
    }
    Ok(written)
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
    Ok(load_data(&DataSource::parse(data)?, ex.config.img_size, false)?.test)
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
    let c = &ex.config;
    let (p, ch) = (c.patch_size, c.in_chans);

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
    let grid = ex.grid();
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
    let series: Vec<Series> = (0..c.num_heads)
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
