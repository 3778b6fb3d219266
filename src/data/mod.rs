//! Datasets held in memory as 8-bit images, their readers, augmentation and the batch loader.

mod captions;
mod cifar;
mod folder;
mod idx;
mod loader;
pub mod pretext;
mod synthetic;

pub use captions::{Attribute, CaptionSplits, load_caption_list};
pub use cifar::{load_cifar10, load_cifar100};
pub use folder::{FolderOptions, load_image_file, load_image_folder};
pub use idx::{load_fashion_mnist, read_idx_images, read_idx_labels};
pub use loader::{Augment, Batch, BatchLoader, BatchSpec, Normalize, Prepare, shuffled_indices};
pub use synthetic::{
    CAPTION_ATTRIBUTES, CAPTION_COLOURS, CaptionedShapes, SYNTHETIC_CLASSES, generate_captioned_shapes,
    generate_shapes, generate_upright_shapes,
};

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Result, VitError};

/// Where the Debian package `dataset-fashion-mnist` puts its files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Images stored channel-first (`[N, C, H, W]`, row-major) as bytes, with integer labels.
#[derive(Debug, Clone)]
pub struct ImageDataset {
    pub pixels: Vec<u8>,
    pub labels: Vec<u32>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageDataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Per-channel mean and standard deviation of the pixels scaled to [0, 1].
    pub fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        let plane = self.height * self.width;
        let mut sum = vec![0f64; self.channels];
        let mut sq = vec![0f64; self.channels];
        for img in self.pixels.chunks_exact(self.image_len()) {
            for (c, chan) in img.chunks_exact(plane).enumerate() {
                for &p in chan {
                    let v = p as f64 / 255.0;
                    sum[c] += v;
                    sq[c] += v * v;
                }
            }
        }
        let count = (self.len() * plane).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| ((s / count - m * m).max(1e-12)).sqrt() as f32)
            .collect();
        (mean.into_iter().map(|m| m as f32).collect(), std)
    }

    /// `fraction` of each class's images (at least one per class present), chosen by `seed`
    /// and kept in their original order: the same subset for the same arguments.
    pub fn per_class_subset(self, fraction: f64, seed: u64) -> Self {
        if fraction >= 1.0 {
            return self;
        }
        // SplitMix64 of (seed, index): a fixed pseudo-random rank per image.
        let rank = |i: usize| {
            let mut z = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let mut by_class: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
        for (i, &l) in self.labels.iter().enumerate() {
            by_class.entry(l).or_default().push(i);
        }
        let mut keep: Vec<usize> = by_class
            .into_values()
            .flat_map(|mut idx| {
                let n = ((idx.len() as f64 * fraction).round() as usize).max(1);
                idx.sort_by_key(|&i| rank(i));
                idx.truncate(n);
                idx
            })
            .collect();
        keep.sort_unstable();
        let mut pixels = Vec::with_capacity(keep.len() * self.image_len());
        for &i in &keep {
            pixels.extend_from_slice(self.image(i));
        }
        Self {
            labels: keep.iter().map(|&i| self.labels[i]).collect(),
            pixels,
            ..self
        }
    }

    /// The same images resized (bilinear) to `height` x `width`; a no-op when they already are.
    pub fn resized(self, height: usize, width: usize) -> Self {
        if self.height == height && self.width == width {
            return self;
        }
        let mut pixels = Vec::with_capacity(self.len() * self.channels * height * width);
        for i in 0..self.len() {
            pixels.extend(resize_bilinear(
                self.image(i),
                self.channels,
                self.height,
                self.width,
                height,
                width,
            ));
        }
        Self {
            pixels,
            height,
            width,
            ..self
        }
    }
}

