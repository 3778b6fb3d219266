//! NesT against timm's `Nest` (fixtures from tools/make_nest_fixtures.py): logits, the loss
//! and every parameter's gradient, with symmetric and TF-SAME max-pool padding and with
//! multi-query attention (against a PyTorch reference written from the paper's description);
//! timm's parameter counts; position embeddings resampled at another size as timm does;
//! errors for sizes the block tree cannot take.

mod support;

use burn::tensor::{Device, Tensor};
use support::parity::{check_gradients, fixture, load_exact, max_abs_diff, reference_loss, tensor};
use vitkit::io::{WeightSource, named_tensors, read_safetensors};
use vitkit::models::nest::{NestAttention, PoolPadding};
use vitkit::models::{Adaptation, Model, ModelConfig, NestConfig, param_count, preset};

/// The fixture cases' configurations (see tools/make_nest_fixtures.py).
fn case(name: &str) -> NestConfig {
    let three_levels = NestConfig {
        num_classes: 5,
        ..NestConfig::new(16, 2, &[8, 16, 24], &[2, 2, 4], &[1, 1, 2])
    };
    match name {
        "nest_small3" => three_levels,
        "nest_small3_jx" => NestConfig {
            padding: PoolPadding::Same,
            ..three_levels
        },
        "nest_mq4" => NestConfig {
            patch_size: 1,
            embed_dims: vec![12; 4],
            num_heads: vec![3; 4],
            depths: vec![1; 4],
            attention: NestAttention::MultiQuery,
            padding: PoolPadding::Same,
            ..three_levels
        },
        other => panic!("no case {other}"),
    }
}

fn load(name: &str, config: NestConfig, device: &Device) -> Model {
    let fixed = Adaptation {
        num_classes: Some(config.num_classes),
        img_size: Some([config.img_size; 2]),
        ..Default::default()
    };
    load_exact(
        name,
        WeightSource::Timm,
        ModelConfig::Nest(config),
        &fixed,
        device,
    )
}

fn eval_logits_match(name: &str) {
    let device = Device::flex();
    let model = load(name, case(name), &device);
    let (io, _) = read_safetensors(&fixture(&format!("{name}.io.safetensors"))).unwrap();
    let logits = model
        .classifier()
        .unwrap()
        .logits(tensor(&io["pixel_values"], &device));
    let got = logits.into_data().try_to_vec::<f32>().unwrap();
    let max = max_abs_diff(&got, &io["logits"].values);
    println!("{name}: max |Δlogits| = {max:.2e}");
    assert!(max <= 1e-4, "{name}: max |Δlogits| = {max}");
}

fn training_matches(name: &str) {
    let device = Device::flex().autodiff();
    let model = load(name, case(name), &device);
    let (io, _) = read_safetensors(&fixture(&format!("{name}.io.safetensors"))).unwrap();
    let (want, _) = read_safetensors(&fixture(&format!("{name}.grads.safetensors"))).unwrap();
    let logits = model
        .classifier()
        .unwrap()
        .logits(tensor(&io["pixel_values"], &device));
    let grads = reference_loss(logits, &io).backward();
    check_gradients(name, &model, &grads, &want, &io);
}

#[test]
fn logits_match_timm_symmetric_padding() {
    eval_logits_match("nest_small3");
}

#[test]
fn logits_match_timm_same_padding() {
    eval_logits_match("nest_small3_jx");
}

#[test]
fn logits_match_multi_query_reference() {
    eval_logits_match("nest_mq4");
}

#[test]
fn gradients_match_timm_symmetric_padding() {
    training_matches("nest_small3");
}

#[test]
fn gradients_match_timm_same_padding() {
    training_matches("nest_small3_jx");
}

#[test]
fn gradients_match_multi_query_reference() {
    training_matches("nest_mq4");
}

#[test]
fn the_two_paddings_give_different_logits() {
    // The same weights with the other padding: the max-pool windows shift, so the logits move
    // (what makes the `_jx` presets necessary for the official weights).
    let device = Device::flex();
    let (io, _) = read_safetensors(&fixture("nest_small3_jx.io.safetensors")).unwrap();
    let symmetric = NestConfig {
        padding: PoolPadding::Symmetric,
        ..case("nest_small3_jx")
    };
    let model = load("nest_small3_jx", symmetric, &device);
    let logits = model
        .classifier()
        .unwrap()
        .logits(tensor(&io["pixel_values"], &device));
    let got = logits.into_data().try_to_vec::<f32>().unwrap();
    let max = max_abs_diff(&got, &io["logits"].values);
    assert!(max > 1e-3, "padding made no difference ({max})");
}

#[test]
fn timm_parameter_counts() {
    for (name, count) in [
        ("nest_tiny", 17_057_608),
        ("nest_small", 38_351_176),
        ("nest_base", 67_723_368),
        ("nest_tiny_jx", 17_057_608),
        ("nest_tiny_s16_32", 6_006_730),
        ("nest_small_s16_32", 22_849_930),
        ("nest_base_s16_32", 89_050_378),
    ] {
        assert_eq!(param_count(&preset(name).unwrap()).unwrap(), count, "{name}");
    }
}

#[test]
fn sizes_the_block_tree_cannot_take_are_refused_naming_valid_ones() {
    let config = preset("nest_tiny").unwrap();
    let err = config
        .adapted(&Adaptation {
            img_size: Some([100, 100]),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("multiples of 16") && err.contains("e.g. 16, 32, 64"),
        "{err}"
    );
    assert!(err.contains("power-of-two"), "{err}");
    assert!(
        config
            .adapted(&Adaptation {
                img_size: Some([256, 256]),
                ..Default::default()
            })
            .is_ok()
    );
}

#[test]
fn position_embeddings_are_resampled_at_another_size_as_timm() {
    // The 16x16 fixture loaded at 32x32: every level's blocks grow from 2x2 to 4x4 tokens,
    // resampled as timm's `resize_pos_embed` (deblockify, bicubic, blockify).
    let device = Device::flex();
    let config = NestConfig {
        img_size: 32,
        ..case("nest_small3")
    };
    let model = load("nest_small3", config, &device);
    let (io, _) = read_safetensors(&fixture("nest_small3.io.safetensors")).unwrap();
    let mut compared = 0;
    for (key, _, data) in named_tensors(&model) {
        if let Some(want) = io.get(&format!("resized.{key}")) {
            let got = data.convert::<f32>().try_to_vec::<f32>().unwrap();
            let max = max_abs_diff(&got, &want.values);
            assert!(max <= 1e-5, "{key}: max |Δ| = {max}");
            compared += 1;
        }
    }
    assert_eq!(compared, 3, "every level's embedding compared");
    let logits = model
        .classifier()
        .unwrap()
        .logits(Tensor::<4>::zeros([1, 3, 32, 32], &device));
    assert_eq!(logits.dims(), [1, 5]);
}
