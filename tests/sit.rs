//! SiT against a PyTorch reference built from timm's ViT parts as the spec describes the v1
//! model (fixtures from tools/make_sit_fixtures.py): pretext outputs, the three losses, the
//! uncertainty-weighted total and every parameter's gradient; the two-head classifier's
//! logits; NT-Xent and the weighting alone; exact rotations; every corruption applied from the
//! same plan; parameter counts.

mod support;

use burn::tensor::{Device, Tensor, TensorData};
use support::parity::{check_gradients, fixture, load_exact, max_abs_diff, tensor};
use vitkit::data::pretext::{Corruption, Region, apply_corruptions, rotate};
use vitkit::io::{FileTensor, WeightSource, read_safetensors};
use vitkit::models::{Adaptation, Model, ModelConfig, SitConfig, SitHeads, param_count, preset};
use vitkit::train::sit::{LOSS_SCALES, TEMPERATURE, nt_xent, uncertainty_weighted};

/// The fixtures' architecture: 12x12 inputs, 3x3 patches, width 24, depth 2, 2 heads.
fn case(heads: SitHeads) -> SitConfig {
    SitConfig {
        heads,
        contrastive_dim: 10,
        ..SitConfig::new(12, 3, 24, 2, 2, 5)
    }
}

fn load(name: &str, heads: SitHeads, device: &Device) -> Model {
    let fixed = Adaptation {
        pretext: Some(heads == SitHeads::Pretext),
        num_classes: Some(5),
        ..Default::default()
    };
    load_exact(
        name,
        WeightSource::Official,
        ModelConfig::Sit(case(heads)),
        &fixed,
        device,
    )
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

fn close(label: &str, got: Vec<f32>, want: &FileTensor, tol: f32) {
    let max = max_abs_diff(&got, &want.values);
    println!("{label}: max |Δ| = {max:.2e}");
    assert!(max <= tol, "{label}: max |Δ| = {max}");
}

/// The pretext losses of the fixture's batch: `[rotation, contrastive, reconstruction]`.
fn losses(model: &Model, io: &std::collections::BTreeMap<String, FileTensor>, device: &Device) -> Tensor<1> {
    let out = model
        .pretext()
        .unwrap()
        .pretext(tensor(&io["corrupted"], device))
        .unwrap();
    let rotations: Vec<u32> = io["rotations"].values.iter().map(|&v| v as u32).collect();
    let n = rotations.len();
    let mut onehot = vec![0f32; n * 4];
    for (i, &r) in rotations.iter().enumerate() {
        onehot[i * 4 + r as usize] = 1.0;
    }
    let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [n, 4]), device);
    let rotation = (burn::tensor::activation::log_softmax(out.rotation, 1) * onehot)
        .sum_dim(1)
        .mean()
        .neg();
    let half = n / 2;
    let contrastive = nt_xent(
        out.contrastive.clone().narrow(0, 0, half),
        out.contrastive.narrow(0, half, half),
        TEMPERATURE,
    );
    let reconstruction = (out.reconstruction - tensor::<4>(&io["clean"], device))
        .abs()
        .mean();
    Tensor::cat(vec![rotation, contrastive, reconstruction], 0)
}

#[test]
fn pretext_outputs_and_losses_match_the_reference() {
    let device = Device::flex();
    let model = load("sit_pretext", SitHeads::Pretext, &device);
    let (io, _) = read_safetensors(&fixture("sit_pretext.io.safetensors")).unwrap();
    let out = model
        .pretext()
        .unwrap()
        .pretext(tensor(&io["corrupted"], &device))
        .unwrap();
    close("rotation logits", values(out.rotation), &io["rotation"], 1e-4);
    close(
        "contrastive embedding",
        values(out.contrastive),
        &io["contrastive"],
        1e-4,
    );
    close(
        "reconstruction",
        values(out.reconstruction),
        &io["reconstruction"],
        1e-4,
    );
    let l = losses(&model, &io, &device);
    close("task losses", values(l.clone()), &io["losses"], 1e-5);
    let s = model.pretext().unwrap().loss_weights().unwrap();
    let total = uncertainty_weighted(l, s, LOSS_SCALES, [1.0; 3]);
    close("weighted total", values(total), &io["train_loss"], 1e-5);
}

