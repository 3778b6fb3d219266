//! Presets, shapes and parameter counts, and numerical parity with timm fixtures.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use vitkit::models::{ModelConfig, PRESETS, VitConfig, param_count, preset};

#[test]
fn every_preset_builds_with_the_counted_parameters() {
    let device = Device::flex();
    for p in PRESETS {
        let ModelConfig::Vit(c) = (p.config)();
        let model = c.init(&device).unwrap();
        // num_params does not materialise lazily initialised tensors, so this is cheap.
        assert_eq!(model.num_params(), param_count(&(p.config)()), "{}", p.name);
    }
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
        assert_eq!(param_count(&preset(name).unwrap()), count, "{name}");
    }
}

#[test]
fn forward_shapes_of_small_presets() {
    let device = Device::flex();
    for name in ["vit_tiny_patch4_32", "vit_micro_patch7_28", "vit_nano_patch8_32"] {
        let ModelConfig::Vit(c) = preset(name).unwrap();
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
    let ModelConfig::Vit(c) = preset("vit_base_patch16_224").unwrap();
    let model = c.init(&device).unwrap();
    let logits = model.forward(Tensor::<4>::zeros([1, 3, 224, 224], &device));
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
    let plain = model.forward(x.clone()).into_data().try_to_vec::<f32>().unwrap();
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

/// Padding the queries (for Burn's flash kernels, which need whole row blocks) changes nothing
/// but the work done: the same attention as unpadded and as composed by hand, at ViT lengths.
#[test]
fn query_padding_leaves_attention_unchanged() {
    use burn::tensor::Distribution;
    use vitkit::nn::attention_padded;
    let device = Device::flex();
    for n in [197, 65, 5] {
        let random = || Tensor::<4>::random([2, 3, n, 16], Distribution::Normal(0.0, 1.0), &device);
        let (q, k, v) = (random(), random(), random());
        let reference =
            burn::tensor::activation::softmax(q.clone().matmul(k.clone().swap_dims(2, 3)).div_scalar(4.0), 3)
                .matmul(v.clone());
        for multiple in [1, 32, 128] {
            let out = attention_padded(q.clone(), k.clone(), v.clone(), multiple);
            assert_eq!(out.dims(), [2, 3, n, 16], "n {n}, multiple {multiple}");
            let gap = (out - reference.clone()).abs().max().into_scalar::<f32>();
            assert!(gap < 1e-5, "n {n}, multiple {multiple}: off by {gap}");
        }
    }
}
