//! The GAN pieces (fixtures from tools/make_gan_fixtures.py): pixel shuffle against PyTorch,
//! block de-aggregation against block aggregation's reshaping, the Fréchet distance against
//! SciPy, and the two updates of a GAN step touching only their own part.

mod support;

use std::path::PathBuf;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor, TensorData};
use support::parity::{fixture, max_abs_diff, tensor};
use vitkit::data::{Batch, DataInfo};
use vitkit::io::{named_tensors, read_safetensors};
use vitkit::models::nest_gen::deaggregate;
use vitkit::models::{Model, preset};
use vitkit::nn::{
    blockify, deblockify, host_values, pixel_shuffle, pixel_shuffle_channels_last, pixel_unshuffle,
};
use vitkit::train::fid::{FeatureStats, frechet_distance};
use vitkit::train::gan::{GanSettings, GanTraining};
use vitkit::train::{StepContext, Task};

#[test]
fn pixel_shuffle_matches_pytorch() {
    let device = Device::flex();
    let (f, _) = read_safetensors(&fixture("pixel_shuffle.safetensors")).unwrap();
    let shuffled = host_values(pixel_shuffle(tensor::<4>(&f["x"], &device), 2)).unwrap();
    assert_eq!(max_abs_diff(&shuffled, &f["shuffled"].values), 0.0);
    let unshuffled = host_values(pixel_unshuffle(tensor::<4>(&f["y"], &device), 2)).unwrap();
    assert_eq!(max_abs_diff(&unshuffled, &f["unshuffled"].values), 0.0);
    // The channels-last form (what the generator runs) is the same map.
    let last = pixel_shuffle_channels_last(tensor::<4>(&f["x"], &device).permute([0, 2, 3, 1]), 2);
    let last = host_values(last.permute([0, 3, 1, 2])).unwrap();
    assert_eq!(max_abs_diff(&last, &f["shuffled"].values), 0.0);
}

fn ramp(shape: [usize; 4]) -> Tensor<4> {
    let n: usize = shape.iter().product();
    Tensor::from_data(
        TensorData::new((0..n).map(|v| v as f32).collect::<Vec<_>>(), shape),
        &Device::flex(),
    )
}

#[test]
fn deaggregation_inverts_aggregation_reshaping() {
    // Blocking and unblocking are exact inverses at every level's shape.
    for (side, b) in [(4, 2), (8, 4), (28, 7)] {
        let x = ramp([2, side, side, 3]);
        let v = host_values(x.clone()).unwrap();
        assert_eq!(host_values(deblockify(blockify(x.clone(), b), b)).unwrap(), v);
        let blocks = blockify(x, b);
        assert_eq!(
            host_values(blockify(deblockify(blocks.clone(), b), b)).unwrap(),
            host_values(blocks).unwrap()
        );
    }
    // De-aggregation's pixel shuffle is undone exactly by its inverse.
    let x = ramp([1, 3, 3, 8]);
    let up = deaggregate(x.clone());
    assert_eq!(up.dims(), [1, 6, 6, 2]);
    let back = pixel_unshuffle(up.permute([0, 3, 1, 2]), 2).permute([0, 2, 3, 1]);
    assert_eq!(host_values(back).unwrap(), host_values(x).unwrap());
    // The tree goes down as aggregation goes up: quadrant (r, c) of a parent block becomes
    // child block (r, c) of the next level (4 children, row-major), so GradCAT's
    // parent-quadrant ↔ child-block correspondence holds for the generator too.
    let b = 4;
    let mut parent = Vec::new();
    for y in 0..b {
        for x in 0..b {
            let quadrant = (y / 2) * 2 + x / 2;
            parent.extend(std::iter::repeat_n(quadrant as f32, 4 * 2));
        }
    }
    let parent = Tensor::<4>::from_data(TensorData::new(parent, [1, b, b, 8]), &Device::flex());
    let children = blockify(deaggregate(parent), b);
    assert_eq!(children.dims(), [1, 4, b * b, 2]);
    let v = host_values(children).unwrap();
    for (k, block) in v.chunks(b * b * 2).enumerate() {
        assert!(block.iter().all(|&x| x == k as f32), "child block {k}: {block:?}");
    }
}

#[test]
fn frechet_distance_matches_scipy() {
    let (f, _) = read_safetensors(&fixture("frechet.safetensors")).unwrap();
    let d = 12;
    let a = FeatureStats::of(&f["a"].values, d).unwrap();
    let b = FeatureStats::of(&f["b"].values, d).unwrap();
    let close = |got: &[f64], want: &[f32]| {
        got.iter()
            .zip(want)
            .map(|(g, w)| (g - *w as f64).abs() / (w.abs() as f64).max(1.0))
            .fold(0.0, f64::max)
    };
    assert!(close(&a.mean, &f["mu_a"].values) < 1e-5);
    assert!(close(&a.cov, &f["cov_a"].values) < 1e-5);
    assert!(close(&b.cov, &f["cov_b"].values) < 1e-5);
    let want = f["fid"].values[0] as f64;
    let got = frechet_distance(&a, &b).unwrap();
    assert!(((got - want) / want).abs() < 1e-3, "FID {got} vs SciPy {want}");
    // Symmetric, zero on itself.
    let back = frechet_distance(&b, &a).unwrap();
    assert!(((back - got) / got).abs() < 1e-9);
    assert!(frechet_distance(&a, &a).unwrap().abs() < 1e-6 * want);
    assert!(FeatureStats::of(&f["a"].values[..d], d).is_err());
}

