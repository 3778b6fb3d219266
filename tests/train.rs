//! Training end to end on data the tests generate: learning, checkpoints, resume, divergence.

use std::path::Path;

use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vitkit::VitError;
use vitkit::data::{DataInfo, DatasetSplits, ImageDataset};
use vitkit::io::{Which, find_checkpoint, load_weights, read_json, read_safetensors, save_weights};
use vitkit::models::{Classifier, ModelConfig, VitConfig};
use vitkit::train::{Classification, RunConfig, Session, TrainConfig, TrainState, train};

/// Noisy 16x16 RGB images whose class is the quadrant holding a bright square.
fn quadrant_data(n: usize, seed: u64) -> ImageDataset {
    let mut rng = StdRng::seed_from_u64(seed);
    let (c, s) = (3, 16);
    let mut pixels = vec![0u8; n * c * s * s];
    let mut labels = Vec::new();
    for (i, img) in pixels.chunks_exact_mut(c * s * s).enumerate() {
        let label = i % 4;
        let (oy, ox) = ((label / 2) * 8, (label % 2) * 8);
        let (dy, dx) = (rng.random_range(0..4), rng.random_range(0..4));
        for ch in 0..c {
            for y in 0..s {
                for x in 0..s {
                    let inside = y >= oy + dy && y < oy + dy + 4 && x >= ox + dx && x < ox + dx + 4;
                    let base: u8 = if inside { 200 } else { 40 };
                    img[ch * s * s + y * s + x] = base.saturating_add(rng.random_range(0..40));
                }
            }
        }
        labels.push(label as u32);
    }
    ImageDataset {
        pixels,
        labels,
        channels: c,
        height: s,
        width: s,
    }
}

fn splits() -> DatasetSplits {
    let train = quadrant_data(512, 1);
    let test = quadrant_data(128, 2);
    let (mean, std) = train.channel_stats();
    DatasetSplits {
        info: DataInfo {
            name: "quadrants".into(),
            class_names: (0..4).map(|i| format!("q{i}")).collect(),
            channels: 3,
            mean,
            std,
        },
        train,
        test,
        captions: None,
    }
}

fn tiny_vit() -> VitConfig {
    VitConfig {
        num_classes: 4,
        ..VitConfig::new(16, 4, 32, 2, 2)
    }
}

/// The classification task for the tiny ViT on the quadrant data.
fn classify() -> Classification {
    Classification {
        classes: 4,
        label_smoothing: 0.1,
    }
}

fn run_config(data: &DatasetSplits, epochs: usize, lr: f64) -> RunConfig {
    RunConfig {
        model_name: "tiny_test_vit".into(),
        model: ModelConfig::Vit(tiny_vit()),
        data: data.info.clone(),
        train: Some(TrainConfig {
            epochs,
            batch_size: 32,
            lr,
            warmup_epochs: 0.5,
            seed: 3,
            ..TrainConfig::default()
        }),
    }
}

fn train_run(
    dir: &Path,
    data: &DatasetSplits,
    epochs: usize,
    lr: f64,
    resume: bool,
) -> vitkit::Result<vitkit::train::TrainOutcome> {
    train_session(
        dir,
        data,
        epochs,
        lr,
        Session {
            resume,
            stop_after_epoch: None,
        },
    )
}

fn train_session(
    dir: &Path,
    data: &DatasetSplits,
    epochs: usize,
    lr: f64,
    session: Session,
) -> vitkit::Result<vitkit::train::TrainOutcome> {
    let device = Device::flex().autodiff();
    train(
        tiny_vit().init(&device).unwrap(),
        &classify(),
        run_config(data, epochs, lr),
        data,
        dir,
        &session,
        &device,
    )
}

