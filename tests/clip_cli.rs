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
