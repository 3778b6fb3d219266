//! The commands behind the CLI, as library calls: what `vitkit train|eval|predict|infer|import`
//! do, for a model of any family.

pub mod clip;
pub mod gan;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use crate::data::{Augment, DataInfo, DataSource, DatasetSplits, FolderOptions, Normalize, load_image_file};
use crate::io::{
    ForeignWeights, ImportOptions, LoadReport, Strictness, WeightSource, Which, find_checkpoint,
    load_weights, read_json,
};
use crate::models::{Adaptation, Model, preset};
use crate::train::TaskKind;
use crate::train::{
    EvalResult, RunConfig, Session, TrainConfig, TrainOutcome, evaluate, predict_batch, train,
};
use crate::{Result, VitError};

/// What `vitkit train` needs beyond the recipe.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    pub model: String,
    pub data: String,
    pub out: PathBuf,
    /// Changes to the preset (image size, pooling, drop-path rate); classes and channels come
    /// from the data.
    pub adapt: Adaptation,
    pub session: Session,
    /// Start from these weights (fine-tuning) instead of a random initialisation.
    pub init_weights: Option<(PathBuf, WeightSource)>,
    /// Start from the best checkpoint of this vitkit run (e.g. a SiT pretraining run) of the
    /// same family; every parameter but the heads must fit.
    pub init_run: Option<PathBuf>,
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
    let base = preset(&req.model)?;
    let foreign = match (&req.init_weights, &req.init_run) {
        (Some(_), Some(_)) => {
            return Err(VitError::Config(
                "give --weights FILE or --init RUN, not both".into(),
            ));
        }
        (Some((file, src)), None) => Some(ForeignWeights::read(file, *src)?),
        (None, Some(dir)) => Some(run_weights(dir, &base)?),
        (None, None) => None,
    };
    // A pretrained model's image size is the file's unless --img-size says otherwise.
    let config = match &foreign {
        Some(f) => f.config_for(&base, &req.adapt)?,
        None => base.adapted(&req.adapt)?,
    };
    let mut splits = load_data(&source, config.img_size(), req.skip_bad_images)?;
    req.recipe.validate()?;
    let image_text = req.recipe.task == TaskKind::Clip;
    let generative = matches!(req.recipe.task, TaskKind::Gan(_));
    let pretraining = matches!(req.recipe.task, TaskKind::Sit(_));
    if image_text && req.recipe.label_fraction < 1.0 {
        return Err(VitError::Config(
            "--label-fraction subsets classes; CLIP trains on every caption".into(),
        ));
    }
    if (pretraining || generative) && req.recipe.label_fraction < 1.0 {
        return Err(VitError::Config(
            "self-supervised pretraining and GAN training read no labels; --label-fraction applies \
             to training on labels (probe or fine-tune)"
                .into(),
        ));
    }
    if req.recipe.label_fraction < 1.0 {
        let all = splits.train.len();
        splits.train = splits
            .train
            .per_class_subset(req.recipe.label_fraction, req.recipe.seed);
        println!(
            "training on {} of the {all} training images ({}% of each class, seed {})",
            splits.train.len(),
            100.0 * req.recipe.label_fraction,
            req.recipe.seed
        );
    }
    // Data decides the head and input channels, as timm's create_model(num_classes=, in_chans=);
    // a pretrained model keeps its channels (grey images are replicated to RGB).
    let fixed = Adaptation {
        // Two towers and a GAN have no classifier head to size.
        num_classes: (!image_text && !generative).then_some(splits.info.class_names.len()),
        in_chans: foreign.is_none().then_some(splits.info.channels),
        // Pretext heads for pretraining, a classifier otherwise (what a file holds aside).
        pretext: (!image_text && !generative).then_some(pretraining),
        ..req.adapt.clone()
    };
    let train_device = device.clone().autodiff();
    // Weights drawn at build time follow the recipe's seed. Most parameters are drawn lazily,
    // at their first use after the loop seeds each epoch; those a model reads while it is
    // built (a GAN copies its generator into the moving average) were drawn from an unseeded
    // generator, and two runs of one command differed.
    train_device.seed(req.recipe.seed);
    let (model, config) = match foreign {
        None => {
            let config = config.adapted(&fixed)?;
            (config.build(&train_device)?, config)
        }
        Some(f) => {
            // Fine-tuning: everything but a head of another size comes from the file.
            let file = f.path.clone();
            // From a vitkit run everything but the heads must fit; a foreign file is lenient.
            let opts = ImportOptions {
                strictness: if req.init_run.is_some() {
                    Strictness::FreshHead
                } else {
                    Strictness::Lenient
                },
                ..Default::default()
            };
            let imported = f.load(&base, &fixed, &opts, &train_device)?;
            if !imported.report.is_exact() {
                eprintln!("note: {}: {}", file.display(), imported.report.describe());
            }
            (imported.model, imported.config)
        }
    };
    let task = req.recipe.task.build(&config, &req.recipe, &splits)?;
    let run = RunConfig {
        model_name: req.model.clone(),
        model: config,
        data: splits.info.clone(),
        train: Some(req.recipe.clone()),
    };
    // A linear probe that sees each image as it is reads the frozen backbone's features once.
    let on_features = req.recipe.task == TaskKind::Classify
        && req.recipe.trainable == crate::train::Trainable::Head
        && req.recipe.augment.is_none();
    if on_features {
        return crate::train::train_probe(model, run, &splits, &req.out, &req.session, &train_device);
    }
    train(
        model,
        task.as_ref(),
        run,
        &splits,
        &req.out,
        &req.session,
        &train_device,
    )
}

