//! CIFAR-10 / CIFAR-100 binary batches (`data_batch_N.bin`, `test_batch.bin`; `train.bin`, `test.bin`).

use std::path::Path;

use super::{ImageDataset, read_file};
use crate::{Result, VitError};

const PIXELS: usize = 3 * 32 * 32;

fn read_batches(dir: &Path, files: &[&str], label_bytes: usize, classes: u32) -> Result<ImageDataset> {
    let mut out = ImageDataset {
        pixels: Vec::new(),
        labels: Vec::new(),
        channels: 3,
        height: 32,
        width: 32,
    };
    for file in files {
        let path = dir.join(file);
        if !path.is_file() {
            return Err(VitError::MissingDataset {
                path,
                hint: "expected the CIFAR binary version (e.g. cifar-10-batches-bin/); pass the folder holding the .bin files".into(),
            });
        }
        let data = read_file(&path)?;
        let record = label_bytes + PIXELS;
        if data.is_empty() || data.len() % record != 0 {
            return Err(VitError::BadData {
                path,
                reason: format!(
                    "{} bytes is not a whole number of {record}-byte records (truncated?)",
                    data.len()
                ),
            });
        }
        for rec in data.chunks_exact(record) {
            // CIFAR-100 stores (coarse, fine): the fine label is the last label byte.
            let label = rec[label_bytes - 1] as u32;
            if label >= classes {
                return Err(VitError::BadData {
                    path: dir.join(file),
                    reason: format!("label {label} out of range 0..{classes}"),
                });
            }
            out.labels.push(label);
            out.pixels.extend_from_slice(&rec[label_bytes..]);
        }
    }
    Ok(out)
}

fn class_names(dir: &Path, file: &str, count: usize) -> Vec<String> {
    let names: Vec<String> = std::fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if names.len() == count {
        names
    } else {
        (0..count).map(|i| i.to_string()).collect()
    }
}

pub fn load_cifar10(dir: &Path) -> Result<(ImageDataset, ImageDataset, Vec<String>)> {
    let train = read_batches(
        dir,
        &[
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
        ],
        1,
        10,
    )?;
    let test = read_batches(dir, &["test_batch.bin"], 1, 10)?;
    Ok((train, test, class_names(dir, "batches.meta.txt", 10)))
}

pub fn load_cifar100(dir: &Path) -> Result<(ImageDataset, ImageDataset, Vec<String>)> {
    let train = read_batches(dir, &["train.bin"], 2, 100)?;
    let test = read_batches(dir, &["test.bin"], 2, 100)?;
    Ok((train, test, class_names(dir, "fine_label_names.txt", 100)))
}
