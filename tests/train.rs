//! Training end to end on data the tests generate: learning, checkpoints, resume, divergence.

use std::path::Path;

use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vitkit::VitError;
use vitkit::data::{DataInfo, DatasetSplits, ImageDataset};
use vitkit::io::{RunConfig, TrainState, Which, find_checkpoint, load_weights, read_json, save_weights};
use vitkit::models::{ModelConfig, VitConfig};
use vitkit::train::{Session, TrainConfig, train};

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
    }
}

fn tiny_vit() -> VitConfig {
    VitConfig {
        num_classes: 4,
        ..VitConfig::new(16, 4, 32, 2, 2)
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
    train(model, run_config(data, 3, 2e-3), data, dir, &session, &device)
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
    train(config.init(&device).unwrap(), run, data, dir, &session, &device)
}

#[test]
fn a_tiny_vit_learns_generated_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = splits();
    let outcome = train_run(dir.path(), &data, 15, 3e-3, false).unwrap();
    let first = &outcome.history[0];
    let last = outcome.history.last().unwrap();
    assert!(
        last.train_loss < 0.7 * first.train_loss,
        "loss {} -> {}",
        first.train_loss,
        last.train_loss
    );
    assert!(last.val_acc > 0.6, "val acc {} (chance 0.25)", last.val_acc);
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
    let before = model.forward(x.clone()).into_data().try_to_vec::<f32>().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    save_weights(&model, &path, &Default::default()).unwrap();
    // A fresh model has different weights until the file is loaded into it.
    let fresh = tiny_vit().init(&device).unwrap();
    assert_ne!(
        fresh.forward(x.clone()).into_data().try_to_vec::<f32>().unwrap(),
        before
    );
    let (loaded, report) = load_weights(fresh, &path, true).unwrap();
    assert!(report.is_exact(), "{}", report.describe());
    assert_eq!(loaded.forward(x).into_data().try_to_vec::<f32>().unwrap(), before);
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

    let resumed = train_run(killed.path(), &data, 3, 2e-3, true).unwrap();
    assert_eq!(resumed.history.len(), 2, "only epochs 2 and 3 are trained again");
    assert_eq!(resumed.history[0].epoch, 2);
    assert_eq!(resumed.state.step, whole.state.step);
    // Same schedule and optimizer state: the resumed run ends where the uninterrupted one did.
    let (lr_a, lr_b) = (whole.history[2].lr, resumed.history[1].lr);
    assert!((lr_a - lr_b).abs() < 1e-12);
    let (a, _) =
        vitkit::io::read_safetensors(&full.path().join("checkpoints/epoch-0003/model.safetensors")).unwrap();
    let (b, _) =
        vitkit::io::read_safetensors(&killed.path().join("checkpoints/epoch-0003/model.safetensors"))
            .unwrap();
    let max = a["head.weight"]
        .values
        .iter()
        .zip(&b["head.weight"].values)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(max < 1e-3, "resumed weights differ by {max}");
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
