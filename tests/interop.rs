//! timm and Hugging Face checkpoints in vitkit: numerical parity with the PyTorch references
//! (fixtures from tools/make_vit_fixtures.py), resampled position embeddings, and errors.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use vitkit::io::{
    ImportOptions, LoadReport, Resample, Strictness, WeightSource, import_weights, read_safetensors,
    resample_pos_embed,
};
use vitkit::models::{Adaptation, GlobalPool, Model, ModelConfig, VitConfig};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn small(pool: GlobalPool, img: [usize; 2], eps: f64) -> VitConfig {
    VitConfig {
        num_classes: 5,
        global_pool: pool,
        img_size: img,
        norm_eps: eps,
        ..VitConfig::new(32, 8, 48, 2, 3)
    }
}

/// Imports `path` into exactly `config` (every field fixed, nothing read from the file).
fn import(
    path: &Path,
    source: WeightSource,
    config: &VitConfig,
    strictness: Strictness,
    device: &Device,
) -> vitkit::Result<(Model, LoadReport)> {
    let fixed = Adaptation {
        num_classes: Some(config.num_classes),
        in_chans: Some(config.in_chans),
        img_size: Some(config.img_size),
        global_pool: Some(config.global_pool),
        norm_eps: Some(config.norm_eps),
        drop_path: None,
        pretext: None,
    };
    let opts = ImportOptions {
        strictness,
        ..Default::default()
    };
    let imported = import_weights(
        path,
        source,
        &ModelConfig::Vit(config.clone()),
        &fixed,
        &opts,
        device,
    )?;
    Ok((imported.model, imported.report))
}

/// Imports `weights` and compares logits and pooled features with `io`; returns max |Δ|.
fn parity(weights: &str, io: &str, source: WeightSource, config: VitConfig) -> f32 {
    let device = Device::flex();
    let (model, report) = import(&fixture(weights), source, &config, Strictness::Exact, &device).unwrap();
    assert!(report.is_exact(), "{}", report.describe());
    let (io, _) = read_safetensors(&fixture(io)).unwrap();
    let x = &io["pixel_values"];
    let classifier = model.classifier().unwrap();
    let features = classifier.features(Tensor::<4>::from_data(
        TensorData::new(x.values.clone(), x.shape.clone()),
        &device,
    ));
    let logits = classifier.head(features.clone());
    let mut worst = 0f32;
    for (name, got) in [("logits", logits), ("pre_logits", features)] {
        let got = got.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(got.len(), io[name].values.len());
        let max = got
            .iter()
            .zip(&io[name].values)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("{weights} -> {name}: max |Δ| = {max:.2e}");
        worst = worst.max(max);
    }
    worst
}

#[test]
fn timm_class_token_model_matches() {
    let d = parity(
        "vit_token.weights.safetensors",
        "vit_token.io.safetensors",
        WeightSource::Timm,
        small(GlobalPool::Token, [32, 32], 1e-6),
    );
    assert!(d <= 1e-4, "max |Δ| = {d}");
}

#[test]
fn timm_average_pool_model_matches() {
    let d = parity(
        "vit_avg.weights.safetensors",
        "vit_avg.io.safetensors",
        WeightSource::Timm,
        small(GlobalPool::Avg, [32, 32], 1e-6),
    );
    assert!(d <= 1e-4, "max |Δ| = {d}");
}

/// A timm model made with `global_pool='avg'` and 5 classes, opened as the class-token,
/// 1000-class architecture with nothing fixed: the file says its pooling (`fc_norm`, no
/// `norm`) and its classes (the head's shape), so it runs exactly and matches timm.
#[test]
fn what_a_timm_file_states_is_read_from_it() {
    let device = Device::flex();
    let base = VitConfig {
        num_classes: 1000,
        ..small(GlobalPool::Token, [32, 32], 1e-6)
    };
    let opts = ImportOptions {
        strictness: Strictness::Exact,
        ..Default::default()
    };
    let imported = import_weights(
        &fixture("vit_avg.weights.safetensors"),
        WeightSource::Timm,
        &ModelConfig::Vit(base.clone()),
        &Adaptation::default(),
        &opts,
        &device,
    )
    .unwrap();
    let read = VitConfig {
        global_pool: GlobalPool::Avg,
        num_classes: 5,
        ..base
    };
    assert_eq!(imported.config, ModelConfig::Vit(read.clone()));
    let d = parity(
        "vit_avg.weights.safetensors",
        "vit_avg.io.safetensors",
        WeightSource::Timm,
        read,
    );
    assert!(d <= 1e-4, "max |Δ| = {d}");
}

