//! CLIP's commands: `tokenize`.

use std::io::Write;

use clap::Args;
use vitkit::text::Tokenizer;
use vitkit::text::tokenizer::DEFAULT_CONTEXT;

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
