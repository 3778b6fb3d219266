//! `vitkit train`: its arguments, and the request they make (shared with `pretrain` and
//! `probe`).

use std::path::PathBuf;

use clap::Args;

use super::{gan, open_device, parse_global_pool};
use vitkit::app::{TrainRequest, default_augment, run_train};
use vitkit::data::Augment;
use vitkit::models::{Adaptation, GlobalPool};
use vitkit::train::{TaskKind, TrainConfig, Trainable, format_value};

/// Where `train` writes unless told.
pub const DEFAULT_OUT: &str = "runs/synthetic";

#[derive(Args)]
pub struct TrainArgs {
    /// Model preset (see `vitkit models`).
    #[arg(long, default_value = "vit_nano_patch8_32")]
    pub(crate) model: String,
    /// Dataset: synthetic, fashion-mnist[:DIR], cifar10:DIR, cifar100:DIR, folder:DIR; for
    /// --task clip: synthetic-captions or captions:FILE.
    #[arg(long, default_value = "synthetic")]
    pub(crate) data: String,
    /// What to train: classify (labels), clip (image–caption pairs, a clip_* model; AdamW
    /// β2 0.98, ε 1e-6 as open_clip) or gan (a nest_gen_* or dcgan_* pair; Adam β1 0.5, β2 0.99,
    /// constant learning rate, no augmentation unless asked).
    #[arg(long, default_value = "classify")]
    pub(crate) task: String,
    /// Run directory for checkpoints and logs.
    #[arg(long, default_value = DEFAULT_OUT)]
    pub(crate) out: PathBuf,
    #[arg(long, default_value_t = 12)]
    pub(crate) epochs: usize,
    #[arg(long, default_value_t = 64)]
    pub(crate) batch_size: usize,
    /// Peak learning rate (after warmup) [default: 2e-3; 2e-4 with --task gan].
    #[arg(long)]
    pub(crate) lr: Option<f64>,
    /// Learning rate at the end of the cosine decay [default: 1e-5; --lr with --task gan].
    #[arg(long)]
    pub(crate) min_lr: Option<f64>,
    /// [default: 1; 0 with --task gan]
    #[arg(long)]
    pub(crate) warmup_epochs: Option<f64>,
    /// AdamW weight decay [default: 0.05; 0.2 with --task clip, as open_clip].
    #[arg(long)]
    pub(crate) weight_decay: Option<f64>,
    #[arg(long, default_value_t = 0.1)]
    pub(crate) label_smoothing: f64,
    /// Clip the global gradient norm to this value (0 disables) [default: 1; none with --task gan].
    #[arg(long)]
    pub(crate) grad_clip: Option<f64>,
    /// Stochastic depth rate of the last block.
    #[arg(long)]
    pub(crate) drop_path: Option<f64>,
    /// Pooling before the head: token (class token, the ViT default) or avg (mean of the patch tokens).
    #[arg(long, value_parser = parse_global_pool)]
    pub(crate) global_pool: Option<GlobalPool>,
    /// Train at this (square) image size instead of the preset's.
    #[arg(long)]
    pub(crate) img_size: Option<usize>,
    /// Zero padding before the random crop (default depends on the dataset).
    #[arg(long)]
    pub(crate) crop_padding: Option<usize>,
    /// Random horizontal flips (default depends on the dataset).
    #[arg(long)]
    pub(crate) hflip: Option<bool>,
    /// No augmentation at all.
    #[arg(long)]
    pub(crate) no_augment: bool,
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Train on this share of each class's training images (e.g. 0.1), drawn with --seed; the
    /// test set stays whole.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) label_fraction: f64,
    /// Stop each epoch after this many batches (quick trials).
    #[arg(long)]
    pub(crate) max_steps_per_epoch: Option<usize>,
    /// Continue the run in --out from its last checkpoint, with its saved recipe.
    #[arg(long)]
    pub(crate) resume: bool,
    /// Stop after this epoch of the schedule; continue later with --resume.
    #[arg(long)]
    pub(crate) stop_after_epoch: Option<usize>,
    /// Skip ImageFolder images that cannot be decoded (counted) instead of failing.
    #[arg(long)]
    pub(crate) skip_bad_images: bool,
    /// Fine-tune from a timm, Hugging Face or official safetensors file of --model's architecture (the
    /// head is replaced for the dataset's classes).
    #[arg(long)]
    pub(crate) weights: Option<PathBuf>,
    /// Who wrote --weights: timm, hf, or official (a family's reference code, e.g. CMT's cmt.py).
    #[arg(long, default_value = "timm")]
    pub(crate) source: String,
    /// Fine-tune from the best checkpoint of this vitkit run (e.g. `vitkit pretrain --method
    /// sit`) of --model's family; the heads are made new for the dataset's classes.
    #[arg(long, conflicts_with = "weights")]
    pub(crate) init: Option<PathBuf>,
    /// Sum the gradients of this many batches before each optimizer step (effective batch:
    /// --batch-size times this).
    #[arg(long, default_value_t = 1)]
    pub(crate) accum_steps: usize,
    /// Train only the classifier head; the rest stays as initialised (or as --weights has it)
    /// and runs as in inference. With --no-augment the backbone's features are computed once
    /// and standardised, and the head trains on them.
    #[arg(long)]
    pub(crate) linear_probe: bool,
    #[command(flatten)]
    pub(crate) gan: gan::GanArgs,
}

