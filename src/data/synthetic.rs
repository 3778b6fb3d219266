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

/// Where a shape was drawn: its centre, in pixels.
struct Placement {
    cx: f32,
    cy: f32,
}

/// Draws one shape of `class`. `colours` fixes (background, shape) colours; otherwise they
/// are random (grey when `upright`).
fn draw(
    rng: &mut StdRng,
    class: usize,
    size: usize,
    upright: bool,
    colours: Option<([f32; 3], [f32; 3])>,
    radius_range: std::ops::Range<f32>,
    out: &mut [u8],
) -> Placement {
    let s = size as f32;
    // Random colours, redrawn until the shape is clearly brighter than the background, so
    // the classes differ by shape alone.
    let (bg, fg) = if let Some(c) = colours {
        c
    } else if upright {
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
    let radius = rng.random_range(radius_range) * s;
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
    Placement { cx, cy }
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
        draw(&mut rng, class, size, upright, None, 0.22..0.4, img);
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

/// The named colours of the captioned shapes.
pub const CAPTION_COLOURS: [(&str, [f32; 3]); 8] = [
    ("red", [0.9, 0.1, 0.1]),
    ("green", [0.1, 0.75, 0.2]),
    ("blue", [0.15, 0.3, 0.95]),
    ("yellow", [0.95, 0.9, 0.1]),
    ("orange", [1.0, 0.55, 0.05]),
    ("purple", [0.6, 0.2, 0.8]),
    ("white", [0.95, 0.95, 0.95]),
    ("cyan", [0.1, 0.85, 0.9]),
];

/// Ways of saying one image: size, colour, shape, position.
const PHRASINGS: [&str; 5] = [
    "a {size} {colour} {shape} in the {position}",
    "a picture of a {colour} {shape}, {size}, at the {position}",
    "{size} {colour} {shape} near the {position}",
    "there is a {colour} {shape} in the {position} of the image",
    "a {colour} {shape} drawn {size} in the {position}",
];

/// The built-in shapes with words: each image's shape in one of [`CAPTION_COLOURS`] on a dark
/// grey background, small or large, somewhere in a 3x3 grid of places, and a caption that says
/// so in one of several phrasings.
pub struct CaptionedShapes {
    pub images: ImageDataset,
    pub captions: Vec<String>,
    /// Per image: shape, colour, size and position words.
    pub attributes: [Vec<String>; 4],
}

pub const CAPTION_ATTRIBUTES: [&str; 4] = ["shape", "colour", "size", "position"];

pub fn generate_captioned_shapes(count: usize, size: usize, seed: u64) -> CaptionedShapes {
    let mut rng = StdRng::seed_from_u64(seed);
    let plane = 3 * size * size;
    let mut pixels = vec![0u8; count * plane];
    let mut labels = Vec::with_capacity(count);
    let mut captions = Vec::with_capacity(count);
    let mut attributes: [Vec<String>; 4] = Default::default();
    for (i, img) in pixels.chunks_exact_mut(plane).enumerate() {
        let class = i % SYNTHETIC_CLASSES.len();
        let (colour, fg) = CAPTION_COLOURS[rng.random_range(0..CAPTION_COLOURS.len())];
        let bg = [rng.random_range(0.0..0.25); 3];
        let large = rng.random_bool(0.5);
        let range = if large { 0.33..0.4 } else { 0.2..0.26 };
        let at = draw(&mut rng, class, size, false, Some((bg, fg)), range, img);
        let third = |v: f32| {
            let f = v / size as f32;
            if f < 0.4 {
                0
            } else if f > 0.6 {
                2
            } else {
                1
            }
        };
        let position = match (third(at.cy), third(at.cx)) {
            (1, 1) => "centre".to_string(),
            (1, h) => ["left", "", "right"][h].to_string(),
            (v, 1) => ["top", "", "bottom"][v].to_string(),
            (v, h) => format!("{} {}", ["top", "", "bottom"][v], ["left", "", "right"][h]),
        };
        let words = [
            SYNTHETIC_CLASSES[class].to_string(),
            colour.to_string(),
            if large { "large" } else { "small" }.to_string(),
            position,
        ];
        let phrasing = PHRASINGS[rng.random_range(0..PHRASINGS.len())];
        captions.push(
            phrasing
                .replace("{shape}", &words[0])
                .replace("{colour}", &words[1])
                .replace("{size}", &words[2])
                .replace("{position}", &words[3]),
        );
        for (list, w) in attributes.iter_mut().zip(words) {
            list.push(w);
        }
        labels.push(class as u32);
    }
    CaptionedShapes {
        images: ImageDataset {
            pixels,
            labels,
            channels: 3,
            height: size,
            width: size,
        },
        captions,
        attributes,
    }
}
