//! CLIP from the command line: `tokenize` as open_clip prints ids, and `infer` on a weights
//! file with pixel_values and/or input_ids (compared with the library's towers), with its
//! errors.

mod support;

use std::collections::BTreeMap;

use burn::tensor::{Device, Distribution, Tensor};
use support::cli::{fails_with, ok};
use vitkit::io::{read_safetensors, save_weights, write_tensors};
use vitkit::models::clip::normalize;
use vitkit::models::preset;
use vitkit::nn::host_values;
use vitkit::text::Tokenizer;

#[test]
fn tokenize_prints_open_clip_ids() {
    let out = ok(&["tokenize", "a photo of a cat", "A  PHOTO of a cat!", "--trim"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "49406 320 1125 539 320 2368 49407");
    assert_eq!(lines[1], "49406 320 1125 539 320 2368 256 49407");
    let padded = ok(&["tokenize", "a cat"]);
    assert_eq!(padded.split_whitespace().count(), 77);
    fails_with(&["tokenize", "x", "--context-length", "1"], &["at least 2"]);
}

#[test]
fn infer_writes_features_and_logits_of_both_towers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let device = Device::flex();
    let config = preset("clip_tiny_32").expect("preset");
    let model = config.build(&device).expect("builds");
    let weights = dir.path().join("clip.safetensors");
    save_weights(&model, &weights, &BTreeMap::new()).expect("saved");

    let pixels = Tensor::<4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let texts = ["a red square", "two small blue circles at the top"];
    let ids = Tokenizer::clip().tokenize(&texts, 32);
    let input = dir.path().join("in.safetensors");
    let id_values: Vec<f32> = ids.ids.iter().map(|&i| i as f32).collect();
    let pixel_values = host_values(pixels.clone()).expect("host");
    write_tensors(
        &input,
        &[
            ("pixel_values", vec![2, 3, 32, 32], pixel_values.clone()),
            ("input_ids", vec![2, 32], id_values.clone()),
        ],
    )
    .expect("input written");
    let output = dir.path().join("out.safetensors");
    let w = weights.to_str().expect("utf-8");
    let (i, o) = (input.to_str().expect("utf-8"), output.to_str().expect("utf-8"));
    let said = ok(&[
        "infer",
        "--model",
        "clip_tiny_32",
        "--weights",
        w,
        "--source",
        "vitkit",
        "--input",
        i,
        "--output",
        o,
    ]);
    assert!(
        said.contains("image_features of 2 images, text_features of 2 texts, logits_per_image"),
        "{said}"
    );

    let towers = model.image_text().expect("CLIP");
    let image = towers.encode_image(pixels);
    let text = towers.encode_text(&ids.ids, 2).expect("ids fit");
    let logits = normalize(image.clone())
        .matmul(normalize(text.clone()).transpose())
        .mul(towers.logit_scale().exp().unsqueeze::<2>());
    let (got, _) = read_safetensors(&output).expect("output");
    for (name, want) in [
        ("image_features", image),
        ("text_features", text),
        ("logits_per_image", logits),
    ] {
        let want = host_values(want).expect("host");
        let gap = got[name]
            .values
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(gap < 1e-5, "{name}: {gap}");
    }

    // Texts alone; then the errors.
    write_tensors(&input, &[("input_ids", vec![2, 32], id_values)]).expect("input written");
    let said = ok(&[
        "infer",
        "--model",
        "clip_tiny_32",
        "--weights",
        w,
        "--source",
        "vitkit",
        "--input",
        i,
        "--output",
        o,
    ]);
    assert!(
        said.contains("text_features of 2 texts") && !said.contains("image"),
        "{said}"
    );
    let args = [
        "infer",
        "--model",
        "clip_tiny_32",
        "--weights",
        w,
        "--source",
        "vitkit",
        "--input",
        i,
        "--output",
        o,
    ];
    write_tensors(&input, &[("input_ids", vec![1, 40], vec![1.0; 40])]).expect("input written");
    fails_with(&args, &["40 tokens", "context length"]);
    write_tensors(&input, &[("other", vec![1], vec![0.0])]).expect("input written");
    fails_with(&args, &["neither pixel_values", "nor input_ids"]);
    write_tensors(&input, &[("pixel_values", vec![1, 3, 16, 16], vec![0.0; 768])]).expect("input written");
    fails_with(&args, &["[B, 3, 32, 32]"]);
}

