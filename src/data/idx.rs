//! IDX files (MNIST, Fashion-MNIST), gzipped or raw.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{ImageDataset, read_file};
use crate::{Result, VitError};

fn bad(path: &Path, reason: impl Into<String>) -> VitError {
    VitError::BadData {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The file's bytes, gunzipped when it starts with the gzip magic.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = read_file(path)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| bad(path, format!("gzip stream is corrupt or truncated: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn header(path: &Path, data: &[u8], magic: u32, dims: usize) -> Result<Vec<usize>> {
    let len = 4 + 4 * dims;
    if data.len() < len {
        return Err(bad(path, "file too short for an IDX header"));
    }
    let word = |i: usize| u32::from_be_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
    if word(0) != magic {
        return Err(bad(
            path,
            format!("IDX magic {:#010x}, expected {magic:#010x}", word(0)),
        ));
    }
    let shape: Vec<usize> = (0..dims).map(|d| word(4 + 4 * d) as usize).collect();
    let expected = len + shape.iter().product::<usize>();
    if data.len() != expected {
        return Err(bad(
            path,
            format!(
                "{} bytes, header says {expected} (truncated or corrupt)",
                data.len()
            ),
        ));
    }
    Ok(shape)
}

/// Reads an IDX3 unsigned-byte image file into single-channel images.
pub fn read_idx_images(path: &Path) -> Result<ImageDataset> {
    let data = read_maybe_gz(path)?;
    let shape = header(path, &data, 0x0000_0803, 3)?;
    Ok(ImageDataset {
        pixels: data[16..].to_vec(),
        labels: vec![0; shape[0]],
        channels: 1,
        height: shape[1],
        width: shape[2],
    })
}

/// Reads an IDX1 unsigned-byte label file.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u32>> {
    let data = read_maybe_gz(path)?;
    header(path, &data, 0x0000_0801, 1)?;
    Ok(data[8..].iter().map(|&b| b as u32).collect())
}

/// `name` or `name.gz` in `dir`, whichever exists.
fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    for candidate in [dir.join(format!("{name}.gz")), dir.join(name)] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(VitError::MissingDataset {
        path: dir.join(format!("{name}.gz")),
        hint: format!(
            "install the Debian package with `apt-get install dataset-fashion-mnist` (files go to {}), or pass --data fashion-mnist:DIR",
            super::FASHION_MNIST_DIR
        ),
    })
}

fn split(dir: &Path, prefix: &str) -> Result<ImageDataset> {
    let images_path = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let mut images = read_idx_images(&images_path)?;
    let labels = read_idx_labels(&labels_path)?;
    if labels.len() != images.len() {
        return Err(bad(
            &labels_path,
            format!("{} labels for {} images", labels.len(), images.len()),
        ));
    }
    if let Some(&l) = labels.iter().find(|&&l| l >= 10) {
        return Err(bad(&labels_path, format!("label {l} out of range 0..10")));
    }
    images.labels = labels;
    Ok(images)
}

/// Fashion-MNIST train and test splits from the four IDX files in `dir`.
pub fn load_fashion_mnist(dir: &Path) -> Result<(ImageDataset, ImageDataset)> {
    Ok((split(dir, "train")?, split(dir, "t10k")?))
}
