//! `vitkit report`: one self-contained HTML page for a run, images inlined as data URIs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::app::{ModelSource, run_eval};
use crate::data::DataSource;
use crate::draw::{Series, confusion_matrix_png, xy_chart_png};
use crate::explain::{Explainer, ImageRequest, Method, draw, explain_figures, test_images};
use crate::io::{Which, find_checkpoint, read_json, write_atomic};
use crate::models::param_count;
use crate::train::{RunConfig, TrainState, format_value, show_value};
use crate::{Result, VitError};

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One row of `log.csv`, by header name.
type LogRow = std::collections::BTreeMap<String, f64>;

/// The header and rows of `log.csv`; an unreadable or malformed file is an error naming it.
fn read_log(path: &Path) -> Result<(Vec<String>, Vec<LogRow>)> {
    let text = std::fs::read_to_string(path).map_err(|e| VitError::io(path, e))?;
    let bad = |reason: String| VitError::BadData {
        path: path.to_path_buf(),
        reason,
    };
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap_or("").split(',').map(String::from).collect();
    if header.first().map(String::as_str) != Some("epoch") {
        return Err(bad("the first line is not a header starting with 'epoch'".into()));
    }
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() != header.len() {
            return Err(bad(format!(
                "line {} has {} values for {} columns",
                i + 2,
                cells.len(),
                header.len()
            )));
        }
        let row = header
            .iter()
            .zip(cells)
            .map(|(k, v)| {
                v.trim()
                    .parse::<f64>()
                    .map(|v| (k.clone(), v))
                    .map_err(|_| bad(format!("line {}: '{v}' in column {k} is not a number", i + 2)))
            })
            .collect::<Result<LogRow>>()?;
        rows.push(row);
    }
    Ok((header, rows))
}

/// The charts of a log's columns: losses, accuracies, the learning rate, and every other
/// column the task logged, one chart each.
fn curve_groups(header: &[String]) -> Vec<(String, String, String, Vec<String>)> {
    let task_columns: Vec<&String> = header
        .iter()
        .filter(|c| {
            !matches!(
                c.as_str(),
                "epoch" | "step" | "lr" | "images_per_s" | "epoch_s" | "elapsed_s"
            )
        })
        .collect();
    let is_loss = |c: &str| c.ends_with("loss");
    let is_acc = |c: &str| show_value(c, 0.0).ends_with('%');
    let pick = |f: &dyn Fn(&str) -> bool| -> Vec<String> {
        task_columns
            .iter()
            .filter(|c| f(c))
            .map(|c| c.to_string())
            .collect()
    };
    let mut groups = vec![
        (
            "curve_loss.png".into(),
            "Loss per epoch".into(),
            "loss".into(),
            pick(&is_loss),
        ),
        (
            "curve_accuracy.png".into(),
            "Accuracy per epoch".into(),
            "accuracy".into(),
            pick(&is_acc),
        ),
    ];
    for c in pick(&|c| !is_loss(c) && !is_acc(c)) {
        groups.push((
            format!("curve_{c}.png"),
            format!("{} per epoch", c.replace('_', " ")),
            c.clone(),
            vec![c],
        ));
    }
    if header.iter().any(|c| c == "lr") {
        groups.push((
            "curve_lr.png".into(),
            "Learning rate at the end of each epoch".into(),
            "learning rate".into(),
            vec!["lr".into()],
        ));
    }
    groups.retain(|g| !g.3.is_empty());
    groups
}

fn figure(html: &mut String, path: &Path, caption: &str) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| VitError::io(path, e))?;
    let _ = writeln!(
        html,
        "<figure><img alt=\"{c}\" src=\"data:image/png;base64,{}\"><figcaption>{c}</figcaption></figure>",
        base64(&bytes),
        c = escape(caption)
    );
    Ok(())
}

