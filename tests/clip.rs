//! CLIP against open_clip (fixtures from tools/make_clip_fixtures.py): image and text features
//! and the image–text logits of small random models with GELU and QuickGELU, read from
//! open_clip's and OpenAI's key layouts; parameter counts of the presets.

mod support;

use burn::tensor::{Device, Tensor};
use support::parity::{fixture, load_exact, max_abs_diff, tensor};
use vitkit::io::{WeightSource, read_safetensors};
use vitkit::models::clip::normalize;
use vitkit::models::{Adaptation, ClipConfig, ModelConfig, param_count, preset};

/// The fixtures' architecture: 32x32 images, 8x8 patches, both towers width 64, depth 2, two
/// 32-channel heads; 16-token context, 500 ids; a 48-wide joint space.
fn config(quick_gelu: bool) -> ModelConfig {
    let mut c = ClipConfig::new(48, [32, 8, 64, 2], [64, 2]).with_context(16);
    c.vision.heads = 2;
    c.text.heads = 2;
    c.text.vocab_size = 500;
    c.quick_gelu = quick_gelu;
    ModelConfig::Clip(c)
}

fn check(weights: &str, io: &str, source: WeightSource, quick_gelu: bool) {
    let device = Device::flex();
    let model = load_exact(
        weights,
        source,
        config(quick_gelu),
        &Adaptation::default(),
        &device,
    );
    let tower = model.image_text().expect("a CLIP model");
    let (io, _) = read_safetensors(&fixture(&format!("{io}.io.safetensors"))).expect("fixture");
    let pixels: Tensor<4> = tensor(&io["pixel_values"], &device);
    let ids: Vec<u32> = io["input_ids"].values.iter().map(|&v| v as u32).collect();
    let rows = io["input_ids"].shape[0];
    let image = tower.encode_image(pixels);
    let text = tower.encode_text(&ids, rows).expect("ids fit");
    let logits = normalize(image.clone())
        .matmul(normalize(text.clone()).transpose())
        .mul(tower.logit_scale().exp().unsqueeze::<2>());
    for (name, got) in [
        ("image_features", image),
        ("text_features", text),
        ("logits_per_image", logits),
    ] {
        let got = vitkit::nn::host_values(got).expect("f32");
        let gap = max_abs_diff(&got, &io[name].values);
        assert!(gap <= 1e-4, "{weights} {name}: max |Δ| {gap:e} > 1e-4");
        eprintln!("{weights} {name}: max |Δ| {gap:.2e}");
    }
}

#[test]
fn features_match_open_clip_with_gelu() {
    check("clip_small", "clip_small", WeightSource::OpenClip, false);
}

#[test]
fn features_match_open_clip_with_quick_gelu() {
    check(
        "clip_small_quickgelu",
        "clip_small_quickgelu",
        WeightSource::OpenClip,
        true,
    );
}

#[test]
fn openai_layout_loads_the_same_model() {
    check(
        "clip_small_quickgelu_openai",
        "clip_small_quickgelu",
        WeightSource::OpenAi,
        true,
    );
}

#[test]
fn text_rows_longer_than_the_context_or_outside_the_vocabulary_are_errors() {
    let device = Device::flex();
    let model = load_exact(
        "clip_small",
        WeightSource::OpenClip,
        config(false),
        &Adaptation::default(),
        &device,
    );
    let tower = model.image_text().expect("a CLIP model");
    let err = tower.encode_text(&[1; 17], 1).unwrap_err().to_string();
    assert!(err.contains("context length"), "{err}");
    let err = tower.encode_text(&[1, 49407], 1).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary of 500"), "{err}");
}

#[test]
fn preset_parameter_counts_are_open_clips() {
    // open_clip's ViT-B-32 (the OpenAI notebook's 151,277,313) and ViT-B-16.
    for (name, count) in [
        ("clip_vit_b32", 151_277_313),
        ("clip_vit_b32_quickgelu", 151_277_313),
        ("clip_vit_b16", 149_620_737),
    ] {
        let config = preset(name).expect("preset");
        assert_eq!(param_count(&config).expect("builds"), count, "{name}");
    }
}
