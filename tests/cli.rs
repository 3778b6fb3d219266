//! The `vitkit` binary as a user runs it: clear errors and a non-zero exit on bad input, and
//! the train → eval → predict path on the built-in data.

mod support;

use support::cli::{fails_with, vitkit};

use std::process::{Command, Output};

use std::path::Path;

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

    // Grad-CAM needs a map the head pools; a class-token ViT has none, and says what it has.
    fails_with(
        &[
            "explain",
            "--checkpoint",
            run_s,
            img.to_str().unwrap(),
            "--method",
            "gradcam",
        ],
        &["Grad-CAM needs", "attention rollout"],
    );

    // A log.csv that cannot be read is an error of the report, not a report without curves.
    let log = run.join("log.csv");
    let good_log = std::fs::read(&log).unwrap();
    std::fs::write(&log, "epoch,step,lr\n1,2\n").unwrap();
    fails_with(
        &["report", run_s, "--out", report.to_str().unwrap()],
        &["log.csv", "line 2 has 2 values for 3 columns"],
    );
    std::fs::write(&log, &good_log).unwrap();

    // A hand-edited config.json whose data no longer fits the model: errors, not panics.
    let config = run.join("checkpoints/epoch-0001/config.json");
    let original = std::fs::read_to_string(&config).unwrap();
    for (from, to, needle) in [
        ("\"channels\": 3", "\"channels\": 2", "2 channel(s) but 3 mean"),
        (
            "\"std\": [",
            "\"std\": [0.5,",
            "3 channel(s) but 3 mean and 4 std",
        ),
        (
            "\"in_chans\": 3",
            "\"in_chans\": 2",
            "cannot feed 3-channel images to a 2-channel model",
        ),
    ] {
        assert!(original.contains(from), "{original}");
        std::fs::write(&config, original.replacen(from, to, 1)).unwrap();
        for command in ["predict", "explain"] {
            fails_with(
                &[command, "--checkpoint", run_s, img.to_str().unwrap()],
                &[needle],
            );
        }
    }
    std::fs::write(&config, &original).unwrap();

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

/// A preset's weights under timm names, written the way vitkit saves them (the same layout as
/// a timm `state_dict()`).
fn nano_weights(path: &Path) {
    let config = vitkit::models::preset("vit_nano_patch8_32").unwrap();
    let model = config.build(&burn::tensor::Device::flex()).unwrap();
    vitkit::io::save_weights(&model, path, &Default::default()).unwrap();
}

fn pixel_values(path: &Path, shape: [usize; 4]) {
    let n: usize = shape.iter().product();
    let data: Vec<u8> = (0..n)
        .flat_map(|i| ((i % 17) as f32 * 0.1 - 0.8).to_le_bytes())
        .collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), &data).unwrap();
    std::fs::write(
        path,
        safetensors::serialize(vec![("pixel_values", view)], None).unwrap(),
    )
    .unwrap();
}