/// The best checkpoint's weights of the vitkit run `dir`, whose model must be of `base`'s family.
fn run_weights(dir: &Path, base: &crate::models::ModelConfig) -> Result<ForeignWeights> {
    let ck = find_checkpoint(dir, Which::Best)?;
    let run: RunConfig = read_json(&ck.config())?;
    if run.model.family() != base.family() {
        return Err(VitError::Config(format!(
            "{} holds a {} model ({}), not a {} model like the --model asked for",
            dir.display(),
            run.model.family(),
            run.model_name,
            base.family()
        )));
    }
    ForeignWeights::read(&ck.model(), WeightSource::Timm)
}

/// What a run directory holds, in words: "a SiT pretraining run of sit_mini_patch4_28".
pub fn describe_run(run: &RunConfig) -> String {
    match run.train.as_ref().map(|t| t.task) {
        Some(TaskKind::Sit(_)) => format!("a SiT pretraining run of {}", run.model_name),
        Some(TaskKind::Clip) => format!("a CLIP training run of {}", run.model_name),
        Some(TaskKind::Gan(_)) => format!("a GAN training run of {}", run.model_name),
        Some(TaskKind::Classify) => format!(
            "a supervised training run of {} ({} model)",
            run.model_name,
            run.model.family()
        ),
        None => format!(
            "an imported {} checkpoint ({})",
            run.model.family(),
            run.model_name
        ),
    }
}

/// `vitkit probe`: a linear evaluation of a SiT pretraining run's backbone (frozen, both
/// token heads trained), or with `checkpoint` absent of `model` at random initialisation.
pub fn run_probe(checkpoint: Option<&Path>, mut req: TrainRequest, device: &Device) -> Result<TrainOutcome> {
    if let Some(dir) = checkpoint {
        let ck = find_checkpoint(dir, Which::Best)?;
        let run: RunConfig = read_json(&ck.config())?;
        if !matches!(run.train.as_ref().map(|t| t.task), Some(TaskKind::Sit(_))) {
            return Err(VitError::Config(format!(
                "{} is {}, not a SiT pretraining run: probe a run of `vitkit pretrain --method sit`",
                dir.display(),
                describe_run(&run)
            )));
        }
        // The image size and channels come from the checkpoint's weights.
        req.model = run.model_name.clone();
        req.init_run = Some(dir.to_path_buf());
    }
    req.recipe.trainable = crate::train::Trainable::Head;
    req.recipe.task = TaskKind::Classify;
    run_train(&req, device)
}

/// A weights file from another library, read into a preset's architecture.
#[derive(Debug, Clone)]
pub struct WeightsSpec {
    pub file: PathBuf,
    pub source: WeightSource,
    /// The preset whose architecture the file holds.
    pub model: String,
    /// Changes the user asks for (image size, classes, pooling); what they leave open is read
    /// from the file.
    pub adapt: Adaptation,
    /// Run the file's backbone under a freshly initialised classifier head.
    pub fresh_head: bool,
    /// `import` only: fail on any missing, unexpected or mis-shaped key.
    pub strict: bool,
}

