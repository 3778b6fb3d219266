//! The commands behind the CLI, as library calls: what `vitkit train|eval|predict` do.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::Device;

use burn::module::Module;

use crate::data::{
    Augment, DataSource, DatasetSplits, FolderOptions, ImageDataset, Normalize, load_image_file,
};
use crate::io::{
    ImportOptions, RunConfig, WeightSource, Which, find_checkpoint, import_vit, load_weights, read_json,
};
use crate::models::{ModelConfig, preset};
use crate::train::{EvalResult, Session, TrainConfig, TrainOutcome, evaluate, predict_batch, train};
use crate::{Result, VitError};

/// What `vitkit train` needs beyond the recipe.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    pub model: String,
    pub data: String,
    pub out: PathBuf,
    pub img_size: Option<usize>,
    pub drop_path: Option<f64>,
    pub global_pool: Option<crate::models::GlobalPool>,
    pub session: Session,
    /// Start from these weights (fine-tuning) instead of a random initialisation.
    pub init_weights: Option<(PathBuf, WeightSource)>,
    pub skip_bad_images: bool,
    pub recipe: TrainConfig,
}

/// Reads `source` with its images at `size` (ImageFolder trees are read as RGB).
pub fn load_data(source: &DataSource, size: [usize; 2], skip_bad_images: bool) -> Result<DatasetSplits> {
    let opts = FolderOptions {
        skip_bad_images,
        channels: 3,
    };
    let mut splits = source.load(size, &opts)?;
    if [splits.train.height, splits.train.width] != size {
        splits.train = splits.train.resized(size[0], size[1]);
        splits.test = splits.test.resized(size[0], size[1]);
    }
    Ok(splits)
}

pub fn run_train(req: &TrainRequest, device: &Device) -> Result<TrainOutcome> {
    let source = DataSource::parse(&req.data)?;
    let mut config = preset(&req.model)?;
    if let Some(s) = req.img_size {
        config = config.adapted(None, None, Some([s, s]))?;
    }
    let ModelConfig::Vit(c) = &mut config;
    if let Some(dp) = req.drop_path {
        c.drop_path_rate = dp;
    }
    if let Some(pool) = req.global_pool {
        c.global_pool = pool;
    }
    let splits = load_data(&source, config.img_size(), req.skip_bad_images)?;
    // Data decides the head and input channels, as timm's create_model(num_classes=, in_chans=);
    // a pretrained model keeps its channels (grey images are replicated to RGB).
    let channels = if req.init_weights.is_some() {
        None
    } else {
        Some(splits.info.channels)
    };
    let mut config = config.adapted(Some(splits.info.class_names.len()), channels, None)?;
    if let (Some((_, WeightSource::Hf)), ModelConfig::Vit(c)) = (&req.init_weights, &mut config) {
        c.norm_eps = 1e-12;
    }
    let run = RunConfig {
        model_name: req.model.clone(),
        model: config.clone(),
        data: splits.info.clone(),
        train: Some(req.recipe.clone()),
    };
    let train_device = device.clone().autodiff();
    match &config {
        ModelConfig::Vit(c) => train(
            match &req.init_weights {
                None => c.init(&train_device)?,
                Some((file, source)) => {
                    // Fine-tuning: everything but a head of another size comes from the file.
                    let (vit, report) =
                        import_vit(file, *source, c, &ImportOptions::default(), &train_device)?;
                    if !report.is_exact() {
                        eprintln!("note: {}: {}", file.display(), report.describe());
                    }
                    vit
                }
            },
            run,
            &splits,
            &req.out,
            &req.session,
            &train_device,
        ),
    }
}

/// A weights file from timm or Hugging Face, read into a preset's architecture.
#[derive(Debug, Clone)]
pub struct WeightsSpec {
    pub file: PathBuf,
    pub source: WeightSource,
    /// The preset whose architecture the file holds.
    pub model: String,
    /// Run at this (square) size, resampling the position embedding.
    pub img_size: Option<usize>,
    /// Replace the classifier head with one of this many classes (left initialised).
    pub num_classes: Option<usize>,
    pub strict: bool,
}

impl WeightsSpec {
    /// The model with the file's weights, and a run configuration describing it (class names
    /// are indices; inputs are normalised with mean = std = 0.5, as timm's and Hugging Face's
    /// ViT checkpoints expect). Keys that did not match are printed to stderr.
    pub fn import(&self, device: &Device) -> Result<(crate::models::Vit, RunConfig)> {
        let ModelConfig::Vit(mut c) = preset(&self.model)?;
        if let Some(s) = self.img_size {
            c.img_size = [s, s];
        }
        if let Some(k) = self.num_classes {
            c.num_classes = k;
        }
        if self.source == WeightSource::Hf {
            // transformers' ViTConfig.layer_norm_eps default.
            c.norm_eps = 1e-12;
        }
        let opts = ImportOptions {
            strict: self.strict,
            ..Default::default()
        };
        let (vit, report) = import_vit(&self.file, self.source, &c, &opts, device)?;
        if !report.is_exact() {
            eprintln!("note: {}: {}", self.file.display(), report.describe());
        }
        let run = RunConfig {
            model_name: self.model.clone(),
            model: ModelConfig::Vit(c.clone()),
            data: crate::data::DataInfo {
                name: "imported".into(),
                class_names: (0..c.num_classes).map(|i| i.to_string()).collect(),
                channels: c.in_chans,
                mean: vec![0.5; c.in_chans],
                std: vec![0.5; c.in_chans],
            },
            train: None,
        };
        Ok((vit, run))
    }
}

