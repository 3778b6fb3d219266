//! Charts with axes and titles: line charts, scatter plots, heat-map tiles and overlays.

use std::path::Path;

use plotters::prelude::*;

use super::{pixel_rgb, plot_err, register_fonts};
use crate::Result;

/// A perceptual blue → green → yellow ramp (viridis-like) for `t` in [0, 1].
pub fn viridis(t: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 } * (STOPS.len() - 1) as f64;
    let i = (t.floor() as usize).min(STOPS.len() - 2);
    let f = t - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// One named series of (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn bounds(series: &[Series]) -> ((f64, f64), (f64, f64)) {
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts.filter(|(x, y)| x.is_finite() && y.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return ((0.0, 1.0), (0.0, 1.0));
    }
    let pad_x = ((x1 - x0) * 0.05).max(0.5);
    let pad_y = ((y1 - y0) * 0.08).max(1e-6);
    ((x0 - pad_x, x1 + pad_x), (y0 - pad_y, y1 + pad_y))
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Lines (with markers) or, with `scatter`, markers only; one colour per series, legend top right.
pub fn xy_chart_png(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    scatter: bool,
) -> Result<()> {
    register_fonts();
    let root = BitMapBackend::new(path, (720, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let ((x0, x1), (y0, y1)) = bounds(series);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| plot_err(path, e))?;
    for (k, s) in series.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        if !scatter {
            chart
                .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
                .map_err(|e| plot_err(path, e))?;
        }
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, colour.filled())))
            .map_err(|e| plot_err(path, e))?
            .label(s.name.clone())
            .legend(move |(x, y)| Circle::new((x, y), 4, colour.filled()));
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(|e| plot_err(path, e))?;
    }
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(())
}

/// A grid of small tiles (`rows x cols` of them), each a `th x tw` image given as RGB values.
/// Used for the position-similarity grid and the filter components.
pub struct TileGrid<'a> {
    pub title: &'a str,
    pub rows: usize,
    pub cols: usize,
    pub tile: [usize; 2],
    /// RGB per pixel, row-major, one Vec per tile.
    pub tiles: Vec<Vec<RGBColor>>,
    pub row_label: &'a str,
    pub col_label: &'a str,
    /// (low, high, caption) of a colour bar drawn with `viridis`, if any.
    pub colour_bar: Option<(f64, f64, &'a str)>,
}

