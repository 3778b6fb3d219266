//! Per-epoch logs (`log.csv`, `log.jsonl`) with whatever columns the task reports, and the
//! progress line.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use crate::{Result, VitError};

/// One row of `log.jsonl` / `log.csv`: `epoch, step, lr`, the task's columns (`train_*`
/// then `val_*`), then the timings.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    pub step: usize,
    pub lr: f64,
    /// The task's columns, in log order.
    pub columns: Vec<(String, f64)>,
    pub images_per_s: f64,
    pub epoch_s: f64,
    pub elapsed_s: f64,
}

impl EpochRecord {
    /// The value of a task column (`train_loss`, `val_acc`, ...).
    pub fn get(&self, column: &str) -> Option<f64> {
        self.columns.iter().find(|(c, _)| c == column).map(|(_, v)| *v)
    }

    fn header(&self) -> String {
        let mut h = vec!["epoch", "step", "lr"];
        h.extend(self.columns.iter().map(|(c, _)| c.as_str()));
        h.extend(["images_per_s", "epoch_s", "elapsed_s"]);
        h.join(",")
    }

    fn csv_row(&self) -> String {
        let mut row = vec![
            self.epoch.to_string(),
            self.step.to_string(),
            format!("{:.6e}", self.lr),
        ];
        row.extend(self.columns.iter().map(|(_, v)| format!("{v:.5}")));
        row.extend(
            [self.images_per_s, self.epoch_s, self.elapsed_s]
                .iter()
                .map(|v| format!("{v:.1}")),
        );
        row.join(",")
    }

    fn json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("epoch".into(), self.epoch.into());
        m.insert("step".into(), self.step.into());
        m.insert("lr".into(), self.lr.into());
        for (c, v) in &self.columns {
            m.insert(c.clone(), (*v).into());
        }
        m.insert("images_per_s".into(), self.images_per_s.into());
        m.insert("epoch_s".into(), self.epoch_s.into());
        m.insert("elapsed_s".into(), self.elapsed_s.into());
        serde_json::Value::Object(m)
    }
}

/// Appends `rec` to the run's `log.jsonl` and `log.csv` (writing the CSV header first when
/// the file is new; a header that differs — another task's columns — is an error).
pub fn append_logs(run_dir: &Path, rec: &EpochRecord) -> Result<()> {
    use std::fs::OpenOptions;
    let jsonl = run_dir.join("log.jsonl");
    let csv = run_dir.join("log.csv");
    let header = rec.header();
    if csv.exists() {
        // The header line only: the log grows by a line per epoch.
        let mut existing = String::new();
        std::fs::File::open(&csv)
            .and_then(|f| std::io::BufReader::new(f).read_line(&mut existing))
            .map_err(|e| VitError::io(&csv, e))?;
        let existing = existing.trim_end();
        if !existing.is_empty() && existing != header {
            return Err(VitError::BadData {
                path: csv,
                reason: format!("its columns are '{existing}', but this run logs '{header}'"),
            });
        }
    }
    let new_csv = !csv.exists();
    let open = |p: &Path| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| VitError::io(p, e))
    };
    writeln!(open(&jsonl)?, "{}", rec.json()).map_err(|e| VitError::io(&jsonl, e))?;
    let mut f = open(&csv)?;
    if new_csv {
        writeln!(f, "{header}").map_err(|e| VitError::io(&csv, e))?;
    }
    writeln!(f, "{}", rec.csv_row()).map_err(|e| VitError::io(&csv, e))
}

/// A column's value as people read it: accuracies in percent.
pub fn format_value(column: &str, v: f64) -> String {
    let name = column
        .strip_prefix("train_")
        .or_else(|| column.strip_prefix("val_"))
        .unwrap_or(column);
    if name.ends_with("acc") || name.starts_with("top") {
        format!("{:.2}%", 100.0 * v)
    } else {
        format!("{v:.4}")
    }
}

/// A value as the progress line shows it, named without its `train_`/`val_` prefix.
pub fn show_value(column: &str, v: f64) -> String {
    let name = column
        .strip_prefix("train_")
        .or_else(|| column.strip_prefix("val_"))
        .unwrap_or(column);
    format!("{name} {}", format_value(column, v))
}

pub struct Progress {
    tty: bool,
    last: Instant,
}

impl Progress {
    pub fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            last: Instant::now(),
        }
    }

    pub fn show(&mut self, line: &str, force: bool) {
        let every = if self.tty { 0.25 } else { 30.0 };
        if !force && self.last.elapsed().as_secs_f64() < every {
            return;
        }
        self.last = Instant::now();
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    pub fn end(&mut self) {
        if self.tty {
            eprintln!();
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}
