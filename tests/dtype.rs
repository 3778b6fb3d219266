//! Models in bf16 on the CPU (`vitkit bench --dtype bf16`): the device's default float type is
//! process-wide, so this file runs in its own test process and has one test.

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Distribution, FloatDType, Int, Tensor, TensorData};
use vitkit::device::{parse_device, parse_float_dtype, set_float_dtype};
use vitkit::models::{Classifier, ModelConfig, VitConfig};
use vitkit::train::{TrainConfig, build_optimizer};

/// Casts every float parameter to f32.
struct ToF32;

impl ModuleMapper for ToF32 {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| t.cast(FloatDType::F32))
    }
}

#[test]
fn bf16_models_match_f32_and_learn() {
    assert!(parse_float_dtype("int8").is_err());
    let mut device = parse_device("cpu").unwrap();
    set_float_dtype(&mut device, parse_float_dtype("bf16").unwrap()).unwrap();

    let config = VitConfig {
        num_classes: 4,
        ..VitConfig::new(16, 4, 32, 2, 2)
    };
    let model = config.init(&device).unwrap();
    let x = Tensor::<4>::random([6, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    assert_eq!(x.dtype(), DType::BF16);
    let logits = model.logits(x.clone());
    assert_eq!(logits.dtype(), DType::BF16);

    // The same weights in f32 (vitkit's fused kernels) agree to bf16's precision.
    let reference = model
        .clone()
        .map(&mut ToF32)
        .logits(x.clone().cast(FloatDType::F32));
    assert_eq!(reference.dtype(), DType::F32);
    let got = logits
        .cast(FloatDType::F32)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let want = reference.into_data().try_to_vec::<f32>().unwrap();
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        scale > 0.0 && worst <= 0.05 * scale,
        "bf16 vs f32: max diff {worst}, scale {scale}"
    );

    // Training in bf16 (parameters and AdamW state in bf16) fits a fixed batch.
    let ad = device.autodiff();
    let mut model = config.init(&ad).unwrap();
    let x = Tensor::<4>::random([8, 3, 16, 16], Distribution::Normal(0.0, 1.0), &ad);
    let labels = Tensor::<1, Int>::from_data(TensorData::from([0i64, 1, 2, 3, 0, 1, 2, 3]), &ad);
    let targets = labels.one_hot::<2>(4).float();
    let mut optim = build_optimizer(&model, &ModelConfig::Vit(config.clone()), &TrainConfig::default());
    let mut losses = Vec::new();
    for _ in 0..30 {
        let loss = (log_softmax(model.logits(x.clone()), 1) * targets.clone())
            .sum_dim(1)
            .mean()
            .neg();
        losses.push(loss.clone().cast(FloatDType::F32).into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(3e-3, model, grads);
    }
    assert!(losses.iter().all(|l| l.is_finite()), "bf16 losses: {losses:?}");
    assert!(
        losses[losses.len() - 1] < 0.5 * losses[0],
        "bf16 training should fit a fixed batch: {losses:?}"
    );
}