#[test]
fn import_and_infer_foreign_weights() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("model.safetensors");
    nano_weights(&weights);
    let (w, ck) = (weights.to_str().unwrap(), dir.path().join("imported"));
    let out = vitkit(&[
        "import",
        "--from",
        "timm",
        "--model",
        "vit_nano_patch8_32",
        w,
        "--out",
        ck.to_str().unwrap(),
        "--img-size",
        "48",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("48x48, 10 classes"));
    fails_with(
        &[
            "import",
            "--model",
            "vit_nano_patch8_32",
            w,
            "--out",
            ck.to_str().unwrap(),
        ],
        &["already holds a checkpoint"],
    );

    // infer from the weights file and from the imported checkpoint: the same numbers.
    let input = dir.path().join("in.safetensors");
    pixel_values(&input, [3, 3, 48, 48]);
    let (a, b) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
    let run = |extra: &[&str], output: &Path| {
        let mut args = vec![
            "infer",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = vitkit(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run(
        &[
            "--weights",
            w,
            "--source",
            "timm",
            "--model",
            "vit_nano_patch8_32",
            "--img-size",
            "48",
        ],
        &a,
    );
    run(&["--checkpoint", ck.to_str().unwrap()], &b);
    let (ta, _) = vitkit::io::read_safetensors(&a).unwrap();
    let (tb, _) = vitkit::io::read_safetensors(&b).unwrap();
    assert_eq!(ta["logits"].shape, vec![3, 10]);
    assert_eq!(ta["pre_logits"].shape, vec![3, 64]);
    assert_eq!(ta["logits"].values, tb["logits"].values);

    // Fine-tuning starts from the file: with a zero learning rate the trained weights are the file's.
    let ft = dir.path().join("ft");
    let out = vitkit(&[
        "train",
        "--weights",
        w,
        "--model",
        "vit_nano_patch8_32",
        "--out",
        ft.to_str().unwrap(),
        "--epochs",
        "1",
        "--max-steps-per-epoch",
        "2",
        "--batch-size",
        "8",
        "--lr",
        "1e-30",
        "--weight-decay",
        "0",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (orig, _) = vitkit::io::read_safetensors(&weights).unwrap();
    let (tuned, _) =
        vitkit::io::read_safetensors(&ft.join("checkpoints/epoch-0001/model.safetensors")).unwrap();
    assert_eq!(
        orig["blocks.3.mlp.fc2.weight"].values,
        tuned["blocks.3.mlp.fc2.weight"].values
    );

    // Bad input: wrong input size, a file that is not safetensors, an unknown source, --strict.
    pixel_values(&input, [1, 3, 32, 32]);
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, "hello").unwrap();
    for (bad_input, needles) in [
        (&input, &["[B, 3, 48, 48]"][..]),
        (&junk, &["junk.bin: invalid data", "safetensors"][..]),
    ] {
        fails_with(
            &[
                "infer",
                "--checkpoint",
                ck.to_str().unwrap(),
                "--input",
                bad_input.to_str().unwrap(),
                "--output",
                a.to_str().unwrap(),
            ],
            needles,
        );
    }
    fails_with(
        &[
            "import",
            "--model",
            "vit_nano_patch8_32",
            junk.to_str().unwrap(),
            "--out",
            "x",
        ],
        &["junk.bin", "safetensors"],
    );
    fails_with(
        &[
            "import",
            "--from",
            "keras",
            "--model",
            "vit_nano_patch8_32",
            w,
            "--out",
            "x",
        ],
        &["unknown weight source 'keras'"],
    );
    fails_with(
        &[
            "import",
            "--model",
            "vit_nano_patch8_32",
            w,
            "--out",
            "y",
            "--num-classes",
            "3",
            "--strict",
        ],
        &["shape mismatch for head.weight"],
    );
    fails_with(
        &[
            "import",
            "--model",
            "vit_nano_patch8_32",
            w,
            "--out",
            "y",
            "--img-size",
            "50",
        ],
        &["not divisible by the patch size"],
    );
}

/// One step of `vitkit bench` on ViT-Ti/4 at batch 2 in `mode`, JSON out, with `extra` options.
fn tiny_bench(mode: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "bench",
        "--model",
        "vit_tiny_patch4_32",
        "--mode",
        mode,
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--json",
    ];
    args.extend_from_slice(extra);
    vitkit(&args)
}

#[test]
fn bench_runs_in_bf16_and_rejects_unknown_dtypes() {
    for mode in ["train", "infer"] {
        let out = tiny_bench(mode, &["--dtype", "bf16"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
        assert_eq!(r["dtype"], "bf16", "{stdout}");
        assert!(r["median_ms"].as_f64().is_some_and(|t| t > 0.0), "{stdout}");
    }
    fails_with(
        &["bench", "--steps", "1", "--dtype", "int8"],
        &["unknown dtype 'int8'", "bf16"],
    );
}

/// `bench --mode pretrain` times a SiT model built with its pretext heads, counting the
/// arithmetic of both views of every image; other families have no such step.
#[test]
fn bench_pretrain_times_a_sit_pretraining_step() {
    let out = vitkit(&[
        "bench",
        "--model",
        "sit_nano_patch8_32",
        "--mode",
        "pretrain",
        "--batch-size",
        "4",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(r["mode"], "pretrain", "{stdout}");
    assert_eq!(r["config"]["heads"], "pretext", "{stdout}");
    let pretext = vitkit::models::preset("sit_nano_patch8_32")
        .unwrap()
        .adapted(&vitkit::models::Adaptation {
            pretext: Some(true),
            ..Default::default()
        })
        .unwrap();
    let want = 2.0 * pretext.train_macs() * 8.0 / 1e9;
    let got = r["gflop_per_step"].as_f64().expect("gflop_per_step");
    assert!(
        (got - want).abs() <= 1e-9 * want,
        "{got} GFLOP, want {want} (8 views)"
    );
    let products = r["products"].as_str().expect("products");
    assert!(
        products == "gemm" || products.starts_with("packed (") || products.starts_with("openblas"),
        "{products}"
    );
    fails_with(
        &[
            "bench",
            "--model",
            "vit_nano_patch8_32",
            "--mode",
            "pretrain",
            "--steps",
            "1",
        ],
        &["no pretext heads", "SiT"],
    );
    fails_with(
        &["bench", "--steps", "1", "--mode", "finetune"],
        &["unknown --mode 'finetune'", "pretrain"],
    );
}

#[test]
fn bench_autocast_is_for_cpu_inference_in_bf16() {
    let out = tiny_bench("infer", &["--autocast", "bf16"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if cfg!(no_avx512_bf16) {
        // A CPU without AVX-512 BF16 refuses it with a reason.
        assert!(
            !out.status.success() && stderr.contains("AVX-512 BF16"),
            "{stderr}"
        );
    } else {
        assert!(out.status.success(), "{stderr}");
        let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
        assert_eq!(r["autocast"], "bf16", "{stdout}");
        assert_eq!(r["dtype"], "f32", "{stdout}");
    }
    fails_with(
        &["bench", "--steps", "1", "--mode", "train", "--autocast", "bf16"],
        &["--autocast is for inference"],
    );
    fails_with(
        &["bench", "--steps", "1", "--mode", "infer", "--autocast", "fp16"],
        &["unknown --autocast 'fp16'", "bf16"],
    );
}

/// A timm-style weights file of `vit_nano_patch8_32`'s shape with average pooling (`fc_norm`)
/// and 17 classes, and the model it came from.
fn avg_pool_weights(path: &Path) -> vitkit::models::Model {
    let config = vitkit::models::preset("vit_nano_patch8_32")
        .unwrap()
        .adapted(&vitkit::models::Adaptation {
            num_classes: Some(17),
            global_pool: Some(vitkit::models::GlobalPool::Avg),
            ..Default::default()
        })
        .unwrap();
    let model = config.build(&burn::tensor::Device::flex()).unwrap();
    vitkit::io::save_weights(&model, path, &Default::default()).unwrap();
    model
}

/// Foreign weights are never run half-loaded: what the file states (classes from the head,
/// average pooling from `fc_norm`) is read, and any other mismatch is an error listing it
/// unless a fresh head is asked for.
#[test]
fn foreign_weights_are_read_exactly_or_refused() {
    use burn::tensor::{Device, Tensor, TensorData};
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("avg17.safetensors");
    let model = avg_pool_weights(&weights);
    let w = weights.to_str().unwrap();
    let input = dir.path().join("in.safetensors");
    pixel_values(&input, [2, 3, 32, 32]);
    let output = dir.path().join("out.safetensors");
    let infer = |extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            "infer",
            "--weights",
            w,
            "--model",
            "vit_nano_patch8_32",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect()
    };
    let run = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = vitkit(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        vitkit::io::read_safetensors(&output).unwrap().0
    };
    // The model's own logits for the same input.
    let (x, _) = vitkit::io::read_safetensors(&input).unwrap();
    let device = Device::flex();
    let x = Tensor::<4>::from_data(
        TensorData::new(x["pixel_values"].values.clone(), [2, 3, 32, 32]),
        &device,
    );
    let want: Vec<f32> = model
        .classifier()
        .unwrap()
        .logits(x)
        .into_data()
        .try_to_vec()
        .unwrap();
    for extra in [
        &[][..],
        &["--num-classes", "17"][..],
        &["--global-pool", "avg"][..],
    ] {
        let got = run(&infer(extra));
        assert_eq!(got["logits"].shape, vec![2, 17]);
        let gap = got["logits"]
            .values
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(gap < 1e-5, "{extra:?}: logits off by {gap}");
    }
    // Asked for what the file does not hold: refused, with the keys named.
    let refuse = |extra: &[&str], needles: &[&str]| {
        let args = infer(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&args, needles);
    };
    refuse(
        &["--global-pool", "token"],
        &[
            "missing keys: norm.weight",
            "unexpected keys: fc_norm.bias",
            "nothing was loaded",
        ],
    );
    refuse(
        &["--num-classes", "5"],
        &[
            "shape mismatch for head.weight: file [17, 64], model [5, 64]",
            "--fresh-head",
        ],
    );
    // A fresh head on request: the features are the file's.
    let got = run(&infer(&["--num-classes", "5", "--fresh-head"]));
    assert_eq!(got["logits"].shape, vec![2, 5]);
    let whole = run(&infer(&[]));
    assert_eq!(got["pre_logits"].values, whole["pre_logits"].values);
    // eval / predict / explain take the same route: an exact load or an error.
    let img = dir.path().join("x.png");
    image::RgbImage::from_pixel(32, 32, image::Rgb([10, 200, 30]))
        .save(&img)
        .unwrap();
    for command in ["predict", "explain"] {
        fails_with(
            &[
                command,
                "--weights",
                w,
                "--model",
                "vit_nano_patch8_32",
                "--global-pool",
                "token",
                img.to_str().unwrap(),
            ],
            &["missing keys: norm.weight"],
        );
    }
    // An average-pooled ViT has a map its head pools: Grad-CAM draws it.
    let ex = dir.path().join("ex");
    let out = vitkit(&[
        "explain",
        "--weights",
        w,
        "--model",
        "vit_nano_patch8_32",
        "--method",
        "gradcam",
        img.to_str().unwrap(),
        "--out",
        ex.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(ex.join("x_gradcam.png").is_file() && ex.join("x_gradcam.json").is_file());

    // A position embedding without tokens is an error, not an arithmetic underflow.
    let (mut tensors, _) = vitkit::io::read_safetensors(&weights).unwrap();
    tensors.insert(
        "pos_embed".into(),
        vitkit::models::HostTensor {
            shape: vec![1, 0, 64],
            values: vec![],
        },
    );
    let empty = dir.path().join("empty_pos.safetensors");
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                t.shape.clone(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(k, b, s)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(&empty, safetensors::serialize(views, None).unwrap()).unwrap();
    let e = empty.to_str().unwrap();
    fails_with(
        &[
            "infer",
            "--weights",
            e,
            "--model",
            "vit_nano_patch8_32",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--img-size",
            "32",
        ],
        &["pos_embed has 0 tokens"],
    );
    fails_with(
        &[
            "import",
            "--model",
            "vit_nano_patch8_32",
            e,
            "--out",
            dir.path().join("imp").to_str().unwrap(),
        ],
        &["pos_embed has 0 tokens"],
    );
}

/// A typo in VITKIT_FUSED is an error naming it, not every fused kernel silently off.
#[test]
fn unknown_fused_kernel_names_are_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_vitkit"))
        .args(["models"])
        .env("VITKIT_FUSED", "gelu,softmaxx")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("'softmaxx'") && stderr.contains("layernorm"),
        "{stderr}"
    );
    assert!(vitkit::kernels::parse_fused("gelu, softmax").is_ok());
    assert_eq!(vitkit::kernels::parse_fused("none"), Ok(0));
    assert!(vitkit::kernels::parse_fused("attn").is_err());
}

/// Products run on the gemm crate or the packed kernel when asked, and a BLAS library named
/// but not loadable is reported (the run goes on with the default), never timed silently as
/// something else.
#[test]
fn the_product_library_is_chosen_by_vitkit_blas() {
    let bench = |blas: &str| {
        Command::new(env!("CARGO_BIN_EXE_vitkit"))
            .args([
                "bench",
                "--model",
                "vit_nano_patch8_32",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--json",
            ])
            .env("VITKIT_BLAS", blas)
            .output()
            .unwrap()
    };
    let products = |out: &Output| {
        let r: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("one JSON object");
        r["products"].as_str().expect("products").to_string()
    };
    let gemm = bench("gemm");
    assert!(gemm.status.success());
    assert_eq!(products(&gemm), "gemm");
    let (packed, packed_avx2) = (bench("packed"), bench("packed-avx2"));
    #[cfg(target_arch = "x86_64")]
    let (avx2_fma, avx512) = (
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"),
        cfg!(feature = "avx512") && std::is_x86_feature_detected!("avx512f"),
    );
    #[cfg(not(target_arch = "x86_64"))]
    let (avx2_fma, avx512) = (false, false);
    if avx2_fma {
        assert!(packed.status.success() && packed_avx2.status.success());
        let widest = if avx512 {
            "packed (AVX-512)"
        } else {
            "packed (AVX2)"
        };
        assert_eq!(products(&packed), widest);
        assert_eq!(products(&packed_avx2), "packed (AVX2)");
    } else {
        for out in [&packed, &packed_avx2] {
            assert!(String::from_utf8_lossy(&out.stderr).contains("lacks AVX2 or FMA"));
            assert_eq!(products(out), "gemm");
        }
    }
    let default = products(&bench("auto"));
    let missing = bench("/nonexistent/libopenblas.so.0");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(missing.status.success(), "{stderr}");
    assert_eq!(products(&missing), default);
    assert!(
        stderr.contains("no loadable OpenBLAS") && stderr.contains("/nonexistent/libopenblas.so.0"),
        "{stderr}"
    );
}

/// A folder dataset is known by its path: a run trained on one folder will not resume on
/// another, and `eval` finds the same folder from another working directory.
#[test]
fn folder_datasets_are_told_apart_by_their_path() {
    let dir = tempfile::tempdir().unwrap();
    for (name, colours) in [
        ("a", [[250u8, 10, 10], [10, 10, 250]]),
        ("b", [[10, 250, 10], [250, 250, 10]]),
    ] {
        for (class, colour) in ["red", "blue"].iter().zip(colours) {
            let d = dir.path().join(name).join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..20u8 {
                image::RgbImage::from_pixel(
                    32,
                    32,
                    image::Rgb([colour[0], colour[1].wrapping_add(i), colour[2]]),
                )
                .save(d.join(format!("{i}.png")))
                .unwrap();
            }
        }
    }
    let run = dir.path().join("run");
    let train = |data: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--data",
            data,
            "--out",
            run.to_str().unwrap(),
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--max-steps-per-epoch",
            "2",
        ];
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_vitkit"))
            .args(&args)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = train("folder:a", &["--stop-after-epoch", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = train("folder:b", &["--resume"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/a'") && stderr.contains("/b'"), "{stderr}");
    // eval with the run's own dataset, from another directory.
    let out = vitkit(&["eval", "--checkpoint", run.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let a = std::path::absolute(dir.path().join("a")).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("folder:{}", a.display())));
}

/// Output into a pipe nobody reads (`vitkit models | head -1`) ends vitkit quietly, never in a
/// panic.
#[test]
fn a_closed_output_pipe_is_not_a_panic() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_vitkit"))
        .arg("models")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.status.success());
}
