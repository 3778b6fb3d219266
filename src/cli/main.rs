//! `vitkit`: the command-line face of the library. Parsing and printing only.

mod bench;
mod clip;
mod gan;
mod inspect;
mod pretext;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use vitkit::app::{ModelSource, WeightsSpec, run_eval, run_predict};
use vitkit::device::parse_device;
use vitkit::draw::confusion_matrix_png;
use vitkit::models::{Adaptation, GlobalPool};

#[derive(Parser)]
#[command(
    name = "vitkit",
    version,
    about = "Train, evaluate and run vision transformers"
)]
struct Cli {
    /// Compute device: cpu (default), or cuda / cuda:N when built with --features cuda.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the model presets with their parameter counts.
    Models(bench::ModelsArgs),
    /// Train a model on a dataset, writing checkpoints and logs to --out.
    Train(train::TrainArgs),
    /// Self-supervised pretraining without labels (`--method sit`), with train's options.
    Pretrain(pretext::PretrainArgs),
    /// Linear evaluation of a SiT pretraining run: frozen backbone, a linear head on each of its
    /// two tokens, trained on the backbone's standardised features computed once (or --model at
    /// random initialisation without --checkpoint).
    Probe(pretext::ProbeArgs),
    /// Evaluate a checkpoint on a dataset's test split.
    Eval(EvalArgs),
    /// Classify image files with a checkpoint.
    Predict(PredictArgs),
    /// Write a PNG grid of a dataset's first training images with their labels.
    ShowData(inspect::ShowDataArgs),
    /// Attention rollout of images, and with --figures the ViT paper's model-level figures; on a
    /// SiT pretraining run, its reconstructions of corrupted test images.
    Explain(inspect::ExplainArgs),
    /// One self-contained HTML report of a run: curves, confusion matrix, figures, rollouts.
    Report(inspect::ReportArgs),
    /// Time training or inference steps of a preset on random data.
    Bench(bench::BenchArgs),
    /// Convert a timm or Hugging Face ViT safetensors file into a vitkit checkpoint.
    Import(ImportArgs),
    /// Run a model on preprocessed `pixel_values` from a safetensors file; write logits and features.
    Infer(InferArgs),
    /// CLIP's tokenizer: print the token ids of texts, as open_clip's `tokenize` gives them.
    Tokenize(clip::TokenizeArgs),
    /// Classify a dataset's test images with a CLIP model from prompts alone.
    Zeroshot(clip::ZeroshotArgs),
    /// Retrieval recall of a CLIP model on image–caption test pairs; with --query, the best
    /// images for a text as a PNG grid.
    Retrieve(clip::RetrieveArgs),
    /// Draw a grid of a GAN run's samples (or latent interpolation strips) as a PNG.
    Sample(gan::SampleArgs),
    /// Fréchet distance between a GAN run's samples and a dataset's test images, on a vitkit
    /// classifier's features.
    Fid(gan::FidArgs),
}

#[derive(Args)]
struct ImportArgs {
    /// The safetensors file.
    file: PathBuf,
    /// Who wrote it: timm, hf, or official (a family's reference code, e.g. CMT's cmt.py).
    #[arg(long = "from", default_value = "timm")]
    from: String,
    /// The preset whose architecture the file holds.
    #[arg(long)]
    model: String,
    /// Output checkpoint directory.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    fit: FitArgs,
    /// Fail if any key is missing, unexpected or of another shape.
    #[arg(long)]
    strict: bool,
}

/// How a foreign weights file is fitted; what is left open is read from the file.
#[derive(Args)]
struct FitArgs {
    /// Run at this (square) image size; the position embedding is resampled, bicubic
    /// (default: the file's).
    #[arg(long)]
    img_size: Option<usize>,
    /// Classes of the head (default: the file's head).
    #[arg(long)]
    num_classes: Option<usize>,
    /// Pooling before the head: token or avg (default: what the file holds; fc_norm means avg).
    #[arg(long, value_parser = parse_global_pool)]
    global_pool: Option<GlobalPool>,
}

impl FitArgs {
    fn adaptation(&self) -> Adaptation {
        Adaptation {
            img_size: self.img_size.map(|s| [s, s]),
            num_classes: self.num_classes,
            global_pool: self.global_pool,
            ..Adaptation::default()
        }
    }
}

fn parse_global_pool(s: &str) -> Result<GlobalPool, String> {
    s.parse().map_err(|e: vitkit::VitError| e.to_string())
}

#[derive(Args)]
struct InferArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// safetensors file with `pixel_values` [B, C, H, W] f32.
    #[arg(long)]
    input: PathBuf,
    /// safetensors file to write `logits` and `pre_logits` to.
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    autocast: AutocastArg,
}

