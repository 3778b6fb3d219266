//! CPU inference with bf16 products (`--autocast bf16`): the switch is process-wide, so this
//! file runs in its own test process and has one test.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Distribution, Tensor};
use vitkit::device::parse_device;
use vitkit::kernels::{bf16_products, set_bf16_products};
use vitkit::models::{Classifier, Vit, VitConfig};

/// Doubles every parameter (in place where flex can: a tensor nobody else holds).
struct Double;

impl ModuleMapper for Double {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| t * 2.0)
    }
}

fn logits(model: &Vit, x: &Tensor<4>) -> Vec<f32> {
    model.logits(x.clone()).into_data().try_to_vec::<f32>().unwrap()
}

/// The largest gap over the reference's largest magnitude.
fn relative_gap(got: &[f32], reference: &[f32]) -> f32 {
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(reference)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(scale > 0.0, "all-zero reference logits");
    worst / scale
}

#[test]
#[cfg_attr(no_avx512_bf16, ignore = "this CPU has no AVX-512 BF16")]
fn bf16_products_give_the_f32_logits_to_bf16_precision() {
    let device = parse_device("cpu").unwrap();
    // Widths in whole 64-feature panels (embedding 128, MLP 512), so every block's linear layers
    // take the bf16 path; the 10-class head stays f32.
    let config = VitConfig {
        num_classes: 10,
        ..VitConfig::new(32, 4, 128, 2, 4)
    };
    let model = config.init(&device).unwrap();
    let x = Tensor::<4>::random([3, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let reference = logits(&model, &x);

    set_bf16_products(true).expect("built where AVX-512 BF16 exists, run where it does not");
    assert!(bf16_products());
    let got = logits(&model, &x);
    let gap = relative_gap(&got, &reference);
    eprintln!("bf16 products vs f32: largest gap {gap} of the logits' scale");
    // Different (the products really ran in bf16) and close (to bf16's 8-bit mantissa).
    assert!(gap > 0.0, "bf16 products left the logits bit-identical");
    assert!(gap <= 0.03, "bf16 products vs f32: gap {gap}");
    // The second pass reads the weights packed and kept by the first: the same logits.
    assert_eq!(logits(&model, &x), got);

    // New weights where the old ones lay (doubled in place where flex may): the kept packing
    // must not be served for them.
    let doubled = model.map(&mut Double);
    let got = logits(&doubled, &x);
    set_bf16_products(false).unwrap();
    let reference = logits(&doubled, &x);
    let gap = relative_gap(&got, &reference);
    assert!(
        gap <= 0.03,
        "bf16 products after the weights changed vs f32: gap {gap}"
    );
}
