//! Model weights ⇄ safetensors, by parameter path (`blocks.0.attn.qkv.weight`).
//!
//! Linear weights are built with Burn's column layout, whose save/load mappers convert to and
//! from PyTorch's `[out, in]`: the file has timm's names and shapes. Parameter ids are kept in
//! the file's metadata so a resumed optimizer finds its state.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use super::write_atomic;
use crate::{Result, VitError};

const PARAM_IDS_KEY: &str = "vitkit.param_ids";

/// What a load matched, in the spirit of PyTorch's `load_state_dict(strict=False)` report.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    /// In the model, not in the file (left as initialised).
    pub missing: Vec<String>,
    /// In the file, not in the model.
    pub unexpected: Vec<String>,
    /// In both with different shapes: (name, file shape, model shape).
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl LoadReport {
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }

    /// The same report with the parameters in `names` left out of every list (a head the
    /// user asked to have replaced).
    pub fn excluding(&self, names: &[String]) -> LoadReport {
        let keep = |n: &String| !names.contains(n);
        LoadReport {
            loaded: self.loaded.iter().filter(|n| keep(n)).cloned().collect(),
            missing: self.missing.iter().filter(|n| keep(n)).cloned().collect(),
            unexpected: self.unexpected.iter().filter(|n| keep(n)).cloned().collect(),
            mismatched: self.mismatched.iter().filter(|m| keep(&m.0)).cloned().collect(),
        }
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!("missing keys: {}", self.missing.join(", ")));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!("unexpected keys: {}", self.unexpected.join(", ")));
        }
        for (name, file, model) in &self.mismatched {
            parts.push(format!(
                "shape mismatch for {name}: file {file:?}, model {model:?}"
            ));
        }
        if parts.is_empty() {
            "all keys matched".into()
        } else {
            parts.join("; ")
        }
    }
}

/// The path of the parameter being visited. An enum of modules (the family of a
/// [`crate::models::Model`]) adds no segment: a model's keys are its family's own.
#[derive(Default)]
pub(crate) struct ParamPath {
    stack: Vec<Option<String>>,
}

impl ParamPath {
    pub(crate) fn enter(&mut self, name: &str, container: &str) {
        self.stack
            .push((!container.starts_with("Enum:")).then(|| name.to_string()));
    }
    pub(crate) fn exit(&mut self) {
        self.stack.pop();
    }
    pub(crate) fn name(&self) -> String {
        self.stack
            .iter()
            .flatten()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(".")
    }
}

struct Collector {
    path: ParamPath,
    tensors: Vec<(String, ParamId, TensorData)>,
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let saved = param.transform_for_save().val();
        self.tensors.push((self.path.name(), param.id, saved.into_data()));
    }
}

/// `(name, tensor)` of every float parameter, in saved layout.
pub fn named_tensors<M: Module>(model: &M) -> Vec<(String, ParamId, TensorData)> {
    let mut c = Collector {
        path: ParamPath::default(),
        tensors: Vec::new(),
    };
    model.visit(&mut c);
    c.tensors
}

struct Counter<F> {
    path: ParamPath,
    skip: F,
    count: usize,
}

impl<F: Fn(&str) -> bool> ModuleVisitor for Counter<F> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !(self.skip)(&self.path.name()) {
            self.count += param.lazy_shape().num_elements();
        }
    }
}

/// Elements of every float tensor whose path `skip` does not name (without initialising any).
pub fn count_elements<M: Module>(model: &M, skip: impl Fn(&str) -> bool) -> usize {
    let mut c = Counter {
        path: ParamPath::default(),
        skip,
        count: 0,
    };
    model.visit(&mut c);
    c.count
}

/// The model's weights as safetensors bytes, with `metadata` added to the header.
pub fn weights_to_bytes<M: Module>(model: &M, metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let tensors = named_tensors(model);
    let mut ids = BTreeMap::new();
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, id, data) in &tensors {
        let values: Vec<f32> = data
            .clone()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| VitError::Other(format!("{name}: {e:?}")))?;
        if crate::nn::is_counter(name) && values.len() == 1 {
            // PyTorch keeps BatchNorm's batch counter as an int64 scalar.
            buffers.push((
                name.clone(),
                Dtype::I64,
                vec![],
                (values[0] as i64).to_le_bytes().to_vec(),
            ));
        } else {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            buffers.push((name.clone(), Dtype::F32, data.shape().to_vec(), bytes));
        }
        ids.insert(name.clone(), id.val());
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = buffers
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| VitError::Other(format!("{name}: {e}")))
        })
        .collect::<Result<_>>()?;
    let mut meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    meta.insert(
        PARAM_IDS_KEY.into(),
        serde_json::to_string(&ids).unwrap_or_default(),
    );
    meta.entry("format".into()).or_insert_with(|| "pt".into());
    safetensors::serialize(views, Some(meta)).map_err(|e| VitError::Other(e.to_string()))
}

