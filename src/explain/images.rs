//! `vitkit explain IMAGE…`: per image, each method's picture (PNG) and its numbers (JSON).

use std::path::{Path, PathBuf};

use super::{Explainer, GradCatOptions, Method};
use crate::data::load_image_file;
use crate::draw::{LabelledBox, boxes_png, overlay_png};
use crate::io::write_atomic;
use crate::{Result, VitError};

/// What to draw for each image.
#[derive(Debug, Clone, Default)]
pub struct ImageRequest {
    /// Empty: the model's defaults ([`Explainer::default_methods`]).
    pub methods: Vec<Method>,
    /// Also the raw attention of this block (global-attention models).
    pub layer: Option<usize>,
    pub head: Option<usize>,
    /// The class explained (default: the predicted one), for CAM, Grad-CAM and GradCAT.
    pub class: Option<usize>,
    pub gradcat: GradCatOptions,
}

/// Writes, per image file, each requested method's picture and numbers into `out`.
pub fn explain_images(
    ex: &Explainer,
    images: &[PathBuf],
    out: &Path,
    request: &ImageRequest,
) -> Result<Vec<PathBuf>> {
    let methods = if request.methods.is_empty() {
        ex.default_methods()?
    } else {
        request.methods.clone()
    };
    for &m in &methods {
        ex.check_method(m)?;
    }
    ex.check_layer_head(request.layer, request.head)?;
    if request.head.is_some() && request.layer.is_none() {
        return Err(VitError::Config("--head needs --layer".into()));
    }
    std::fs::create_dir_all(out).map_err(|e| VitError::io(out, e))?;
    let [h, w] = ex.img_size();
    let channels = ex.run.data.channels;
    let mut written = Vec::new();
    for path in images {
        let img = load_image_file(path, channels, [h, w])?;
        let name = stem(path);
        for &method in &methods {
            let png = out.join(format!("{name}_{}.png", method.name()));
            let numbers = draw(ex, method, &img, request, &png, &path.display().to_string())?;
            let json = serde_json::json!({"image": path, method.name(): numbers});
            write_atomic(
                &out.join(format!("{name}_{}.json", method.name())),
                json.to_string().as_bytes(),
            )?;
            written.push(png);
        }
        if let Some(l) = request.layer {
            let raw = ex.raw_attention(&img, l, request.head)?;
            let which = request.head.map_or("mean".to_string(), |h| h.to_string());
            let png = out.join(format!("{name}_attn_layer{l}_head{which}.png"));
            let title = format!(
                "{}: attention of the pooled tokens, block {l}, head {which}",
                path.display()
            );
            overlay_png(&png, &title, &img, channels, [h, w], &raw, ex.layout()?.grid)?;
            written.push(png);
        }
    }
    Ok(written)
}

/// Draws `method` for one byte image into `png` (titled with `what`, the image's name) and
/// returns the numbers behind it.
pub fn draw(
    ex: &Explainer,
    method: Method,
    img: &[u8],
    request: &ImageRequest,
    png: &Path,
    what: &str,
) -> Result<serde_json::Value> {
    let size = ex.img_size();
    let channels = ex.run.data.channels;
    let class_of = |k: usize| ex.run.data.class_name(k);
    let which = |k: usize| match request.class {
        Some(_) => format!("class {}", class_of(k)),
        None => format!("the predicted class, {}", class_of(k)),
    };
    let overlay = |title: String, map: &[f64], grid: [usize; 2]| {
        overlay_png(png, &format!("{what}: {title}"), img, channels, size, map, grid)
    };
    Ok(match method {
        Method::Rollout => {
            let grid = ex.layout()?.grid;
            let map = ex.rollout(img)?;
            overlay("attention rollout".into(), &map, grid)?;
            serde_json::json!({"grid": grid, "map": map})
        }
        Method::GradCam => {
            let cam = ex.grad_cam(img, request.class)?;
            overlay(format!("Grad-CAM of {}", which(cam.class)), &cam.map, cam.grid)?;
            serde_json::json!({"class": class_of(cam.class), "grid": cam.grid, "map": cam.map})
        }
        Method::Cam => {
            let cam = ex.cam(img, request.class)?;
            overlay(
                format!("class activation map of {}", which(cam.class)),
                &cam.map,
                cam.grid,
            )?;
            serde_json::json!({"class": class_of(cam.class), "grid": cam.grid, "map": cam.map})
        }
        Method::GradCat => {
            let cat = ex.grad_cat(img, request.class, request.gradcat)?;
            let boxes: Vec<LabelledBox> = cat
                .path
                .iter()
                .map(|s| LabelledBox {
                    pixels: s.pixels,
                    label: format!("L{} {:.1e}", s.level, s.score),
                })
                .collect();
            let o = cat.options;
            let title = [
                format!("{what}: GradCAT of {}", which(cat.class)),
                format!(
                    "reconstructed: {}, {}, scored at the {}",
                    o.sign.name(),
                    o.reduce.name(),
                    o.score_from.name()
                ),
            ];
            boxes_png(png, &title, img, channels, size, &boxes)?;
            serde_json::json!({
                "class": class_of(cat.class),
                "reconstruction": "GradCAT as reconstructed by vitkit; the paper's pseudo-code was not available",
                "options": cat.options,
                "path": cat.path,
            })
        }
    })
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("image")
        .to_string()
}
