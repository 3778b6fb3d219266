//! CPU inference with bf16 products (`--autocast bf16`): the switch is process-wide, so this
//! file runs in its own test process and has one test.

use burn::tensor::{Distribution, Tensor};
use vitkit::device::parse_device;
use vitkit::kernels::{bf16_products, set_bf16_products};
use vitkit::models::VitConfig;

#[test]
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
    let reference = model.forward(x.clone()).into_data().try_to_vec::<f32>().unwrap();

    if let Err(message) = set_bf16_products(true) {
        assert!(message.contains("AVX-512 BF16"), "{message}");
        eprintln!("skipped: {message}");
        return;
    }
    assert!(bf16_products());
    let got = model.forward(x).into_data().try_to_vec::<f32>().unwrap();
    set_bf16_products(false).unwrap();

    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(&reference)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("bf16 products vs f32: max diff {worst}, scale {scale}");
    // Different (the products really ran in bf16) and close (to bf16's 8-bit mantissa).
    assert!(worst > 0.0, "bf16 products left the logits bit-identical");
    assert!(
        scale > 0.0 && worst <= 0.03 * scale,
        "bf16 products vs f32: max diff {worst}, scale {scale}"
    );
}
