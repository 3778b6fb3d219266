//! `vitkit pretrain`, `vitkit probe` and `show-data --method sit`: self-supervised pretraining
//! and what checks it.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use vitkit::app::{default_augment, run_probe, run_train};
use vitkit::data::{DataSource, FolderOptions, Normalize};
use vitkit::train::TaskKind;
use vitkit::train::sit::{SitTasks, pipeline_batch};

use super::open_device;
use super::train::{DEFAULT_OUT, TrainArgs, report_outcome, train_request};

#[derive(Args)]
pub struct PretrainArgs {
    /// The self-supervised method (only `sit`: rotation, contrastive and reconstruction pretext
    /// tasks with learned uncertainty weights).
    #[arg(long, default_value = "sit")]
    method: String,
    /// Leave out a pretext task (an ablation): rotation, contrastive or reconstruction;
    /// repeatable.
    #[arg(long)]
    without: Vec<String>,
    /// Brightness, contrast and saturation jitter of each view (SiT's 0.4; 0 for none).
    #[arg(long, default_value_t = vitkit::train::sit::COLOR_JITTER)]
    color_jitter: f32,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Args)]
pub struct ProbeArgs {
    /// A SiT pretraining run (its best checkpoint). Without it, --model is probed at random
    /// initialisation (the baseline).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    #[command(flatten)]
    train: TrainArgs,
}

fn check_method(method: &str) -> anyhow::Result<()> {
    if method != "sit" {
        anyhow::bail!("unknown self-supervised method '{method}'; valid: sit");
    }
    Ok(())
}

pub fn pretrain(args: PretrainArgs, device: &str) -> anyhow::Result<()> {
    check_method(&args.method)?;
    if !(0.0..1.0).contains(&args.color_jitter) {
        anyhow::bail!("--color-jitter must be in [0, 1)");
    }
    let mut tasks = SitTasks {
        color_jitter: args.color_jitter,
        ..SitTasks::default()
    };
    for name in &args.without {
        match name.as_str() {
            "rotation" => tasks.rotation = false,
            "contrastive" => tasks.contrastive = false,
            "reconstruction" => tasks.reconstruction = false,
            other => {
                anyhow::bail!("unknown pretext task '{other}'; valid: rotation, contrastive, reconstruction")
            }
        }
    }
    if !(tasks.rotation || tasks.contrastive || tasks.reconstruction) {
        anyhow::bail!("--without leaves no pretext task to train");
    }
    let device = open_device(device)?;
    let out = args.train.out.clone();
    let mut req = train_request(args.train)?;
    req.recipe.task = TaskKind::Sit(tasks);
    report_outcome(&run_train(&req, &device)?, &out);
    Ok(())
}

pub fn probe(mut args: ProbeArgs, device: &str) -> anyhow::Result<()> {
    // `--out` left at the training default means "beside the pretraining run".
    if let Some(dir) = &args.checkpoint
        && args.train.out == std::path::Path::new(DEFAULT_OUT)
    {
        args.train.out = dir.join("probe");
    }
    if args.train.crop_padding.is_some() || args.train.hflip.is_some() {
        anyhow::bail!(
            "the probe trains on the frozen backbone's features of each image as it is, computed once: \
             no augmentation (for an augmented probe: `vitkit train --init RUN --model MODEL --linear-probe`)"
        );
    }
    args.train.no_augment = true;
    args.train.linear_probe = true;
    let device = open_device(device)?;
    let out = args.train.out.clone();
    let req = train_request(args.train)?;
    report_outcome(&run_probe(args.checkpoint.as_deref(), req, &device)?, &out);
    Ok(())
}

/// Rows of the SiT pipeline for the first `count` training images: the image, then per view
/// the rotated clean target and its corrupted input.
pub fn show_sit_data(data: &str, count: usize, out: &std::path::Path) -> anyhow::Result<()> {
    let splits = DataSource::parse(data)?.load(
        [32, 32],
        &FolderOptions {
            skip_bad_images: true,
            channels: 3,
        },
    )?;
    let ds = Arc::new(splits.train);
    let (c, h, w) = (ds.channels, ds.height, ds.width);
    if h != w {
        anyhow::bail!("SiT rotates images by 90 degrees: they must be square, not {h}x{w}");
    }
    let count = count.min(ds.len()).clamp(1, 16);
    let norm = Normalize::checked(&splits.info, c)?;
    let batch = pipeline_batch(
        ds.clone(),
        count,
        default_augment(data),
        SitTasks::default(),
        &norm,
        0,
    )?;
    let rotations = batch.targets.clone().unwrap_or_default();
    let len = c * h * w;
    let bytes = |v: &[f32]| norm.to_bytes(v, h, w);
    let angle = |r: u32| ["0", "90 cw", "180", "90 ccw"][r as usize % 4];
    let mut tiles: Vec<(Vec<u8>, String)> = Vec::new();
    for i in 0..count {
        tiles.push((ds.image(i).to_vec(), "image".into()));
        for v in 0..2 {
            let r = rotations.get(v * count + i).copied().unwrap_or(0);
            let clean = &batch.views[v][i * len..(i + 1) * len];
            let corrupted = &batch.views[2 + v][i * len..(i + 1) * len];
            tiles.push((bytes(clean), format!("view {} rot {}", v + 1, angle(r))));
            tiles.push((bytes(corrupted), format!("view {} corrupted", v + 1)));
        }
    }
    let refs: Vec<(&[u8], String)> = tiles.iter().map(|(b, l)| (b.as_slice(), l.clone())).collect();
    let zoom = (96 / h.max(1)).max(1);
    vitkit::draw::image_grid_png(out, &refs, c, h, w, 5, zoom)?;
    println!(
        "wrote {}: per image the original, then per view its rotated clean target and the \
         corrupted input the model sees",
        out.display()
    );
    Ok(())
}