/// Which model to load: a vitkit checkpoint, or a timm / Hugging Face weights file.
#[derive(Args)]
struct ModelArgs {
    /// Run directory (its best checkpoint) or checkpoint directory.
    #[arg(long, required_unless_present = "weights", conflicts_with = "weights")]
    checkpoint: Option<PathBuf>,
    /// A timm, Hugging Face or official safetensors file (with --model and --source).
    #[arg(long, requires = "model")]
    weights: Option<PathBuf>,
    /// Who wrote --weights: timm, hf, or official (a family's reference code, e.g. CMT's cmt.py).
    #[arg(long, default_value = "timm")]
    source: String,
    /// The preset whose architecture --weights holds (see `vitkit models`).
    #[arg(long)]
    model: Option<String>,
    #[command(flatten)]
    fit: FitArgs,
    /// With --weights: run the file's backbone under a freshly initialised classifier head
    /// (its logits mean nothing; its features are the file's). Without it, any parameter
    /// missing from the file, left over or of another shape is an error.
    #[arg(long, requires = "weights")]
    fresh_head: bool,
}

impl ModelArgs {
    fn source(&self) -> anyhow::Result<ModelSource> {
        Ok(match (&self.checkpoint, &self.weights) {
            (Some(_), _) if self.fit.adaptation() != Adaptation::default() => {
                anyhow::bail!(
                    "--img-size, --num-classes and --global-pool fit a --weights file; a \
                     checkpoint's config.json already says them"
                )
            }
            (Some(dir), _) => ModelSource::Checkpoint(dir.clone()),
            (None, Some(file)) => ModelSource::Weights(WeightsSpec {
                file: file.clone(),
                source: self.source.parse()?,
                model: self.model.clone().unwrap_or_default(),
                adapt: self.fit.adaptation(),
                fresh_head: self.fresh_head,
                strict: false,
            }),
            (None, None) => anyhow::bail!("give --checkpoint DIR or --weights FILE"),
        })
    }
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Dataset whose test split is used (default: the one the checkpoint was trained on).
    #[arg(long)]
    data: Option<String>,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Where to write the confusion matrix (default: CHECKPOINT/confusion_matrix.png).
    #[arg(long)]
    confusion_png: Option<PathBuf>,
    #[command(flatten)]
    autocast: AutocastArg,
}

#[derive(Args)]
struct PredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JPEG or PNG files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// CLIP models: the texts to choose among, comma-separated ("a photo of a cat,a photo of a
    /// dog"); each image gets its top labels with probabilities.
    #[arg(long)]
    labels: Option<String>,
    /// With --labels: write one PNG per image (the image beside its top labels' bars) here.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    autocast: AutocastArg,
}

fn eval(args: EvalArgs, device: &str) -> anyhow::Result<()> {
    let device = open_device(device)?;
    args.autocast.apply(&device)?;
    let (result, run) = run_eval(
        &args.model.source()?,
        args.data.as_deref(),
        args.batch_size,
        &device,
    )?;
    let data = args.data.clone().unwrap_or_else(|| run.data.name.clone());
    println!(
        "model {} on {} test split ({} images)",
        run.model_name, data, result.count
    );
    println!(
        "top-1 {:.2}%  top-5 {:.2}%  loss {:.4}",
        100.0 * result.top1,
        100.0 * result.top5,
        result.loss
    );
    println!("per-class accuracy:");
    for (name, acc) in run.data.class_names.iter().zip(result.per_class()) {
        println!("  {name:<20} {:>6.2}%", 100.0 * acc);
    }
    let png = args.confusion_png.unwrap_or_else(|| {
        let dir = match &args.model.checkpoint {
            Some(c) if c.is_dir() => c.clone(),
            _ => PathBuf::from("."),
        };
        dir.join("confusion_matrix.png")
    });
    let title = format!(
        "{} on {}: top-1 {:.2}%",
        run.model_name,
        data,
        100.0 * result.top1
    );
    confusion_matrix_png(&png, &result.confusion, &run.data.class_names, &title)
        .context("writing the confusion matrix")?;
    println!("confusion matrix: {}", png.display());
    Ok(())
}

fn predict(args: PredictArgs, device: &str) -> anyhow::Result<()> {
    let device = open_device(device)?;
    args.autocast.apply(&device)?;
    let source = args.model.source()?;
    let predictions = match &args.labels {
        Some(labels) => {
            let labels: Vec<String> = labels
                .split(',')
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect();
            let dir = args.out.as_deref();
            vitkit::app::clip::predict_labels(&source, &args.images, &labels, args.top_k, dir, &device)?
        }
        None => run_predict(&source, &args.images, args.top_k, &device)?,
    };
    if let (Some(dir), Some(_)) = (&args.out, &args.labels) {
        println!("(one PNG per image in {})", dir.display());
    }
    for prediction in predictions {
        println!("{}", prediction.path.display());
        for (name, p) in prediction.top {
            println!("  {:>6.2}%  {name}", 100.0 * p);
        }
    }
    Ok(())
}

