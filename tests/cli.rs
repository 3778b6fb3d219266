//! The `vitkit` binary as a user runs it: clear errors and a non-zero exit on bad input, and
//! the train → eval → predict path on the built-in data.

use std::path::Path;
use std::process::{Command, Output};

fn vitkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vitkit"))
        .args(args)
        .output()
        .expect("run vitkit")
}

fn fails_with(args: &[&str], needles: &[&str]) {
    let out = vitkit(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: expected '{n}' in: {stderr}");
    }
}

#[test]
fn unknown_model_and_dataset_list_the_valid_names() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let out = out.to_str().unwrap();
    fails_with(
        &["train", "--model", "vit_huge_patch99", "--out", out],
        &["unknown model 'vit_huge_patch99'", "vit_base_patch16_224"],
    );
    fails_with(
        &["train", "--data", "mnist-ish", "--out", out],
        &["unknown dataset 'mnist-ish'", "fashion-mnist"],
    );
}

#[test]
fn missing_dataset_and_bad_sizes_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let out = out.to_str().unwrap();
    fails_with(
        &["train", "--data", "fashion-mnist:/no/such/dir", "--out", out],
        &["/no/such/dir", "apt-get install dataset-fashion-mnist"],
    );
    fails_with(
        &["train", "--img-size", "30", "--out", out],
        &["not divisible by the patch size"],
    );
    fails_with(&["eval", "--checkpoint", "/no/such/run"], &["/no/such/run"]);
}

#[test]
fn train_eval_predict_on_the_built_in_data() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    let out = vitkit(&[
        "train",
        "--out",
        run_s,
        "--epochs",
        "1",
        "--max-steps-per-epoch",
        "3",
        "--batch-size",
        "16",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("trained 1 epochs (3 steps)"));

    let png = dir.path().join("cm.png");
    let out = vitkit(&[
        "eval",
        "--checkpoint",
        run_s,
        "--data",
        "synthetic",
        "--confusion-png",
        png.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("top-1") && stdout.contains("top-5") && stdout.contains("half disc"),
        "{stdout}"
    );
    assert!(image::open(&png).unwrap().width() > 300);

    // A PNG to classify, and a file that is not an image.
    let img = dir.path().join("x.png");
    image::RgbImage::from_pixel(50, 40, image::Rgb([200, 30, 30]))
        .save(&img)
        .unwrap();
    let out = vitkit(&["predict", "--checkpoint", run_s, img.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.trim_end().ends_with('%') || l.contains("% "))
            .count(),
        5,
        "{stdout}"
    );
    let bad = dir.path().join("notes.png");
    std::fs::write(&bad, "not an image").unwrap();
    fails_with(
        &["predict", "--checkpoint", run_s, bad.to_str().unwrap()],
        &["notes.png"],
    );

    // Explain: a rollout per image, and clear errors for bad layers and undecodable files.
    let ex = dir.path().join("explain");
    let out = vitkit(&[
        "explain",
        "--checkpoint",
        run_s,
        img.to_str().unwrap(),
        "--layer",
        "1",
        "--out",
        ex.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(ex.join("x_rollout.png").is_file() && ex.join("x_attn_layer1_headmean.png").is_file());
    fails_with(
        &[
            "explain",
            "--checkpoint",
            run_s,
            img.to_str().unwrap(),
            "--layer",
            "9",
        ],
        &["--layer 9", "valid 0..=3"],
    );
    fails_with(
        &[
            "explain",
            "--checkpoint",
            run_s,
            img.to_str().unwrap(),
            "--layer",
            "0",
            "--head",
            "2",
        ],
        &["valid 0..=1"],
    );
    fails_with(
        &["explain", "--checkpoint", run_s, bad.to_str().unwrap()],
        &["notes.png"],
    );

    // The report is one HTML file with its images inlined.
    let report = dir.path().join("report");
    let out = vitkit(&[
        "report",
        run_s,
        "--samples",
        "8",
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(html.contains("data:image/png;base64,") && html.contains("Mean attention distance"));
    assert!(!html.contains("src=\"rollout"), "images are inlined, not linked");

    // Training again into the same directory without --resume is refused; nothing is lost.
    fails_with(&["train", "--out", run_s, "--epochs", "1"], &["--resume"]);
    assert!(
        Path::new(run_s)
            .join("checkpoints/epoch-0001/model.safetensors")
            .is_file()
    );
}

#[test]
fn models_lists_presets_with_counts() {
    let out = vitkit(&["models"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("vit_base_patch16_224") && stdout.contains("86,567,656"),
        "{stdout}"
    );
}