/// Like `train_session`, starting from the weights in `init` rather than a random draw: the
/// global RNG is shared by tests running in parallel, so two random inits need not agree.
fn train_from(
    dir: &Path,
    data: &DatasetSplits,
    session: Session,
    init: &Path,
) -> vitkit::Result<vitkit::train::TrainOutcome> {
    let device = Device::flex().autodiff();
    let (model, _) = load_weights(tiny_vit().init(&device).unwrap(), init, true).unwrap();
    train(
        model,
        &classify(),
        run_config(data, 3, 2e-3),
        data,
        dir,
        &session,
        &device,
    )
}

/// Resumes the run in `dir` with a model of `config` and the run configuration `run`.
fn resume_as(
    config: VitConfig,
    run: RunConfig,
    data: &DatasetSplits,
    dir: &Path,
) -> vitkit::Result<vitkit::train::TrainOutcome> {
    let device = Device::flex().autodiff();
    let session = Session {
        resume: true,
        stop_after_epoch: None,
    };
    train(
        config.init(&device).unwrap(),
        &classify(),
        run,
        data,
        dir,
        &session,
        &device,
    )
}

#[test]
fn a_tiny_vit_learns_generated_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = splits();
    let outcome = train_run(dir.path(), &data, 15, 3e-3, false).unwrap();
    let first = &outcome.history[0];
    let last = outcome.history.last().unwrap();
    let loss = |r: &vitkit::train::EpochRecord| r.get("train_loss").unwrap();
    assert!(
        loss(last) < 0.7 * loss(first),
        "loss {} -> {}",
        loss(first),
        loss(last)
    );
    let val_acc = last.get("val_acc").unwrap();
    assert!(val_acc > 0.6, "val acc {val_acc} (chance 0.25)");
    // Logs and checkpoints are where the run directory layout says.
    let log = std::fs::read_to_string(dir.path().join("log.csv")).unwrap();
    assert_eq!(log.lines().count(), 16);
    assert!(find_checkpoint(dir.path(), Which::Best).is_ok());
}

