//! CLIP against open_clip (fixtures from tools/make_clip_fixtures.py): image and text features
//! and the image–text logits of small random models with GELU and QuickGELU, read from
//! open_clip's and OpenAI's key layouts; parameter counts of the presets.

mod support;

use burn::tensor::{Device, Tensor};
use support::parity::{fixture, load_exact, max_abs_diff, tensor};
use vitkit::io::{WeightSource, read_safetensors};
use vitkit::models::clip::normalize;
use vitkit::models::{Adaptation, ClipConfig, ModelConfig, param_count, preset};
use vitkit::train::clip::{MAX_LOGIT_SCALE, contrastive_loss, recall_at};

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
    // open_clip's ClipLoss with the two images and the first two texts as pairs.
    let (loss, _) = contrastive_loss(image.clone(), text.clone().narrow(0, 0, 2), tower.logit_scale());
    let gap = (vitkit::nn::host_values(loss).expect("f32")[0] - io["loss_first_pairs"].values[0]).abs();
    assert!(gap <= 1e-5, "{weights} loss: |Δ| {gap:e}");
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

#[test]
fn recall_counts_the_same_caption_as_a_hit() {
    // Three pairs in 2-d; images 0 and 1 share a caption, so text 1 is right for image 0.
    let images = [1.0, 0.0, 0.0, 1.0, -1.0, 0.1];
    let texts = [0.0, 1.0, 1.0, 0.0, 0.0, -1.0];
    let captions: Vec<String> = ["a red disc", "a red disc", "a blue bar"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (i2t, t2i) = recall_at(&images, &texts, 2, &captions, &[1, 2]);
    // Image 2 scores its text (-0.1) below text 0 (0.1): rank 1; text 2 scores its image
    // (-0.1) below image 0 (0): rank 1. The others find a right answer first.
    assert_eq!(i2t, vec![2.0 / 3.0, 1.0]);
    assert_eq!(t2i, vec![2.0 / 3.0, 1.0]);
}

#[test]
fn logit_scale_is_clamped_to_ln_100_and_keeps_training() {
    let device = Device::flex().autodiff();
    let model = config(false).build(&device).expect("builds");
    let vitkit::models::Model::Clip(mut clip) = model else {
        panic!("a CLIP model")
    };
    // A leaf that trains, as the optimizer leaves it, above the clamp.
    clip.logit_scale = clip
        .logit_scale
        .map(|t| t.add_scalar(10.0).detach().require_grad());
    let model = vitkit::models::Model::Clip(clip).clamp_logit_scale(MAX_LOGIT_SCALE);
    let scale = model.image_text().expect("CLIP").logit_scale();
    assert!(scale.is_require_grad(), "the clamped scale must still train");
    let value = vitkit::nn::host_values(scale).expect("f32")[0];
    assert!((value as f64 - 100f64.ln()).abs() < 1e-6, "{value}");
}