/// Where a model's weights come from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A vitkit run or checkpoint directory.
    Checkpoint(PathBuf),
    /// A foreign weights file.
    Weights(WeightsSpec),
}

/// A row-major matrix on the host with its `[rows, cols]`.
pub type HostMatrix = (Vec<f32>, [usize; 2]);

/// A trained classifier of any family, loaded from a checkpoint for inference.
pub enum LoadedModel {
    Vit(crate::models::Vit),
}

impl LoadedModel {
    /// Rebuilds the model saved at `checkpoint` (a run directory, whose best checkpoint is
    /// used, or a checkpoint directory) in validation mode.
    pub fn load(checkpoint: &Path, device: &Device) -> Result<(Self, RunConfig)> {
        let ck = find_checkpoint(checkpoint, Which::Best)?;
        let run: RunConfig = read_json(&ck.config())?;
        run.model.validate()?;
        let model = match &run.model {
            ModelConfig::Vit(c) => {
                LoadedModel::Vit(load_weights(c.init(device)?, &ck.model(), true)?.0.valid())
            }
        };
        Ok((model, run))
    }

    /// Loads from a vitkit checkpoint or a foreign weights file.
    pub fn from_source(source: &ModelSource, device: &Device) -> Result<(Self, RunConfig)> {
        match source {
            ModelSource::Checkpoint(dir) => Self::load(dir, device),
            ModelSource::Weights(spec) => {
                let (vit, run) = spec.import(device)?;
                Ok((LoadedModel::Vit(vit.valid()), run))
            }
        }
    }

    /// The ViT inside, or the family name of a model that is not one.
    pub fn into_vit(self) -> std::result::Result<crate::models::Vit, &'static str> {
        match self {
            LoadedModel::Vit(m) => Ok(m),
        }
    }

    /// Logits `[B, K]` and pooled features `[B, D]` for a `[B, C, H, W]` batch.
    pub fn logits_and_features(
        &self,
        images: Vec<f32>,
        shape: [usize; 4],
        device: &Device,
    ) -> Result<(HostMatrix, HostMatrix)> {
        match self {
            LoadedModel::Vit(m) => {
                let x = burn::tensor::Tensor::<4>::from_data(
                    burn::tensor::TensorData::new(images, shape),
                    device,
                );
                let out = m.forward_detailed(x, false);
                let (ld, fd) = (out.logits.dims(), out.pre_logits.dims());
                let host = |t: burn::tensor::Tensor<2>| {
                    t.into_data()
                        .convert::<f32>()
                        .try_into_vec::<f32>()
                        .map_err(|e| VitError::Other(format!("{e:?}")))
                };
                Ok(((host(out.logits)?, ld), (host(out.pre_logits)?, fd)))
            }
        }
    }

    pub fn predict(&self, images: Vec<f32>, shape: [usize; 4], device: &Device) -> Result<Vec<Vec<f32>>> {
        match self {
            LoadedModel::Vit(m) => predict_batch(m, images, shape, device).map(|p| p.probs),
        }
    }

    pub fn evaluate(
        &self,
        data: Arc<ImageDataset>,
        norm: &Normalize,
        batch_size: usize,
        classes: usize,
        device: &Device,
    ) -> Result<EvalResult> {
        match self {
            LoadedModel::Vit(m) => evaluate(m, data, norm, batch_size, classes, device),
        }
    }
}

/// Evaluates on the test split of `data` (default: the dataset the model was trained on).
pub fn run_eval(
    checkpoint: &ModelSource,
    data: Option<&str>,
    batch_size: usize,
    device: &Device,
) -> Result<(EvalResult, RunConfig)> {
    let (model, run) = LoadedModel::from_source(checkpoint, device)?;
    let source = DataSource::parse(data.unwrap_or(&run.data.name))?;
    let splits = load_data(&source, run.model.img_size(), false)?;
    if splits.info.class_names.len() != run.model.num_classes() {
        return Err(VitError::Config(format!(
            "the dataset has {} classes but the model was trained for {}",
            splits.info.class_names.len(),
            run.model.num_classes()
        )));
    }
    let norm = Normalize {
        mean: run.data.mean.clone(),
        std: run.data.std.clone(),
        out_channels: run.model.in_chans(),
    };
    norm.check_channels(splits.test.channels)?;
    let result = model.evaluate(
        Arc::new(splits.test),
        &norm,
        batch_size,
        run.model.num_classes(),
        device,
    )?;
    Ok((result, run))
}

