//! PNG outputs drawn with plotters. Text uses the DejaVu Sans font compiled into the binary,
//! so a chart looks the same on every machine.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::{Result, VitError};

mod plots;
pub use plots::{
    LabelledBox, Series, TileGrid, boxes_png, overlay_png, tile_grid_png, upsample, viridis, xy_chart_png,
};

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// Makes "sans-serif" resolve to the embedded font.
pub fn register_fonts() {
    REGISTER.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> VitError {
    VitError::Other(format!("cannot draw {}: {e}", path.display()))
}

/// The colour of pixel `index` of a `[C, H, W]` byte image with 1 (grey) or 3 channels.
pub(crate) fn pixel_rgb(img: &[u8], channels: usize, plane: usize, index: usize) -> RGBColor {
    let at = |c: usize| img[if channels == 1 { 0 } else { c } * plane + index];
    RGBColor(at(0), at(1), at(2))
}

/// White → dark blue.
fn blue(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(lerp(247.0, 8.0), lerp(251.0, 48.0), lerp(255.0, 107.0))
}

/// A confusion matrix as a heat map: rows are true classes, columns predictions, cells
/// coloured by the row-normalised rate and labelled with counts.
pub fn confusion_matrix_png(
    path: &Path,
    confusion: &[Vec<u64>],
    class_names: &[String],
    title: &str,
) -> Result<()> {
    register_fonts();
    let k = confusion.len();
    let cell = if k <= 12 {
        56
    } else if k <= 30 {
        24
    } else {
        8
    };
    let margin_left = 150u32;
    let margin_top = 70u32;
    let grid = (cell * k) as u32;
    let (w, h) = (margin_left + grid + 40, margin_top + grid + 150);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let font = |size: u32| ("sans-serif", size).into_font();
    root.draw(&Text::new(
        title.to_string(),
        (margin_left as i32, 20),
        font(20).color(&BLACK),
    ))
    .map_err(|e| plot_err(path, e))?;
    let show_numbers = k <= 30;
    for (i, row) in confusion.iter().enumerate() {
        let total: u64 = row.iter().sum::<u64>().max(1);
        for (j, &count) in row.iter().enumerate() {
            let rate = count as f64 / total as f64;
            let x0 = (margin_left + (j * cell) as u32) as i32;
            let y0 = (margin_top + (i * cell) as u32) as i32;
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + cell as i32, y0 + cell as i32)],
                blue(rate).filled(),
            ))
            .map_err(|e| plot_err(path, e))?;
            if show_numbers {
                let colour = if rate > 0.5 { WHITE } else { BLACK };
                let size = if cell >= 40 { 13 } else { 9 };
                root.draw(&Text::new(
                    count.to_string(),
                    (
                        x0 + cell as i32 / 2 - 4 * count.to_string().len() as i32,
                        y0 + cell as i32 / 2 - 6,
                    ),
                    font(size).color(&colour),
                ))
                .map_err(|e| plot_err(path, e))?;
            }
        }
    }
    if k <= 30 {
        for (i, name) in class_names.iter().enumerate().take(k) {
            let y = (margin_top + (i * cell) as u32) as i32 + cell as i32 / 2 - 7;
            root.draw(&Text::new(name.clone(), (8, y), font(13).color(&BLACK)))
                .map_err(|e| plot_err(path, e))?;
            let x = (margin_left + (i * cell) as u32) as i32 + cell as i32 / 2 - 5;
            let style = font(13).transform(FontTransform::Rotate90).color(&BLACK);
            root.draw(&Text::new(
                name.clone(),
                (x, (margin_top + grid + 8) as i32),
                style,
            ))
            .map_err(|e| plot_err(path, e))?;
        }
    }
    root.draw(&Text::new(
        "predicted →".to_string(),
        ((margin_left + grid / 2) as i32 - 40, 48),
        font(14).color(&BLACK),
    ))
    .map_err(|e| plot_err(path, e))?;
    root.draw(&Text::new("true ↓".to_string(), (8, 48), font(14).color(&BLACK)))
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(())
}

/// A grid of dataset images (`[C, H, W]` bytes each, 1 or 3 channels), `cols` per row,
/// each scaled up by `zoom`, with `label` text above each tile.
pub fn image_grid_png(
    path: &Path,
    images: &[(&[u8], String)],
    channels: usize,
    height: usize,
    width: usize,
    cols: usize,
    zoom: usize,
) -> Result<()> {
    register_fonts();
    let cols = cols.max(1);
    let rows = images.len().div_ceil(cols);
    let (tw, th) = (width * zoom, height * zoom + 16);
    let (w, h) = ((cols * (tw + 6)) as u32 + 6, (rows * (th + 6)) as u32 + 6);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let plane = height * width;
    for (k, (img, label)) in images.iter().enumerate() {
        let x0 = 6 + (k % cols) * (tw + 6);
        let y0 = 6 + (k / cols) * (th + 6);
        root.draw(&Text::new(
            label.clone(),
            (x0 as i32, y0 as i32),
            ("sans-serif", 11).into_font().color(&BLACK),
        ))
        .map_err(|e| plot_err(path, e))?;
        for y in 0..height {
            for x in 0..width {
                let colour = pixel_rgb(img, channels, plane, y * width + x);
                let (px0, py0) = ((x0 + x * zoom) as i32, (y0 + 16 + y * zoom) as i32);
                root.draw(&Rectangle::new(
                    [(px0, py0), (px0 + zoom as i32, py0 + zoom as i32)],
                    colour.filled(),
                ))
                .map_err(|e| plot_err(path, e))?;
            }
        }
    }
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(())
}

/// One image beside its top labels as horizontal bars of their probabilities (the CLIP
/// paper's zero-shot figure): `[C, H, W]` bytes, `(label, probability)` best first.
pub fn label_bars_png(
    path: &Path,
    image: &[u8],
    channels: usize,
    height: usize,
    width: usize,
    labels: &[(String, f32)],
) -> Result<()> {
    register_fonts();
    let zoom = (160 / height.max(width).max(1)).max(1);
    let (iw, ih) = (width * zoom, height * zoom);
    let bar_max = 220usize;
    let rows_h = labels.len() * 30 + 20;
    let (w, h) = ((iw + 40 + bar_max + 260) as u32, (ih.max(rows_h) + 20) as u32);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let plane = height * width;
    for y in 0..height {
        for x in 0..width {
            let (px, py) = ((10 + x * zoom) as i32, (10 + y * zoom) as i32);
            root.draw(&Rectangle::new(
                [(px, py), (px + zoom as i32, py + zoom as i32)],
                pixel_rgb(image, channels, plane, y * width + x).filled(),
            ))
            .map_err(|e| plot_err(path, e))?;
        }
    }
    let x0 = (iw + 30) as i32;
    for (k, (label, p)) in labels.iter().enumerate() {
        let y = 14 + 30 * k as i32;
        let len = (p.clamp(0.0, 1.0) * bar_max as f32).round() as i32;
        let colour = if k == 0 {
            RGBColor(31, 119, 180)
        } else {
            RGBColor(160, 190, 220)
        };
        root.draw(&Rectangle::new(
            [(x0, y), (x0 + len.max(1), y + 20)],
            colour.filled(),
        ))
        .map_err(|e| plot_err(path, e))?;
        root.draw(&Text::new(
            format!("{:.1}%  {label}", 100.0 * p),
            (x0 + len + 8, y + 3),
            ("sans-serif", 14).into_font().color(&BLACK),
        ))
        .map_err(|e| plot_err(path, e))?;
    }
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(())
}
