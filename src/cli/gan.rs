//! `vitkit sample` and `vitkit fid`, and the GAN options of `vitkit train --task gan`.

use std::path::PathBuf;

use clap::Args;

use super::open_device;
use vitkit::app::gan::{run_fid, run_interpolation, run_sample};
use vitkit::train::gan::{GanLoss, GanSettings};

/// Options of `train --task gan`.
#[derive(Args, Default)]
pub struct GanArgs {
    /// --task gan: the classifier run (trained on the same data) whose pooled features FID is
    /// computed on after each epoch.
    #[arg(long)]
    pub fid_features: Option<PathBuf>,
    /// --task gan: non-saturating (default) or hinge.
    #[arg(long, default_value = "non-saturating")]
    pub gan_loss: String,
    /// --task gan: generated images per validation FID.
    #[arg(long, default_value_t = 5000)]
    pub fid_samples: usize,
}

impl GanArgs {
    pub fn settings(&self) -> anyhow::Result<GanSettings> {
        if self.fid_samples < 2 {
            anyhow::bail!("--fid-samples must be at least 2");
        }
        Ok(GanSettings {
            loss: self.gan_loss.parse::<GanLoss>()?,
            fid_samples: self.fid_samples,
        })
    }
}

#[derive(Args)]
pub struct SampleArgs {
    /// A GAN run directory (its best checkpoint) or checkpoint directory.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Images in the grid (8 per row).
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// Seed of the latent vectors: the same seed draws the same images.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// PNG to write.
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
    /// Write latent interpolation strips instead: this many rows (1 when no number is given) of
    /// --steps images, each walking (spherically) from one random latent to the next.
    #[arg(long, num_args = 0..=1, default_missing_value = "1", value_name = "ROWS")]
    interpolate: Option<usize>,
    /// Images per interpolation strip.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Use the trained generator itself instead of its moving average.
    #[arg(long)]
    raw: bool,
}

#[derive(Args)]
pub struct FidArgs {
    /// A GAN run directory (its best checkpoint) or checkpoint directory.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Dataset whose test split is the reference (default: the run's).
    #[arg(long)]
    data: Option<String>,
    /// Classifier run whose features are compared (default: the one the run was trained with).
    #[arg(long)]
    features: Option<PathBuf>,
    /// Generated images.
    #[arg(long, default_value_t = 10_000)]
    n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use the trained generator itself instead of its moving average.
    #[arg(long)]
    raw: bool,
}

pub fn sample(args: SampleArgs, device: &str) -> anyhow::Result<()> {
    let device = open_device(device)?;
    match args.interpolate {
        Some(rows) => {
            run_interpolation(
                &args.checkpoint,
                rows,
                args.steps,
                args.seed,
                args.raw,
                &args.out,
                &device,
            )?;
            println!(
                "{rows} interpolation strip(s) of {} images: {}",
                args.steps,
                args.out.display()
            );
        }
        None => {
            run_sample(&args.checkpoint, args.n, args.seed, args.raw, &args.out, &device)?;
            println!("{} samples (seed {}): {}", args.n, args.seed, args.out.display());
        }
    }
    Ok(())
}

pub fn fid(args: FidArgs, device: &str) -> anyhow::Result<()> {
    let device = open_device(device)?;
    let r = run_fid(
        &args.checkpoint,
        args.data.as_deref(),
        args.features.as_deref(),
        args.n,
        args.seed,
        args.raw,
        &device,
    )?;
    println!(
        "FID {:.3}: {} generated images against the {} test images of {}, on the features of the vitkit \
         classifier {} (not Inception: comparable with other vitkit FIDs on the same extractor only)",
        r.fid,
        r.generated,
        r.real,
        r.data,
        r.extractor.display()
    );
    Ok(())
}