#[test]
fn checkpoint_round_trip_keeps_logits() {
    let device = Device::flex();
    let model = tiny_vit().init(&device).unwrap();
    let x = Tensor::<4>::random(
        [2, 3, 16, 16],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let before = model.logits(x.clone()).into_data().try_to_vec::<f32>().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    save_weights(&model, &path, &Default::default()).unwrap();
    // A fresh model has different weights until the file is loaded into it.
    let fresh = tiny_vit().init(&device).unwrap();
    assert_ne!(
        fresh.logits(x.clone()).into_data().try_to_vec::<f32>().unwrap(),
        before
    );
    let (loaded, report) = load_weights(fresh, &path, true).unwrap();
    assert!(report.is_exact(), "{}", report.describe());
    assert_eq!(loaded.logits(x).into_data().try_to_vec::<f32>().unwrap(), before);
    // Keys and shapes are timm's.
    let (tensors, _) = vitkit::io::read_safetensors(&path).unwrap();
    assert_eq!(tensors["blocks.1.attn.qkv.weight"].shape, vec![96, 32]);
    assert_eq!(tensors["patch_embed.proj.weight"].shape, vec![32, 3, 4, 4]);
    assert_eq!(tensors["pos_embed"].shape, vec![1, 17, 32]);
    assert!(tensors.contains_key("norm.weight") && tensors.contains_key("head.bias"));
}

#[test]
fn resume_continues_from_the_last_checkpoint() {
    let data = splits();
    let init_dir = tempfile::tempdir().unwrap();
    let init = init_dir.path().join("init.safetensors");
    save_weights(
        &tiny_vit().init(&Device::flex()).unwrap(),
        &init,
        &Default::default(),
    )
    .unwrap();
    let full = tempfile::tempdir().unwrap();
    let whole = train_from(
        full.path(),
        &data,
        Session {
            resume: false,
            stop_after_epoch: None,
        },
        &init,
    )
    .unwrap();

    // Same run, interrupted after its first epoch.
    let killed = tempfile::tempdir().unwrap();
    let first = train_from(
        killed.path(),
        &data,
        Session {
            resume: false,
            stop_after_epoch: Some(1),
        },
        &init,
    )
    .unwrap();
    assert_eq!(first.state.epoch, 1);
    let state: TrainState = read_json(&killed.path().join("checkpoints/epoch-0001/state.json")).unwrap();
    assert_eq!(state.epoch, 1);

    // Resumed with another weight decay on the command line: the saved recipe continues.
    let mut other_recipe = run_config(&data, 3, 2e-3);
    other_recipe.train.as_mut().unwrap().weight_decay = 0.5;
    let resumed = resume_as(tiny_vit(), other_recipe, &data, killed.path()).unwrap();
    assert_eq!(resumed.history.len(), 2, "only epochs 2 and 3 are trained again");
    assert_eq!(resumed.history[0].epoch, 2);
    assert_eq!(resumed.state.step, whole.state.step);
    // Same schedule and optimizer state: the resumed run ends where the uninterrupted one did.
    let (lr_a, lr_b) = (whole.history[2].lr, resumed.history[1].lr);
    assert!((lr_a - lr_b).abs() < 1e-12);
    // Every parameter, and the optimizer's state, as the uninterrupted run left them.
    let epoch3 = |dir: &Path| dir.join("checkpoints/epoch-0003");
    let (a, _) = read_safetensors(&epoch3(full.path()).join("model.safetensors")).unwrap();
    let (b, _) = read_safetensors(&epoch3(killed.path()).join("model.safetensors")).unwrap();
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, t) in &a {
        assert_eq!(t.shape, b[name].shape, "{name}");
        let max = t
            .values
            .iter()
            .zip(&b[name].values)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        if max > 0.0 {
            eprintln!("DIFF {name} {max}");
        }
    }
    // The optimizer's state (AdamW's moments and step counts) cannot be read back field by
    // field, so it is compared by what it does: both runs, given one more epoch, take the same
    // steps from the same weights only if their moments agree.
    for dir in [full.path(), killed.path()] {
        let config = epoch3(dir).join("config.json");
        let mut run: RunConfig = read_json(&config).unwrap();
        run.train.as_mut().unwrap().epochs = 4;
        std::fs::write(&config, serde_json::to_string(&run).unwrap()).unwrap();
        resume_as(tiny_vit(), run, &data, dir).unwrap();
    }
    let epoch4 = |dir: &Path| dir.join("checkpoints/epoch-0004/model.safetensors");
    let (a, _) = read_safetensors(&epoch4(full.path())).unwrap();
    let (b, _) = read_safetensors(&epoch4(killed.path())).unwrap();
    let (moved, _) = read_safetensors(&epoch3(full.path()).join("model.safetensors")).unwrap();
    for (name, t) in &a {
        let max = max_gap(&t.values, &b[name].values);
        assert!(
            max <= 1e-6,
            "{name}: one more epoch from the resumed optimizer state differs by {max}"
        );
    }
    assert!(
        max_gap(&a["head.weight"].values, &moved["head.weight"].values) > 1e-5,
        "epoch 4 trained"
    );
}

/// A run whose recipe cannot start (a batch larger than the data) writes nothing.
#[test]
fn a_run_that_cannot_start_leaves_no_directory() {
    let data = splits();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut run = run_config(&data, 1, 1e-3);
    run.train.as_mut().unwrap().batch_size = 400;
    run.train.as_mut().unwrap().accum_steps = 2;
    let device = Device::flex().autodiff();
    let err = train(
        tiny_vit().init(&device).unwrap(),
        &classify(),
        run,
        &data,
        &dir,
        &Session::default(),
        &device,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("larger than the 512 training images"),
        "{err}"
    );
    assert!(!dir.exists(), "nothing is written for a run that never started");
}