#[test]
fn pretext_gradients_match_float64() {
    let device = Device::flex().autodiff();
    let model = load("sit_pretext", SitHeads::Pretext, &device);
    let (io, _) = read_safetensors(&fixture("sit_pretext.io.safetensors")).unwrap();
    let (want, _) = read_safetensors(&fixture("sit_pretext.grads.safetensors")).unwrap();
    let l = losses(&model, &io, &device);
    let s = model.pretext().unwrap().loss_weights().unwrap();
    let total = uncertainty_weighted(l, s, LOSS_SCALES, [1.0; 3]);
    let got = total.clone().into_scalar::<f32>();
    assert!((got - io["train_loss"].values[0]).abs() < 1e-5, "{got}");
    check_gradients("sit_pretext", &model, &total.backward(), &want, &io);
}

#[test]
fn classifier_logits_are_the_mean_of_the_two_token_heads() {
    let device = Device::flex();
    let model = load("sit_classify", SitHeads::Classify, &device);
    let (io, _) = read_safetensors(&fixture("sit_classify.io.safetensors")).unwrap();
    let classifier = model.classifier().unwrap();
    let features = classifier.features(tensor(&io["pixel_values"], &device));
    let mut heads = classifier.head_logits(features.clone());
    let second = heads.pop().unwrap();
    close(
        "rotation-token head",
        values(heads.pop().unwrap()),
        &io["rot_logits"],
        1e-4,
    );
    close(
        "contrastive-token head",
        values(second),
        &io["contrastive_logits"],
        1e-4,
    );
    close(
        "prediction",
        values(classifier.head(features)),
        &io["logits"],
        1e-4,
    );
    assert!(model.pretext().is_none(), "a classifier has no pretext heads");
}

#[test]
fn nt_xent_and_the_weighting_match_the_official_formulas() {
    let device = Device::flex();
    let (f, _) = read_safetensors(&fixture("sit_losses.safetensors")).unwrap();
    let loss = nt_xent(tensor(&f["z1"], &device), tensor(&f["z2"], &device), TEMPERATURE);
    close("NT-Xent", values(loss), &f["nt_xent"], 1e-5);
    let total = uncertainty_weighted(
        tensor(&f["task_losses"], &device),
        tensor(&f["s"], &device),
        LOSS_SCALES,
        [1.0; 3],
    );
    close("uncertainty-weighted sum", values(total), &f["weighted"], 1e-5);
    // A task left out (an ablation) drops both its terms.
    let without = uncertainty_weighted(
        tensor(&f["task_losses"], &device),
        tensor(&f["s"], &device),
        LOSS_SCALES,
        [1.0, 0.0, 1.0],
    );
    let (l, s) = (&f["task_losses"].values, &f["s"].values);
    let contrastive_term = (-s[1]).exp() * l[1] + 0.5 * s[1];
    let want = f["weighted"].values[0] - contrastive_term;
    assert!((values(without)[0] - want).abs() < 1e-5);
}

#[test]
fn rotations_are_exactly_torch_rot90() {
    let (f, _) = read_safetensors(&fixture("sit_losses.safetensors")).unwrap();
    for r in 0..4u32 {
        let got = rotate(&f["image"].values, 2, 5, r);
        assert_eq!(got, f[&format!("rot90.{r}")].values, "rotation {r}");
    }
}

#[test]
fn corruptions_match_the_reference_from_the_same_plan() {
    let (f, _) = read_safetensors(&fixture("sit_corrupt.safetensors")).unwrap();
    let plan: Vec<(usize, Corruption)> = f["plan"]
        .values
        .chunks(8)
        .map(|row| {
            let u = |i: usize| row[i] as usize;
            let region = Region {
                r0: u(2),
                r1: u(3),
                c0: u(4),
                c1: u(5),
            };
            let op = match u(1) {
                0 => Corruption::Gray(region),
                1 => Corruption::Blur {
                    region,
                    kernel: u(6),
                    sigma: row[7],
                },
                2 => Corruption::Noise(region),
                _ => Corruption::Copy { region, from: u(6) },
            };
            (u(0), op)
        })
        .collect();
    let kinds: std::collections::BTreeSet<u32> = f["plan"].values.chunks(8).map(|r| r[1] as u32).collect();
    assert_eq!(kinds.len(), 4, "the plan holds all four corruptions");
    let mut images = f["images"].values.clone();
    let mut noise = f["noise"].values.iter().copied();
    let shape: [usize; 4] = f["images"].shape.clone().try_into().unwrap();
    apply_corruptions(&mut images, shape, &plan, &mut || noise.next().unwrap());
    assert!(noise.next().is_none(), "every noise value was used");
    close("corrupted batch", images, &f["corrupted"], 1e-5);
}

