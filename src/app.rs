//! The commands behind the CLI, as library calls: what `vitkit train|eval|predict` do.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::Device;

use burn::module::Module;

use crate::data::{
    Augment, DataSource, DatasetSplits, FolderOptions, ImageDataset, Normalize, load_image_file,
};
use crate::io::{RunConfig, Which, find_checkpoint, load_weights, read_json};
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
    pub session: Session,
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
    if let (Some(dp), ModelConfig::Vit(c)) = (req.drop_path, &mut config) {
        c.drop_path_rate = dp;
    }
    let splits = load_data(&source, config.img_size(), req.skip_bad_images)?;
    // Data decides the head and input channels, as timm's create_model(num_classes=, in_chans=).
    let config = config.adapted(
        Some(splits.info.class_names.len()),
        Some(splits.info.channels),
        None,
    )?;
    let run = RunConfig {
        model_name: req.model.clone(),
        model: config.clone(),
        data: splits.info.clone(),
        train: Some(req.recipe.clone()),
    };
    let train_device = device.clone().autodiff();
    match &config {
        ModelConfig::Vit(c) => train(
            c.init(&train_device)?,
            run,
            &splits,
            &req.out,
            &req.session,
            &train_device,
        ),
    }
}

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

    /// The ViT inside, or the family name of a model that is not one.
    pub fn into_vit(self) -> std::result::Result<crate::models::Vit, &'static str> {
        match self {
            LoadedModel::Vit(m) => Ok(m),
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

/// Evaluates a checkpoint on the test split of `data`.
pub fn run_eval(
    checkpoint: &Path,
    data: &str,
    batch_size: usize,
    device: &Device,
) -> Result<(EvalResult, RunConfig)> {
    let (model, run) = LoadedModel::load(checkpoint, device)?;
    let source = DataSource::parse(data)?;
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
    checkpoint: &Path,
    images: &[PathBuf],
    k: usize,
    device: &Device,
) -> Result<Vec<Prediction>> {
    let (model, run) = LoadedModel::load(checkpoint, device)?;
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
