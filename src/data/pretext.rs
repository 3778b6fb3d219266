//! SiT's pretext pipeline on host images: exact 90° rotations, and the four corruptions of
//! the v1 design (grayscale block, blurred block, blocks dropped to noise, blocks replaced
//! from another image of the batch).
//!
//! A corruption is drawn as a plan (which image, which block, which kernel) and then applied,
//! so that a reference implementation can apply the same plan and be compared exactly. The
//! draws follow the official `engine.py` (numpy's `randint` upper bounds are exclusive).

use rand::Rng;

/// A block of rows `r0..r1` and columns `c0..c1` (half-open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub r0: usize,
    pub r1: usize,
    pub c0: usize,
    pub c1: usize,
}

impl Region {
    pub fn area(&self) -> usize {
        (self.r1 - self.r0) * (self.c1 - self.c0)
    }
}

/// One corruption of one image of the batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Corruption {
    /// Every channel replaced by the mean over channels.
    Gray(Region),
    /// A Gaussian blur of the block alone (odd `kernel`, reflected at the block's edges).
    Blur {
        region: Region,
        kernel: usize,
        sigma: f32,
    },
    /// Filled with N(0, 1) noise (in normalised pixel space).
    Noise(Region),
    /// Copied from the same place of image `from` of the batch, as that image is at this
    /// moment (corrupted already when it comes earlier in the batch).
    Copy { region: Region, from: usize },
}

/// Rotation `r` of {0°, 90° clockwise, 180°, 90° counter-clockwise} (torch's
/// `rot90(k = 0, -1, 2, 1)` over H and W) of a square `[C, S, S]` image.
pub fn rotate(img: &[f32], channels: usize, side: usize, r: u32) -> Vec<f32> {
    let plane = side * side;
    let mut out = vec![0f32; img.len()];
    for c in 0..channels {
        let (src, dst) = (
            &img[c * plane..(c + 1) * plane],
            &mut out[c * plane..(c + 1) * plane],
        );
        for y in 0..side {
            for x in 0..side {
                let (sy, sx) = match r % 4 {
                    0 => (y, x),
                    1 => (side - 1 - x, y),
                    2 => (side - 1 - y, side - 1 - x),
                    _ => (x, side - 1 - y),
                };
                dst[y * side + x] = src[sy * side + sx];
            }
        }
    }
    out
}

/// `randint(lo, hi)`: uniform in `lo..hi`, or `lo` when the range is empty.
fn randint(rng: &mut impl Rng, lo: usize, hi: usize) -> usize {
    if hi > lo { rng.random_range(lo..hi) } else { lo }
}

/// The shortest block side the official code allows: 5% of the side (at least one pixel).
fn tolerance(side: usize) -> usize {
    (side / 20).max(1)
}

/// A block whose extent beyond its corner is drawn from `min..max` (clipped at the border).
fn region(rng: &mut impl Rng, h: usize, w: usize, max: [usize; 2]) -> Region {
    let (th, tw) = (tolerance(h), tolerance(w));
    let r0 = randint(rng, 0, h - th.min(h - 1));
    let c0 = randint(rng, 0, w - tw.min(w - 1));
    let r1 = (randint(rng, th, max[0].max(th + 1)) + r0).min(h);
    let c1 = (randint(rng, tw, max[1].max(tw + 1)) + c0).min(w);
    Region {
        r0,
        r1: r1.max(r0 + 1),
        c0,
        c1: c1.max(c0 + 1),
    }
}

/// Blocks of at most a quarter of each side until they cover `U(0, 0.3)` of the image
/// (overlaps counted twice): `drop_rand_patches`.
fn dropped_regions(rng: &mut impl Rng, h: usize, w: usize) -> Vec<Region> {
    let budget = rng.random_range(0.0..0.3) * (h * w) as f64;
    let max = [h / 4, w / 4];
    let mut covered = 0usize;
    let mut out = Vec::new();
    while (covered as f64) < budget {
        let r = region(rng, h, w, max);
        covered += r.area();
        out.push(r);
    }
    out
}

