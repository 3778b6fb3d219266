//! What the application does with an image–text model (CLIP): `infer` on features.

use std::path::Path;

use burn::tensor::Device;

use super::{RunConfig, host, pixel_batch, pixel_tensor};
use crate::io::FileTensor;
use crate::models::ImageText;
use crate::models::clip::normalize;
use crate::{Result, VitError};

/// `vitkit infer` on a CLIP model: `pixel_values` `[B, C, H, W]` and/or `input_ids` `[N, T]`
/// (token ids, any integer or float type, `T` up to the context) in; `image_features`
/// `[B, E]`, `text_features` `[N, E]` (before normalisation, as open_clip's `encode_image` /
/// `encode_text`) and, with both, `logits_per_image` `[B, N]` out.
pub fn infer(
    towers: &dyn ImageText,
    run: &RunConfig,
    mut tensors: crate::models::StateDict,
    output: &Path,
    bad: &dyn Fn(String) -> VitError,
    device: &Device,
) -> Result<String> {
    let pixels = tensors.remove("pixel_values");
    let ids = tensors.remove("input_ids");
    if pixels.is_none() && ids.is_none() {
        return Err(bad(
            "holds neither pixel_values [B, C, H, W] nor input_ids [N, T]".into(),
        ));
    }
    let mut out = Vec::new();
    let mut said = Vec::new();
    let mut image = None;
    if let Some(x) = pixels {
        let batch = pixel_batch(&x, run).map_err(bad)?;
        let features = towers.encode_image(pixel_tensor(x, run, device));
        image = Some(features.clone());
        let (v, d) = host(features)?;
        out.push(("image_features", d.to_vec(), v));
        said.push(format!("image_features of {batch} images"));
    }
    let mut text = None;
    if let Some(ids) = ids {
        let (rows, values) = token_rows(&ids).map_err(bad)?;
        let features = towers
            .encode_text(&values, rows)
            .map_err(|e| bad(e.to_string()))?;
        text = Some(features.clone());
        let (v, d) = host(features)?;
        out.push(("text_features", d.to_vec(), v));
        said.push(format!("text_features of {rows} texts"));
    }
    if let (Some(image), Some(text)) = (image, text) {
        let scale = towers.logit_scale().exp().unsqueeze::<2>();
        let logits = normalize(image).matmul(normalize(text).transpose()).mul(scale);
        let (v, d) = host(logits)?;
        out.push(("logits_per_image", d.to_vec(), v));
        said.push("logits_per_image".into());
    }
    crate::io::write_tensors(output, &out)?;
    Ok(format!("wrote {} to {}", said.join(", "), output.display()))
}

/// Token ids `[N, T]` as whole non-negative numbers, row count first.
fn token_rows(ids: &FileTensor) -> std::result::Result<(usize, Vec<u32>), String> {
    let &[rows, t] = ids.shape.as_slice() else {
        return Err(format!("input_ids has shape {:?}; expected [N, T]", ids.shape));
    };
    if rows == 0 || t == 0 {
        return Err("input_ids is empty".into());
    }
    let values = ids
        .values
        .iter()
        .map(|&v| (v >= 0.0 && v.fract() == 0.0 && v < u32::MAX as f32).then_some(v as u32))
        .collect::<Option<Vec<u32>>>()
        .ok_or("input_ids holds a value that is not a token id (a whole number ≥ 0)")?;
    Ok((rows, values))
}
