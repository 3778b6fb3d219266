//! Grad-CAM (Selvaraju et al. 2017) on the feature map a classifier's head pools: each
//! channel weighted by the mean gradient of the class score over its positions, summed, and
//! passed through a ReLU. For any family whose model is a [`crate::models::SpatialMap`] (CMT,
//! NesT, an average-pooled ViT).

use burn::module::Module;
use burn::tensor::Tensor;

use crate::models::Model;
use crate::nn::host_values;
use crate::{Result, VitError};

/// One image's Grad-CAM.
#[derive(Debug, Clone)]
pub struct GradCam {
    /// The class whose score was differentiated.
    pub class: usize,
    /// `[h, w]` of the feature map.
    pub grid: [usize; 2],
    /// ReLU(Σ_c α_c A_c), row-major over `grid`.
    pub map: Vec<f64>,
    /// α_c: the mean over positions of ∂score/∂A_c, per channel.
    pub weights: Vec<f64>,
}

/// Grad-CAM of `class` (default: the predicted one) for the single image `x` `[1, C, H, W]`,
/// with `model` in inference mode on a device without autodiff. The map is computed as in
/// inference; only the pooling and head run again under autodiff, from the map as a leaf.
pub fn grad_cam(model: &Model, x: Tensor<4>, class: Option<usize>) -> Result<GradCam> {
    let none = || {
        VitError::Config(format!(
            "Grad-CAM needs a model whose head pools a spatial feature map; a {} model of this \
             configuration has none",
            model.family()
        ))
    };
    let map = model.spatial_map().ok_or_else(none)?.feature_map(x);
    let [b, c, h, w] = map.dims();
    if b != 1 {
        return Err(VitError::Config(format!("Grad-CAM takes one image, not {b}")));
    }
    // The same weights on the autodiff device, as constants (nothing in them requires a
    // gradient), in inference mode: dropout and batch statistics stay off.
    let device = map.device().autodiff();
    let differentiable = model.valid().fork(&device);
    let head = differentiable.spatial_map().ok_or_else(none)?;
    let leaf = map.clone().autodiff().require_grad();
    let logits = head.classify_map(leaf.clone());
    let [_, classes] = logits.dims();
    let class = match class {
        Some(k) if k >= classes => {
            return Err(VitError::Config(format!(
                "class {k} is out of range: the model has {classes} classes"
            )));
        }
        Some(k) => k,
        None => {
            host_values(logits.clone())?
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |best, (i, &v)| if v > best.1 { (i, v) } else { best },
                )
                .0
        }
    };
    let grads = logits.narrow(1, class, 1).sum().backward();
    let grad = leaf
        .grad(&grads)
        .ok_or_else(|| VitError::Other("the head's output does not depend on the feature map".into()))?;
    let weights: Vec<f64> = host_values(grad.mean_dim(3).mean_dim(2).reshape([c]))?
        .into_iter()
        .map(f64::from)
        .collect();
    let values = host_values(map.reshape([c, h * w]))?;
    let cam = (0..h * w)
        .map(|i| {
            let s: f64 = (0..c).map(|ch| weights[ch] * values[ch * h * w + i] as f64).sum();
            s.max(0.0)
        })
        .collect();
    Ok(GradCam {
        class,
        grid: [h, w],
        map: cam,
        weights,
    })
}