pub fn tile_grid_png(path: &Path, grid: &TileGrid) -> Result<()> {
    register_fonts();
    let [th, tw] = grid.tile;
    let cell = (160 / th.max(tw)).clamp(3, 24);
    let gap = 4;
    let (left, top) = (60usize, 56usize);
    let gw = grid.cols * (tw * cell + gap);
    let gh = grid.rows * (th * cell + gap);
    let bar = if grid.colour_bar.is_some() { 90 } else { 10 };
    let (w, h) = ((left + gw + bar) as u32, (top + gh + 40) as u32);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let font = |s: u32| ("sans-serif", s).into_font();
    root.draw(&Text::new(
        grid.title.to_string(),
        (left as i32, 12),
        font(18).color(&BLACK),
    ))
    .map_err(|e| plot_err(path, e))?;
    for (k, tile) in grid.tiles.iter().enumerate() {
        let (r, c) = (k / grid.cols, k % grid.cols);
        let x0 = left + c * (tw * cell + gap);
        let y0 = top + r * (th * cell + gap);
        for (p, colour) in tile.iter().enumerate() {
            let (y, x) = (p / tw, p % tw);
            let (px, py) = ((x0 + x * cell) as i32, (y0 + y * cell) as i32);
            root.draw(&Rectangle::new(
                [(px, py), (px + cell as i32, py + cell as i32)],
                colour.filled(),
            ))
            .map_err(|e| plot_err(path, e))?;
        }
    }
    // Axis labels with tick numbers at the first and last tile.
    let axis = font(13).color(&BLACK);
    root.draw(&Text::new(
        format!("{} →", grid.col_label),
        ((left + gw / 2) as i32 - 60, (top + gh + 12) as i32),
        axis.clone(),
    ))
    .map_err(|e| plot_err(path, e))?;
    root.draw(&Text::new(
        format!("{} →", grid.row_label),
        (14, (top + gh / 2) as i32 + 40),
        font(13).transform(FontTransform::Rotate270).color(&BLACK),
    ))
    .map_err(|e| plot_err(path, e))?;
    for c in [0, grid.cols - 1] {
        let x = left + c * (tw * cell + gap) + tw * cell / 2;
        root.draw(&Text::new(
            format!("{}", c + 1),
            (x as i32 - 4, (top - 16) as i32),
            axis.clone(),
        ))
        .map_err(|e| plot_err(path, e))?;
    }
    for r in [0, grid.rows - 1] {
        let y = top + r * (th * cell + gap) + th * cell / 2;
        root.draw(&Text::new(
            format!("{}", r + 1),
            (left as i32 - 22, y as i32 - 6),
            axis.clone(),
        ))
        .map_err(|e| plot_err(path, e))?;
    }
    if let Some((lo, hi, caption)) = grid.colour_bar {
        let x0 = (left + gw + 20) as i32;
        let steps = 100;
        for s in 0..steps {
            let t = 1.0 - s as f64 / steps as f64;
            let y = top as i32 + (s * gh / steps) as i32;
            root.draw(&Rectangle::new(
                [(x0, y), (x0 + 16, y + (gh / steps) as i32 + 1)],
                viridis(t).filled(),
            ))
            .map_err(|e| plot_err(path, e))?;
        }
        root.draw(&Text::new(
            format!("{hi:.1}"),
            (x0 + 20, top as i32),
            axis.clone(),
        ))
        .map_err(|e| plot_err(path, e))?;
        root.draw(&Text::new(
            format!("{lo:.1}"),
            (x0 + 20, (top + gh) as i32 - 12),
            axis.clone(),
        ))
        .map_err(|e| plot_err(path, e))?;
        root.draw(&Text::new(
            caption.to_string(),
            (x0 - 4, (top + gh) as i32 + 12),
            axis,
        ))
        .map_err(|e| plot_err(path, e))?;
    }
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(())
}

/// Bilinear upsampling of a `[gh, gw]` map to `[h, w]` (pixel centres aligned).
pub fn upsample(map: &[f64], grid: [usize; 2], size: [usize; 2]) -> Vec<f64> {
    let [gh, gw] = grid;
    let [h, w] = size;
    let mut out = vec![0.0; h * w];
    for y in 0..h {
        let fy = ((y as f64 + 0.5) * gh as f64 / h as f64 - 0.5).clamp(0.0, (gh - 1) as f64);
        let (y0, wy) = (fy.floor() as usize, fy - fy.floor());
        let y1 = (y0 + 1).min(gh - 1);
        for x in 0..w {
            let fx = ((x as f64 + 0.5) * gw as f64 / w as f64 - 0.5).clamp(0.0, (gw - 1) as f64);
            let (x0, wx) = (fx.floor() as usize, fx - fx.floor());
            let x1 = (x0 + 1).min(gw - 1);
            let m = |yy: usize, xx: usize| map[yy * gw + xx];
            out[y * w + x] = (1.0 - wy) * ((1.0 - wx) * m(y0, x0) + wx * m(y0, x1))
                + wy * ((1.0 - wx) * m(y1, x0) + wx * m(y1, x1));
        }
    }
    out
}

