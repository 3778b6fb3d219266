//! Batches of normalised f32 images, assembled on a background thread so the model never
//! waits for augmentation.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::ImageDataset;

/// Training-time augmentation: random crop after zero padding, and horizontal flip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Augment {
    pub crop_padding: usize,
    pub hflip: bool,
}

/// Pixel scaling `(x/255 - mean) / std` per data channel, then conversion to the model's
/// channel count (grey replicated to RGB, or RGB to luma).
#[derive(Debug, Clone)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub out_channels: usize,
}

impl Normalize {
    /// The normalisation of data described by `info` for a model with `model_channels` inputs,
    /// checked: one mean and a positive std per data channel, and a channel conversion that
    /// exists. What every reader of a (possibly hand-edited) `config.json` goes through.
    pub fn checked(info: &super::DataInfo, model_channels: usize) -> crate::Result<Self> {
        let c = info.channels;
        let bad = |m: String| Err(crate::VitError::Config(m));
        if info.mean.len() != c || info.std.len() != c {
            return bad(format!(
                "the data has {c} channel(s) but {} mean and {} std value(s)",
                info.mean.len(),
                info.std.len()
            ));
        }
        if let Some(s) = info.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return bad(format!("std {s} is not a positive number"));
        }
        if info.mean.iter().any(|m| !m.is_finite()) {
            return bad("a mean is not a finite number".into());
        }
        let norm = Normalize {
            mean: info.mean.clone(),
            std: info.std.clone(),
            out_channels: model_channels,
        };
        norm.check_channels(c)?;
        Ok(norm)
    }

    /// Normalises one `[C, H, W]` byte image into `out` (`[out_channels, H, W]`).
    /// `fetch(c, y, x)` returns the source byte or `None` for padding (which reads as black).
    fn write(
        &self,
        channels: usize,
        h: usize,
        w: usize,
        fetch: impl Fn(usize, usize, usize) -> Option<u8>,
        out: &mut [f32],
    ) {
        let plane = h * w;
        let value = |c: usize, y: usize, x: usize| {
            (fetch(c, y, x).unwrap_or(0) as f32 / 255.0 - self.mean[c]) / self.std[c]
        };
        match (channels, self.out_channels) {
            (a, b) if a == b => {
                for c in 0..a {
                    for y in 0..h {
                        for x in 0..w {
                            out[c * plane + y * w + x] = value(c, y, x);
                        }
                    }
                }
            }
            (1, n) => {
                for y in 0..h {
                    for x in 0..w {
                        let v = value(0, y, x);
                        for c in 0..n {
                            out[c * plane + y * w + x] = v;
                        }
                    }
                }
            }
            (3, 1) => {
                for y in 0..h {
                    for x in 0..w {
                        out[y * w + x] =
                            0.299 * value(0, y, x) + 0.587 * value(1, y, x) + 0.114 * value(2, y, x);
                    }
                }
            }
            (a, b) => panic!("channel conversion {a} -> {b} must be rejected before loading"),
        }
    }

    /// An error unless images with `data_channels` channels can be converted for the model.
    pub fn check_channels(&self, data_channels: usize) -> crate::Result<()> {
        if self.supports(data_channels) {
            Ok(())
        } else {
            Err(crate::VitError::Config(format!(
                "cannot feed {data_channels}-channel images to a {}-channel model",
                self.out_channels
            )))
        }
    }

    pub fn supports(&self, data_channels: usize) -> bool {
        data_channels == self.out_channels
            || data_channels == 1
            || (data_channels == 3 && self.out_channels == 1)
    }

    /// A normalised `[C, H, W]` image (as this normalisation writes it) back to bytes, values
    /// outside the pixel range clipped. A grey dataset fed to an RGB model uses its one
    /// channel's statistics for every channel.
    pub fn to_bytes(&self, img: &[f32], h: usize, w: usize) -> Vec<u8> {
        let plane = (h * w).max(1);
        let last = self.mean.len().saturating_sub(1);
        img.iter()
            .enumerate()
            .map(|(i, x)| {
                let c = (i / plane).min(last);
                ((x * self.std[c] + self.mean[c]) * 255.0)
                    .round()
                    .clamp(0.0, 255.0) as u8
            })
            .collect()
    }

    /// One image as model input.
    pub fn image(&self, img: &[u8], channels: usize, h: usize, w: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.out_channels * h * w];
        self.write(
            channels,
            h,
            w,
            |c, y, x| Some(img[c * h * w + y * w + x]),
            &mut out,
        );
        out
    }
}

/// Turns a batch's drawn views into what a task trains on, given the input normalisation and
/// a generator seeded per batch.
pub type Prepare = Arc<dyn Fn(&mut Batch, &Normalize, &mut StdRng) + Send + Sync>;

/// What a training task draws per image.
#[derive(Clone)]
pub struct BatchSpec {
    /// Independently augmented views of each image (1, or 2 for contrastive tasks).
    pub views: usize,
    /// Whether the labels are handed out (a self-supervised task must not see them).
    pub labels: bool,
    /// Turns the drawn views into what the task trains on (e.g. SiT's rotations and
    /// corruptions), on the loader's thread with the input normalisation and a generator
    /// seeded per batch.
    pub prepare: Option<Prepare>,
}