#[test]
fn nan_loss_stops_training_and_keeps_the_last_checkpoint() {
    let data = splits();
    let dir = tempfile::tempdir().unwrap();
    train_run(dir.path(), &data, 1, 1e-3, false).unwrap();
    let good = std::fs::read(dir.path().join("checkpoints/epoch-0001/model.safetensors")).unwrap();
    // Continue the run with an absurd learning rate: the weights blow up within the epoch.
    let mut cfg: RunConfig = read_json(&dir.path().join("checkpoints/epoch-0001/config.json")).unwrap();
    let recipe = cfg.train.as_mut().unwrap();
    recipe.epochs = 2;
    recipe.lr = 1e30;
    std::fs::write(
        dir.path().join("checkpoints/epoch-0001/config.json"),
        serde_json::to_string(&cfg).unwrap(),
    )
    .unwrap();
    let err = resume_as(tiny_vit(), cfg, &data, dir.path()).unwrap_err();
    assert!(matches!(err, VitError::Diverged(_)), "{err}");
    assert!(err.to_string().contains("epoch-0001"), "{err}");
    let last = find_checkpoint(dir.path(), Which::Last).unwrap();
    assert!(last.dir.ends_with("checkpoints/epoch-0001"));
    assert_eq!(std::fs::read(last.model()).unwrap(), good);
}

#[test]
fn resuming_with_another_model_is_refused_and_changes_nothing() {
    let data = splits();
    let dir = tempfile::tempdir().unwrap();
    train_run(dir.path(), &data, 1, 1e-3, false).unwrap();
    let before = std::fs::read(dir.path().join("last.json")).unwrap();
    let other = VitConfig {
        embed_dim: 64,
        ..tiny_vit()
    };
    let mut cfg = run_config(&data, 2, 1e-3);
    cfg.model = ModelConfig::Vit(other.clone());
    let err = resume_as(other.clone(), cfg, &data, dir.path()).unwrap_err();
    assert!(matches!(err, VitError::CheckpointMismatch { .. }), "{err}");
    assert_eq!(std::fs::read(dir.path().join("last.json")).unwrap(), before);
    assert!(!dir.path().join("checkpoints/epoch-0002").exists());
    // Loading weights into a model of another shape is an error listing the mismatches.
    let err = load_weights(
        other.init(&Device::flex()).unwrap(),
        &dir.path().join("checkpoints/epoch-0001/model.safetensors"),
        true,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("shape mismatch for blocks.0.attn.qkv.weight"),
        "{err}"
    );
    // Starting a fresh run over an existing one is refused too.
    let err = train_run(dir.path(), &data, 1, 1e-3, false).unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
}

/// One short run from the weights in `init` with `recipe` changed by `edit`, its outcome.
fn short_run(
    dir: &Path,
    data: &DatasetSplits,
    init: &Path,
    task: &dyn vitkit::train::Task,
    edit: impl Fn(&mut TrainConfig),
) -> vitkit::train::TrainOutcome {
    let device = Device::flex().autodiff();
    let (model, _) = load_weights(tiny_vit().init(&device).unwrap(), init, true).unwrap();
    let mut run = run_config(data, 1, 2e-3);
    edit(run.train.as_mut().unwrap());
    train(model, task, run, data, dir, &Session::default(), &device).unwrap()
}

fn saved_init(dir: &Path) -> std::path::PathBuf {
    let init = dir.join("init.safetensors");
    save_weights(
        &tiny_vit().init(&Device::flex()).unwrap(),
        &init,
        &Default::default(),
    )
    .unwrap();
    init
}

