//! `vitkit train --task gan`, `sample`, `fid` and `report` as a user runs them on the built-in
//! data, and their errors.

mod support;

use std::path::Path;

use support::cli::{fails_with, ok, train_briefly};

/// A brief GAN run of `model` on the built-in shapes, validated on `features`' classifier.
fn train_gan(model: &str, run: &Path, features: &Path, epochs: &str, extra: &[&str]) {
    let mut args = vec![
        "train",
        "--task",
        "gan",
        "--model",
        model,
        "--data",
        "synthetic",
        "--fid-features",
        features.to_str().unwrap(),
        "--fid-samples",
        "48",
        "--epochs",
        epochs,
        "--max-steps-per-epoch",
        "3",
        "--batch-size",
        "8",
        "--out",
        run.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ok(&args);
}

fn log_rows(run: &Path) -> (Vec<String>, Vec<Vec<f64>>) {
    let text = std::fs::read_to_string(run.join("log.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    let rows = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    (header, rows)
}

#[test]
fn a_gan_trains_samples_and_is_scored() {
    let dir = tempfile::tempdir().unwrap();
    let features = dir.path().join("classifier");
    train_briefly("vit_nano_patch8_32", &features, &[]);
    let run = dir.path().join("gen");
    train_gan("nest_gen_32", &run, &features, "3", &[]);

    let (header, rows) = log_rows(&run);
    for column in [
        "train_loss",
        "train_d_real",
        "train_d_fake",
        "train_g_loss",
        "val_fid",
    ] {
        assert!(header.iter().any(|h| h == column), "{column} in {header:?}");
    }
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    // Both players' losses move, and the FID is a finite positive number.
    let moves = |name: &str| rows.iter().any(|r| r[col(name)] != rows[0][col(name)]);
    assert!(moves("train_loss") && moves("train_g_loss"), "{rows:?}");
    for row in &rows {
        assert!(row[col("val_fid")].is_finite() && row[col("val_fid")] > 0.0);
    }
    // The same command again draws the same weights and latents: the same log, to the digit.
    let again = dir.path().join("again");
    train_gan("nest_gen_32", &again, &features, "3", &[]);
    let losses = |rows: &[Vec<f64>]| -> Vec<Vec<f64>> { rows.iter().map(|r| r[..8].to_vec()).collect() };
    assert_eq!(losses(&log_rows(&again).1), losses(&rows));
    // Samples were written after each epoch, and they changed.
    let grid = |e: usize| std::fs::read(run.join(format!("samples/epoch-{e:04}.png"))).unwrap();
    assert_ne!(grid(1), grid(2));

    // `sample`: the seed decides the images.
    let png = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let r = run.to_str().unwrap();
    let sample = |seed: &str, name: &str| {
        ok(&[
            "sample",
            "--checkpoint",
            r,
            "--n",
            "16",
            "--seed",
            seed,
            "--out",
            &png(name),
        ]);
    };
    sample("3", "a.png");
    sample("3", "b.png");
    sample("4", "c.png");
    let read = |name: &str| std::fs::read(png(name)).unwrap();
    assert_eq!(read("a.png"), read("b.png"));
    assert_ne!(read("a.png"), read("c.png"));
    let out = ok(&[
        "sample",
        "--checkpoint",
        r,
        "--interpolate",
        "2",
        "--steps",
        "5",
        "--out",
        &png("walk.png"),
    ]);
    assert!(out.contains("interpolation"), "{out}");
    let size = image::image_dimensions(png("walk.png")).unwrap();
    assert!(size.0 > size.1, "strips are wider than tall: {size:?}");
    ok(&[
        "sample",
        "--checkpoint",
        r,
        "--interpolate",
        "--out",
        &png("one.png"),
    ]);
    let one = image::image_dimensions(png("one.png")).unwrap();
    assert!(
        one.0 > size.0 && one.1 < size.1,
        "one strip of 10: {one:?} against two of 5: {size:?}"
    );

    // `fid`: the run's extractor by default, the number printed with what it is.
    let out = ok(&["fid", "--checkpoint", r, "--n", "40"]);
    assert!(out.contains("FID") && out.contains("not Inception"), "{out}");
    let value: f64 = out
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .parse()
        .unwrap();
    assert!(value.is_finite() && value > 0.0);

    // `report`: FID per epoch and against wall time, and the sample grids.
    let report = dir.path().join("report");
    ok(&["report", r, "--out", report.to_str().unwrap()]);
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(html.contains("validation fid against training wall time"));
    assert!(html.contains("Samples along the way"));
    assert!(report.join("curve_val_fid.png").exists());

    // The convolutional baseline trains the same way, and a stopped run resumes.
    let conv = dir.path().join("conv");
    train_gan("dcgan_32", &conv, &features, "2", &["--stop-after-epoch", "1"]);
    assert_eq!(log_rows(&conv).1.len(), 1);
    train_gan("dcgan_32", &conv, &features, "2", &["--resume"]);
    let (_, rows) = log_rows(&conv);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1][1], 6.0, "the step count continues");
    // Two updates per batch do not mix with accumulation.
    let other = png("accum");
    fails_with(
        &[
            "train",
            "--task",
            "gan",
            "--model",
            "dcgan_32",
            "--data",
            "synthetic",
            "--fid-features",
            features.to_str().unwrap(),
            "--accum-steps",
            "2",
            "--out",
            &other,
        ],
        &["accumulation"],
    );

    // Errors.
    let f = features.to_str().unwrap();
    fails_with(
        &["sample", "--checkpoint", f, "--out", &png("x.png")],
        &["does not generate images"],
    );
    let other = png("other");
    fails_with(
        &[
            "train",
            "--task",
            "gan",
            "--model",
            "nest_gen_28",
            "--data",
            "synthetic",
            "--fid-features",
            f,
            "--out",
            &other,
        ],
        &["reads 3-channel 32x32 images", "28x28"],
    );
    fails_with(
        &["fid", "--checkpoint", r, "--features", &png("nowhere")],
        &["nowhere"],
    );
    fails_with(
        &[
            "sample",
            "--checkpoint",
            r,
            "--interpolate",
            "1",
            "--steps",
            "1",
            "--out",
            &png("x.png"),
        ],
        &["two steps"],
    );
}

#[test]
fn gan_training_refuses_what_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    let base = [
        "train",
        "--task",
        "gan",
        "--data",
        "synthetic",
        "--out",
        o,
        "--epochs",
        "1",
    ];
    let with = |extra: &[&str]| -> Vec<String> { base.iter().chain(extra).map(|s| s.to_string()).collect() };
    let fails = |extra: &[&str], needles: &[&str]| {
        let args = with(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&args, needles);
    };
    fails(&["--model", "nest_gen_32"], &["--fid-features"]);
    fails(
        &[
            "--model",
            "nest_gen_32",
            "--fid-features",
            "x",
            "--gan-loss",
            "wasserstein",
        ],
        &["unknown GAN loss"],
    );
    fails(
        &[
            "--model",
            "nest_gen_32",
            "--fid-features",
            "x",
            "--label-fraction",
            "0.5",
        ],
        &["read no labels"],
    );
    fails(
        &["--model", "vit_nano_patch8_32", "--fid-features", "x"],
        &["does not generate images"],
    );
    let none = dir.path().join("none");
    fails(
        &["--model", "nest_gen_32", "--fid-features", none.to_str().unwrap()],
        &["feature extractor"],
    );
    fails_with(
        &[
            "train",
            "--model",
            "nest_gen_32",
            "--data",
            "synthetic",
            "--out",
            o,
        ],
        &["no classifier head"],
    );
    fails_with(
        &[
            "train",
            "--model",
            "vit_nano_patch8_32",
            "--data",
            "synthetic",
            "--out",
            o,
            "--fid-features",
            "x",
        ],
        &["--task gan"],
    );
    assert!(!out.exists(), "nothing is written for a refused run");
}
