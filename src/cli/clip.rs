//! CLIP's commands: `tokenize`, `zeroshot`, `retrieve`.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use vitkit::app::ModelSource;
use vitkit::app::clip::{DEFAULT_TEMPLATES, ZeroShotRequest, run_retrieve, run_zeroshot};
use vitkit::text::Tokenizer;
use vitkit::text::tokenizer::DEFAULT_CONTEXT;

use super::open_device;

#[derive(Args)]
pub struct TokenizeArgs {
    /// The texts; each prints as one line of ids.
    #[arg(required = true)]
    texts: Vec<String>,
    /// Ids per text (CLIP's 77): longer texts are cut with the end token kept last, shorter
    /// ones padded with 0.
    #[arg(long, default_value_t = DEFAULT_CONTEXT)]
    context_length: usize,
    /// Leave the zero padding off.
    #[arg(long)]
    trim: bool,
}

pub fn tokenize(args: TokenizeArgs) -> anyhow::Result<()> {
    if args.context_length < 2 {
        anyhow::bail!("--context-length must leave room for the start and end tokens (at least 2)");
    }
    let batch = Tokenizer::clip().tokenize(&args.texts, args.context_length);
    let mut out = std::io::stdout().lock();
    for row in batch.rows() {
        let end = if args.trim {
            row.iter().rposition(|&id| id != 0).map_or(0, |i| i + 1)
        } else {
            row.len()
        };
        let ids: Vec<String> = row[..end].iter().map(u32::to_string).collect();
        writeln!(out, "{}", ids.join(" "))?;
    }
    out.flush()?;
    drop(out);
    if batch.truncated > 0 {
        eprintln!(
            "{} of {} texts were longer than {} tokens and were cut (the end token kept last)",
            batch.truncated,
            args.texts.len(),
            args.context_length
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct ZeroshotArgs {
    /// A CLIP training run (its best checkpoint) or checkpoint directory.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The dataset whose test split is classified (default: the run's).
    #[arg(long)]
    data: Option<String>,
    /// Score an attribute of a caption dataset (e.g. colour, category) instead of its labels.
    #[arg(long)]
    attribute: Option<String>,
    /// A file of class names to say in the prompts, one per line, in label order.
    #[arg(long)]
    classnames: Option<PathBuf>,
    /// A file of prompt templates, one per line, each with {} for the class name.
    #[arg(long)]
    templates: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
}

fn lines(path: &PathBuf) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if lines.is_empty() {
        anyhow::bail!("{} has no lines", path.display());
    }
    Ok(lines)
}

pub fn zeroshot(args: ZeroshotArgs, device: &str) -> anyhow::Result<()> {
    let device = open_device(device)?;
    let templates = match &args.templates {
        Some(path) => lines(path)?,
        None => DEFAULT_TEMPLATES.iter().map(|t| t.to_string()).collect(),
    };
    let req = ZeroShotRequest {
        data: args.data,
        attribute: args.attribute,
        classnames: args.classnames.as_ref().map(lines).transpose()?,
        templates,
        batch_size: args.batch_size,
    };
    let result = run_zeroshot(&ModelSource::Checkpoint(args.checkpoint), &req, &device)?;
    println!(
        "zero-shot on {} test images, {} classes, {} templates: top-1 {:.2}%, top-5 {:.2}%",
        result.images,
        result.per_class.len(),
        req.templates.len(),
        100.0 * result.top1,
        100.0 * result.top5
    );
    for (name, acc, count) in &result.per_class {
        println!("  {name:<32} {:>6.2}%  ({count} images)", 100.0 * acc);
    }
    Ok(())
}

#[derive(Args)]
pub struct RetrieveArgs {
    /// A CLIP training run (its best checkpoint) or checkpoint directory.
    #[arg(long)]
    checkpoint: PathBuf,
    /// An image–caption dataset whose test pairs are searched (default: the run's).
    #[arg(long)]
    data: Option<String>,
    /// A text to find images for; writes the best ones as a grid to --out.
    #[arg(long)]
    query: Option<String>,
    /// Where the grid of --query's best images goes.
    #[arg(long, default_value = "retrieved.png")]
    out: PathBuf,
    /// How many images the grid shows.
    #[arg(long, default_value_t = 16)]
    top: usize,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
}

pub fn retrieve(args: RetrieveArgs, device: &str) -> anyhow::Result<()> {
    let device = open_device(device)?;
    let query = args
        .query
        .as_deref()
        .map(|q| (q, args.top.max(1), args.out.as_path()));
    let result = run_retrieve(
        &ModelSource::Checkpoint(args.checkpoint),
        args.data.as_deref(),
        query,
        args.batch_size,
        &device,
    )?;
    let pct = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{:.2}%", 100.0 * r))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    println!("{} test pairs; recall@1/5/10", result.pairs);
    println!("  image -> text: {}", pct(&result.image_to_text));
    println!("  text -> image: {}", pct(&result.text_to_image));
    if let Some(q) = &args.query {
        let best: Vec<String> = result
            .matches
            .iter()
            .take(5)
            .map(|(i, s)| format!("#{i} ({s:.3})"))
            .collect();
        println!(
            "best images for {q:?}: {} (grid: {})",
            best.join(", "),
            args.out.display()
        );
    }
    Ok(())
}
