//! What the application does with an image–text model (CLIP): `infer` on features.

use std::path::Path;

use burn::tensor::Device;

use super::{RunConfig, host, pixel_batch, pixel_tensor};
use crate::io::FileTensor;
use crate::models::ImageText;
use crate::models::clip::normalize;
use crate::{Result, VitError};

/// `vitkit infer` on a CLIP model: `pixel_values` `[B, C, H, W]` and/or `input_ids` `[N, T]`
/// (token ids, any integer or float type, `T` up to the context) in; `image_features`
/// `[B, E]`, `text_features` `[N, E]` (before normalisation, as open_clip's `encode_image` /
/// `encode_text`) and, with both, `logits_per_image` `[B, N]` out.
pub fn infer(
    towers: &dyn ImageText,
    run: &RunConfig,
    mut tensors: crate::models::StateDict,
    output: &Path,
    bad: &dyn Fn(String) -> VitError,
    device: &Device,
) -> Result<String> {
    let pixels = tensors.remove("pixel_values");
    let ids = tensors.remove("input_ids");
    if pixels.is_none() && ids.is_none() {
        return Err(bad(
            "holds neither pixel_values [B, C, H, W] nor input_ids [N, T]".into(),
        ));
    }
    let mut out = Vec::new();
    let mut said = Vec::new();
    let mut image = None;
    if let Some(x) = pixels {
        let batch = pixel_batch(&x, run).map_err(bad)?;
        let features = towers.encode_image(pixel_tensor(x, run, device));
        image = Some(features.clone());
        let (v, d) = host(features)?;
        out.push(("image_features", d.to_vec(), v));
        said.push(format!("image_features of {batch} images"));
    }
    let mut text = None;
    if let Some(ids) = ids {
        let (rows, values) = token_rows(&ids).map_err(bad)?;
        let features = towers
            .encode_text(&values, rows)
            .map_err(|e| bad(e.to_string()))?;
        text = Some(features.clone());
        let (v, d) = host(features)?;
        out.push(("text_features", d.to_vec(), v));
        said.push(format!("text_features of {rows} texts"));
    }
    if let (Some(image), Some(text)) = (image, text) {
        let scale = towers.logit_scale().exp().unsqueeze::<2>();
        let logits = normalize(image).matmul(normalize(text).transpose()).mul(scale);
        let (v, d) = host(logits)?;
        out.push(("logits_per_image", d.to_vec(), v));
        said.push("logits_per_image".into());
    }
    crate::io::write_tensors(output, &out)?;
    Ok(format!("wrote {} to {}", said.join(", "), output.display()))
}

/// Token ids `[N, T]` as whole non-negative numbers, row count first.
fn token_rows(ids: &FileTensor) -> std::result::Result<(usize, Vec<u32>), String> {
    let &[rows, t] = ids.shape.as_slice() else {
        return Err(format!("input_ids has shape {:?}; expected [N, T]", ids.shape));
    };
    if rows == 0 || t == 0 {
        return Err("input_ids is empty".into());
    }
    let values = ids
        .values
        .iter()
        .map(|&v| (v >= 0.0 && v.fract() == 0.0 && v < u32::MAX as f32).then_some(v as u32))
        .collect::<Option<Vec<u32>>>()
        .ok_or("input_ids holds a value that is not a token id (a whole number ≥ 0)")?;
    Ok((rows, values))
}

/// Templates used when none are given: plain ways of naming a thing in a picture.
pub const DEFAULT_TEMPLATES: [&str; 5] = [
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a {}.",
    "a drawing of a {}.",
];

/// A zero-shot classifier: per class, the mean of its normalised template embeddings,
/// renormalised (CLIP's prompt ensembling); rows `[K, E]` on the host.
pub fn zero_shot_weights(
    towers: &dyn ImageText,
    classes: &[String],
    templates: &[String],
) -> Result<Vec<f32>> {
    if templates.is_empty() || templates.iter().any(|t| !t.contains("{}")) {
        return Err(VitError::Config(
            "every template needs a {} where the class name goes".into(),
        ));
    }
    let mut rows = Vec::new();
    for class in classes {
        let texts: Vec<String> = templates.iter().map(|t| t.replace("{}", class)).collect();
        let feats = crate::train::clip::embed_texts(towers, &texts, 256)?;
        let e = feats.len() / texts.len();
        let mut mean = vec![0f32; e];
        for row in feats.chunks(e) {
            mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
        }
        let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        rows.extend(mean.iter().map(|v| v / norm));
    }
    Ok(rows)
}