/// Tensors with a gradient in `grads` among `module`'s parameters, and all of them.
fn with_grads<M: Module>(module: &M, grads: &burn::optim::GradientsParams) -> (usize, usize) {
    struct V<'a>(&'a burn::optim::GradientsParams, usize, usize);
    impl ModuleVisitor for V<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.2 += 1;
            if self.0.get::<D>(param.id).is_some() {
                self.1 += 1;
            }
        }
    }
    let mut v = V(grads, 0, 0);
    module.visit(&mut v);
    (v.1, v.2)
}

#[test]
fn each_update_of_a_gan_step_trains_only_its_part() {
    let device = Device::flex().autodiff();
    for name in ["nest_gen_28", "dcgan_28"] {
        let config = preset(name).unwrap();
        let model = config.build(&device).unwrap();
        let info = DataInfo {
            name: "test".into(),
            class_names: vec![],
            channels: 1,
            mean: vec![0.5],
            std: vec![0.25],
        };
        let task = GanTraining::new(GanSettings::default(), PathBuf::from("unused"), &info);
        let images: Vec<f32> = (0..4 * 28 * 28).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
        let batch = Batch {
            views: vec![images],
            labels: None,
            targets: None,
            indices: vec![0, 1, 2, 3],
            shape: [4, 1, 28, 28],
        };
        let gan = model.generative().unwrap();
        // At the start the average is the generator.
        let z = Tensor::<2>::from_data(TensorData::new(vec![0.3f32; 2 * 128], [2, 128]), &device);
        let (raw, avg) = (gan.generate(z.clone(), false), gan.generate(z, true));
        assert_eq!(raw.dims(), [2, 1, 28, 28]);
        let raw = host_values(raw).unwrap();
        assert_eq!(raw, host_values(avg).unwrap(), "{name}");
        assert!(raw.iter().all(|v| v.abs() <= 1.0));
        for phase in 0..task.phases() {
            let ctx = StepContext {
                device: &device,
                frozen_backbone: false,
                phase,
            };
            let step = task.step(&model, batch.clone(), &ctx).unwrap();
            let grads = task.phase_grads(&model, step.loss.backward(), phase);
            let (d_with, d_all) = with_grads(gan.discriminator(), &grads);
            let (g_with, g_all) = with_grads(gan.generator(), &grads);
            if phase == 0 {
                assert_eq!((d_with, g_with), (d_all, 0), "{name}: the discriminator's update");
                assert_eq!(step.values.len(), 2);
            } else {
                assert_eq!((d_with, g_with), (0, g_all), "{name}: the generator's update");
            }
        }
    }
}

/// The values of parameter `name` of `model`.
fn param(model: &Model, name: &str) -> Vec<f32> {
    let (_, _, data) = named_tensors(model)
        .into_iter()
        .find(|(n, _, _)| n == name)
        .unwrap_or_else(|| panic!("no parameter {name}"));
    data.convert::<f32>().try_into_vec::<f32>().unwrap()
}

#[test]
fn the_average_moves_by_its_decay_and_takes_no_gradient() {
    let device = Device::flex().autodiff();
    let model = preset("nest_gen_28").unwrap().build(&device).unwrap();
    let before = param(&model, "generator.stem.weight");
    assert_eq!(before, param(&model, "generator_ema.stem.weight"));
    // A step that changes the generator alone.
    let mut optim = burn::optim::AdamConfig::new().init();
    let gan = model.generative().unwrap();
    let z = Tensor::<2>::from_data(TensorData::new(vec![0.5f32; 3 * 128], [3, 128]), &device);
    let loss = gan.generate(z.clone(), false).mean() + gan.generate(z, true).mean();
    let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &model);
    let (total_with, _) = with_grads(&model, &grads);
    let (g_with, g_all) = with_grads(gan.generator(), &grads);
    assert_eq!(
        total_with, g_with,
        "only the generator has gradients: the average takes none"
    );
    assert_eq!(g_with, g_all);
    let model = optim.step(1e-2, model, grads);
    let after = param(&model, "generator.stem.weight");
    assert_ne!(after, before);
    let averaged = model.update_average();
    let ema = param(&averaged, "generator_ema.stem.weight");
    let want: Vec<f32> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| 0.995 * b + 0.005 * a)
        .collect();
    assert!(max_abs_diff(&ema, &want) < 1e-6);
}
