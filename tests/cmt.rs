//! CMT against the official PyTorch code (fixtures from tools/make_cmt_fixtures.py): logits in
//! evaluation mode, the loss, every parameter's gradient and the BatchNorm buffers' update in
//! training mode; the official models' parameter counts; errors for bad input.

mod support;

use burn::tensor::Device;
use support::parity::{check_gradients, fixture, load_exact, max_abs_diff, reference_loss, tensor};
use vitkit::io::{ImportOptions, WeightSource, import_weights, named_tensors, read_safetensors};
use vitkit::models::{Adaptation, CmtConfig, Model, ModelConfig, param_count, preset};

/// The fixture cases' configurations (see tools/make_cmt_fixtures.py).
fn case(name: &str) -> CmtConfig {
    let base = CmtConfig {
        num_classes: 10,
        embed_dims: [16, 32, 48, 64],
        head_drop: 0.0,
        ..CmtConfig::tiny(160)
    };
    match name {
        "cmt_small" => CmtConfig {
            img_size: [64, 64],
            stem_channels: 8,
            fc_dim: 96,
            mlp_ratios: [2.5, 3.0, 3.6, 4.0],
            depths: [1, 1, 2, 1],
            ..base
        },
        "cmt_ti_narrow" => base,
        other => panic!("no case {other}"),
    }
}

fn load(name: &str, device: &Device) -> Model {
    let config = case(name);
    let fixed = Adaptation {
        num_classes: Some(config.num_classes),
        in_chans: Some(config.in_chans),
        img_size: Some(config.img_size),
        ..Default::default()
    };
    load_exact(
        name,
        WeightSource::Official,
        ModelConfig::Cmt(config),
        &fixed,
        device,
    )
}

fn eval_logits_match(name: &str) {
    let device = Device::flex();
    let model = load(name, &device);
    let (io, _) = read_safetensors(&fixture(&format!("{name}.io.safetensors"))).unwrap();
    let logits = model
        .classifier()
        .unwrap()
        .logits(tensor(&io["pixel_values"], &device));
    let got = logits.into_data().try_to_vec::<f32>().unwrap();
    let max = max_abs_diff(&got, &io["logits"].values);
    println!("{name}: eval max |Δlogits| = {max:.2e}");
    assert!(max <= 1e-4, "{name}: max |Δlogits| = {max}");
}

#[test]
fn eval_logits_match_official_small() {
    eval_logits_match("cmt_small");
}

#[test]
fn eval_logits_match_official_ti_shaped_160() {
    eval_logits_match("cmt_ti_narrow");
}

fn training_matches(name: &str) {
    let device = Device::flex().autodiff();
    let model = load(name, &device);
    let (io, _) = read_safetensors(&fixture(&format!("{name}.io.safetensors"))).unwrap();
    let (want, _) = read_safetensors(&fixture(&format!("{name}.grads.safetensors"))).unwrap();
    let logits = model
        .classifier()
        .unwrap()
        .logits(tensor(&io["pixel_values"], &device));
    let grads = reference_loss(logits, &io).backward();
    check_gradients(name, &model, &grads, &want, &io);
    // The training forward moved the running statistics as PyTorch's (unbiased variance) and
    // counted the batch.
    let mut buffers = 0;
    for (key, _, data) in named_tensors(&model) {
        if let Some(reference) = io.get(&format!("after.{key}")) {
            let got = data.convert::<f32>().try_to_vec::<f32>().unwrap();
            let max = max_abs_diff(&got, &reference.values);
            assert!(max <= 1e-4, "{key} after a training step: max |Δ| = {max}");
            buffers += 1;
        }
    }
    let expected = io.keys().filter(|k| k.starts_with("after.")).count();
    assert_eq!(buffers, expected, "every BatchNorm buffer compared");
}

#[test]
fn training_gradients_and_running_stats_match_official_small() {
    training_matches("cmt_small");
}

#[test]
fn training_gradients_and_running_stats_match_official_ti_shaped_160() {
    training_matches("cmt_ti_narrow");
}

#[test]
fn official_parameter_counts() {
    for (name, count) in [
        ("cmt_ti", 9_492_426),
        ("cmt_xs", 15_247_208),
        ("cmt_s", 26_256_160),
        ("cmt_b", 45_715_076),
    ] {
        assert_eq!(param_count(&preset(name).unwrap()).unwrap(), count, "{name}");
    }
}

#[test]
fn input_size_the_model_cannot_take_is_named() {
    let config = preset("cmt_ti").unwrap();
    let err = config
        .adapted(&Adaptation {
            img_size: Some([100, 100]),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("multiples of 32"), "{err}");
    assert!(
        config
            .adapted(&Adaptation {
                img_size: Some([192, 192]),
                ..Default::default()
            })
            .is_ok()
    );
}

#[test]
fn weights_for_another_input_size_are_refused_naming_it() {
    let config = CmtConfig {
        img_size: [96, 96],
        ..case("cmt_small")
    };
    let fixed = Adaptation {
        img_size: Some([96, 96]),
        ..Default::default()
    };
    let err = import_weights(
        &fixture("cmt_small.weights.safetensors"),
        WeightSource::Official,
        &ModelConfig::Cmt(config),
        &fixed,
        &ImportOptions::default(),
        &Device::flex(),
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(err.contains("relative_pos_a") && err.contains("64x64"), "{err}");
}
