//! SiT through the `vitkit` binary as a user runs it: pretraining without labels on the
//! built-in upright shapes (logs, resume bit for bit, the report's loss curves), the linear
//! probe beating the same probe at random initialisation, fine-tuning from the pretraining
//! run, reconstructions, the pipeline's picture, and the errors for bad input.

mod support;

use std::path::Path;

use support::cli::{differing_tensors, fails_with, ok};

fn pretrain(run: &Path, extra: &[&str]) {
    let mut args = vec![
        "pretrain",
        "--method",
        "sit",
        "--model",
        "sit_nano_patch8_32",
        "--data",
        "synthetic-upright",
        "--out",
        run.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ok(&args);
}

/// Best validation top-1 of a linear probe (`source`: `--checkpoint RUN` or `--model NAME`).
fn probe(source: &[&str], out: &Path) -> f64 {
    let mut args = vec!["probe"];
    args.extend_from_slice(source);
    args.extend_from_slice(&[
        "--data",
        "synthetic-upright",
        "--epochs",
        "6",
        "--max-steps-per-epoch",
        "100",
        "--batch-size",
        "64",
        "--lr",
        "1e-2",
        "--weight-decay",
        "0",
        "--out",
        out.to_str().unwrap(),
    ]);
    ok(&args);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("best.json")).unwrap()).unwrap();
    state["value"].as_f64().unwrap()
}

/// The weights file of a run's best checkpoint.
fn best_weights(run: &Path) -> std::path::PathBuf {
    let best: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("best.json")).unwrap()).unwrap();
    run.join(best["checkpoint"].as_str().unwrap())
        .join("model.safetensors")
}

#[test]
fn sit_pretraining_learns_features_a_probe_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("sit");
    pretrain(
        &run,
        &[
            "--epochs",
            "8",
            "--max-steps-per-epoch",
            "150",
            "--batch-size",
            "64",
            "--lr",
            "2e-3",
        ],
    );
    let log = std::fs::read_to_string(run.join("log.csv")).unwrap();
    for column in [
        "train_rotation_loss",
        "train_contrastive_loss",
        "train_reconstruction_loss",
        "train_rotation_s",
        "train_contrastive_s",
        "train_reconstruction_s",
        "val_rotation_acc",
    ] {
        assert!(
            log.lines().next().unwrap().contains(column),
            "no {column} in {log}"
        );
    }
    let pretrained = probe(
        &["--checkpoint", run.to_str().unwrap()],
        &dir.path().join("p_sit"),
    );
    // The probe's checkpoint is the plain classifier: `eval` reads it and gets the logged
    // accuracy, and its backbone is the pretraining run's, untouched.
    let p_sit = dir.path().join("p_sit");
    let eval = ok(&[
        "eval",
        "--checkpoint",
        p_sit.to_str().unwrap(),
        "--data",
        "synthetic-upright",
    ]);
    assert!(
        eval.contains(&format!("top-1 {:.2}%", 100.0 * pretrained)),
        "{eval}"
    );
    let (backbone, _) = vitkit::io::read_safetensors(&best_weights(&run)).unwrap();
    let (probed, _) = vitkit::io::read_safetensors(&best_weights(&p_sit)).unwrap();
    for (name, t) in &probed {
        if !name.contains("_head.") {
            assert_eq!(t.values, backbone[name].values, "the probe changed {name}");
        }
    }
    let random = probe(&["--model", "sit_nano_patch8_32"], &dir.path().join("p_random"));
    println!("probe top-1: SiT {pretrained:.4}, random initialisation {random:.4}");
    assert!(
        pretrained > random,
        "the SiT probe ({pretrained}) does not beat the random-initialisation probe ({random})"
    );
    // Fine-tuning from the pretraining run, reconstructions, the report with each loss.
    let ft = dir.path().join("ft");
    ok(&[
        "train",
        "--init",
        run.to_str().unwrap(),
        "--model",
        "sit_nano_patch8_32",
        "--data",
        "synthetic-upright",
        "--epochs",
        "1",
        "--max-steps-per-epoch",
        "3",
        "--out",
        ft.to_str().unwrap(),
    ]);
    let out = ok(&[
        "explain",
        "--checkpoint",
        run.to_str().unwrap(),
        "--out",
        dir.path().join("explain").to_str().unwrap(),
    ]);
    assert!(out.contains("reconstructions.png"), "{out}");
    assert!(dir.path().join("explain/reconstructions.png").exists());
    ok(&["report", run.to_str().unwrap(), "--samples", "8"]);
    for curve in [
        "curve_loss.png",
        "curve_train_rotation_s.png",
        "curve_train_reconstruction_s.png",
    ] {
        assert!(run.join("report").join(curve).exists(), "no {curve}");
    }
}