/// The official corruption of a batch of `n` images of `h`×`w`, image by image: a grayscale
/// block, a blurred block (kernel 3..15, σ in 0.1..5.1), noise blocks, and — unless the
/// randomly picked image is itself — blocks replaced from another image.
pub fn draw_corruptions(rng: &mut impl Rng, n: usize, h: usize, w: usize) -> Vec<(usize, Corruption)> {
    let mut plan = Vec::new();
    for i in 0..n {
        plan.push((i, Corruption::Gray(region(rng, h, w, [h, w]))));
        let kernel = 2 * (randint(rng, 3, 16) / 2) + 1;
        let sigma = rng.random_range(0.0..1.0f32) * 5.0 + 0.1;
        let block = region(rng, h, w, [h, w]);
        plan.push((
            i,
            Corruption::Blur {
                region: block,
                kernel,
                sigma,
            },
        ));
        plan.extend(
            dropped_regions(rng, h, w)
                .into_iter()
                .map(|r| (i, Corruption::Noise(r))),
        );
        let from = randint(rng, 0, n);
        if from != i {
            plan.extend(
                dropped_regions(rng, h, w)
                    .into_iter()
                    .map(|region| (i, Corruption::Copy { region, from })),
            );
        }
    }
    plan
}

/// A normalised Gaussian of odd size `k` (kornia's `get_gaussian_kernel1d`).
pub fn gaussian_kernel(k: usize, sigma: f32) -> Vec<f32> {
    let half = (k / 2) as f32;
    let g: Vec<f32> = (0..k)
        .map(|i| {
            let x = i as f32 - half;
            (-x * x / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let sum: f32 = g.iter().sum();
    g.into_iter().map(|v| v / sum).collect()
}

/// Index `i` (possibly outside `0..n`) reflected into `0..n` without repeating the edge
/// (`reflect` padding), folding as often as needed for blocks shorter than the kernel.
fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    (if m >= n as isize { period - m } else { m }) as usize
}

/// Applies `plan` to `images` (`[N, C, H, W]`, in place, in the plan's order); noise values
/// come from `noise` in row-major order of each noise block (channel, row, column).
pub fn apply_corruptions(
    images: &mut [f32],
    shape: [usize; 4],
    plan: &[(usize, Corruption)],
    noise: &mut dyn FnMut() -> f32,
) {
    let [_, c, h, w] = shape;
    let (plane, len) = (h * w, c * h * w);
    for &(i, op) in plan {
        match op {
            Corruption::Gray(r) => {
                let img = &mut images[i * len..(i + 1) * len];
                for y in r.r0..r.r1 {
                    for x in r.c0..r.c1 {
                        let mean = (0..c).map(|ch| img[ch * plane + y * w + x]).sum::<f32>() / c as f32;
                        for ch in 0..c {
                            img[ch * plane + y * w + x] = mean;
                        }
                    }
                }
            }
            Corruption::Blur {
                region,
                kernel,
                sigma,
            } => blur_region(&mut images[i * len..(i + 1) * len], c, w, region, kernel, sigma),
            Corruption::Noise(r) => {
                let img = &mut images[i * len..(i + 1) * len];
                for ch in 0..c {
                    for y in r.r0..r.r1 {
                        for x in r.c0..r.c1 {
                            img[ch * plane + y * w + x] = noise();
                        }
                    }
                }
            }
            Corruption::Copy { region: r, from } => {
                for ch in 0..c {
                    for y in r.r0..r.r1 {
                        for x in r.c0..r.c1 {
                            images[i * len + ch * plane + y * w + x] =
                                images[from * len + ch * plane + y * w + x];
                        }
                    }
                }
            }
        }
    }
}

/// A separable Gaussian blur of one block of a `[C, H, W]` image, the block taken alone.
fn blur_region(img: &mut [f32], channels: usize, w: usize, r: Region, kernel: usize, sigma: f32) {
    let g = gaussian_kernel(kernel, sigma);
    let half = (kernel / 2) as isize;
    let (bh, bw) = (r.r1 - r.r0, r.c1 - r.c0);
    let plane = img.len() / channels;
    let mut block = vec![0f32; bh * bw];
    let mut tmp = vec![0f32; bh * bw];
    for ch in 0..channels {
        let base = ch * plane;
        for y in 0..bh {
            for x in 0..bw {
                block[y * bw + x] = img[base + (r.r0 + y) * w + r.c0 + x];
            }
        }
        for y in 0..bh {
            for x in 0..bw {
                tmp[y * bw + x] = g
                    .iter()
                    .enumerate()
                    .map(|(k, gk)| gk * block[y * bw + reflect(x as isize + k as isize - half, bw)])
                    .sum();
            }
        }
        for y in 0..bh {
            for x in 0..bw {
                img[base + (r.r0 + y) * w + r.c0 + x] = g
                    .iter()
                    .enumerate()
                    .map(|(k, gk)| gk * tmp[reflect(y as isize + k as isize - half, bh) * bw + x])
                    .sum();
            }
        }
    }
}

/// Colour jitter of one normalised `[C, H, W]` image as torchvision's `ColorJitter(s, s, s)`
/// (what SiT's timm transform applies with `color_jitter = 0.4`): brightness, contrast and
/// saturation factors drawn from `[1 − s, 1 + s]`, applied in that order on pixels in [0, 1]
/// (grey images: brightness and contrast). `mean`/`std` are the normalisation per channel.
pub fn color_jitter(img: &mut [f32], mean: &[f32], std: &[f32], strength: f32, rng: &mut impl Rng) {
    let c = mean.len();
    let plane = img.len() / c;
    let mut factor = || rng.random_range(1.0 - strength..=1.0 + strength);
    let (brightness, contrast, saturation) = (factor(), factor(), factor());
    let mut px: Vec<f32> = img
        .iter()
        .enumerate()
        .map(|(i, v)| v * std[i / plane] + mean[i / plane])
        .collect();
    let luma = |px: &[f32], i: usize| {
        if c == 3 {
            0.299 * px[i] + 0.587 * px[plane + i] + 0.114 * px[2 * plane + i]
        } else {
            px[i]
        }
    };
    for v in px.iter_mut() {
        *v = (*v * brightness).clamp(0.0, 1.0);
    }
    let grey_mean = (0..plane).map(|i| luma(&px, i)).sum::<f32>() / plane as f32;
    for v in px.iter_mut() {
        *v = ((*v - grey_mean) * contrast + grey_mean).clamp(0.0, 1.0);
    }
    if c == 3 {
        for i in 0..plane {
            let g = luma(&px, i);
            for ch in 0..3 {
                let v = &mut px[ch * plane + i];
                *v = ((*v - g) * saturation + g).clamp(0.0, 1.0);
            }
        }
    }
    for (i, v) in img.iter_mut().enumerate() {
        *v = (px[i] - mean[i / plane]) / std[i / plane];
    }
}

/// A standard normal draw (Box–Muller).
pub fn standard_normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflection_folds_like_reflect_padding() {
        // n = 4: … 2 1 | 0 1 2 3 | 2 1 0 1 …
        let got: Vec<usize> = (-3..8).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1]);
        assert_eq!(reflect(-5, 1), 0);
    }

    #[test]
    fn four_rotations_are_the_identity_and_one_is_clockwise() {
        let img: Vec<f32> = (0..2 * 9).map(|v| v as f32).collect();
        let mut x = img.clone();
        for _ in 0..4 {
            x = rotate(&x, 2, 3, 1);
        }
        assert_eq!(x, img);
        // Clockwise: the top row becomes the right column.
        let r = rotate(&img, 2, 3, 1);
        assert_eq!([r[2], r[5], r[8]], [0.0, 1.0, 2.0]);
        assert_eq!(rotate(&rotate(&img, 2, 3, 1), 2, 3, 3), img);
    }
}
