//! `vitkit report`: one self-contained HTML page for a run, images inlined as data URIs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use burn::tensor::Device;

use super::{Series, confusion_matrix_png, overlay_png, xy_chart_png};
use crate::app::{ModelSource, run_eval};
use crate::data::DataSource;
use crate::explain::{Explainer, explain_figures, test_images};
use crate::io::{RunConfig, TrainState, Which, find_checkpoint, read_json, write_atomic};
use crate::models::param_count;
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

/// Per-epoch columns of `log.csv`, by header name.
fn read_log(path: &Path) -> Result<Vec<std::collections::BTreeMap<String, f64>>> {
    let text = std::fs::read_to_string(path).map_err(|e| VitError::io(path, e))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    Ok(lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            header
                .iter()
                .zip(l.split(','))
                .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(f64::NAN)))
                .collect()
        })
        .collect())
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
         <tr><th>epochs trained</th><td>{}</td></tr><tr><th>best val top-1</th><td>{:.2}% (epoch {})</td></tr>\
         <tr><th>training wall time</th><td>{:.0} s</td></tr><tr><th>checkpoint</th><td>{}</td></tr></table>",
        escape(&run.model_name),
        param_count(&run.model),
        escape(&run.data.name),
        run.data.class_names.len(),
        state.epoch,
        100.0 * state.best_val_acc,
        state.best_epoch,
        state.elapsed_s,
        escape(&ck.dir.display().to_string())
    );

    // Training curves.
    html.push_str("<h2>Training</h2>\n");
    let log = read_log(&run_dir.join("log.csv")).unwrap_or_default();
    let col = |name: &str| Series {
        name: name.replace('_', " "),
        points: log
            .iter()
            .map(|r| (r["epoch"], r.get(name).copied().unwrap_or(f64::NAN)))
            .collect(),
    };
    if !log.is_empty() {
        for (file, title, y, names) in [
            (
                "curve_loss.png",
                "Loss per epoch",
                "loss",
                vec!["train_loss", "val_loss"],
            ),
            (
                "curve_accuracy.png",
                "Accuracy per epoch",
                "accuracy",
                vec!["train_acc", "val_acc", "val_top5"],
            ),
            (
                "curve_lr.png",
                "Learning rate at the end of each epoch",
                "learning rate",
                vec!["lr"],
            ),
        ] {
            let path = out.join(file);
            let series: Vec<Series> = names.iter().map(|n| col(n)).collect();
            xy_chart_png(&path, title, "epoch", y, &series, false)?;
            figure(&mut html, &path, title)?;
        }
    } else {
        html.push_str("<p>No log.csv in the run directory.</p>\n");
    }

    // Evaluation.
    html.push_str("<h2>Evaluation</h2>\n");
    let (result, _) = run_eval(&ModelSource::Checkpoint(ck.dir.clone()), Some(&data), 256, device)?;
    let cm = out.join("confusion_matrix.png");
    let cm_title = format!(
        "{} on {}: top-1 {:.2}%, top-5 {:.2}%",
        run.model_name,
        data,
        100.0 * result.top1,
        100.0 * result.top5
    );
    confusion_matrix_png(&cm, &result.confusion, &run.data.class_names, &cm_title)?;
    figure(&mut html, &cm, &cm_title)?;
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

    // Inside the model.
    match Explainer::load(&ModelSource::Checkpoint(ck.dir.clone()), device) {
        Ok(ex) => {
            html.push_str("<h2>Inside the model</h2>\n");
            let test = test_images(&ex, &data)?;
            let files = explain_figures(&ex, &test, samples, out)?;
            let captions = [
                "Patch-embedding filters: top principal components (ViT paper Fig. 7, left)",
                "Cosine similarity of each position embedding with all others (Fig. 7, centre)",
                "Mean attention distance per head against depth (Fig. 7, right)",
            ];
            for (f, c) in files.iter().zip(captions) {
                figure(&mut html, f, c)?;
            }
            html.push_str("<h3>Attention rollout on test images</h3>\n");
            let [h, w] = ex.run.model.img_size();
            for i in 0..6.min(test.len()) {
                let img = test.image(i);
                let map = ex.rollout(img)?;
                let label = &run.data.class_names[test.labels[i] as usize];
                let path = out.join(format!("rollout_test_{i}.png"));
                overlay_png(
                    &path,
                    &format!("test image {i} ({label})"),
                    img,
                    test.channels,
                    [h, w],
                    &map,
                    ex.grid(),
                )?;
                figure(
                    &mut html,
                    &path,
                    &format!("test image {i}, true class {label}: image and attention rollout"),
                )?;
            }
        }
        Err(e) => {
            let _ = writeln!(html, "<p>No attention figures: {}</p>", escape(&e.to_string()));
        }
    }
    html.push_str("</body></html>\n");
    let path = out.join("report.html");
    write_atomic(&path, html.as_bytes())?;
    Ok(path)
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