#[test]
fn hugging_face_model_matches() {
    for file in ["hf_vit.weights.safetensors", "hf_vit_v4names.weights.safetensors"] {
        let d = parity(
            file,
            "hf_vit.io.safetensors",
            WeightSource::Hf,
            small(GlobalPool::Token, [32, 32], 1e-12),
        );
        assert!(d <= 1e-4, "{file}: max |Δ| = {d}");
    }
}

#[test]
fn timm_model_at_another_non_square_resolution_matches() {
    // Built for 32x32 (4x4 grid), run at 48x32 (6x4 grid) with the position embedding resampled.
    let d = parity(
        "vit_token.weights.safetensors",
        "vit_token_48x32.io.safetensors",
        WeightSource::Timm,
        small(GlobalPool::Token, [48, 32], 1e-6),
    );
    assert!(d <= 1e-4, "max |Δ| = {d}");
}

#[test]
fn resampling_keeps_the_class_token_and_an_unchanged_grid() {
    let pos: Vec<f32> = (0..(1 + 9) * 2).map(|i| i as f32 * 0.1).collect();
    for mode in [Resample::BicubicAntialias, Resample::Bilinear] {
        let same = resample_pos_embed(&pos, 2, 1, [3, 3], [3, 3], mode);
        let max = same
            .iter()
            .zip(&pos)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max < 1e-6, "{mode:?}: {max}");
        let bigger = resample_pos_embed(&pos, 2, 1, [3, 3], [5, 6], mode);
        assert_eq!(bigger.len(), (1 + 30) * 2);
        assert_eq!(&bigger[..2], &pos[..2], "class token copied");
    }
    // A linear ramp stays a ramp under bilinear upsampling (away from the clamped borders).
    let ramp: Vec<f32> = std::iter::once(0.0)
        .chain((0..4).flat_map(|y| (0..4).map(move |x| (y * 4 + x) as f32)))
        .collect();
    let up = resample_pos_embed(&ramp, 1, 1, [4, 4], [8, 8], Resample::Bilinear);
    let at = |y: usize, x: usize| up[1 + y * 8 + x];
    assert!((at(3, 4) - at(3, 3) - 0.5).abs() < 1e-5 && (at(4, 3) - at(3, 3) - 2.0).abs() < 1e-5);
}

#[test]
fn mismatched_files_are_explained() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let config = small(GlobalPool::Token, [32, 32], 1e-6);
    let lenient = Strictness::Lenient;

    // Not a safetensors file, and a truncated one.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"PK\x03\x04 a zip file").unwrap();
    let msg = import(&junk, WeightSource::Timm, &config, lenient, &device)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("junk.safetensors") && msg.contains("not a valid safetensors"),
        "{msg}"
    );
    let bytes = std::fs::read(fixture("vit_token.weights.safetensors")).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert!(
        import(&cut, WeightSource::Timm, &config, lenient, &device)
            .unwrap_err()
            .to_string()
            .contains("cut.safetensors")
    );

    // Another architecture: nothing matches.
    let resnet = dir.path().join("resnet.safetensors");
    let conv = vec![0u8; 4 * 64 * 3 * 7 * 7];
    let tensors = vec![(
        "conv1.weight".to_string(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![64, 3, 7, 7], &conv).unwrap(),
    )];
    std::fs::write(&resnet, safetensors::serialize(tensors, None).unwrap()).unwrap();
    let msg = import(&resnet, WeightSource::Timm, &config, lenient, &device)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("none of the vit model's parameters") && msg.contains("conv1.weight"),
        "{msg}"
    );

    // A head of another size: loaded without it (reported), or refused with --strict.
    let ten = VitConfig {
        num_classes: 10,
        ..config.clone()
    };
    let (_, report) = import(
        &fixture("vit_token.weights.safetensors"),
        WeightSource::Timm,
        &ten,
        lenient,
        &device,
    )
    .unwrap();
    let mut names: Vec<&str> = report.mismatched.iter().map(|m| m.0.as_str()).collect();
    names.sort();
    assert_eq!(names, ["head.bias", "head.weight"]);
    let msg = import(
        &fixture("vit_token.weights.safetensors"),
        WeightSource::Timm,
        &ten,
        Strictness::Exact,
        &device,
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("shape mismatch for head.weight: file [5, 48], model [10, 48]"),
        "{msg}"
    );

    // Wrong source: HF names read as timm match nothing.
    let msg = import(
        &fixture("hf_vit.weights.safetensors"),
        WeightSource::Timm,
        &config,
        lenient,
        &device,
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("vit.embeddings") || msg.contains("classifier"),
        "{msg}"
    );

    // An image size the patch size does not divide.
    let odd = VitConfig {
        img_size: [36, 36],
        ..config
    };
    let msg = import(
        &fixture("vit_token.weights.safetensors"),
        WeightSource::Timm,
        &odd,
        lenient,
        &device,
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("not divisible by the patch size"), "{msg}");
}