/// The most likely classes for one image file.
#[derive(Debug, Clone)]
pub struct Prediction {
    pub path: PathBuf,
    /// (class name, probability), most likely first.
    pub top: Vec<(String, f32)>,
}

/// Top-`k` (class name, probability) for each image file.
pub fn run_predict(
    checkpoint: &ModelSource,
    images: &[PathBuf],
    k: usize,
    device: &Device,
) -> Result<Vec<Prediction>> {
    let (model, run) = LoadedModel::from_source(checkpoint, device)?;
    let [h, w] = run.model.img_size();
    let channels = run.model.in_chans();
    let norm = Normalize {
        mean: run.data.mean.clone(),
        std: run.data.std.clone(),
        out_channels: channels,
    };
    let mut out = Vec::new();
    for path in images {
        // Decoded as the training data was stored, then normalised and converted as in training.
        let bytes = load_image_file(path, run.data.channels, [h, w])?;
        let x = norm.image(&bytes, run.data.channels, h, w);
        let probs = model.predict(x, [1, channels, h, w], device)?.remove(0);
        let mut ranked: Vec<(String, f32)> = probs
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                (
                    run.data
                        .class_names
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| i.to_string()),
                    p,
                )
            })
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        ranked.truncate(k);
        out.push(Prediction {
            path: path.clone(),
            top: ranked,
        });
    }
    Ok(out)
}

/// The default augmentation for a `--data` argument (none for unknown names).
pub fn default_augment(data: &str) -> Option<Augment> {
    DataSource::parse(data)
        .ok()
        .map(|s| s.default_augment())
        .filter(|a| a.crop_padding > 0 || a.hflip)
}

/// `vitkit infer`: reads `pixel_values` `[B, C, H, W]` (f32, preprocessed) from a safetensors
/// file and writes `logits` `[B, K]` and `pre_logits` `[B, D]` to another. Returns B.
pub fn run_infer(source: &ModelSource, input: &Path, output: &Path, device: &Device) -> Result<usize> {
    let (model, run) = LoadedModel::from_source(source, device)?;
    let bad = |reason: String| VitError::BadData {
        path: input.to_path_buf(),
        reason,
    };
    // The input is data, not a checkpoint: say so when it is not a safetensors file.
    let (mut tensors, _) = crate::io::read_safetensors(input).map_err(|e| match e {
        VitError::Checkpoint { reason, .. } => bad(reason),
        other => other,
    })?;
    let x = tensors
        .remove("pixel_values")
        .ok_or_else(|| bad("no tensor named pixel_values".into()))?;
    let [h, w] = run.model.img_size();
    let c = run.model.in_chans();
    if x.shape.len() != 4 || x.shape[1] != c || x.shape[2] != h || x.shape[3] != w {
        return Err(bad(format!(
            "pixel_values has shape {:?}; the model takes [B, {c}, {h}, {w}]",
            x.shape
        )));
    }
    let batch = x.shape[0];
    let ((logits, ld), (feats, fd)) = model.logits_and_features(x.values, [batch, c, h, w], device)?;
    let bytes = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    let (lb, fb) = (bytes(&logits), bytes(&feats));
    let err = |e: safetensors::SafeTensorError| VitError::Other(e.to_string());
    let logits_view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, ld.to_vec(), &lb).map_err(err)?;
    let feats_view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, fd.to_vec(), &fb).map_err(err)?;
    let file = safetensors::serialize(vec![("logits", logits_view), ("pre_logits", feats_view)], None)
        .map_err(err)?;
    crate::io::write_atomic(output, &file)?;
    Ok(batch)
}

/// `vitkit import`: converts a foreign weights file into a vitkit checkpoint directory
/// (`model.safetensors` + `config.json`). Refuses to overwrite an existing checkpoint.
pub fn run_import(spec: &WeightsSpec, out: &Path, device: &Device) -> Result<RunConfig> {
    let target = crate::io::CheckpointPaths::new(out);
    if target.model().exists() || target.config().exists() {
        return Err(VitError::Config(format!(
            "{} already holds a checkpoint; choose another --out",
            out.display()
        )));
    }
    let (vit, run) = spec.import(device)?;
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("vitkit.model".to_string(), spec.model.clone());
    meta.insert(
        "vitkit.imported_from".to_string(),
        spec.file.display().to_string(),
    );
    crate::io::save_weights(&vit, &target.model(), &meta)?;
    crate::io::write_json_atomic(&target.config(), &run)?;
    Ok(run)
}