/// Writes named f32 tensors `(name, shape, values)` as a safetensors file, atomically (what
/// `infer` hands back).
pub fn write_tensors(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|f| f.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (name.to_string(), v))
                .map_err(|e| VitError::Other(format!("{name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let file = safetensors::serialize(views, None).map_err(|e| VitError::Other(e.to_string()))?;
    write_atomic(path, &file)
}

/// Saves the weights atomically.
pub fn save_weights<M: Module>(model: &M, path: &Path, metadata: &BTreeMap<String, String>) -> Result<()> {
    write_atomic(path, &weights_to_bytes(model, metadata)?)
}

/// A safetensors file's tensors by name, and its header metadata.
pub type SafetensorsContents = (BTreeMap<String, FileTensor>, BTreeMap<String, String>);

/// One tensor read from a file, converted to f32.
pub type FileTensor = crate::models::HostTensor;

/// All tensors of a safetensors file (F32, F16, BF16, F64 converted to f32) and its metadata.
pub fn read_safetensors(path: &Path) -> Result<SafetensorsContents> {
    let bytes = std::fs::read(path).map_err(|e| VitError::io(path, e))?;
    parse_safetensors(&bytes).map_err(|reason| VitError::Checkpoint {
        path: path.to_path_buf(),
        reason,
    })
}

fn parse_safetensors(bytes: &[u8]) -> std::result::Result<SafetensorsContents, String> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| format!("not a valid safetensors file ({e})"))?;
    let (_, header) =
        SafeTensors::read_metadata(bytes).map_err(|e| format!("not a valid safetensors file ({e})"))?;
    let metadata = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            // Integer tensors: BatchNorm's `num_batches_tracked` (a count, exact in f32 up to 2^24).
            Dtype::I64 => data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            Dtype::I32 => data
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
                .collect(),
            other => return Err(format!("tensor {name} has unsupported dtype {other:?}")),
        };
        out.insert(
            name,
            FileTensor {
                shape: view.shape().to_vec(),
                values,
            },
        );
    }
    Ok((out, metadata))
}

struct Loader {
    path: ParamPath,
    tensors: BTreeMap<String, FileTensor>,
    ids: HashMap<String, u64>,
    report: LoadReport,
}

impl ModuleMapper for Loader {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.name();
        let expected = param.transform_for_save().val().dims().to_vec();
        let Some(t) = self.tensors.remove(&name) else {
            self.report.missing.push(name);
            return param;
        };
        // A scalar (PyTorch's `num_batches_tracked`) fills a one-element tensor.
        let t = if t.shape.is_empty() && expected == [1] {
            FileTensor { shape: vec![1], ..t }
        } else {
            t
        };
        if t.shape != expected {
            self.report.mismatched.push((name, t.shape, expected));
            return param;
        }
        let id = self.ids.get(&name).map(|&v| ParamId::from(v)).unwrap_or(param.id);
        let device = param.lazy_device();
        let tensor = Tensor::<D>::from_data(TensorData::new(t.values, t.shape), &device);
        self.report.loaded.push(name);
        param.transform_for_load(tensor, id)
    }
}

pub(crate) fn apply_tensors<M: Module>(
    model: M,
    tensors: BTreeMap<String, FileTensor>,
    metadata: &BTreeMap<String, String>,
) -> (M, LoadReport) {
    let ids: HashMap<String, u64> = metadata
        .get(PARAM_IDS_KEY)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let mut loader = Loader {
        path: ParamPath::default(),
        tensors,
        ids,
        report: LoadReport::default(),
    };
    let model = model.map(&mut loader);
    let mut report = loader.report;
    report.unexpected = loader.tensors.into_keys().collect();
    (model, report)
}

/// Loads a safetensors file into `model`; with `strict`, any missing, unexpected or
/// mismatched key is an error naming them.
pub fn load_weights<M: Module>(model: M, path: &Path, strict: bool) -> Result<(M, LoadReport)> {
    let (tensors, metadata) = read_safetensors(path)?;
    let (model, report) = apply_tensors(model, tensors, &metadata);
    if strict && !report.is_exact() {
        return Err(VitError::CheckpointMismatch {
            path: path.to_path_buf(),
            reason: report.describe(),
        });
    }
    Ok((model, report))
}