#[test]
fn parameter_counts_are_timm_vit_plus_sits_tokens_and_heads() {
    // tools/make_sit_fixtures.py: timm's ViT count, less the class token, plus the two tokens,
    // one more position row and the second 1000-class head.
    for (name, want) in [
        ("sit_tiny_patch16_224", 5_910_800),
        ("sit_small_patch16_224", 22_436_432),
        ("sit_base_patch16_224", 87_338_192),
    ] {
        assert_eq!(param_count(&preset(name).unwrap()).unwrap(), want, "{name}");
    }
    // Pretraining heads: 4 rotations, 512-d contrastive, the decoder and three loss weights.
    let pretext = preset("sit_base_patch16_224")
        .unwrap()
        .adapted(&Adaptation {
            pretext: Some(true),
            ..Default::default()
        })
        .unwrap();
    let d = 768;
    let want = 87_338_192 - 2 * (d * 1000 + 1000) + (d * 4 + 4) + (d * 512 + 512) + (d * 3 * 16 * 16 + 3) + 3;
    assert_eq!(param_count(&pretext).unwrap(), want);
}

#[test]
fn pretext_heads_only_on_sit_and_only_square_images() {
    let err = preset("vit_mini_patch4_28")
        .unwrap()
        .adapted(&Adaptation {
            pretext: Some(true),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("no pretext heads") && err.contains("sit_"), "{err}");
    let err = preset("sit_mini_patch4_28")
        .unwrap()
        .adapted(&Adaptation {
            pretext: Some(true),
            img_size: Some([28, 32]),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("square"), "{err}");
}

#[test]
fn the_pretraining_loader_hands_out_no_labels() {
    use vitkit::data::{BatchLoader, Normalize, generate_upright_shapes};
    use vitkit::train::Task;
    use vitkit::train::sit::{SitPretraining, SitTasks};
    let data = std::sync::Arc::new(generate_upright_shapes(12, 16, 0));
    let task = SitPretraining {
        tasks: SitTasks::default(),
        batch_size: 4,
    };
    let spec = task.batch_spec();
    assert!(!spec.labels);
    let norm = Normalize {
        mean: vec![0.5; 3],
        std: vec![0.25; 3],
        out_channels: 3,
    };
    let batches: Vec<_> = BatchLoader::new(data, (0..12).collect(), 4, None, 0, norm, true, spec).collect();
    assert_eq!(batches.len(), 3);
    for b in &batches {
        assert!(b.labels.is_none(), "a pretraining batch carries labels");
        assert!(b.labels().is_err());
        // Two clean (rotated) views, then their corrupted copies; a rotation per view.
        assert_eq!(b.views.len(), 4);
        assert_eq!(b.targets.as_ref().unwrap().len(), 8);
        assert_ne!(
            b.views[0], b.views[2],
            "the corrupted view differs from its target"
        );
    }
}

#[test]
fn position_embedding_resamples_with_both_prefix_tokens_kept() {
    use vitkit::models::Resample;
    let (io, _) = read_safetensors(&fixture("sit_pretext.io.safetensors")).unwrap();
    let (weights, _) = read_safetensors(&fixture("sit_pretext.weights.safetensors")).unwrap();
    let mut file: vitkit::models::StateDict = weights
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                vitkit::models::HostTensor {
                    shape: v.shape,
                    values: v.values,
                },
            )
        })
        .collect();
    // The classifier at 18x18 inputs: a 6x6 grid; the pretext-only tensors are left behind.
    let config = ModelConfig::Sit(SitConfig {
        img_size: [18, 18],
        ..case(SitHeads::Classify)
    });
    config.fit_weights(&mut file, Resample::Bilinear).unwrap();
    assert_eq!(file["pos_embed"].shape, vec![1, 38, 24]);
    close(
        "resized pos_embed",
        file["pos_embed"].values.clone(),
        &io["resized_pos_embed"],
        1e-5,
    );
    assert!(!file.contains_key("convTrans.weight") && !file.contains_key("rot_w"));
}
