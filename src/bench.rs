//! `vitkit bench`: step time, throughput and peak memory of a preset, for comparing with
//! PyTorch on the same machine (ratios side by side, never in timed tests).

use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Distribution, Tensor};
use serde::Serialize;

use crate::data::pretext::standard_normal;
use crate::data::{Batch, Normalize};
use crate::models::{Model, ModelConfig};
use crate::train::gan::{GanLoss, discriminator_loss, generator_loss};
use crate::train::sit::{SitPretraining, SitTasks, prepare_views};
use crate::train::{StepContext, Task, TrainConfig, build_optimizer, clip_grad_norm};
use crate::{Result, VitError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchMode {
    Train,
    Infer,
    /// One SiT pretraining step (a model built with its pretext heads).
    Pretrain,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub model: String,
    pub mode: String,
    pub batch_size: usize,
    pub steps: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub images_per_s: f64,
    /// Peak resident memory of the whole process (VmHWM), MiB.
    pub peak_rss_mib: f64,
    pub keep_attention: bool,
    /// Arithmetic of one step in GFLOP (2 per multiply-add; a training step counted as three
    /// forward passes: forward, and the two matrix products per layer of the backward).
    pub gflop_per_step: f64,
    /// `gflop_per_step` over the median step time.
    pub gflops: f64,
    /// The architecture timed, so a baseline can build the identical model.
    pub config: ModelConfig,
    pub device: String,
    /// Float type of parameters and activations (f32, bf16, f16).
    pub dtype: String,
    /// "bf16" when linear layers multiply in bf16 with f32 sums (`--autocast bf16` on the CPU).
    pub autocast: Option<String>,
    /// What ran the f32 products on the CPU: the gemm crate or a system OpenBLAS.
    pub products: String,
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(String::from))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Times `steps` steps after `warmup` untimed ones. In infer mode, `keep_attention` asks the
/// model for every block's attention (to show what that costs).
#[allow(clippy::too_many_arguments)]
pub fn bench(
    model: &str,
    config: &ModelConfig,
    mode: BenchMode,
    batch: usize,
    steps: usize,
    warmup: usize,
    keep_attention: bool,
    device: &Device,
) -> Result<BenchResult> {
    if batch == 0 || steps == 0 {
        return Err(VitError::Config("batch size and steps must be positive".into()));
    }
    let [h, w] = config.img_size();
    let shape = [batch, config.in_chans(), h, w];
    let mut times = Vec::with_capacity(steps);
    // The training loop's defaults: its AdamW and its gradient clipping (PyTorch's baseline
    // clips at the same norm).
    let recipe = TrainConfig::default();
    match mode {
        BenchMode::Pretrain => pretrain_steps(config, &recipe, batch, steps + warmup, device, |i, t| {
            if i >= warmup {
                times.push(t);
            }
        })?,
        BenchMode::Infer if config.generates_images() => {
            // Sampling: latents in, images out (the averaged generator, as `sample` uses).
            let m = config.build(device)?;
            let generator = m.generative()?;
            let z = Tensor::<2>::random(
                [batch, generator.latent_dim()],
                Distribution::Normal(0.0, 1.0),
                device,
            );
            for i in 0..warmup + steps {
                let t = Instant::now();
                let _ = generator.generate(z.clone(), true).into_data();
                if i >= warmup {
                    times.push(t.elapsed().as_secs_f64());
                }
            }
        }
        BenchMode::Train if config.generates_images() => {
            // One GAN step: the discriminator's update, then the generator's (non-saturating).
            let ad = device.clone().autodiff();
            let mut m = config.build(&ad)?;
            let mut optim = build_optimizer(&m, config, &recipe);
            let real = Tensor::<4>::random(shape, Distribution::Uniform(-1.0, 1.0), &ad);
            for i in 0..warmup + steps {
                let t = Instant::now();
                for phase in 0..2 {
                    let gan = m.generative()?;
                    let z =
                        Tensor::<2>::random([batch, gan.latent_dim()], Distribution::Normal(0.0, 1.0), &ad);
                    let grads = if phase == 0 {
                        let real = gan.discriminate(real.clone());
                        let fake = gan.discriminate(gan.generate(z, false).detach());
                        let loss = discriminator_loss(GanLoss::NonSaturating, real, fake);
                        GradientsParams::from_grads(loss.backward(), gan.discriminator())
                    } else {
                        let loss =
                            generator_loss(GanLoss::NonSaturating, gan.discriminate(gan.generate(z, false)));
                        GradientsParams::from_grads(loss.backward(), gan.generator())
                    };
                    m = optim.step(1e-4, m, grads);
                }
                m = m.update_average();
                wait_for_update(&m);
                if i >= warmup {
                    times.push(t.elapsed().as_secs_f64());
                }
            }
        }
        BenchMode::Infer if config.num_classes().is_none() => {
            // Two towers (CLIP): a batch of images and as many full-context texts, and their
            // similarity logits.
            let m = config.build(device)?;
            let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), device);
            let ids = bench_token_ids(&m, batch)?;
            let towers = m.image_text()?;
            for i in 0..warmup + steps {
                let t = Instant::now();
                let image = crate::models::clip::normalize(towers.encode_image(x.clone()));
                let text = crate::models::clip::normalize(towers.encode_text(&ids, batch)?);
                let _ = image.matmul(text.transpose()).into_data();
                if i >= warmup {
                    times.push(t.elapsed().as_secs_f64());
                }
            }
        }
        BenchMode::Train if config.num_classes().is_none() => {
            let ad = device.clone().autodiff();
            let mut m = config.build(&ad)?;
            let mut optim = build_optimizer(&m, config, &recipe);
            let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &ad);
            let ids = bench_token_ids(&m, batch)?;
            for i in 0..warmup + steps {
                let t = Instant::now();
                let towers = m.image_text()?;
                let (loss, _) = crate::train::clip::contrastive_loss(
                    towers.encode_image(x.clone()),
                    towers.encode_text(&ids, batch)?,
                    towers.logit_scale(),
                );
                let mut grads = GradientsParams::from_grads(loss.backward(), &m);
                clip_grad_norm(&m, &mut grads, recipe.grad_clip);
                m = optim.step(1e-4, m, grads);
                wait_for_update(&m);
                if i >= warmup {
                    times.push(t.elapsed().as_secs_f64());
                }
            }
        }
        BenchMode::Infer => {
            let m = config.build(device)?;
            let classifier = m.classifier()?;
            let attention = match (keep_attention, m.global_attention()) {
                (false, _) => None,
                (true, Some(a)) => Some(a),
                (true, None) => {
                    return Err(VitError::Config(format!(
                        "a {} model has no global attention maps to hand back",
                        m.family()
                    )));
                }
            };
            let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), device);
            for i in 0..warmup + steps {
                let t = Instant::now();
                match attention {
                    // The attention tensors are handed back; reading them is the caller's cost.
                    Some(a) => drop(a.attention_maps(x.clone())),
                    None => {
                        let _ = classifier.logits(x.clone()).into_data();
                    }
                }
                if i >= warmup {
                    times.push(t.elapsed().as_secs_f64());
                }
            }
        }
        BenchMode::Train => {
            let ad = device.clone().autodiff();
            let mut m = config.build(&ad)?;
            let classes = config.classes()?;
            let mut optim = build_optimizer(&m, config, &recipe);
            let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &ad);
            let labels = Tensor::<2>::random([batch, classes], Distribution::Uniform(0.0, 1.0), &ad);
            for i in 0..warmup + steps {
                let t = Instant::now();
                let logits = m.classifier()?.logits(x.clone());
                let loss = (log_softmax(logits, 1) * labels.clone()).sum_dim(1).mean().neg();
                let mut grads = GradientsParams::from_grads(loss.backward(), &m);
                clip_grad_norm(&m, &mut grads, recipe.grad_clip);
                m = optim.step(1e-4, m, grads);
                // Wait for the step to finish before stopping the clock.
                wait_for_update(&m);
                if i >= warmup {
                    times.push(t.elapsed().as_secs_f64());
                }
            }
            let _ = m.num_params();
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let (macs, inputs) = match mode {
        BenchMode::Train => (config.train_macs(), batch),
        // Two views of every image go through the model.
        BenchMode::Pretrain => (config.train_macs(), 2 * batch),
        BenchMode::Infer => (config.forward_macs(), batch),
    };
    let gflop = 2.0 * macs * inputs as f64 / 1e9;
    Ok(BenchResult {
        model: model.to_string(),
        mode: match mode {
            BenchMode::Train => "train",
            BenchMode::Infer => "infer",
            BenchMode::Pretrain => "pretrain",
        }
        .into(),
        batch_size: batch,
        steps,
        median_ms: 1e3 * median,
        min_ms: 1e3 * times[0],
        max_ms: 1e3 * times[times.len() - 1],
        images_per_s: batch as f64 / median,
        peak_rss_mib: peak_rss_mib(),
        keep_attention,
        gflop_per_step: gflop,
        gflops: gflop / median,
        config: config.clone(),
        device: format!("{device:?}"),
        dtype: format!("{:?}", device.settings().float_dtype).to_lowercase(),
        autocast: crate::kernels::bf16_products().then(|| "bf16".to_string()),
        products: crate::kernels::product_backend(),
    })
}