fn max_gap(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// Two batches of 16 accumulated make the same optimizer step as one batch of 32.
#[test]
fn gradient_accumulation_equals_the_larger_batch() {
    let data = splits();
    let tmp = tempfile::tempdir().unwrap();
    let init = saved_init(tmp.path());
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    let a = short_run(&one, &data, &init, &classify(), |r| {
        r.batch_size = 32;
        r.max_steps_per_epoch = Some(3);
    });
    let b = short_run(&two, &data, &init, &classify(), |r| {
        r.batch_size = 16;
        r.accum_steps = 2;
        r.max_steps_per_epoch = Some(3);
    });
    assert_eq!((a.state.step, b.state.step), (3, 3), "optimizer steps");
    let losses = [&a, &b].map(|o| o.history[0].get("train_loss").unwrap());
    assert!((losses[0] - losses[1]).abs() < 1e-5, "{losses:?}");
    let (wa, _) = read_safetensors(&a.last_checkpoint.join("model.safetensors")).unwrap();
    let (wb, _) = read_safetensors(&b.last_checkpoint.join("model.safetensors")).unwrap();
    for (name, t) in &wa {
        let gap = max_gap(&t.values, &wb[name].values);
        assert!(gap < 2e-5, "{name}: accumulated step differs by {gap}");
    }
    // Not vacuous: the step moved the weights.
    let (w0, _) = read_safetensors(&init).unwrap();
    assert!(
        max_gap(
            &w0["blocks.0.attn.qkv.weight"].values,
            &wa["blocks.0.attn.qkv.weight"].values
        ) > 1e-4
    );
}

/// A linear probe trains the head alone: every other parameter is bit-identical afterwards.
#[test]
fn a_linear_probe_trains_only_the_head() {
    let data = splits();
    let tmp = tempfile::tempdir().unwrap();
    let init = saved_init(tmp.path());
    let out = short_run(&tmp.path().join("probe"), &data, &init, &classify(), |r| {
        r.trainable = vitkit::train::Trainable::Head;
        r.max_steps_per_epoch = Some(4);
    });
    let (before, _) = read_safetensors(&init).unwrap();
    let (after, _) = read_safetensors(&out.last_checkpoint.join("model.safetensors")).unwrap();
    for (name, t) in &before {
        let gap = max_gap(&t.values, &after[name].values);
        if name.starts_with("head.") {
            assert!(gap > 1e-5, "{name} did not train");
        } else {
            assert_eq!(gap, 0.0, "{name} changed by {gap} under a linear probe");
        }
    }
}

/// A task of the test's own: the loop logs its extra column, runs its hook after every
/// optimizer step, and picks the best checkpoint by its metric.
#[test]
fn the_loop_drives_any_task() {
    use burn::module::{Module, ModuleMapper, Param};
    use vitkit::models::Model;
    use vitkit::train::{BestBy, Step, StepContext, Task};

    /// Zeroes `head.bias` after every step.
    struct ZeroHeadBias(Vec<String>);
    impl ModuleMapper for ZeroHeadBias {
        fn enter_module(&mut self, name: &str, container: &str) {
            if !container.starts_with("Enum:") {
                self.0.push(name.into());
            }
        }
        fn exit_module(&mut self, _: &str, container: &str) {
            if !container.starts_with("Enum:") {
                self.0.pop();
            }
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if self.0.join(".") == "head.bias" {
                param.map(|t| t.zeros_like())
            } else {
                param
            }
        }
    }
    struct Probe(Classification);
    impl Task for Probe {
        fn batch_spec(&self) -> vitkit::data::BatchSpec {
            self.0.batch_spec()
        }
        fn check(&self, model: &Model, data: &DatasetSplits) -> vitkit::Result<()> {
            self.0.check(model, data)
        }
        fn train_columns(&self) -> Vec<&'static str> {
            vec!["acc", "images"]
        }
        fn step(&self, model: &Model, batch: vitkit::data::Batch, ctx: &StepContext) -> vitkit::Result<Step> {
            let n = batch.len() as f64;
            let mut step = self.0.step(model, batch, ctx)?;
            step.values.push(n);
            Ok(step)
        }
        fn after_step(&self, model: Model) -> Model {
            model.map(&mut ZeroHeadBias(Vec::new()))
        }
        fn val_columns(&self) -> Vec<&'static str> {
            self.0.val_columns()
        }
        fn validate(
            &self,
            model: &Model,
            data: std::sync::Arc<ImageDataset>,
            norm: &vitkit::data::Normalize,
            batch_size: usize,
            device: &Device,
        ) -> vitkit::Result<Vec<f64>> {
            self.0.validate(model, data, norm, batch_size, device)
        }
        fn best_by(&self) -> BestBy {
            BestBy {
                column: "val_loss",
                higher_is_better: false,
            }
        }
    }
    let data = splits();
    let tmp = tempfile::tempdir().unwrap();
    let init = saved_init(tmp.path());
    let dir = tmp.path().join("probe");
    let out = short_run(&dir, &data, &init, &Probe(classify()), |r| {
        r.epochs = 2;
        r.max_steps_per_epoch = Some(3);
    });
    let log = std::fs::read_to_string(dir.join("log.csv")).unwrap();
    assert!(
        log.starts_with("epoch,step,lr,train_loss,train_acc,train_images,val_loss,val_acc,val_top5,"),
        "{log}"
    );
    assert_eq!(out.history[1].get("train_images"), Some(32.0));
    let (w, _) = read_safetensors(&out.last_checkpoint.join("model.safetensors")).unwrap();
    assert!(w["head.bias"].values.iter().all(|&v| v == 0.0), "the hook ran");
    assert!(w["head.weight"].values.iter().any(|&v| v != 0.0));
    assert_eq!(out.state.best_metric, "val_loss");
    let losses: Vec<f64> = out.history.iter().map(|r| r.get("val_loss").unwrap()).collect();
    let best = if losses[1] < losses[0] { 2 } else { 1 };
    assert_eq!(out.state.best_epoch, best, "{losses:?}");
}