#[test]
fn sit_resumes_bit_for_bit_and_draws_its_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let short = ["--epochs", "2", "--max-steps-per-epoch", "2", "--batch-size", "8"];
    let straight = dir.path().join("straight");
    let resumed = dir.path().join("resumed");
    pretrain(&straight, &short);
    pretrain(&resumed, &[&short[..], &["--stop-after-epoch", "1"]].concat());
    pretrain(&resumed, &[&short[..], &["--resume"]].concat());
    let differ = differing_tensors(&straight, &resumed);
    assert!(differ.is_empty(), "a resumed SiT run differs in {differ:?}");
    // A probe resumes too; its heads go back and forth between raw and standardised features,
    // so they agree to rounding.
    let probe_of = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "probe",
            "--checkpoint",
            straight.to_str().unwrap(),
            "--data",
            "synthetic-upright",
            "--epochs",
            "2",
            "--max-steps-per-epoch",
            "3",
            "--batch-size",
            "8",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        ok(&args);
    };
    let (probe_straight, probe_resumed) = (dir.path().join("ps"), dir.path().join("pr"));
    probe_of(&probe_straight, &[]);
    probe_of(&probe_resumed, &["--stop-after-epoch", "1"]);
    probe_of(&probe_resumed, &["--resume"]);
    let weights = |run: &Path| {
        vitkit::io::read_safetensors(&run.join("checkpoints/epoch-0002/model.safetensors"))
            .unwrap()
            .0
    };
    let (a, b) = (weights(&probe_straight), weights(&probe_resumed));
    for (name, t) in &a {
        let gap = t
            .values
            .iter()
            .zip(&b[name].values)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(gap < 1e-5, "a resumed probe differs in {name} by {gap}");
    }
    let grid = dir.path().join("grid.png");
    ok(&[
        "show-data",
        "--method",
        "sit",
        "--data",
        "synthetic",
        "--count",
        "4",
        "--out",
        grid.to_str().unwrap(),
    ]);
    let img = image::open(&grid).unwrap();
    assert!(img.width() > 4 * 32 && img.height() > 4 * 32);
}

#[test]
fn sit_refuses_bad_input_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    // NT-Xent needs full batches.
    fails_with(
        &[
            "pretrain",
            "--model",
            "sit_nano_patch8_32",
            "--batch-size",
            "100000",
            "--out",
            &out("big"),
        ],
        &["full", "batch", "--batch-size"],
    );
    fails_with(
        &["pretrain", "--model", "vit_nano_patch8_32", "--out", &out("vit")],
        &["no pretext heads", "sit_"],
    );
    fails_with(
        &[
            "pretrain",
            "--method",
            "dino",
            "--model",
            "sit_nano_patch8_32",
            "--out",
            &out("x"),
        ],
        &["unknown self-supervised method", "sit"],
    );
    // The probe reads each image's features once: augmentation cannot apply.
    fails_with(
        &[
            "probe",
            "--model",
            "sit_nano_patch8_32",
            "--crop-padding",
            "2",
            "--out",
            &out("aug"),
        ],
        &["no augmentation", "--linear-probe"],
    );
    // A supervised run is not a pretraining run.
    let supervised = dir.path().join("supervised");
    support::cli::train_briefly("sit_nano_patch8_32", &supervised, &[]);
    fails_with(
        &[
            "probe",
            "--checkpoint",
            supervised.to_str().unwrap(),
            "--out",
            &out("p"),
        ],
        &[
            "supervised training run of sit_nano_patch8_32",
            "not a SiT pretraining run",
        ],
    );
    // Fine-tuning a model of another width from it lists the mismatches.
    let sit = dir.path().join("sit");
    pretrain(
        &sit,
        &["--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "8"],
    );
    fails_with(
        &[
            "train",
            "--init",
            sit.to_str().unwrap(),
            "--model",
            "sit_mini_patch4_32",
            "--out",
            &out("wide"),
        ],
        &["shape mismatch for", "patch_embed.proj.weight"],
    );
    fails_with(
        &[
            "train",
            "--init",
            sit.to_str().unwrap(),
            "--model",
            "vit_nano_patch8_32",
            "--out",
            &out("v"),
        ],
        &["holds a sit model", "vit model"],
    );
}