#[derive(Args)]
struct AutocastArg {
    /// CPU inference only: linear layers multiply in bf16 with f32 sums, as PyTorch's CPU
    /// autocast does (needs AVX-512 BF16; parameters and everything else stay f32; a bf16 copy
    /// of the weights, half their size, is kept while the process runs). Only: bf16.
    #[arg(long, value_name = "DTYPE")]
    autocast: Option<String>,
}

impl AutocastArg {
    /// `--autocast bf16`: bf16 products in the CPU's linear layers for this process.
    fn apply(&self, device: &burn::tensor::Device) -> anyhow::Result<()> {
        match self.autocast.as_deref() {
            None => Ok(()),
            Some("bf16") if vitkit::device::is_cpu(device) => {
                vitkit::kernels::set_bf16_products(true).map_err(|e| anyhow::anyhow!(e))
            }
            Some("bf16") => anyhow::bail!("--autocast is for the CPU; on a GPU use --dtype bf16"),
            Some(other) => anyhow::bail!("unknown --autocast '{other}'; valid: bf16"),
        }
    }
}

fn import(args: ImportArgs, device: &str) -> anyhow::Result<()> {
    let device = open_device(device)?;
    let spec = WeightsSpec {
        file: args.file,
        source: args.from.parse()?,
        model: args.model,
        adapt: args.fit.adaptation(),
        fresh_head: false,
        strict: args.strict,
    };
    let (run, report) = vitkit::app::run_import(&spec, &args.out, &device)?;
    if !report.is_exact() {
        eprintln!("note: {}: {}", spec.file.display(), report.describe());
    }
    let [h, w] = run.model.img_size();
    let classes = match run.model.num_classes() {
        Some(k) => format!(", {k} classes"),
        None => String::new(),
    };
    println!(
        "imported {} as {} ({}x{}{classes}) into {}",
        spec.file.display(),
        run.model_name,
        h,
        w,
        args.out.display()
    );
    Ok(())
}

fn infer(args: InferArgs, device: &str) -> anyhow::Result<()> {
    let device = open_device(device)?;
    args.autocast.apply(&device)?;
    let written = vitkit::app::run_infer(&args.model.source()?, &args.input, &args.output, &device)?;
    println!("{written}");
    Ok(())
}

/// The device named on the command line. On a GPU, says first that the first use of each
/// shape autotunes its kernels: without that, a first run that spends minutes tuning before
/// its first step looks hung.
fn open_device(name: &str) -> anyhow::Result<burn::tensor::Device> {
    let device = parse_device(name)?;
    if !vitkit::device::is_cpu(&device) {
        eprintln!(
            "{name}: the first use of each tensor shape on a machine autotunes its kernels, which can \
             take minutes; the results are kept (target/environment inside a Cargo project, else \
             the user cache directory's cubecl/) and later runs start at full speed"
        );
    }
    Ok(device)
}

fn main() -> ExitCode {
    // Output piped into a program that stops reading (`vitkit models | head`) ends vitkit
    // quietly, as it does other Unix tools, instead of a panic in `println!`.
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    vitkit::device::init_runtime();
    let cli = Cli::parse();
    // A typo in VITKIT_FUSED would otherwise switch kernels off unnoticed.
    if let Err(e) = vitkit::kernels::check_fused_env() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Models(a) => bench::models(a),
        Command::Train(a) => train::train(a, &cli.device),
        Command::Pretrain(a) => pretext::pretrain(a, &cli.device),
        Command::Probe(a) => pretext::probe(a, &cli.device),
        Command::Eval(a) => eval(a, &cli.device),
        Command::Predict(a) => predict(a, &cli.device),
        Command::ShowData(a) => inspect::show_data(a),
        Command::Explain(a) => inspect::explain(a, &cli.device),
        Command::Report(a) => inspect::report(a, &cli.device),
        Command::Bench(a) => bench::bench(a, &cli.device),
        Command::Import(a) => import(a, &cli.device),
        Command::Infer(a) => infer(a, &cli.device),
        Command::Tokenize(a) => clip::tokenize(a),
        Command::Zeroshot(a) => clip::zeroshot(a, &cli.device),
        Command::Retrieve(a) => clip::retrieve(a, &cli.device),
        Command::Sample(a) => gan::sample(a, &cli.device),
        Command::Fid(a) => gan::fid(a, &cli.device),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
