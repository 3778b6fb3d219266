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
    let class = pick_class(logits.clone(), class)?;
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

/// `class` checked against the logits' classes, or the predicted class (of the first image).
pub(crate) fn pick_class(logits: Tensor<2>, class: Option<usize>) -> Result<usize> {
    let [_, classes] = logits.dims();
    match class {
        Some(k) if k >= classes => Err(VitError::Config(format!(
            "class {k} is out of range: the model has {classes} classes"
        ))),
        Some(k) => Ok(k),
        None => Ok(host_values(logits.narrow(0, 0, 1))?
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |best, (i, &v)| if v > best.1 { (i, v) } else { best },
            )
            .0),
    }
}

/// One image's class activation map (Zhou et al. 2016).
#[derive(Debug, Clone)]
pub struct Cam {
    pub class: usize,
    pub grid: [usize; 2],
    /// The head applied to each position of the pooled map alone: `w_c · A(y, x) + b_c`,
    /// row-major over `grid`; its mean is the class's logit.
    pub map: Vec<f64>,
}

/// The class activation map of `class` (default: the predicted one) on the feature map the
/// head pools, for the single image `x` `[1, C, H, W]`: only for a head that is mean pooling
/// and one linear layer (NesT, CMT), where the map is exact.
pub fn class_activation_map(model: &Model, x: Tensor<4>, class: Option<usize>) -> Result<Cam> {
    let spatial = model
        .spatial_map()
        .filter(|s| s.pooled_linear_head())
        .ok_or_else(|| {
            VitError::Config(format!(
                "a class activation map needs a head that is mean pooling and one linear layer; a {} \
             model of this configuration has none (Grad-CAM may apply: --method gradcam)",
                model.family()
            ))
        })?;
    let map = spatial.feature_map(x);
    let [b, c, h, w] = map.dims();
    if b != 1 {
        return Err(VitError::Config(format!("CAM takes one image, not {b}")));
    }
    // Every position as a 1x1 map of its own: pooling a single position is that position.
    let positions = map.permute([0, 2, 3, 1]).reshape([h * w, c, 1, 1]);
    let per_position = spatial.classify_map(positions);
    let logits = per_position.clone().mean_dim(0);
    let class = pick_class(logits, class)?;
    let values = host_values(per_position.narrow(1, class, 1).reshape([h * w]))?;
    Ok(Cam {
        class,
        grid: [h, w],
        map: values.into_iter().map(f64::from).collect(),
    })
}
