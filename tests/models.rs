//! Presets, shapes and parameter counts, and numerical parity with timm fixtures.

use burn::tensor::{Device, Tensor};
use vitkit::models::{Classifier, ModelConfig, PRESETS, VitConfig, param_count, preset};

/// Every preset builds (its parameters are created lazily, so this is cheap), validates, and
/// says what its family can do: a classifier, or (without classes: CLIP) two towers.
#[test]
fn every_preset_builds_and_is_a_classifier_with_a_macs_count() {
    let device = Device::flex();
    for p in PRESETS {
        let config = (p.config)();
        let model = config.build(&device).unwrap();
        assert_eq!(model.family(), config.family(), "{}", p.name);
        if config.generates_images() {
            assert!(model.classifier().is_err(), "{}", p.name);
            assert_eq!(
                model.generative().unwrap().image_shape()[1..],
                config.img_size(),
                "{}",
                p.name
            );
        } else if config.num_classes().is_none() {
            assert!(model.classifier().is_err(), "{}", p.name);
            assert!(model.image_text().unwrap().context_length() > 1, "{}", p.name);
        } else {
            let classifier = model.classifier().unwrap();
            assert_eq!(classifier.input_size(), config.img_size(), "{}", p.name);
        }
        assert!(config.forward_macs() > 0.0, "{}", p.name);
        assert!(param_count(&config).unwrap() > 0, "{}", p.name);
    }
}

/// The ViT's multiply-accumulate count against the 17.6 GMACs timm's model cards give for
/// vit_base_patch16_224 (by hand: 16.73 in the blocks' linear layers, 0.72 in attention
/// scores and values, 0.12 in the patch embedding).
#[test]
fn vit_base_macs_match_the_published_count() {
    let macs = preset("vit_base_patch16_224").unwrap().forward_macs();
    assert!((macs / 1e9 - 17.6).abs() < 0.05, "{} GMACs", macs / 1e9);
}

#[test]
fn parameter_counts_match_the_reference_values() {
    // Values from the spec's param_check.py (timm, 1000 classes) and the Fashion-MNIST calibration model.
    let expected = [
        ("vit_tiny_patch16_224", 5_717_416),
        ("vit_small_patch16_224", 22_050_664),
        ("vit_base_patch16_224", 86_567_656),
        ("vit_base_patch32_224", 88_224_232),
        ("vit_large_patch16_224", 304_326_632),
        ("vit_tiny_patch4_32", 5_362_762),
    ];
    for (name, count) in expected {
        assert_eq!(param_count(&preset(name).unwrap()).unwrap(), count, "{name}");
    }
}

fn vit(name: &str) -> VitConfig {
    match preset(name).unwrap() {
        ModelConfig::Vit(c) => c,
        #[allow(unreachable_patterns)] // once other families are registered
        other => panic!("{name} is a {} preset", other.family()),
    }
}

#[test]
fn forward_shapes_of_small_presets() {
    let device = Device::flex();
    for name in ["vit_tiny_patch4_32", "vit_micro_patch7_28", "vit_nano_patch8_32"] {
        let c = vit(name);
        let model = c.init(&device).unwrap();
        let x = Tensor::<4>::zeros([2, c.in_chans, c.img_size[0], c.img_size[1]], &device);
        let out = model.forward_detailed(x, true);
        assert_eq!(out.logits.dims(), [2, c.num_classes], "{name}");
        assert_eq!(out.pre_logits.dims(), [2, c.embed_dim], "{name}");
        assert_eq!(out.attentions.len(), c.depth);
        let n = c.num_patches() + 1;
        assert_eq!(out.attentions[0].dims(), [2, c.num_heads, n, n]);
    }
}

#[test]
fn base_patch16_224_forward_shape() {
    let device = Device::flex();
    let c = vit("vit_base_patch16_224");
    let model = c.init(&device).unwrap();
    let logits = model.logits(Tensor::<4>::zeros([1, 3, 224, 224], &device));
    assert_eq!(logits.dims(), [1, 1000]);
}

#[test]
fn attention_rows_are_distributions_and_do_not_change_logits() {
    let device = Device::flex();
    let c = VitConfig {
        num_classes: 4,
        ..VitConfig::new(16, 4, 32, 2, 2)
    };
    let model = c.init(&device).unwrap();
    let x = Tensor::<4>::random(
        [3, 3, 16, 16],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    // The plain forward runs the last block for the class token alone and the fused attention
    // kernel; asking for the maps runs every token through the composed path. Same logits, up
    // to float rounding.
    let plain = model.logits(x.clone()).into_data().try_to_vec::<f32>().unwrap();
    let detailed = model.forward_detailed(x, true);
    let full = detailed.logits.clone().into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(plain.len(), full.len());
    for (a, b) in plain.iter().zip(&full) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    let sums = detailed.attentions[1]
        .clone()
        .sum_dim(3)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
}

#[test]
fn invalid_shapes_are_rejected_with_a_message() {
    let device = Device::flex();
    let bad_patch = VitConfig::new(30, 4, 32, 1, 2);
    let err = bad_patch.init(&device).unwrap_err().to_string();
    assert!(err.contains("not divisible by the patch size 4"), "{err}");
    let bad_heads = VitConfig::new(32, 4, 30, 1, 4);
    assert!(
        bad_heads
            .init(&device)
            .unwrap_err()
            .to_string()
            .contains("num_heads")
    );
    let err = preset("vit_gigantic").unwrap_err().to_string();
    assert!(
        err.contains("vit_gigantic") && err.contains("vit_base_patch16_224"),
        "{err}"
    );
}
