//! A NesT through the `vitkit` binary as a user runs it: train (interrupted and resumed, bit
//! for bit), checkpoints under timm's key names, eval, predict, the class activation map and
//! GradCAT (for the predicted and for a named class), the report, the checkpoint read back as
//! a timm file, training on a share of the labels, and errors.

mod support;

use safetensors::SafeTensors;
use support::cli::{differing_tensors, fails_with, last_weights, ok, train_briefly};

#[test]
fn nest_trains_resumes_explains_and_runs_as_a_user_would() {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    let resumed = dir.path().join("resumed");
    train_briefly("nest_mini_32", &straight, &[]);
    train_briefly("nest_mini_32", &resumed, &["--stop-after-epoch", "1"]);
    train_briefly("nest_mini_32", &resumed, &["--resume"]);
    let differ = differing_tensors(&straight, &resumed);
    assert!(
        differ.is_empty(),
        "a resumed NesT run differs from the straight one in {differ:?}"
    );
    let bytes = last_weights(&straight);
    let file = SafeTensors::deserialize(&bytes).unwrap();
    for key in [
        "patch_embed.proj.weight",
        "levels.0.pos_embed",
        "levels.0.transformer_encoder.1.attn.qkv.weight",
        "levels.1.pool.conv.weight",
        "levels.1.pool.norm.bias",
        "levels.2.transformer_encoder.0.mlp.fc2.bias",
        "norm.weight",
        "head.weight",
    ] {
        assert!(file.tensor(key).is_ok(), "missing {key}");
    }
    assert_eq!(
        file.tensor("levels.0.pos_embed").unwrap().shape(),
        &[1, 16, 16, 64]
    );

    let run = straight.to_str().unwrap();
    assert!(ok(&["eval", "--checkpoint", run, "--data", "synthetic"]).contains("top-1"));
    let img = dir.path().join("x.png");
    image::RgbImage::from_fn(32, 32, |x, y| {
        image::Rgb(if x > 20 && y < 10 {
            [250, 250, 40]
        } else {
            [10, 10, 10]
        })
    })
    .save(&img)
    .unwrap();
    let img = img.to_str().unwrap();
    assert!(ok(&["predict", "--checkpoint", run, img]).contains('%'));

    // NesT's default explanation: the class activation map and GradCAT, labelled as a
    // reconstruction, for the predicted class and for a class named by the user.
    let ex = dir.path().join("explain");
    let exs = ex.to_str().unwrap();
    ok(&["explain", "--checkpoint", run, img, "--out", exs]);
    assert!(ex.join("x_cam.png").is_file() && ex.join("x_gradcat.png").is_file());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ex.join("x_gradcat.json")).unwrap()).unwrap();
    let cat = &json["gradcat"];
    assert!(cat["reconstruction"].as_str().unwrap().contains("reconstructed"));
    assert_eq!(
        cat["path"].as_array().unwrap().len(),
        2,
        "three levels: two choices"
    );
    ok(&[
        "explain",
        "--checkpoint",
        run,
        img,
        "--out",
        exs,
        "--class",
        "ring",
        "--method",
        "gradcat",
        "--gradcat-sign",
        "plus",
        "--gradcat-reduce",
        "gradcam",
        "--gradcat-score",
        "parent",
    ]);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ex.join("x_gradcat.json")).unwrap()).unwrap();
    assert_eq!(json["gradcat"]["class"], "ring");
    assert_eq!(json["gradcat"]["options"]["sign"], "plus");
    assert_eq!(json["gradcat"]["options"]["score_from"], "parent");
    fails_with(
        &["explain", "--checkpoint", run, img, "--class", "dragon"],
        &["'dragon'", "disc", "ring", "half disc"],
    );
    fails_with(
        &["explain", "--checkpoint", run, img, "--method", "rollout"],
        &["GradCAT"],
    );
    fails_with(
        &["explain", "--checkpoint", run, img, "--gradcat-sign", "both"],
        &["plus, minus"],
    );
    let report = dir.path().join("report");
    ok(&["report", run, "--samples", "4", "--out", report.to_str().unwrap()]);
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(html.contains("GradCAT") && html.contains("Class activation map"));

    // The checkpoint is a timm state dict: `infer --source timm` runs it.
    let weights = straight.join("checkpoints/epoch-0002/model.safetensors");
    let input = dir.path().join("in.safetensors");
    let pixels: Vec<u8> = (0..2 * 3 * 32 * 32)
        .flat_map(|i| ((i % 7) as f32 * 0.1).to_le_bytes())
        .collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 3, 32, 32], &pixels).unwrap();
    std::fs::write(
        &input,
        safetensors::serialize(vec![("pixel_values", view)], None).unwrap(),
    )
    .unwrap();
    let output = dir.path().join("out.safetensors");
    ok(&[
        "infer",
        "--model",
        "nest_mini_32",
        "--weights",
        weights.to_str().unwrap(),
        "--source",
        "timm",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    let out = std::fs::read(&output).unwrap();
    let out = SafeTensors::deserialize(&out).unwrap();
    assert_eq!(out.tensor("logits").unwrap().shape(), &[2, 10]);

    // A tenth of each class's labels: the log says how many images an epoch saw.
    let tenth = dir.path().join("tenth");
    let stdout = ok(&[
        "train",
        "--model",
        "nest_mini_32",
        "--out",
        tenth.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--max-steps-per-epoch",
        "1",
        "--label-fraction",
        "0.1",
    ]);
    assert!(
        stdout.contains("training on 2000 of the 20000 training images"),
        "{stdout}"
    );
}

#[test]
fn nest_bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let out = out.to_str().unwrap();
    fails_with(
        &["train", "--model", "nest_tiny", "--img-size", "100", "--out", out],
        &["multiples of 16", "power-of-two"],
    );
    fails_with(
        &[
            "train",
            "--model",
            "nest_mini_32",
            "--global-pool",
            "token",
            "--out",
            out,
        ],
        &["--global-pool does not apply"],
    );
    fails_with(
        &[
            "train",
            "--model",
            "nest_mini_32",
            "--label-fraction",
            "0",
            "--out",
            out,
        ],
        &["label fraction"],
    );
}