impl BatchSpec {
    /// One view with its label: supervised classification.
    pub const LABELLED: BatchSpec = BatchSpec {
        views: 1,
        labels: true,
        prepare: None,
    };
}

#[derive(Clone)]
pub struct Batch {
    /// Per view, `[B, C, H, W]` row-major.
    pub views: Vec<Vec<f32>>,
    /// The images' labels, when the spec asked for them.
    pub labels: Option<Vec<u32>>,
    /// Targets the pipeline made (SiT: each view's rotation), view after view.
    pub targets: Option<Vec<u32>>,
    /// The images' indices in the dataset (for whatever else a task pairs with an image).
    pub indices: Vec<usize>,
    pub shape: [usize; 4],
}

impl Batch {
    /// The images of the first view, `[B, C, H, W]` row-major.
    pub fn into_images(self) -> Vec<f32> {
        self.views.into_iter().next().unwrap_or_default()
    }

    /// The labels, or an error when this batch was drawn without them.
    pub fn labels(&self) -> crate::Result<&[u32]> {
        self.labels
            .as_deref()
            .ok_or_else(|| crate::VitError::Config("this batch was drawn without labels".into()))
    }

    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// Iterates over batches of `data` in `order`, with up to two batches prepared ahead.
pub struct BatchLoader {
    rx: Receiver<Batch>,
    worker: Option<JoinHandle<()>>,
    pub num_batches: usize,
}

/// A permutation of `0..n` fixed by `seed`.
pub fn shuffled_indices(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    order
}

impl BatchLoader {
    /// Every image of `data` once, in order, labelled, without augmentation: what evaluation
    /// and feature extraction read.
    pub fn in_order(data: Arc<ImageDataset>, batch_size: usize, norm: Normalize) -> Self {
        let order: Vec<usize> = (0..data.len()).collect();
        Self::new(data, order, batch_size, None, 0, norm, false, BatchSpec::LABELLED)
    }

    /// Batches are reproducible from `seed`. Each view of an image draws its own crop and flip.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        data: Arc<ImageDataset>,
        order: Vec<usize>,
        batch_size: usize,
        augment: Option<Augment>,
        seed: u64,
        norm: Normalize,
        drop_last: bool,
        spec: BatchSpec,
    ) -> Self {
        assert!(
            norm.supports(data.channels),
            "channel conversion must be checked by the caller"
        );
        let batch_size = batch_size.max(1);
        let views = spec.views.max(1);
        let num_batches = if drop_last {
            order.len() / batch_size
        } else {
            order.len().div_ceil(batch_size)
        };
        let (tx, rx) = sync_channel(2);
        let worker = std::thread::spawn(move || {
            let (c, h, w) = (data.channels, data.height, data.width);
            let out_len = norm.out_channels * h * w;
            for (bi, idx) in order.chunks(batch_size).take(num_batches).enumerate() {
                let mut rng =
                    StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(bi as u64));
                let mut images = vec![vec![0f32; idx.len() * out_len]; views];
                for (k, &i) in idx.iter().enumerate() {
                    let img = data.image(i);
                    for view in images.iter_mut() {
                        let out = &mut view[k * out_len..(k + 1) * out_len];
                        match augment {
                            Some(aug) => {
                                let p = aug.crop_padding as i64;
                                let dy = if p > 0 { rng.random_range(0..=2 * p) - p } else { 0 };
                                let dx = if p > 0 { rng.random_range(0..=2 * p) - p } else { 0 };
                                let flip = aug.hflip && rng.random_bool(0.5);
                                norm.write(
                                    c,
                                    h,
                                    w,
                                    |ch, y, x| {
                                        let x = if flip { w - 1 - x } else { x };
                                        let (sy, sx) = (y as i64 + dy, x as i64 + dx);
                                        (sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w)
                                            .then(|| img[ch * h * w + sy as usize * w + sx as usize])
                                    },
                                    out,
                                );
                            }
                            None => norm.write(c, h, w, |ch, y, x| Some(img[ch * h * w + y * w + x]), out),
                        }
                    }
                }
                let mut batch = Batch {
                    views: images,
                    labels: spec.labels.then(|| idx.iter().map(|&i| data.labels[i]).collect()),
                    targets: None,
                    indices: idx.to_vec(),
                    shape: [idx.len(), norm.out_channels, h, w],
                };
                if let Some(prepare) = &spec.prepare {
                    prepare(&mut batch, &norm, &mut rng);
                }
                if tx.send(batch).is_err() {
                    return; // the consumer stopped early
                }
            }
        });
        Self {
            rx,
            worker: Some(worker),
            num_batches,
        }
    }
}

impl Iterator for BatchLoader {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        self.rx.recv().ok()
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        // Dropping the receiver first makes a blocked worker's send fail, so join returns.
        let (_, dummy) = sync_channel(0);
        drop(std::mem::replace(&mut self.rx, dummy));
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