/// A zero-shot evaluation: accuracy overall, top-5, and per class (name, accuracy, images).
#[derive(Debug, Clone)]
pub struct ZeroShot {
    pub top1: f64,
    pub top5: f64,
    pub per_class: Vec<(String, f64, usize)>,
    pub images: usize,
}

/// What zero-shot classification scores against: the dataset's labels and class names, or an
/// attribute of a caption dataset (e.g. `colour`).
pub struct ZeroShotRequest {
    pub data: Option<String>,
    pub attribute: Option<String>,
    /// Names to say instead of the labels' own (one per class, in label order).
    pub classnames: Option<Vec<String>>,
    pub templates: Vec<String>,
    pub batch_size: usize,
}

/// `vitkit zeroshot`: classifies the test split of a dataset by prompts alone.
pub fn run_zeroshot(source: &super::ModelSource, req: &ZeroShotRequest, device: &Device) -> Result<ZeroShot> {
    let super::Loaded { model, run, norm } = super::load_model(source, device)?;
    let towers = model.image_text().map_err(|_| {
        VitError::Config(format!(
            "zero-shot classification needs a CLIP model; this is {}",
            super::describe_run(&run)
        ))
    })?;
    let data = crate::data::DataSource::parse(req.data.as_deref().unwrap_or(&run.data.name))?;
    let splits = super::load_data(&data, run.model.img_size(), false)?;
    norm.check_channels(splits.test.channels)?;
    let (classes, labels): (Vec<String>, Vec<usize>) = match &req.attribute {
        Some(name) => {
            let captions = splits.captions.as_ref().ok_or_else(|| {
                VitError::Config(format!(
                    "{} has no captions to take --attribute {name} from",
                    data.spec()
                ))
            })?;
            let attribute = captions.attribute(name)?;
            let classes = attribute.test_classes();
            let labels = attribute
                .test
                .iter()
                .map(|v| classes.iter().position(|c| c == v).unwrap_or(0))
                .collect();
            (classes, labels)
        }
        None => (
            splits.info.class_names.clone(),
            splits.test.labels.iter().map(|&l| l as usize).collect(),
        ),
    };
    let names = match &req.classnames {
        Some(names) if names.len() != classes.len() => {
            return Err(VitError::Config(format!(
                "--classnames has {} names for {} classes ({})",
                names.len(),
                classes.len(),
                classes.join(", ")
            )));
        }
        Some(names) => names.clone(),
        None => classes.clone(),
    };
    let weights = zero_shot_weights(towers, &names, &req.templates)?;
    let images = crate::train::clip::embed_images(
        towers,
        std::sync::Arc::new(splits.test),
        &norm,
        req.batch_size,
        device,
    )?;
    let k = names.len();
    let e = weights.len() / k;
    let mut hits = vec![(0usize, 0usize); k];
    let (mut top1, mut top5) = (0usize, 0usize);
    for (img, &label) in images.chunks(e).zip(&labels) {
        let scores: Vec<f32> = weights
            .chunks(e)
            .map(|w| w.iter().zip(img).map(|(a, b)| a * b).sum())
            .collect();
        let better = scores.iter().filter(|&&s| s > scores[label]).count();
        top1 += usize::from(better == 0);
        top5 += usize::from(better < 5);
        hits[label].0 += usize::from(better == 0);
        hits[label].1 += 1;
    }
    let n = labels.len().max(1) as f64;
    Ok(ZeroShot {
        top1: top1 as f64 / n,
        top5: top5 as f64 / n,
        per_class: names
            .into_iter()
            .zip(hits)
            .map(|(name, (h, c))| (name, h as f64 / c.max(1) as f64, c))
            .collect(),
        images: labels.len(),
    })
}

/// Retrieval on a caption dataset's test pairs: recall@1/5/10 image→text and text→image.
pub struct Retrieval {
    pub pairs: usize,
    pub image_to_text: Vec<f64>,
    pub text_to_image: Vec<f64>,
    /// With a query: the best-matching test images (index, cosine similarity), best first.
    pub matches: Vec<(usize, f32)>,
}