pub fn train(args: TrainArgs, device: &str) -> anyhow::Result<()> {
    let device = open_device(device)?;
    let out = args.out.clone();
    let req = train_request(args)?;
    report_outcome(&run_train(&req, &device)?, &out);
    Ok(())
}

/// The request `vitkit train` (and `pretrain`, `probe`) makes of its arguments.
pub fn train_request(args: TrainArgs) -> anyhow::Result<TrainRequest> {
    let task = match args.task.as_str() {
        "classify" => TaskKind::Classify,
        "clip" => TaskKind::Clip,
        "gan" => TaskKind::Gan(args.gan.settings()?),
        other => anyhow::bail!("unknown task '{other}'; valid: classify, clip, gan"),
    };
    let clip = task == TaskKind::Clip;
    let gan = matches!(task, TaskKind::Gan(_));
    // A GAN learns the data as it is: no augmentation unless asked for.
    let asked = args.crop_padding.is_some() || args.hflip.is_some();
    let augment = if args.no_augment || (gan && !asked) {
        None
    } else {
        let base = default_augment(&args.data).unwrap_or(Augment {
            crop_padding: 0,
            hflip: false,
        });
        let aug = Augment {
            crop_padding: args.crop_padding.unwrap_or(base.crop_padding),
            hflip: args.hflip.unwrap_or(base.hflip),
        };
        (aug.crop_padding > 0 || aug.hflip).then_some(aug)
    };
    if !gan && (args.gan.fid_features.is_some() || args.gan.gan_loss != "non-saturating") {
        anyhow::bail!("--fid-features and --gan-loss apply to --task gan");
    }
    let defaults = TrainConfig::default();
    let lr = args.lr.unwrap_or(if gan { 2e-4 } else { 2e-3 });
    let grad_clip = args.grad_clip.unwrap_or(if gan { 0.0 } else { 1.0 });
    let recipe = TrainConfig {
        task,
        beta1: if gan { 0.5 } else { defaults.beta1 },
        beta2: if clip {
            0.98
        } else if gan {
            0.99
        } else {
            defaults.beta2
        },
        adam_eps: if clip { 1e-6 } else { defaults.adam_eps },
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr,
        // A GAN keeps its learning rate: the cosine runs from lr to lr.
        min_lr: args.min_lr.unwrap_or(if gan { lr } else { 1e-5 }),
        warmup_epochs: args.warmup_epochs.unwrap_or(if gan { 0.0 } else { 1.0 }),
        weight_decay: args.weight_decay.unwrap_or(if clip {
            0.2
        } else if gan {
            0.0
        } else {
            0.05
        }),
        label_smoothing: args.label_smoothing,
        grad_clip: (grad_clip > 0.0).then_some(grad_clip),
        fid_features: args.gan.fid_features.clone(),
        augment,
        seed: args.seed,
        max_steps_per_epoch: args.max_steps_per_epoch,
        accum_steps: args.accum_steps,
        trainable: if args.linear_probe {
            Trainable::Head
        } else {
            Trainable::All
        },
        label_fraction: args.label_fraction,
    };
    Ok(TrainRequest {
        model: args.model,
        data: args.data,
        out: args.out.clone(),
        adapt: Adaptation {
            img_size: args.img_size.map(|s| [s, s]),
            drop_path: args.drop_path,
            global_pool: args.global_pool,
            ..Adaptation::default()
        },
        session: vitkit::train::Session {
            resume: args.resume,
            stop_after_epoch: args.stop_after_epoch,
        },
        skip_bad_images: args.skip_bad_images,
        init_weights: match args.weights {
            Some(w) => Some((w, args.source.parse()?)),
            None => None,
        },
        init_run: args.init,
        recipe,
    })
}

pub fn report_outcome(outcome: &vitkit::train::TrainOutcome, out: &std::path::Path) {
    let s = &outcome.state;
    println!(
        "trained {} epochs ({} steps) in {:.0}s; best {} {} at epoch {}; checkpoints in {}",
        s.epoch,
        s.step,
        s.elapsed_s,
        s.best_metric,
        format_value(&s.best_metric, s.best_value),
        s.best_epoch,
        out.display()
    );
}