/// The family declares which parameters skip weight decay: for the ViT, timm's rule.
#[test]
fn weight_decay_exemptions_come_from_the_family() {
    use burn::module::{Module, ModuleVisitor, Param};
    let config = ModelConfig::Vit(tiny_vit());
    let model = config.build(&Device::flex()).unwrap();
    let exempt = vitkit::train::no_decay_ids(&model, &config);
    struct Names<'a>(Vec<String>, &'a [burn::module::ParamId], Vec<String>);
    impl ModuleVisitor for Names<'_> {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.0.push(if container.starts_with("Enum:") {
                String::new()
            } else {
                name.into()
            });
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.1.contains(&param.id) {
                let parts: Vec<&str> = self
                    .0
                    .iter()
                    .map(String::as_str)
                    .filter(|p| !p.is_empty())
                    .collect();
                self.2.push(parts.join("."));
            }
        }
    }
    let mut names = Names(Vec::new(), &exempt, Vec::new());
    model.visit(&mut names);
    let names = names.2;
    assert!(names.contains(&"cls_token".to_string()) && names.contains(&"pos_embed".to_string()));
    assert!(names.contains(&"blocks.1.attn.qkv.bias".to_string()));
    assert!(names.contains(&"norm.weight".to_string()));
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with(".weight") && !n.contains("norm")),
        "{names:?}"
    );
    // Two blocks of 8 vectors, the final norm's 2, the patch-embedding and head biases, 2 tokens.
    assert_eq!(names.len(), 2 * 8 + 2 + 2 + 2, "{names:?}");
}

/// A prediction count that does not match the labels is an error, not a silently wrong
/// accuracy (the loop used to report 0% when the predictions could not be read).
#[test]
fn training_accuracy_never_defaults_silently() {
    let device = Device::flex();
    let logits = Tensor::<2>::from_data(
        burn::tensor::TensorData::new(vec![0.1f32, 0.9, 0.8, 0.2, 0.3, 0.7], [3, 2]),
        &device,
    );
    assert_eq!(
        vitkit::train::correct_predictions(logits.clone(), &[1, 0, 0]).unwrap(),
        2
    );
    let err = vitkit::train::correct_predictions(logits, &[1, 0]).unwrap_err();
    assert!(err.to_string().contains("3 predictions for 2 labels"), "{err}");
}