/// `vitkit retrieve`: recall over the test pairs of `data` (default: the run's), and with
/// `query` the `top` best images for it, drawn as a grid into `grid` when given.
pub fn run_retrieve(
    source: &super::ModelSource,
    data: Option<&str>,
    query: Option<(&str, usize, &Path)>,
    batch_size: usize,
    device: &Device,
) -> Result<Retrieval> {
    let super::Loaded { model, run, norm } = super::load_model(source, device)?;
    let towers = model.image_text().map_err(|_| {
        VitError::Config(format!(
            "retrieval needs a CLIP model; this is {}",
            super::describe_run(&run)
        ))
    })?;
    let data = crate::data::DataSource::parse(data.unwrap_or(&run.data.name))?;
    let splits = super::load_data(&data, run.model.img_size(), false)?;
    let captions = splits
        .captions
        .ok_or_else(|| VitError::Config(format!("{} has no captions to retrieve", data.spec())))?;
    let test = std::sync::Arc::new(splits.test);
    let images = crate::train::clip::embed_images(towers, test.clone(), &norm, batch_size, device)?;
    let texts = crate::train::clip::embed_texts(towers, &captions.test, batch_size)?;
    let e = images.len() / captions.test.len().max(1);
    let (i2t, t2i) = crate::train::clip::recall_at(&images, &texts, e, &captions.test, &[1, 5, 10]);
    let mut matches = Vec::new();
    if let Some((text, top, grid)) = query {
        let q = crate::train::clip::embed_texts(towers, &[text], 1)?;
        let mut scored: Vec<(usize, f32)> = images
            .chunks(e)
            .map(|img| img.iter().zip(&q).map(|(a, b)| a * b).sum())
            .enumerate()
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored.truncate(top);
        let tiles: Vec<(&[u8], String)> = scored
            .iter()
            .map(|&(i, s)| (test.image(i), format!("{s:.3}")))
            .collect();
        let zoom = (96 / test.height.max(1)).max(1);
        crate::draw::image_grid_png(grid, &tiles, test.channels, test.height, test.width, 8, zoom)?;
        matches = scored;
    }
    Ok(Retrieval {
        pairs: captions.test.len(),
        image_to_text: i2t,
        text_to_image: t2i,
        matches,
    })
}

/// `vitkit predict --labels` on a CLIP model: each image's probabilities over the given texts
/// (softmax of the model's scale times the cosine similarities), best `k` first; with
/// `png_dir`, one PNG per image (the image beside its top labels' bars).
pub fn predict_labels(
    source: &super::ModelSource,
    images: &[std::path::PathBuf],
    labels: &[String],
    k: usize,
    png_dir: Option<&Path>,
    device: &Device,
) -> Result<Vec<super::Prediction>> {
    let super::Loaded { model, run, norm } = super::load_model(source, device)?;
    let towers = model.image_text().map_err(|_| {
        VitError::Config(format!(
            "--labels compares images with texts: it needs a CLIP model; this is {}",
            super::describe_run(&run)
        ))
    })?;
    if labels.is_empty() {
        return Err(VitError::Config("--labels needs at least one text".into()));
    }
    let texts = crate::train::clip::embed_texts(towers, labels, 256)?;
    let e = texts.len() / labels.len();
    let scale = crate::nn::host_values(towers.logit_scale())?[0].exp();
    let [h, w] = run.model.img_size();
    let channels = run.model.in_chans();
    if let Some(dir) = png_dir {
        std::fs::create_dir_all(dir).map_err(|err| VitError::io(dir, err))?;
    }
    let mut out = Vec::new();
    for path in images {
        let bytes = crate::data::load_image_file(path, channels, [h, w])?;
        let x = burn::tensor::Tensor::<4>::from_data(
            burn::tensor::TensorData::new(norm.image(&bytes, channels, h, w), [1, channels, h, w]),
            device,
        );
        let image = crate::nn::host_values(normalize(towers.encode_image(x)))?;
        let logits: Vec<f32> = texts
            .chunks(e)
            .map(|t| scale * t.iter().zip(&image).map(|(a, b)| a * b).sum::<f32>())
            .collect();
        let max = logits.iter().copied().fold(f32::MIN, f32::max);
        let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        let mut ranked: Vec<(String, f32)> =
            labels.iter().cloned().zip(exp.iter().map(|v| v / sum)).collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        ranked.truncate(k);
        if let Some(dir) = png_dir {
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
            crate::draw::label_bars_png(&dir.join(format!("{stem}.png")), &bytes, channels, h, w, &ranked)?;
        }
        out.push(super::Prediction {
            path: path.clone(),
            top: ranked,
        });
    }
    Ok(out)
}
