//! A CMT through the `vitkit` binary as a user runs it: train (interrupted and resumed, bit for
//! bit), checkpoints under the official key names with PyTorch's BatchNorm buffers, eval,
//! predict, Grad-CAM, the report, the checkpoint read back as an official file, and errors.

mod support;

use support::cli::{differing_tensors, fails_with, last_weights, ok, train_briefly};

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

#[test]
fn cmt_trains_resumes_and_runs_as_a_user_would() {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    let resumed = dir.path().join("resumed");
    train_briefly("cmt_mini_32", &straight, &[]);
    train_briefly("cmt_mini_32", &resumed, &["--stop-after-epoch", "1"]);
    train_briefly("cmt_mini_32", &resumed, &["--resume"]);
    // Weights, BatchNorm running statistics and batch counters: all bit-identical.
    let differ = differing_tensors(&straight, &resumed);
    assert!(
        differ.is_empty(),
        "a resumed CMT run differs from the straight one in {differ:?}"
    );

    // The checkpoint holds the official key names; the batch counter is PyTorch's int64 scalar.
    let bytes = last_weights(&straight);
    let file = SafeTensors::deserialize(&bytes).unwrap();
    for key in [
        "stem_conv1.weight",
        "stem_norm1.running_mean",
        "patch_embed_a.proj.weight",
        "patch_embed_d.norm.bias",
        "relative_pos_a",
        "blocks_a.0.proj.weight",
        "blocks_a.0.attn.q.weight",
        "blocks_a.0.attn.sr.0.weight",
        "blocks_a.0.attn.sr.1.running_var",
        "blocks_c.2.mlp.conv1.0.weight",
        "blocks_c.2.mlp.conv1.2.running_mean",
        "blocks_c.2.mlp.proj_bn.weight",
        "blocks_c.2.mlp.conv2.1.bias",
        "_fc.weight",
        "_bn.num_batches_tracked",
        "head.weight",
    ] {
        assert!(file.tensor(key).is_ok(), "missing {key}");
    }
    let counter = file.tensor("blocks_a.0.mlp.proj_bn.num_batches_tracked").unwrap();
    assert_eq!((counter.dtype(), counter.shape()), (Dtype::I64, &[][..]));
    assert_eq!(
        i64::from_le_bytes(counter.data().try_into().unwrap()),
        4,
        "two epochs of two steps"
    );
    let running_var = file.tensor("blocks_a.0.mlp.proj_bn.running_var").unwrap();
    assert!(
        running_var
            .data()
            .chunks_exact(4)
            .any(|b| f32::from_le_bytes(b.try_into().unwrap()) != 1.0)
    );

    let run = straight.to_str().unwrap();
    assert!(ok(&["eval", "--checkpoint", run, "--data", "synthetic"]).contains("top-1"));
    let img = dir.path().join("x.png");
    image::RgbImage::from_pixel(40, 40, image::Rgb([200, 30, 30]))
        .save(&img)
        .unwrap();
    let img = img.to_str().unwrap();
    assert!(ok(&["predict", "--checkpoint", run, img]).contains('%'));

    // Grad-CAM is a CMT's explanation; rollout needs global attention, which it does not have.
    let ex = dir.path().join("explain");
    ok(&["explain", "--checkpoint", run, img, "--out", ex.to_str().unwrap()]);
    assert!(ex.join("x_gradcam.png").is_file());
    fails_with(
        &["explain", "--checkpoint", run, img, "--method", "rollout"],
        &["Grad-CAM"],
    );
    let report = dir.path().join("report");
    let other = resumed.join("log.csv");
    ok(&[
        "report",
        run,
        "--samples",
        "4",
        "--out",
        report.to_str().unwrap(),
        "--compare",
        other.to_str().unwrap(),
    ]);
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(html.contains("Grad-CAM") && html.contains("data:image/png;base64,"));
    assert!(html.contains("validation top-1 against training wall time"));
    fails_with(
        &["report", run, "--out", report.to_str().unwrap(), "--compare", img],
        &["x.png"],
    );

    // The checkpoint is an official state dict: `infer --source official` runs it, and a file
    // with a key removed or reshaped is refused with the key named.
    let weights = straight.join("checkpoints/epoch-0002/model.safetensors");
    let input = dir.path().join("in.safetensors");
    let pixels: Vec<u8> = (0..2 * 3 * 32 * 32)
        .flat_map(|i| ((i % 7) as f32 * 0.1).to_le_bytes())
        .collect();
    let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![2, 3, 32, 32], &pixels).unwrap();
    std::fs::write(
        &input,
        safetensors::serialize(vec![("pixel_values", view)], None).unwrap(),
    )
    .unwrap();
    let output = dir.path().join("out.safetensors");
    let infer = |w: &Path| {
        vec![
            "infer".to_string(),
            "--model".into(),
            "cmt_mini_32".into(),
            "--weights".into(),
            w.to_str().unwrap().into(),
            "--source".into(),
            "official".into(),
            "--input".into(),
            input.to_str().unwrap().into(),
            "--output".into(),
            output.to_str().unwrap().into(),
        ]
    };
    let args = infer(&weights);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let out = std::fs::read(&output).unwrap();
    assert_eq!(
        SafeTensors::deserialize(&out)
            .unwrap()
            .tensor("logits")
            .unwrap()
            .shape(),
        &[2, 10]
    );
    let tensors = file.tensors();
    let without = |skip: &str, reshape: Option<&str>| {
        let kept: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .filter(|(k, _)| k != skip)
            .map(|(k, v)| {
                let v = if Some(k.as_str()) == reshape {
                    let n = v.shape().iter().product::<usize>();
                    safetensors::tensor::TensorView::new(v.dtype(), vec![n], v.data()).unwrap()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect();
        safetensors::serialize(kept, None).unwrap()
    };
    let broken = dir.path().join("broken.safetensors");
    std::fs::write(
        &broken,
        without("blocks_b.0.attn.sr.1.running_var", Some("relative_pos_c")),
    )
    .unwrap();
    let args = infer(&broken);
    fails_with(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &["blocks_b.0.attn.sr.1.running_var", "relative_pos_c"],
    );
}

#[test]
fn cmt_bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let out = out.to_str().unwrap();
    fails_with(
        &["train", "--model", "cmt_tiny", "--out", out],
        &["unknown model 'cmt_tiny'", "cmt_ti", "cmt_s"],
    );
    fails_with(
        &["train", "--model", "cmt_ti", "--img-size", "100", "--out", out],
        &["multiples of 32"],
    );
    fails_with(
        &[
            "train",
            "--model",
            "cmt_mini_32",
            "--global-pool",
            "token",
            "--out",
            out,
        ],
        &["--global-pool does not apply"],
    );
}