/// Gradients of a cross-entropy loss match timm's for every parameter: the backward pass, not
/// only the forward, is the reference's.
#[test]
fn gradients_match_timm() {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::activation::log_softmax;

    let device = Device::flex().autodiff();
    let config = small(GlobalPool::Token, [32, 32], 1e-6);
    let (model, _) = import(
        &fixture("vit_token.weights.safetensors"),
        WeightSource::Timm,
        &config,
        Strictness::Exact,
        &device,
    )
    .unwrap();
    let (io, _) = read_safetensors(&fixture("vit_token.io.safetensors")).unwrap();
    let (want, _) = read_safetensors(&fixture("vit_token.grads.safetensors")).unwrap();
    let x = &io["pixel_values"];
    let input = Tensor::<4>::from_data(TensorData::new(x.values.clone(), x.shape.clone()), &device);
    let onehot = Tensor::<2>::from_data(
        TensorData::new(vec![0f32, 1., 0., 0., 0., 0., 0., 0., 1., 0.], [2, 5]),
        &device,
    );
    let loss = (log_softmax(model.classifier().unwrap().logits(input), 1) * onehot)
        .sum_dim(1)
        .mean()
        .neg();
    let loss_value = loss.clone().into_scalar::<f32>();
    assert!(
        (loss_value - want["loss"].values[0]).abs() < 1e-5,
        "loss {loss_value} vs {}",
        want["loss"].values[0]
    );
    let grads = loss.backward();

    struct Compare<'a> {
        path: Vec<String>,
        grads: &'a burn::tensor::Gradients,
        want: &'a std::collections::BTreeMap<String, vitkit::io::FileTensor>,
        checked: usize,
        worst: f32,
    }
    impl ModuleVisitor for Compare<'_> {
        // The family variant of `Model` adds no segment to a parameter's name.
        fn enter_module(&mut self, name: &str, container: &str) {
            self.path.push(if container.starts_with("Enum:") {
                String::new()
            } else {
                name.to_string()
            });
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let parts: Vec<&str> = self
                .path
                .iter()
                .map(String::as_str)
                .filter(|p| !p.is_empty())
                .collect();
            let name = parts.join(".");
            let grad = param
                .val()
                .grad(self.grads)
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            // Linear weights are held as [in, out]; PyTorch's gradients are [out, in].
            let grad = if D == 2 { grad.transpose() } else { grad };
            let got = grad.into_data().try_to_vec::<f32>().unwrap();
            let want = &self.want[&name].values;
            assert_eq!(got.len(), want.len(), "{name}");
            let max = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            self.worst = self.worst.max(max);
            assert!(max < 1e-5, "{name}: max |Δgrad| = {max}");
            self.checked += 1;
        }
    }
    let mut cmp = Compare {
        path: Vec::new(),
        grads: &grads,
        want: &want,
        checked: 0,
        worst: 0.0,
    };
    model.visit(&mut cmp);
    assert_eq!(
        cmp.checked,
        want.len() - 1,
        "every parameter's gradient was compared"
    );
    println!(
        "gradients: {} parameters, max |Δ| = {:.2e}",
        cmp.checked, cmp.worst
    );
}
