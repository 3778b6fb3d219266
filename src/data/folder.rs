//! ImageFolder trees: one sub-folder per class holding JPEG/PNG files, as torchvision's.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;

use super::ImageDataset;
use crate::{Result, VitError};

#[derive(Debug, Clone, Default)]
pub struct FolderOptions {
    /// Skip (and count) images that cannot be decoded instead of failing.
    pub skip_bad_images: bool,
    /// 1 for grayscale, 3 for RGB.
    pub channels: usize,
}

/// Decodes one image file (format from its content), converts it to `channels` and resizes it
/// to `size`, returning `[C, H, W]` bytes.
pub fn load_image_file(path: &Path, channels: usize, size: [usize; 2]) -> Result<Vec<u8>> {
    let bad = |reason: String| VitError::BadImage {
        path: path.to_path_buf(),
        reason,
    };
    let reader = image::ImageReader::open(path).map_err(|e| VitError::io(path, e))?;
    let img = reader
        .with_guessed_format()
        .map_err(|e| VitError::io(path, e))?
        .decode()
        .map_err(|e| bad(e.to_string()))?;
    let (h, w) = (size[0] as u32, size[1] as u32);
    let img = if img.height() != h || img.width() != w {
        img.resize_exact(w, h, FilterType::Triangle)
    } else {
        img
    };
    let plane = size[0] * size[1];
    // Transparent pixels are composited over white (emoji and icons are drawn that way).
    let over_white = |value: u8, alpha: u8| {
        let a = alpha as u32;
        ((value as u32 * a + 255 * (255 - a) + 127) / 255) as u8
    };
    Ok(match channels {
        1 => img
            .to_luma_alpha8()
            .into_raw()
            .chunks_exact(2)
            .map(|p| over_white(p[0], p[1]))
            .collect(),
        3 => {
            let rgba = img.to_rgba8().into_raw();
            let mut chw = vec![0u8; 3 * plane];
            for (i, px) in rgba.chunks_exact(4).enumerate() {
                for c in 0..3 {
                    chw[c * plane + i] = over_white(px[c], px[3]);
                }
            }
            chw
        }
        other => {
            return Err(VitError::Config(format!(
                "cannot load images with {other} channels (use 1 or 3)"
            )));
        }
    })
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        .unwrap_or(false)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| VitError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    Ok(entries)
}

/// Class folder names, sorted.
fn class_dirs(root: &Path) -> Result<Vec<String>> {
    if !root.is_dir() {
        return Err(VitError::MissingDataset {
            path: root.to_path_buf(),
            hint: "expected a folder with one sub-folder of JPEG/PNG images per class".into(),
        });
    }
    let names: Vec<String> = sorted_entries(root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(String::from))
        .collect();
    if names.is_empty() {
        return Err(VitError::BadData {
            path: root.to_path_buf(),
            reason: "no class sub-folders".into(),
        });
    }
    Ok(names)
}

/// (path, label) of every image under `root/<class>/`.
fn list_images(root: &Path, classes: &[String]) -> Result<Vec<(PathBuf, u32)>> {
    let mut out = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let dir = root.join(class);
        if !dir.is_dir() {
            continue;
        }
        for path in sorted_entries(&dir)? {
            if path.is_file() && is_image(&path) {
                out.push((path, label as u32));
            }
        }
    }
    Ok(out)
}

fn decode_all(
    files: &[(PathBuf, u32)],
    size: [usize; 2],
    opts: &FolderOptions,
    skipped: &mut Vec<PathBuf>,
) -> Result<ImageDataset> {
    use rayon::prelude::*;
    let channels = if opts.channels == 0 { 3 } else { opts.channels };
    let decoded: Vec<(Result<Vec<u8>>, u32, &PathBuf)> = files
        .par_iter()
        .map(|(p, l)| (load_image_file(p, channels, size), *l, p))
        .collect();
    let mut ds = ImageDataset {
        pixels: Vec::new(),
        labels: Vec::new(),
        channels,
        height: size[0],
        width: size[1],
    };
    for (result, label, path) in decoded {
        match result {
            Ok(px) => {
                ds.pixels.extend(px);
                ds.labels.push(label);
            }
            Err(VitError::BadImage { .. }) if opts.skip_bad_images => skipped.push(path.clone()),
            Err(VitError::BadImage { path, reason }) => {
                return Err(VitError::BadImage {
                    path,
                    reason: format!("{reason} (use --skip-bad-images to skip and count such files)"),
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(ds)
}

/// Loads `dir/train` and `dir/val` (or `dir/test`) when present; otherwise one class tree
/// at `dir`, of which every 10th image (in sorted order per class) is held out for testing.
/// Returns (train, test, class names, skipped files).
pub fn load_image_folder(
    dir: &Path,
    size: [usize; 2],
    opts: &FolderOptions,
) -> Result<(ImageDataset, ImageDataset, Vec<String>)> {
    let mut skipped = Vec::new();
    let out = load_image_folder_counting(dir, size, opts, &mut skipped)?;
    if !skipped.is_empty() {
        eprintln!(
            "skipped {} image(s) that could not be decoded, e.g. {}",
            skipped.len(),
            skipped[0].display()
        );
    }
    Ok(out)
}

pub(crate) fn load_image_folder_counting(
    dir: &Path,
    size: [usize; 2],
    opts: &FolderOptions,
    skipped: &mut Vec<PathBuf>,
) -> Result<(ImageDataset, ImageDataset, Vec<String>)> {
    let train_dir = dir.join("train");
    let (train_files, test_files, classes) = if train_dir.is_dir() {
        let test_dir = ["val", "test"]
            .iter()
            .map(|s| dir.join(s))
            .find(|p| p.is_dir())
            .ok_or_else(|| VitError::MissingDataset {
                path: dir.join("val"),
                hint: "a folder with train/ also needs val/ or test/".into(),
            })?;
        let classes = class_dirs(&train_dir)?;
        (
            list_images(&train_dir, &classes)?,
            list_images(&test_dir, &classes)?,
            classes,
        )
    } else {
        let classes = class_dirs(dir)?;
        let all = list_images(dir, &classes)?;
        let mut train = Vec::new();
        let mut test = Vec::new();
        let mut seen = vec![0usize; classes.len()];
        for (path, label) in all {
            let k = &mut seen[label as usize];
            if *k % 10 == 9 {
                test.push((path, label))
            } else {
                train.push((path, label))
            }
            *k += 1;
        }
        (train, test, classes)
    };
    if train_files.is_empty() {
        return Err(VitError::BadData {
            path: dir.to_path_buf(),
            reason: "no .png/.jpg/.jpeg images found".into(),
        });
    }
    let train = decode_all(&train_files, size, opts, skipped)?;
    let test = decode_all(&test_files, size, opts, skipped)?;
    Ok((train, test, classes))
}