/// The image beside the image overlaid with `map` (a patch-grid heat map, min-max scaled,
/// upsampled to the image), shown enlarged, with a title.
pub fn overlay_png(
    path: &Path,
    title: &str,
    image: &[u8],
    channels: usize,
    size: [usize; 2],
    map: &[f64],
    grid: [usize; 2],
) -> Result<()> {
    register_fonts();
    let [h, w] = size;
    let zoom = (256 / h.max(w)).max(1);
    let heat = upsample(map, grid, size);
    let (lo, hi) = heat
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let span = (hi - lo).max(1e-12);
    let (pw, ph) = (w * zoom, h * zoom);
    let root = BitMapBackend::new(path, ((2 * pw + 30) as u32, (ph + 50) as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    root.draw(&Text::new(
        title.to_string(),
        (10, 8),
        ("sans-serif", 15).into_font().color(&BLACK),
    ))
    .map_err(|e| plot_err(path, e))?;
    let plane = h * w;
    for y in 0..h {
        for x in 0..w {
            let RGBColor(r, g, b) = pixel_rgb(image, channels, plane, y * w + x);
            let (r, g, b) = (r as f64, g as f64, b as f64);
            let t = (heat[y * w + x] - lo) / span;
            let hc = viridis(t);
            let blend = |a: f64, c: u8| (0.45 * a + 0.55 * c as f64).round() as u8;
            for (k, colour) in [
                RGBColor(r as u8, g as u8, b as u8),
                RGBColor(blend(r, hc.0), blend(g, hc.1), blend(b, hc.2)),
            ]
            .into_iter()
            .enumerate()
            {
                let x0 = (10 + k * (pw + 10) + x * zoom) as i32;
                let y0 = (40 + y * zoom) as i32;
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + zoom as i32, y0 + zoom as i32)],
                    colour.filled(),
                ))
                .map_err(|e| plot_err(path, e))?;
            }
        }
    }
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(())
}

/// A box on an image: `[top, left, bottom, right)` in the image's pixels, with its label.
pub struct LabelledBox {
    pub pixels: [usize; 4],
    pub label: String,
}

/// The image beside the image with nested boxes (outermost first, each in its own colour and
/// labelled at its top-left corner), shown enlarged, under a title of one or more lines.
pub fn boxes_png(
    path: &Path,
    title: &[String],
    image: &[u8],
    channels: usize,
    size: [usize; 2],
    boxes: &[LabelledBox],
) -> Result<()> {
    register_fonts();
    let [h, w] = size;
    let zoom = (256 / h.max(w)).max(1);
    let (pw, ph) = (w * zoom, h * zoom);
    let top = 22 + 18 * title.len();
    let root = BitMapBackend::new(path, ((2 * pw + 30) as u32, (ph + top + 10) as u32)).into_drawing_area();
    let err = |e| plot_err(path, e);
    root.fill(&WHITE).map_err(err)?;
    for (i, line) in title.iter().enumerate() {
        root.draw(&Text::new(
            line.clone(),
            (10, 8 + 18 * i as i32),
            ("sans-serif", 15).into_font().color(&BLACK),
        ))
        .map_err(err)?;
    }
    let plane = h * w;
    for panel in 0..2 {
        for y in 0..h {
            for x in 0..w {
                let x0 = (10 + panel * (pw + 10) + x * zoom) as i32;
                let y0 = (top + y * zoom) as i32;
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + zoom as i32, y0 + zoom as i32)],
                    pixel_rgb(image, channels, plane, y * w + x).filled(),
                ))
                .map_err(err)?;
            }
        }
    }
    let colours = [RED, RGBColor(255, 140, 0), RGBColor(0, 200, 255), GREEN, MAGENTA];
    let (x_off, y_off) = ((20 + pw) as i32, top as i32);
    for (i, b) in boxes.iter().enumerate() {
        let colour = colours[i % colours.len()];
        let [top_px, left, bottom, right] = b.pixels.map(|v| (v * zoom) as i32);
        // Inner boxes drawn 1 px inside, so nested edges that coincide stay visible.
        let inset = i as i32;
        let corners = [
            (x_off + left + inset, y_off + top_px + inset),
            (x_off + right - 1 - inset, y_off + bottom - 1 - inset),
        ];
        root.draw(&Rectangle::new(corners, colour.stroke_width(2)))
            .map_err(err)?;
        // On a white tag, so the label reads over any image.
        let (tx, ty) = (corners[0].0 + 2, corners[0].1 + 2);
        let width = 7 * b.label.chars().count() as i32 + 4;
        root.draw(&Rectangle::new([(tx, ty), (tx + width, ty + 15)], WHITE.filled()))
            .map_err(err)?;
        root.draw(&Text::new(
            b.label.clone(),
            (tx + 2, ty + 1),
            ("sans-serif", 12).into_font().color(&colour),
        ))
        .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
