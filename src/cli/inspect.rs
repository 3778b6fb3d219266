//! The commands that look inside: `show-data`, `explain` and `report`.

use std::path::PathBuf;

use clap::Args;

use super::{ModelArgs, open_device, pretext};

#[derive(Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JPEG or PNG files to explain.
    images: Vec<PathBuf>,
    /// Output directory.
    #[arg(long, default_value = "explain")]
    out: PathBuf,
    /// Also write the raw class-token attention of this block (0-based).
    #[arg(long)]
    layer: Option<usize>,
    /// With --layer: one head (0-based) instead of the mean over heads.
    #[arg(long)]
    head: Option<usize>,
    /// rollout (attention rollout; models with global attention), gradcam (models whose head
    /// pools a feature map), cam (the class activation map: heads that are mean pooling and
    /// one linear layer) or gradcat (NesT's block tree); repeat for several. Default: cam and
    /// gradcat for NesT, else rollout where it applies, else gradcam.
    #[arg(long)]
    method: Vec<String>,
    /// Explain this class (its name in the data, or its index) instead of the predicted one.
    #[arg(long = "class")]
    class: Option<String>,
    /// GradCAT (a reconstruction, the paper's pseudo-code being unavailable): minus scores
    /// activation × (−gradient), plus activation × gradient [default: minus]
    #[arg(long)]
    gradcat_sign: Option<String>,
    /// GradCAT: mean (of activation × gradient over channels) or gradcam (channels weighted by
    /// their mean gradient) [default: mean]
    #[arg(long)]
    gradcat_reduce: Option<String>,
    /// GradCAT: score a child block by its own tokens (child) or by the parent's quadrant
    /// over it (parent) [default: child]
    #[arg(long)]
    gradcat_score: Option<String>,
    /// Write the patch-embedding, position-embedding and attention-distance figures.
    #[arg(long)]
    figures: bool,
    /// Dataset whose test images feed the attention-distance figure (default: the run's).
    #[arg(long)]
    data: Option<String>,
    /// Number of test images averaged for the attention distance.
    #[arg(long, default_value_t = 256)]
    samples: usize,
}

#[derive(Args)]
pub struct ReportArgs {
    /// Run directory.
    run: PathBuf,
    /// Evaluation dataset (default: the one the run was trained on).
    #[arg(long)]
    data: Option<String>,
    /// Output directory (default: RUN/report).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Test images averaged for the attention distance.
    #[arg(long, default_value_t = 256)]
    samples: usize,
    /// Other runs (directories or log.csv files) to plot against this one: validation top-1
    /// against training wall time.
    #[arg(long, num_args = 1..)]
    compare: Vec<PathBuf>,
}

#[derive(Args)]
pub struct ShowDataArgs {
    /// Draw a pretraining pipeline's views instead (`sit`: rotated clean targets and corrupted
    /// inputs).
    #[arg(long)]
    method: Option<String>,
    #[arg(long, default_value = "synthetic")]
    data: String,
    #[arg(long, default_value_t = 40)]
    count: usize,
    #[arg(long, default_value = "data_preview.png")]
    out: PathBuf,
}

pub fn show_data(args: ShowDataArgs) -> anyhow::Result<()> {
    match args.method.as_deref() {
        Some("sit") => return pretext::show_sit_data(&args.data, args.count, &args.out),
        Some(other) => anyhow::bail!("unknown method '{other}'; valid: sit"),
        None => {}
    }
    let source = vitkit::data::DataSource::parse(&args.data)?;
    let splits = source.load(
        [32, 32],
        &vitkit::data::FolderOptions {
            skip_bad_images: true,
            channels: 3,
        },
    )?;
    let ds = &splits.train;
    let tiles: Vec<(&[u8], String)> = (0..args.count.min(ds.len()))
        .map(|i| {
            (
                ds.image(i),
                splits.info.class_names[ds.labels[i] as usize].clone(),
            )
        })
        .collect();
    let zoom = (96 / ds.height.max(1)).max(1);
    vitkit::draw::image_grid_png(&args.out, &tiles, ds.channels, ds.height, ds.width, 10, zoom)?;
    println!(
        "wrote {} ({} of {} training images)",
        args.out.display(),
        tiles.len(),
        ds.len()
    );
    Ok(())
}

pub fn explain(args: ExplainArgs, device: &str) -> anyhow::Result<()> {
    let device = open_device(device)?;
    let ex = vitkit::explain::Explainer::load(&args.model.source()?, &device)?;
    // A SiT pretraining run shows what it reconstructs from corrupted test images.
    let pretext = ex.has_pretext();
    if args.images.is_empty() && !args.figures && !pretext {
        anyhow::bail!("nothing to do: give image files and/or --figures");
    }
    let request = vitkit::explain::ImageRequest {
        methods: args
            .method
            .iter()
            .map(|m| vitkit::explain::Method::parse(m))
            .collect::<Result<_, _>>()?,
        layer: args.layer,
        head: args.head,
        class: args.class.as_deref().map(|c| ex.class_index(c)).transpose()?,
        gradcat: vitkit::explain::GradCatOptions::parse(
            args.gradcat_sign.as_deref(),
            args.gradcat_reduce.as_deref(),
            args.gradcat_score.as_deref(),
        )?,
    };
    ex.check_layer_head(args.layer, args.head)?;
    let mut written = if args.images.is_empty() {
        Vec::new()
    } else if pretext {
        anyhow::bail!(
            "a SiT pretraining run has no classifier to explain images with; run explain without \
             images for its reconstructions (and --figures), or probe/fine-tune it first"
        );
    } else {
        vitkit::explain::explain_images(&ex, &args.images, &args.out, &request)?
    };
    if pretext {
        let data = args.data.clone().unwrap_or_else(|| ex.run.data.name.clone());
        let test = vitkit::explain::test_images(&ex, &data)?;
        written.push(vitkit::explain::reconstructions(&ex, &test, 8, &args.out)?);
    }
    if args.figures {
        let data = args.data.clone().unwrap_or_else(|| ex.run.data.name.clone());
        let test = vitkit::explain::test_images(&ex, &data)?;
        written.extend(vitkit::explain::explain_figures(
            &ex,
            &test,
            args.samples,
            &args.out,
        )?);
    }
    for f in written {
        println!("wrote {}", f.display());
    }
    Ok(())
}

pub fn report(args: ReportArgs, device: &str) -> anyhow::Result<()> {
    let device = open_device(device)?;
    let out = args.out.unwrap_or_else(|| args.run.join("report"));
    let html = vitkit::report::write_report(
        &args.run,
        args.data.as_deref(),
        &out,
        args.samples,
        &args.compare,
        &device,
    )?;
    println!("wrote {}", html.display());
    Ok(())
}
