//! Parity against reference implementations' fixtures (`tests/fixtures`, written by the
//! `tools/make_*_fixtures.py` scripts): the files, and every parameter's gradient compared with
//! the float64 reference's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use vitkit::io::{FileTensor, ImportOptions, Strictness, WeightSource, import_weights};
use vitkit::models::{Adaptation, Model, ModelConfig};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The fixture `<name>.weights.safetensors` read from `source` into `config`, every key
/// matching exactly (the shape fields `fixed` names are not read from the file).
pub fn load_exact(
    name: &str,
    source: WeightSource,
    config: ModelConfig,
    fixed: &Adaptation,
    device: &Device,
) -> Model {
    let opts = ImportOptions {
        strictness: Strictness::Exact,
        ..Default::default()
    };
    let path = fixture(&format!("{name}.weights.safetensors"));
    import_weights(&path, source, &config, fixed, &opts, device)
        .unwrap_or_else(|e| panic!("{name}: the fixture's weights do not load exactly: {e}"))
        .model
}

pub fn tensor<const D: usize>(t: &FileTensor, device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(t.values.clone(), t.shape.clone()), device)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The mean cross-entropy of `logits` against the fixture's `labels`, checked against its
/// `train_loss` (to 1e-5), for the backward pass.
pub fn reference_loss(logits: Tensor<2>, io: &BTreeMap<String, FileTensor>) -> Tensor<1> {
    let device = logits.device();
    let [batch, classes] = logits.dims();
    let labels: Vec<i64> = io["labels"].values.iter().map(|&v| v as i64).collect();
    let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch]), &device);
    let loss = (log_softmax(logits, 1) * labels.one_hot(classes).float())
        .sum_dim(1)
        .mean()
        .neg();
    let got = loss.clone().into_scalar::<f32>();
    let want = io["train_loss"].values[0];
    assert!((got - want).abs() < 1e-5, "train loss {got} vs {want}");
    loss
}

/// Compares every parameter of `model` with its reference gradient in `want` (PyTorch's
/// names and layouts), allowing PyTorch float32's own gap (`f32_gap.<name>` in `io`) three
/// times over where it exceeds 1e-4, and prints a summary.
pub fn check_gradients<M: Module>(
    label: &str,
    model: &M,
    grads: &burn::tensor::Gradients,
    want: &BTreeMap<String, FileTensor>,
    io: &BTreeMap<String, FileTensor>,
) {
    let mut cmp = Compare {
        path: Vec::new(),
        grads,
        want,
        torch_gap: io,
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
        "{label}: {} gradients ({} zero in theory), worst relative L2 gap to float64 {:.2e} ({}); \
         beyond 1e-4 for PyTorch's float32 too: {:?}",
        cmp.checked, cmp.zero, cmp.worst.0, cmp.worst.1, cmp.loose
    );
}

/// Compares every parameter's gradient with the reference's, relative to the reference
/// tensor's largest magnitude.
pub struct Compare<'a> {
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