/// Bilinear resize of one `[C, H, W]` byte image, pixel centres aligned (align_corners=False).
pub fn resize_bilinear(src: &[u8], c: usize, h: usize, w: usize, nh: usize, nw: usize) -> Vec<u8> {
    let mut out = vec![0u8; c * nh * nw];
    let sy = h as f32 / nh as f32;
    let sx = w as f32 / nw as f32;
    for y in 0..nh {
        let fy = ((y as f32 + 0.5) * sy - 0.5).clamp(0.0, (h - 1) as f32);
        let (y0, wy) = (fy.floor() as usize, fy - fy.floor());
        let y1 = (y0 + 1).min(h - 1);
        for x in 0..nw {
            let fx = ((x as f32 + 0.5) * sx - 0.5).clamp(0.0, (w - 1) as f32);
            let (x0, wx) = (fx.floor() as usize, fx - fx.floor());
            let x1 = (x0 + 1).min(w - 1);
            for ch in 0..c {
                let p = |yy: usize, xx: usize| src[ch * h * w + yy * w + xx] as f32;
                let v = (1.0 - wy) * ((1.0 - wx) * p(y0, x0) + wx * p(y0, x1))
                    + wy * ((1.0 - wx) * p(y1, x0) + wx * p(y1, x1));
                out[ch * nh * nw + y * nw + x] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// A dataset with its train and test splits and what a model needs to know about it.
#[derive(Debug, Clone)]
pub struct DatasetSplits {
    pub info: DataInfo,
    pub train: ImageDataset,
    pub test: ImageDataset,
    /// Each image's caption (image–caption data), in the splits' order.
    pub captions: Option<CaptionSplits>,
}

/// Saved with each checkpoint: how to turn an image into the model's input, and what the
/// outputs mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    pub name: String,
    pub class_names: Vec<String>,
    pub channels: usize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl DataInfo {
    /// The name of class `k` (its index when the data has no name for it).
    pub fn class_name(&self, k: usize) -> String {
        self.class_names.get(k).cloned().unwrap_or_else(|| k.to_string())
    }
}

/// Sizes of the built-in dataset's fixed splits.
pub const SYNTHETIC_TRAIN: usize = 20_000;
pub const SYNTHETIC_TEST: usize = 2_000;

pub const DATASET_NAMES: &str = "synthetic, synthetic-upright, synthetic-captions, fashion-mnist[:DIR], cifar10:DIR, \
                                 cifar100:DIR, folder:DIR, captions:FILE";

/// Which dataset a `--data` argument names.
#[derive(Debug, Clone, PartialEq)]
pub enum DataSource {
    Synthetic,
    /// The generated shapes upright, grey on dark grey (for self-supervised trials).
    SyntheticUpright,
    FashionMnist(PathBuf),
    Cifar10(PathBuf),
    Cifar100(PathBuf),
    Folder(PathBuf),
    /// The built-in shapes with a generated caption each (shape, colour, size, position).
    SyntheticCaptions,
    /// A caption list (JSONL or TSV) of image paths and captions.
    Captions(PathBuf),
}

impl DataSource {
    pub fn parse(spec: &str) -> Result<Self> {
        let (name, dir) = match spec.split_once(':') {
            Some((n, d)) => (n, Some(PathBuf::from(d))),
            None => (spec, None),
        };
        let need_dir = |dir: Option<PathBuf>| {
            dir.ok_or_else(|| VitError::Config(format!("dataset '{name}' needs a directory: {name}:DIR")))
        };
        Ok(match name {
            "synthetic" | "shapes" => DataSource::Synthetic,
            "synthetic-upright" => DataSource::SyntheticUpright,
            "fashion-mnist" | "fashion_mnist" | "fmnist" => {
                DataSource::FashionMnist(dir.unwrap_or_else(|| PathBuf::from(FASHION_MNIST_DIR)))
            }
            "cifar10" | "cifar-10" => DataSource::Cifar10(need_dir(dir)?),
            "cifar100" | "cifar-100" => DataSource::Cifar100(need_dir(dir)?),
            "folder" | "imagefolder" => DataSource::Folder(need_dir(dir)?),
            "synthetic-captions" => DataSource::SyntheticCaptions,
            "captions" => DataSource::Captions(dir.ok_or_else(|| {
                VitError::Config("dataset 'captions' needs a caption list: captions:FILE".into())
            })?),
            _ => {
                return Err(VitError::UnknownDataset {
                    name: spec.to_string(),
                    valid: DATASET_NAMES.to_string(),
                });
            }
        })
    }

    /// The `--data` argument that names this dataset again, with any folder made absolute:
    /// the dataset's identity, saved with a run (so `folder:A` and `folder:B` differ, and
    /// `eval` finds the same data from another working directory).
    pub fn spec(&self) -> String {
        let abs = |d: &Path| {
            std::path::absolute(d)
                .unwrap_or_else(|_| d.to_path_buf())
                .display()
                .to_string()
        };
        match self {
            DataSource::Synthetic => "synthetic".into(),
            DataSource::SyntheticUpright => "synthetic-upright".into(),
            DataSource::FashionMnist(d) if d == Path::new(FASHION_MNIST_DIR) => "fashion-mnist".into(),
            DataSource::FashionMnist(d) => format!("fashion-mnist:{}", abs(d)),
            DataSource::Cifar10(d) => format!("cifar10:{}", abs(d)),
            DataSource::Cifar100(d) => format!("cifar100:{}", abs(d)),
            DataSource::Folder(d) => format!("folder:{}", abs(d)),
            DataSource::SyntheticCaptions => "synthetic-captions".into(),
            DataSource::Captions(f) => format!("captions:{}", abs(f)),
        }
    }

    /// Default training augmentation for this kind of data.
    pub fn default_augment(&self) -> Augment {
        match self {
            // Positions and left/right are what the captions say: no crop or flip.
            DataSource::Synthetic | DataSource::SyntheticCaptions => Augment {
                crop_padding: 0,
                hflip: false,
            },
            DataSource::FashionMnist(_) => Augment {
                crop_padding: 2,
                hflip: true,
            },
            _ => Augment {
                crop_padding: 4,
                hflip: true,
            },
        }
    }

    /// Reads both splits. `img_size` is the size ImageFolder images are resized to.
    pub fn load(&self, img_size: [usize; 2], folder: &FolderOptions) -> Result<DatasetSplits> {
        let mut captions = None;
        let (_, train, test, class_names, stats) = match self {
            DataSource::SyntheticCaptions => {
                let train = generate_captioned_shapes(SYNTHETIC_TRAIN, 32, 1);
                let test = generate_captioned_shapes(SYNTHETIC_TEST, 32, 2);
                captions = Some(CaptionSplits {
                    train: train.captions,
                    test: test.captions,
                    attributes: CAPTION_ATTRIBUTES
                        .iter()
                        .zip(train.attributes.into_iter().zip(test.attributes))
                        .map(|(name, (train, test))| Attribute {
                            name: name.to_string(),
                            train,
                            test,
                        })
                        .collect(),
                });
                let names = SYNTHETIC_CLASSES.iter().map(|s| s.to_string()).collect();
                ("synthetic-captions", train.images, test.images, names, None)
            }
            DataSource::Captions(list) => {
                let (train, test, caps, names) = load_caption_list(list, img_size, folder)?;
                captions = Some(caps);
                ("captions", train, test, names, None)
            }
            DataSource::Synthetic | DataSource::SyntheticUpright => {
                let upright = *self == DataSource::SyntheticUpright;
                let make = if upright {
                    generate_upright_shapes
                } else {
                    generate_shapes
                };
                let train = make(SYNTHETIC_TRAIN, 32, 1);
                let test = make(SYNTHETIC_TEST, 32, 2);
                (
                    if upright { "synthetic-upright" } else { "synthetic" },
                    train,
                    test,
                    SYNTHETIC_CLASSES.iter().map(|s| s.to_string()).collect(),
                    None,
                )
            }
            DataSource::FashionMnist(dir) => {
                let (train, test) = load_fashion_mnist(dir)?;
                let names = FASHION_MNIST_CLASSES.iter().map(|s| s.to_string()).collect();
                (
                    "fashion-mnist",
                    train,
                    test,
                    names,
                    Some((vec![0.2860], vec![0.3530])),
                )
            }
            DataSource::Cifar10(dir) => {
                let (train, test, names) = load_cifar10(dir)?;
                (
                    "cifar10",
                    train,
                    test,
                    names,
                    Some((vec![0.4914, 0.4822, 0.4465], vec![0.2470, 0.2435, 0.2616])),
                )
            }
            DataSource::Cifar100(dir) => {
                let (train, test, names) = load_cifar100(dir)?;
                (
                    "cifar100",
                    train,
                    test,
                    names,
                    Some((vec![0.5071, 0.4865, 0.4409], vec![0.2673, 0.2564, 0.2762])),
                )
            }
            DataSource::Folder(dir) => {
                let (train, test, names) = load_image_folder(dir, img_size, folder)?;
                ("folder", train, test, names, None)
            }
        };
        let (mean, std) = stats.unwrap_or_else(|| train.channel_stats());
        Ok(DatasetSplits {
            info: DataInfo {
                name: self.spec(),
                class_names,
                channels: train.channels,
                mean,
                std,
            },
            train,
            test,
            captions,
        })
    }
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| VitError::io(path, e))
}
