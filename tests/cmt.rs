//! CMT against the official PyTorch code (fixtures from tools/make_cmt_fixtures.py): logits in
//! evaluation mode, the loss, every parameter's gradient and the BatchNorm buffers' update in
//! training mode; the official models' parameter counts; errors for bad input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use vitkit::io::{
    FileTensor, ImportOptions, Strictness, WeightSource, import_weights, named_tensors, read_safetensors,
};
use vitkit::models::{Adaptation, CmtConfig, Model, ModelConfig, param_count, preset};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

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
    let opts = ImportOptions {
        strictness: Strictness::Exact,
        ..Default::default()
    };
    let path = fixture(&format!("{name}.weights.safetensors"));
    import_weights(
        &path,
        WeightSource::Official,
        &ModelConfig::Cmt(config),
        &fixed,
        &opts,
        device,
    )
    .expect("official weights load exactly")
    .model
}

fn tensor<const D: usize>(t: &FileTensor, device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(t.values.clone(), t.shape.clone()), device)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
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

/// Compares every parameter's gradient with the reference's, relative to the reference
/// tensor's largest magnitude.
struct Compare<'a> {
    path: Vec<String>,
    grads: &'a burn::tensor::Gradients,
    want: &'a BTreeMap<String, FileTensor>,
    /// PyTorch float32's relative gap to the float64 reference, per parameter.
    torch_gap: &'a BTreeMap<String, FileTensor>,
    /// Parameters where that gap exceeds 1e-4.
    loose: Vec<String>,
    /// The largest reference gradient over all parameters.
    global: f32,
    checked: usize,
    /// Parameters whose gradient is zero in theory.
    zero: usize,
    worst: (f32, String),
}

impl ModuleVisitor for Compare<'_> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.push(if container.starts_with("Enum:") {
            String::new()
        } else {
            name.to_string()
        });
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let name: Vec<&str> = self
            .path
            .iter()
            .map(String::as_str)
            .filter(|p| !p.is_empty())
            .collect();
        let name = name.join(".");
        if vitkit::nn::is_buffer(&name) {
            return;
        }
        let grad = param
            .val()
            .grad(self.grads)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        // Linear weights are held as [in, out]; PyTorch's gradients are [out, in].
        let grad = if D == 2 { grad.transpose() } else { grad };
        let got = grad.into_data().try_to_vec::<f32>().unwrap();
        let want = &self
            .want
            .get(&name)
            .unwrap_or_else(|| panic!("no reference gradient for {name}"))
            .values;
        let largest = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = largest(want);
        self.checked += 1;
        if scale < 1e-6 * self.global {
            // Analytically zero, the reference's value rounding noise: a bias in front of a
            // training-mode BatchNorm (`sr.0`, `conv2.0`, `_fc`) cancels, and a key bias shifts
            // every logit of a row alike, which softmax ignores. Ours must be noise too.
            let ours = largest(&got);
            assert!(
                ours < 1e-5 * self.global,
                "{name}: gradient {ours:.2e} where it is zero in theory"
            );
            self.zero += 1;
            return;
        }
        let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
        let rel =
            (norm(&mut got.iter().zip(want).map(|(a, b)| a - b)) / norm(&mut want.iter().copied())) as f32;
        // The reference is float64's gradient. Where PyTorch's own float32 lands further from
        // it than 1e-4 (sums of large cancelling terms), ours may too, by as much (3x margin).
        let torch_gap = self
            .torch_gap
            .get(&format!("f32_gap.{name}"))
            .map_or(0.0, |t| t.values[0]);
        let allowed = 1e-4f32.max(3.0 * torch_gap);
        if rel > self.worst.0 {
            self.worst = (rel, name.clone());
        }
        if torch_gap > 1e-4 {
            self.loose
                .push(format!("{name}: ours {rel:.2e}, PyTorch f32 {torch_gap:.2e}"));
        }
        assert!(
            rel <= allowed,
            "{name}: relative L2 gradient gap {rel:.2e} (allowed {allowed:.2e})"
        );
    }
}

fn training_matches(name: &str) {
    let device = Device::flex().autodiff();
    let model = load(name, &device);
    let (io, _) = read_safetensors(&fixture(&format!("{name}.io.safetensors"))).unwrap();
    let (want, _) = read_safetensors(&fixture(&format!("{name}.grads.safetensors"))).unwrap();
    let labels: Vec<i64> = io["labels"].values.iter().map(|&v| v as i64).collect();
    let batch = labels.len();
    let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch]), &device);
    let logits = model
        .classifier()
        .unwrap()
        .logits(tensor(&io["pixel_values"], &device));
    let onehot = labels.one_hot(10).float();
    let loss = (log_softmax(logits, 1) * onehot).sum_dim(1).mean().neg();
    let loss_value = loss.clone().into_scalar::<f32>();
    let want_loss = io["train_loss"].values[0];
    assert!(
        (loss_value - want_loss).abs() < 1e-5,
        "train loss {loss_value} vs {want_loss}"
    );
    let grads = loss.backward();
    let mut cmp = Compare {
        path: Vec::new(),
        grads: &grads,
        want: &want,
        torch_gap: &io,
        loose: Vec::new(),
        global: want
            .values()
            .flat_map(|t| &t.values)
            .fold(0f32, |m, v| m.max(v.abs())),
        checked: 0,
        zero: 0,
        worst: (0.0, String::new()),
    };
    model.visit(&mut cmp);
    assert_eq!(cmp.checked, want.len(), "every parameter's gradient was compared");
    println!(
        "{name}: {} gradients ({} zero in theory), worst relative L2 gap to float64 {:.2e} ({}); \
         beyond 1e-4 for PyTorch's float32 too: {:?}",
        cmp.checked, cmp.zero, cmp.worst.0, cmp.worst.1, cmp.loose
    );
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