/// What a foreign model is loaded for, which decides how closely the file must fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `infer`, `eval`, `predict`, `explain`: every parameter from the file.
    Run,
    /// `import`: whatever matches, reported (with `--strict`, everything).
    Convert,
}

impl WeightsSpec {
    /// The model with the file's weights, what matched, and a run configuration describing it
    /// (class names are indices; inputs are normalised as the family's pretrained weights
    /// expect).
    pub fn load(&self, purpose: Purpose, device: &Device) -> Result<(Model, RunConfig, LoadReport)> {
        let strictness = match purpose {
            Purpose::Run if self.fresh_head => Strictness::FreshHead,
            Purpose::Run => Strictness::Exact,
            Purpose::Convert if self.strict => Strictness::Exact,
            Purpose::Convert => Strictness::Lenient,
        };
        let opts = ImportOptions {
            strictness,
            ..Default::default()
        };
        let imported = ForeignWeights::read(&self.file, self.source)?.load(
            &preset(&self.model)?,
            &self.adapt,
            &opts,
            device,
        )?;
        let config = imported.config;
        let (mean, std) = config.pretrained_mean_std();
        let run = RunConfig {
            model_name: self.model.clone(),
            data: DataInfo {
                name: "imported".into(),
                class_names: (0..config.num_classes().unwrap_or(0))
                    .map(|i| i.to_string())
                    .collect(),
                channels: config.in_chans(),
                mean,
                std,
            },
            model: config,
            train: None,
        };
        Ok((imported.model, run, imported.report))
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

/// A model loaded for inference, with what is needed to feed it.
pub struct Loaded {
    /// In inference mode.
    pub model: Model,
    pub run: RunConfig,
    /// The input normalisation, checked against the model.
    pub norm: Normalize,
}

/// The model of a vitkit checkpoint (a run directory, whose best checkpoint is used, or a
/// checkpoint directory) or of a foreign weights file. A `config.json` whose data does not fit
/// the model is refused before anything is built.
pub fn load_model(source: &ModelSource, device: &Device) -> Result<Loaded> {
    let (model, run, norm) = match source {
        ModelSource::Checkpoint(dir) => {
            let ck = find_checkpoint(dir, Which::Best)?;
            let run: RunConfig = read_json(&ck.config())?;
            let norm = run.normalize()?;
            let model = load_weights(run.model.build(device)?, &ck.model(), true)?.0;
            (model, run, norm)
        }
        ModelSource::Weights(spec) => {
            let (model, run, _) = spec.load(Purpose::Run, device)?;
            let norm = run.normalize()?;
            (model, run, norm)
        }
    };
    Ok(Loaded {
        model: model.valid(),
        run,
        norm,
    })
}

pub(crate) fn host(t: Tensor<2>) -> Result<HostMatrix> {
    let dims = t.dims();
    Ok((crate::nn::host_values(t)?, dims))
}

/// Evaluates on the test split of `data` (default: the dataset the model was trained on).
pub fn run_eval(
    checkpoint: &ModelSource,
    data: Option<&str>,
    batch_size: usize,
    device: &Device,
) -> Result<(EvalResult, RunConfig)> {
    let Loaded { model, run, norm } = load_model(checkpoint, device)?;
    let classes = run.model.classes()?;
    let source = DataSource::parse(data.unwrap_or(&run.data.name))?;
    let splits = load_data(&source, run.model.img_size(), false)?;
    if splits.info.class_names.len() != classes {
        return Err(VitError::Config(format!(
            "the dataset has {} classes but the model was trained for {classes}",
            splits.info.class_names.len(),
        )));
    }
    norm.check_channels(splits.test.channels)?;
    let result = evaluate(
        model.classifier()?,
        Arc::new(splits.test),
        &norm,
        batch_size,
        classes,
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
    let Loaded { model, run, norm } = load_model(checkpoint, device)?;
    if model.image_text().is_ok() {
        return Err(VitError::Config(
            "a CLIP model has no classes of its own: give the texts to choose among with --labels \"a cat,a dog,…\""
                .into(),
        ));
    }
    let classifier = model.classifier()?;
    let [h, w] = run.model.img_size();
    let mut out = Vec::new();
    for path in images {
        // Decoded as the training data was stored, then normalised and converted as in training.
        let bytes = load_image_file(path, run.data.channels, [h, w])?;
        let x = norm.image(&bytes, run.data.channels, h, w);
        let probs = predict_batch(classifier, x, [1, norm.out_channels, h, w], device)?
            .probs
            .remove(0);
        let mut ranked: Vec<(String, f32)> = probs
            .iter()
            .enumerate()
            .map(|(i, &p)| (run.data.class_name(i), p))
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
/// file and writes `logits` `[B, K]` and `pre_logits` `[B, D]` to another; for a CLIP model,
/// `pixel_values` and/or `input_ids` in and their features out (see [`clip::infer`]). Returns
/// what was written, in words.
pub fn run_infer(source: &ModelSource, input: &Path, output: &Path, device: &Device) -> Result<String> {
    let Loaded { model, run, .. } = load_model(source, device)?;
    let bad = |reason: String| VitError::BadData {
        path: input.to_path_buf(),
        reason,
    };
    // The input is data, not a checkpoint: say so when it is not a safetensors file.
    let (mut tensors, _) = crate::io::read_safetensors(input).map_err(|e| match e {
        VitError::Checkpoint { reason, .. } => bad(reason),
        other => other,
    })?;
    if let Ok(towers) = model.image_text() {
        return clip::infer(towers, &run, tensors, output, &bad, device);
    }
    let classifier = model.classifier()?;
    let x = tensors
        .remove("pixel_values")
        .ok_or_else(|| bad("no tensor named pixel_values".into()))?;
    let batch = pixel_batch(&x, &run).map_err(bad)?;
    let x = pixel_tensor(x, &run, device);
    let features = classifier.features(x);
    let (logits, ld) = host(classifier.head(features.clone()))?;
    let (feats, fd) = host(features)?;
    crate::io::write_tensors(
        output,
        &[
            ("logits", ld.to_vec(), logits),
            ("pre_logits", fd.to_vec(), feats),
        ],
    )?;
    Ok(format!(
        "wrote logits and pre_logits of {batch} images to {}",
        output.display()
    ))
}

/// The batch size of `pixel_values` when its shape is `[B, C, H, W]` of the model's input, or
/// why not.
fn pixel_batch(x: &crate::io::FileTensor, run: &RunConfig) -> std::result::Result<usize, String> {
    let [h, w] = run.model.img_size();
    let c = run.model.in_chans();
    if x.shape.len() != 4 || x.shape[1] != c || x.shape[2] != h || x.shape[3] != w {
        return Err(format!(
            "pixel_values has shape {:?}; the model takes [B, {c}, {h}, {w}]",
            x.shape
        ));
    }
    Ok(x.shape[0])
}

fn pixel_tensor(x: crate::io::FileTensor, run: &RunConfig, device: &Device) -> Tensor<4> {
    let [h, w] = run.model.img_size();
    let shape = [x.shape[0], run.model.in_chans(), h, w];
    Tensor::<4>::from_data(TensorData::new(x.values, shape), device)
}

/// `vitkit import`: converts a foreign weights file into a vitkit checkpoint directory
/// (`model.safetensors` + `config.json`). Refuses to overwrite an existing checkpoint.
/// Returns the run configuration and what matched.
pub fn run_import(spec: &WeightsSpec, out: &Path, device: &Device) -> Result<(RunConfig, LoadReport)> {
    let target = crate::io::CheckpointPaths::new(out);
    if target.model().exists() || target.config().exists() {
        return Err(VitError::Config(format!(
            "{} already holds a checkpoint; choose another --out",
            out.display()
        )));
    }
    let (model, run, report) = spec.load(Purpose::Convert, device)?;
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("vitkit.model".to_string(), spec.model.clone());
    meta.insert(
        "vitkit.imported_from".to_string(),
        spec.file.display().to_string(),
    );
    crate::io::save_weights(&model, &target.model(), &meta)?;
    crate::io::write_json_atomic(&target.config(), &run)?;
    Ok((run, report))
}
