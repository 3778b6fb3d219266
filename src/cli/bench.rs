//! `vitkit models` and `vitkit bench`: what the presets are and how fast they run.

use clap::Args;

use vitkit::device::{parse_float_dtype, set_float_dtype};
use vitkit::models::{Adaptation, GlobalPool, PRESETS, param_count, preset};

use super::{AutocastArg, open_device, parse_global_pool};

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, default_value = "vit_tiny_patch4_32")]
    model: String,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// train (forward, backward and an AdamW step), infer (forward only), or pretrain (a SiT
    /// model's pretraining step: two views of each of the batch's images through its pretext
    /// heads, the three weighted losses, backward and AdamW).
    #[arg(long, default_value = "train")]
    mode: String,
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Input channels instead of the preset's 3 (1 for Fashion-MNIST).
    #[arg(long)]
    in_chans: Option<usize>,
    /// Classes instead of the preset's.
    #[arg(long)]
    num_classes: Option<usize>,
    /// token or avg, instead of the preset's pooling.
    #[arg(long, value_parser = parse_global_pool)]
    global_pool: Option<GlobalPool>,
    /// Infer mode: also hand back every block's attention.
    #[arg(long)]
    attention: bool,
    /// Float type of parameters, activations and optimizer state: f32, bf16 or f16
    /// (bf16/f16 as PyTorch's `model.to(dtype)`: no f32 master weights).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    autocast: AutocastArg,
}

#[derive(Args)]
pub struct ModelsArgs {
    /// Print every preset's full configuration as one JSON object keyed by name.
    #[arg(long)]
    json: bool,
}

pub fn bench(args: BenchArgs, device: &str) -> anyhow::Result<()> {
    use vitkit::bench::{BenchMode, bench};
    let mut device = open_device(device)?;
    set_float_dtype(&mut device, parse_float_dtype(&args.dtype)?)?;
    let mode = match args.mode.as_str() {
        "train" => BenchMode::Train,
        "infer" => BenchMode::Infer,
        "pretrain" => BenchMode::Pretrain,
        other => anyhow::bail!("unknown --mode '{other}'; valid: train, infer, pretrain"),
    };
    if args.autocast.autocast.is_some() && mode != BenchMode::Infer {
        anyhow::bail!("--autocast is for inference (--mode infer)");
    }
    args.autocast.apply(&device)?;
    let config = preset(&args.model)?.adapted(&Adaptation {
        num_classes: args.num_classes,
        in_chans: args.in_chans,
        global_pool: args.global_pool,
        // Pretext heads only for `pretrain` (a family without them refuses it, naming SiT).
        pretext: (mode == BenchMode::Pretrain).then_some(true),
        ..Adaptation::default()
    })?;
    let r = bench(
        &args.model,
        &config,
        mode,
        args.batch_size,
        args.steps,
        args.warmup,
        args.attention,
        &device,
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} {} batch {}: median {:.1} ms (min {:.1}, max {:.1}) over {} steps, {:.1} images/s, {:.1} GFLOP/s, peak RSS {:.0} MiB; products: {}",
            r.model,
            r.mode,
            r.batch_size,
            r.median_ms,
            r.min_ms,
            r.max_ms,
            r.steps,
            r.images_per_s,
            r.gflops,
            r.peak_rss_mib,
            r.products
        );
    }
    Ok(())
}

pub fn models(args: ModelsArgs) -> anyhow::Result<()> {
    if args.json {
        let all: serde_json::Map<String, serde_json::Value> = PRESETS
            .iter()
            .map(|p| Ok((p.name.to_string(), serde_json::to_value((p.config)())?)))
            .collect::<serde_json::Result<_>>()?;
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    println!("{:<26} {:>13}  {:>9}  description", "name", "parameters", "input");
    for p in PRESETS {
        let config = (p.config)();
        let [h, w] = config.img_size();
        println!(
            "{:<26} {:>13}  {:>9}  {}",
            p.name,
            group_digits(param_count(&config)?),
            format!("{h}x{w}"),
            p.description
        );
    }
    Ok(())
}

pub fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
