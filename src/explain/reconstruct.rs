//! What a SiT pretraining run reconstructs: test images through the pretraining pipeline
//! (rotated, corrupted with a fixed seed), each shown as corrupted input, reconstruction and
//! clean target.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};

use super::Explainer;
use crate::data::ImageDataset;
use crate::train::sit::{SitTasks, pipeline_batch, pretext_heads};
use crate::{Result, VitError};

/// Writes `reconstructions.png` in `out` for the first `count` (at most 16) images of `test`.
pub fn reconstructions(ex: &Explainer, test: &ImageDataset, count: usize, out: &Path) -> Result<PathBuf> {
    let (model, norm, device) = ex.parts();
    let pretext = pretext_heads(model)?;
    let count = count.clamp(2, 16).min(test.len());
    if count < 2 {
        return Err(VitError::Config(
            "reconstructions need at least two test images".into(),
        ));
    }
    // The run's own pipeline (its colour jitter), with a fixed seed.
    let tasks = match ex.run.train.as_ref().map(|t| t.task) {
        Some(crate::train::TaskKind::Sit(tasks)) => tasks,
        _ => SitTasks::default(),
    };
    let batch = pipeline_batch(Arc::new(test.clone()), count, None, tasks, norm, 17)?;
    let shape = batch.shape;
    let [_, c, h, w] = shape;
    let corrupted = batch.views[2].clone();
    let clean = &batch.views[0];
    let x = Tensor::<4>::from_data(TensorData::new(corrupted.clone(), shape), device);
    let rebuilt = crate::nn::host_values(pretext.pretext(x)?.reconstruction)?;
    let len = c * h * w;
    let bytes = |v: &[f32]| norm.to_bytes(v, h, w);
    let mut tiles = Vec::new();
    for i in 0..count {
        let part = |v: &[f32]| bytes(&v[i * len..(i + 1) * len]);
        tiles.push((part(&corrupted), "corrupted".to_string()));
        tiles.push((part(&rebuilt), "reconstruction".to_string()));
        tiles.push((part(clean), "clean target".to_string()));
    }
    let refs: Vec<(&[u8], String)> = tiles.iter().map(|(b, l)| (b.as_slice(), l.clone())).collect();
    std::fs::create_dir_all(out).map_err(|e| VitError::io(out, e))?;
    let path = out.join("reconstructions.png");
    crate::draw::image_grid_png(&path, &refs, c, h, w, 6, (96 / h.max(1)).max(1))?;
    Ok(path)
}
