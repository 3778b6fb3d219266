//! The built-in dataset: ten kinds of shape drawn with random colour, size, position and
//! rotation on a noisy background. Deterministic from a seed, so a fresh clone trains with
//! no download.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::ImageDataset;

pub const SYNTHETIC_CLASSES: [&str; 10] = [
    "disc",
    "ring",
    "square",
    "square outline",
    "triangle",
    "cross",
    "star",
    "bar",
    "two dots",
    "half disc",
];

/// Whether the point (u, v), in shape coordinates (shape radius 1, unrotated), lies inside
/// the shape of class `class`.
fn inside(class: usize, u: f32, v: f32) -> bool {
    let r = (u * u + v * v).sqrt();
    match class {
        0 => r <= 1.0,
        1 => (0.6..=1.0).contains(&r),
        2 => u.abs() <= 0.8 && v.abs() <= 0.8,
        3 => (0.5..=0.85).contains(&u.abs().max(v.abs())),
        4 => {
            // Equilateral triangle with vertices on the unit circle at 90°, 210° and 330°.
            let verts = [(0.0f32, 1.0f32), (-0.866, -0.5), (0.866, -0.5)];
            let edge =
                |(ax, ay): (f32, f32), (bx, by): (f32, f32)| (bx - ax) * (v - ay) - (by - ay) * (u - ax);
            let d = [
                edge(verts[0], verts[1]),
                edge(verts[1], verts[2]),
                edge(verts[2], verts[0]),
            ];
            d.iter().all(|&x| x >= 0.0) || d.iter().all(|&x| x <= 0.0)
        }
        5 => (u.abs() <= 0.25 && v.abs() <= 1.0) || (v.abs() <= 0.25 && u.abs() <= 1.0),
        6 => {
            let phi = v.atan2(u);
            r <= 0.4 + 0.6 * (2.5 * phi).cos().abs().powi(3)
        }
        7 => u.abs() <= 1.0 && v.abs() <= 0.22,
        8 => ((u - 0.55).powi(2) + v * v).sqrt() <= 0.38 || ((u + 0.55).powi(2) + v * v).sqrt() <= 0.38,
        9 => r <= 1.0 && v >= 0.0,
        _ => false,
    }
}

fn luma(c: [f32; 3]) -> f32 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

fn draw(rng: &mut StdRng, class: usize, size: usize, upright: bool, out: &mut [u8]) {
    let s = size as f32;
    // Random colours, redrawn until the shape is clearly brighter than the background, so
    // the classes differ by shape alone.
    let (bg, fg) = if upright {
        // Grey on dark grey: no colour for a contrastive task to match views by.
        let (bg, fg): (f32, f32) = (rng.random_range(0.0..0.35), rng.random_range(0.65..1.0));
        ([bg; 3], [fg; 3])
    } else {
        loop {
            let bg: [f32; 3] = [
                rng.random_range(0.0..1.0),
                rng.random_range(0.0..1.0),
                rng.random_range(0.0..1.0),
            ];
            let fg: [f32; 3] = [
                rng.random_range(0.0..1.0),
                rng.random_range(0.0..1.0),
                rng.random_range(0.0..1.0),
            ];
            if luma(fg) - luma(bg) > 0.3 {
                break (bg, fg);
            }
        }
    };
    let radius = rng.random_range(0.22..0.4) * s;
    let cx = rng.random_range(radius..s - radius);
    let cy = rng.random_range(radius..s - radius);
    let theta: f32 = if upright {
        0.0
    } else {
        rng.random_range(0.0..std::f32::consts::TAU)
    };
    let (sin, cos) = theta.sin_cos();
    let plane = size * size;
    for y in 0..size {
        for x in 0..size {
            // 2x2 supersampling for soft edges.
            let mut cover = 0.0;
            for (ox, oy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                let dx = (x as f32 + ox - cx) / radius;
                let dy = (y as f32 + oy - cy) / radius;
                let u = cos * dx + sin * dy;
                let v = -sin * dx + cos * dy;
                if inside(class, u, v) {
                    cover += 0.25;
                }
            }
            for c in 0..3 {
                let noise: f32 = rng.random_range(-0.04..0.04);
                let value = cover * fg[c] + (1.0 - cover) * bg[c] + noise;
                out[c * plane + y * size + x] = (value.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
}

/// `count` RGB images of `size`x`size`, labels cycling through the ten classes.
pub fn generate_shapes(count: usize, size: usize, seed: u64) -> ImageDataset {
    generate(count, size, seed, false)
}

/// The same shapes drawn upright in grey on dark grey: what self-supervised pretraining can
/// learn from (a 90° turn is visible, and no colour tells two images apart).
pub fn generate_upright_shapes(count: usize, size: usize, seed: u64) -> ImageDataset {
    generate(count, size, seed, true)
}

fn generate(count: usize, size: usize, seed: u64, upright: bool) -> ImageDataset {
    let mut rng = StdRng::seed_from_u64(seed);
    let plane = 3 * size * size;
    let mut pixels = vec![0u8; count * plane];
    let mut labels = Vec::with_capacity(count);
    for (i, img) in pixels.chunks_exact_mut(plane).enumerate() {
        let class = i % SYNTHETIC_CLASSES.len();
        draw(&mut rng, class, size, upright, img);
        labels.push(class as u32);
    }
    ImageDataset {
        pixels,
        labels,
        channels: 3,
        height: size,
        width: size,
    }
}