/// The last row of a run's log.csv as column → value.
fn last_log_row(run: &std::path::Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(run.join("log.csv")).expect("log.csv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let last: Vec<&str> = lines.last().expect("a row").split(',').collect();
    header
        .iter()
        .zip(last)
        .map(|(h, v)| (h.to_string(), v.to_string()))
        .collect()
}

#[test]
fn trains_on_generated_captions_then_classifies_and_retrieves() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("clip");
    let r = run.to_str().expect("utf-8");
    ok(&[
        "train",
        "--task",
        "clip",
        "--model",
        "clip_tiny_32",
        "--data",
        "synthetic-captions",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--max-steps-per-epoch",
        "25",
        "--lr",
        "1e-3",
        "--warmup-epochs",
        "0.2",
        "--out",
        r,
    ]);
    let row = last_log_row(&run);
    for column in [
        "train_i2t_acc",
        "train_t2i_acc",
        "train_temperature",
        "val_t2i_r10",
        "val_mean_recall",
    ] {
        assert!(row.contains_key(column), "log.csv lacks {column}");
    }
    // 50 steps lift in-batch matching well above chance (1/32).
    let acc: f64 = row["train_i2t_acc"].parse().expect("number");
    assert!(acc > 2.0 / 32.0, "image→text accuracy {acc} is not above chance");
    let temperature: f64 = row["train_temperature"].parse().expect("number");
    assert!((0.01..=1.0).contains(&temperature), "temperature {temperature}");

    let shapes = ok(&["zeroshot", "--checkpoint", r]);
    assert!(
        shapes.contains("10 classes") && shapes.contains("square outline"),
        "{shapes}"
    );
    let colours = ok(&["zeroshot", "--checkpoint", r, "--attribute", "colour"]);
    assert!(
        colours.contains("8 classes") && colours.contains("purple"),
        "{colours}"
    );
    let grid = dir.path().join("red.png");
    let g = grid.to_str().expect("utf-8");
    let said = ok(&[
        "retrieve",
        "--checkpoint",
        r,
        "--query",
        "a red disc",
        "--out",
        g,
        "--top",
        "8",
    ]);
    assert!(said.contains("text -> image") && grid.exists(), "{said}");

    fails_with(
        &["zeroshot", "--checkpoint", r, "--attribute", "mood"],
        &["no attribute 'mood'", "colour"],
    );
    fails_with(
        &[
            "train",
            "--task",
            "clip",
            "--model",
            "clip_tiny_32",
            "--data",
            "synthetic",
            "--out",
            r,
        ],
        &["no captions", "synthetic-captions"],
    );
    fails_with(
        &["train", "--model", "clip_tiny_32", "--out", r],
        &["--task clip"],
    );
    let vit_run = dir.path().join("vit");
    support::cli::train_briefly("vit_nano_patch8_32", &vit_run, &[]);
    let v = vit_run.to_str().expect("utf-8");
    fails_with(
        &["zeroshot", "--checkpoint", v, "--data", "synthetic"],
        &["needs a CLIP model", "supervised training run"],
    );
}

#[test]
fn caption_lists_name_their_bad_lines() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pixel = image::RgbImage::from_pixel(8, 8, image::Rgb([200, 30, 30]));
    for i in 0..12 {
        pixel.save(dir.path().join(format!("{i}.png"))).expect("png");
    }
    let write = |name: &str, lines: &[String]| {
        let path = dir.path().join(name);
        std::fs::write(&path, lines.join("\n")).expect("list");
        format!("captions:{}", path.display())
    };
    let good: Vec<String> = (0..12)
        .map(|i| format!(r#"{{"image": "{i}.png", "caption": "red square {i}"}}"#))
        .collect();
    let mut missing = good.clone();
    missing[2] = r#"{"image": "nowhere.png", "caption": "gone"}"#.into();
    let mut empty = good.clone();
    empty[4] = r#"{"image": "4.png", "caption": "  "}"#.into();
    let run = dir.path().join("run");
    let r = run.to_str().expect("utf-8");
    let train = |data: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--task",
            "clip",
            "--model",
            "clip_tiny_32",
            "--data",
            data,
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--max-steps-per-epoch",
            "1",
            "--out",
            r,
        ];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<String>>()
    };
    let missing_data = write("missing.jsonl", &missing);
    fails_with(
        &as_refs(&train(&missing_data, &[])),
        &["line 3", "nowhere.png", "--skip-bad-images"],
    );
    let out = support::cli::vitkit(&as_refs(&train(&missing_data, &["--skip-bad-images"])));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("skipped 1 caption line"));
    let empty_data = write("empty.jsonl", &empty);
    fails_with(
        &as_refs(&train(&empty_data, &["--resume"])),
        &["line 5", "empty caption"],
    );
    let tsv: Vec<String> = (0..12).map(|i| format!("{i}.png\tred square {i}")).collect();
    let tsv_data = write("list.tsv", &tsv);
    std::fs::remove_dir_all(&run).expect("fresh run");
    ok(&as_refs(&train(&tsv_data, &[])));
}

fn as_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