/// `total` SiT pretraining steps as `vitkit pretrain --method sit` runs them, each step's wall
/// time handed to `record` with its index: `batch` images as two views each, rotated and
/// corrupted (prepared once beforehand, as the loader prepares them beside the model), the three
/// losses with their uncertainty weights read back as the loop logs them, backward, gradient
/// clipping and AdamW.
fn pretrain_steps(
    config: &ModelConfig,
    recipe: &TrainConfig,
    batch: usize,
    total: usize,
    device: &Device,
    mut record: impl FnMut(usize, f64),
) -> Result<()> {
    let ad = device.clone().autodiff();
    let mut m = config.build(&ad)?;
    let mut optim = build_optimizer(&m, config, recipe);
    let [h, w] = config.img_size();
    let c = config.in_chans();
    let mut rng: rand::rngs::StdRng = rand::SeedableRng::seed_from_u64(0);
    let mut view = || {
        (0..batch * c * h * w)
            .map(|_| standard_normal(&mut rng))
            .collect::<Vec<f32>>()
    };
    let mut prepared = Batch {
        views: vec![view(), view()],
        labels: None,
        targets: None,
        indices: (0..batch).collect(),
        shape: [batch, c, h, w],
    };
    let identity = Normalize {
        mean: vec![0.0; c],
        std: vec![1.0; c],
        out_channels: c,
    };
    prepare_views(
        &mut prepared,
        &identity,
        0.0,
        &mut rand::SeedableRng::seed_from_u64(1),
    );
    let task = SitPretraining {
        tasks: SitTasks::default(),
        batch_size: batch,
    };
    let ctx = StepContext {
        device: &ad,
        frozen_backbone: false,
        phase: 0,
    };
    for i in 0..total {
        let this = prepared.clone();
        let t = Instant::now();
        let step = task.step(&m, this, &ctx)?;
        // The loop reads every step's loss (its divergence check).
        let _ = step.loss.clone().into_scalar::<f32>();
        let mut grads = GradientsParams::from_grads(step.loss.backward(), &m);
        clip_grad_norm(&m, &mut grads, recipe.grad_clip);
        m = optim.step(1e-4, m, grads);
        wait_for_update(&m);
        record(i, t.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Reads the last parameter the optimizer updated (the head, for every family so far): on a
/// GPU this waits for the step's kernels.
/// `batch` rows of random token ids filling the text tower's context, each ending with the
/// largest id (the end token, where CLIP pools), seeded.
fn bench_token_ids(model: &Model, batch: usize) -> Result<Vec<u32>> {
    use rand::{Rng, SeedableRng};
    let towers = model.image_text()?;
    let context = towers.context_length();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let eot = crate::text::tokenizer::EOT;
    Ok((0..batch * context)
        .map(|i| {
            if i % context == context - 1 {
                eot
            } else {
                rng.random_range(1..eot - 1)
            }
        })
        .collect())
}

fn wait_for_update(model: &Model) {
    struct Last(Option<Tensor<1>>);
    impl ModuleVisitor for Last {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            // Without autodiff: reading it records nothing in the graph.
            self.0 = Some(param.val().inner().flatten(0, D - 1).narrow(0, 0, 1));
        }
    }
    let mut last = Last(None);
    model.visit(&mut last);
    if let Some(t) = last.0 {
        let _ = t.into_data();
    }
}