/// Writes `out/report.html` (and the PNGs it inlines) for the run in `run_dir`, evaluating on
/// `data` (default: the dataset the run was trained on). Returns the HTML path.
pub fn write_report(
    run_dir: &Path,
    data: Option<&str>,
    out: &Path,
    samples: usize,
    compare: &[PathBuf],
    device: &Device,
) -> Result<PathBuf> {
    let ck = find_checkpoint(run_dir, Which::Best)?;
    let run: RunConfig = read_json(&ck.config())?;
    let state: TrainState = read_json(&ck.state()).unwrap_or_default();
    let data = data.map(String::from).unwrap_or_else(|| run.data.name.clone());
    DataSource::parse(&data)
        .map_err(|e| VitError::Config(format!("{e}; pass --data to say where the evaluation data is")))?;
    std::fs::create_dir_all(out).map_err(|e| VitError::io(out, e))?;

    let mut html = String::new();
    let title = format!("vitkit report: {} on {}", run.model_name, run.data.name);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}\
         figure{{display:inline-block;margin:0.6em;vertical-align:top}}img{{max-width:100%;border:1px solid #ddd}}\
         figcaption{{font-size:0.9em;color:#555}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}\
         </style></head><body><h1>{t}</h1>\n",
        t = escape(&title)
    );

    // Summary.
    let _ = writeln!(
        html,
        "<table><tr><th>model</th><td>{}</td></tr><tr><th>parameters</th><td>{}</td></tr><tr><th>data</th><td>{} ({} classes)</td></tr>\
         <tr><th>epochs trained</th><td>{}</td></tr><tr><th>best {}</th><td>{} (epoch {})</td></tr>\
         <tr><th>training wall time</th><td>{:.0} s</td></tr><tr><th>checkpoint</th><td>{}</td></tr></table>",
        escape(&run.model_name),
        param_count(&run.model)?,
        escape(&run.data.name),
        run.data.class_names.len(),
        state.epoch,
        escape(&state.best_metric),
        escape(&format_value(&state.best_metric, state.best_value)),
        state.best_epoch,
        state.elapsed_s,
        escape(&ck.dir.display().to_string())
    );

    // Training curves.
    html.push_str("<h2>Training</h2>\n");
    let log_path = run_dir.join("log.csv");
    if log_path.exists() {
        let (header, log) = read_log(&log_path)?;
        for (file, title, y, names) in curve_groups(&header) {
            let series: Vec<Series> = names
                .iter()
                .map(|name| Series {
                    name: name.replace('_', " "),
                    points: log
                        .iter()
                        .map(|r| (r["epoch"], r.get(name).copied().unwrap_or(f64::NAN)))
                        .collect(),
                })
                .collect();
            let path = out.join(file);
            xy_chart_png(&path, &title, "epoch", &y, &series, false)?;
            figure(&mut html, &path, &title)?;
        }
    } else {
        html.push_str("<p>No log.csv in the run directory.</p>\n");
    }
    // The metric that picks the best checkpoint, against wall time (with --compare, of every
    // run side by side).
    {
        let mut runs = vec![run_dir.to_path_buf()];
        runs.extend(compare.iter().cloned());
        let metric = state.best_metric.clone();
        let label = match metric.as_str() {
            "val_acc" => "validation top-1".to_string(),
            m => format!("validation {}", m.trim_start_matches("val_").replace('_', " ")),
        };
        let percent = show_value(&metric, 0.0).ends_with('%');
        let path = out.join("compare_wall_time.png");
        let title = format!("{label} against training wall time");
        if log_path.exists() {
            xy_chart_png(
                &path,
                &title,
                "wall time (min)",
                &if percent {
                    format!("{label} (%)")
                } else {
                    label.clone()
                },
                &wall_time_series(&runs, &metric, if percent { 100.0 } else { 1.0 })?,
                false,
            )?;
            figure(&mut html, &path, &title)?;
        }
    }
    write_sample_grids(&mut html, run_dir)?;

    // Evaluation.
    if run.model.num_classes().is_some() {
        write_evaluation(&mut html, &run, &ck.dir, &data, out, device)?;
    }

    // Inside the model.
    match Explainer::load(&ModelSource::Checkpoint(ck.dir.clone()), device) {
        Ok(ex) => write_inside(&mut html, &ex, &run, &data, out, samples)?,
        Err(e) => {
            let _ = writeln!(
                html,
                "<p>Nothing drawn inside the model: {}</p>",
                escape(&e.to_string())
            );
        }
    }
    html.push_str("</body></html>\n");
    let path = out.join("report.html");
    write_atomic(&path, html.as_bytes())?;
    Ok(path)
}

/// The sample grids a generative run wrote after its epochs (`samples/epoch-*.png`): the first,
/// two between and the last.
fn write_sample_grids(html: &mut String, run_dir: &Path) -> Result<()> {
    let dir = run_dir.join("samples");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    let mut grids: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    grids.sort();
    if grids.is_empty() {
        return Ok(());
    }
    html.push_str("<h2>Samples along the way</h2>\n");
    let n = grids.len();
    let mut picks: Vec<usize> = vec![0, n / 3, 2 * n / 3, n - 1];
    picks.dedup();
    for i in picks {
        let name = grids[i]
            .file_stem()
            .map(|f| f.to_string_lossy().replace('-', " "))
            .unwrap_or_default();
        figure(
            html,
            &grids[i],
            &format!("samples after {name} (fixed latents, averaged generator)"),
        )?;
    }
    Ok(())
}

/// `column` (times `scale`) against elapsed training time (minutes) of each run: a run directory
/// (its `log.csv`, named by its model and folder) or a `log.csv` file (named by its folder).
fn wall_time_series(runs: &[PathBuf], column: &str, scale: f64) -> Result<Vec<Series>> {
    runs.iter()
        .map(|r| {
            let (log_path, name) = if r.is_dir() {
                let model = read_json::<RunConfig>(&r.join("config.json"))
                    .map(|c| c.model_name)
                    .unwrap_or_default();
                let folder = r
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (r.join("log.csv"), format!("{model} ({folder})"))
            } else {
                let folder = r
                    .parent()
                    .and_then(|p| p.file_name())
                    .map(|f| f.to_string_lossy().into_owned());
                (r.clone(), folder.unwrap_or_else(|| r.display().to_string()))
            };
            let (header, log) = read_log(&log_path)?;
            for column in ["elapsed_s", column] {
                if !header.iter().any(|h| h == column) {
                    return Err(VitError::BadData {
                        path: log_path.clone(),
                        reason: format!("no {column} column to compare runs by"),
                    });
                }
            }
            Ok(Series {
                name,
                points: log
                    .iter()
                    .map(|row| (row["elapsed_s"] / 60.0, scale * row[column]))
                    .collect(),
            })
        })
        .collect()
}

/// The confusion matrix and per-class accuracy of the checkpoint in `ck` on `data`.
fn write_evaluation(
    html: &mut String,
    run: &RunConfig,
    ck: &Path,
    data: &str,
    out: &Path,
    device: &Device,
) -> Result<()> {
    html.push_str("<h2>Evaluation</h2>\n");
    let (result, _) = run_eval(
        &ModelSource::Checkpoint(ck.to_path_buf()),
        Some(data),
        256,
        device,
    )?;
    let cm = out.join("confusion_matrix.png");
    let cm_title = format!(
        "{} on {}: top-1 {:.2}%, top-5 {:.2}%",
        run.model_name,
        data,
        100.0 * result.top1,
        100.0 * result.top5
    );
    confusion_matrix_png(&cm, &result.confusion, &run.data.class_names, &cm_title)?;
    figure(html, &cm, &cm_title)?;
    html.push_str("<table><tr><th>class</th><th>accuracy</th></tr>");
    for (name, acc) in run.data.class_names.iter().zip(result.per_class()) {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{:.2}%</td></tr>",
            escape(name),
            100.0 * acc
        );
    }
    html.push_str("</table>\n");
    Ok(())
}

/// The model-level figures (for global attention) and six test images with the model's
/// default explanation (rollout, else Grad-CAM).
fn write_inside(
    html: &mut String,
    ex: &Explainer,
    run: &RunConfig,
    data: &str,
    out: &Path,
    samples: usize,
) -> Result<()> {
    let Ok(method) = ex.default_method() else {
        let _ = writeln!(
            html,
            "<p>Nothing drawn inside the model: explain has no method for a {} model.</p>",
            escape(run.model.family())
        );
        return Ok(());
    };
    html.push_str("<h2>Inside the model</h2>\n");
    let test = test_images(ex, data)?;
    if method == Method::Rollout {
        let files = explain_figures(ex, &test, samples, out)?;
        let captions = [
            "Patch-embedding filters: top principal components (ViT paper Fig. 7, left)",
            "Cosine similarity of each position embedding with all others (Fig. 7, centre)",
            "Mean attention distance per head against depth (Fig. 7, right)",
        ];
        for (f, c) in files.iter().zip(captions) {
            figure(html, f, c)?;
        }
    }
    for method in ex.default_methods()? {
        let (heading, what) = match method {
            Method::Rollout => ("Attention rollout", "attention rollout"),
            Method::GradCam => ("Grad-CAM", "Grad-CAM of the predicted class"),
            Method::Cam => (
                "Class activation map",
                "the class activation map of the predicted class",
            ),
            Method::GradCat => (
                "GradCAT (reconstructed)",
                "GradCAT's path through the block tree for the predicted class (reconstructed)",
            ),
        };
        let _ = writeln!(html, "<h3>{heading} on test images</h3>");
        for i in 0..6.min(test.len()) {
            let label = run.data.class_name(test.labels[i] as usize);
            let path = out.join(format!("{}_test_{i}.png", method.name()));
            draw(
                ex,
                method,
                test.image(i),
                &ImageRequest::default(),
                &path,
                &format!("test image {i} ({label})"),
            )?;
            figure(
                html,
                &path,
                &format!("test image {i}, true class {label}: image and {what}"),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(input.as_bytes()), want);
        }
    }
}
