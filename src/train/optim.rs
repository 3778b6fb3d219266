use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::{
    AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, GradientsParams, LearningRate, ModuleOptimizer,
    Optimizer,
};
use burn::tensor::{Device, Tensor};

use super::TrainConfig;
use crate::io::ParamPath;
use crate::models::{Model, ModelConfig};

/// Parameters exempt from weight decay, as the family declares them
/// ([`ModelConfig::decay_exempt`]; timm's rule for the ViT).
pub fn no_decay_ids<M: Module>(model: &M, config: &ModelConfig) -> Vec<ParamId> {
    struct V<'a> {
        path: ParamPath,
        config: &'a ModelConfig,
        ids: Vec<ParamId>,
    }
    impl ModuleVisitor for V<'_> {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.path.enter(name, container);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.config.decay_exempt(&self.path.name(), D) {
                self.ids.push(param.id);
            }
        }
    }
    let mut v = V {
        path: ParamPath::default(),
        config,
        ids: Vec::new(),
    };
    model.visit(&mut v);
    v.ids
}

/// AdamW with decoupled weight decay, except on the parameters the family exempts.
pub fn build_optimizer<M: Module>(model: &M, config: &ModelConfig, cfg: &TrainConfig) -> ModuleOptimizer {
    let adamw = |weight_decay: f64| FusedAdamW {
        beta1: cfg.beta1 as f32,
        beta2: cfg.beta2 as f32,
        eps: cfg.adam_eps as f32,
        weight_decay: weight_decay as f32,
    };
    ModuleOptimizer::from(adamw(cfg.weight_decay)).with_group(
        ParamGroup::from_ids(no_decay_ids(model, config)),
        adamw(0.0),
        None,
    )
}

/// Burn's AdamW, with each f32 parameter on the CPU updated by one threaded pass
/// (`kernels::adamw_update`) rather than Burn's dozen single-threaded tensor operations. The
/// state is Burn's `AdamWState`, so checkpoints read and write the same records either way;
/// anything else (bf16 training, CUDA, the `adamw` switch off) takes Burn's own step.
#[derive(Clone, Debug)]
pub struct FusedAdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl FusedAdamW {
    /// Burn's AdamW with the same settings.
    fn burn(&self) -> AdamW {
        AdamWConfig::new()
            .with_beta_1(self.beta1)
            .with_beta_2(self.beta2)
            .with_epsilon(self.eps)
            .with_weight_decay(self.weight_decay)
            .build()
    }
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let fused = crate::kernels::adamw_applies(&[&tensor, &grad])
            && state
                .as_ref()
                .is_none_or(|s| crate::kernels::adamw_applies(&[&s.momentum.moment_1, &s.momentum.moment_2]));
        if !fused {
            return self.burn().step(lr, tensor, grad, state);
        }
        let (time, m, v) = match state {
            Some(AdamWState { momentum }) => (momentum.time + 1, momentum.moment_1, momentum.moment_2),
            None => (1, grad.zeros_like(), grad.zeros_like()),
        };
        // The scalars exactly as Burn's AdamW forms them (f64 products cast to f32, f32 powers).
        let step = crate::kernels::AdamWStep {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            decay: (1.0 - lr * self.weight_decay as f64) as f32,
            lr: lr as f32,
            correction1: 1.0 - self.beta1.powi(time as i32),
            correction2: 1.0 - self.beta2.powi(time as i32),
        };
        let (tensor, m, v) = crate::kernels::adamw_update(tensor, grad, m, v, step);
        let momentum = AdaptiveMomentumState::new(time, m, v);
        (tensor, Some(AdamWState { momentum }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        AdamW::to_device(state, device)
    }
}

/// Every parameter but the classifier head stops requiring gradients (a linear probe): the
/// backward pass and the optimizer see the head alone.
pub fn freeze_backbone(model: Model, config: &ModelConfig) -> Model {
    struct Freeze {
        path: ParamPath,
        head: Vec<String>,
    }
    impl ModuleMapper for Freeze {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.path.enter(name, container);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let trains = self.head.contains(&self.path.name());
            param.set_require_grad(trains)
        }
    }
    model.map(&mut Freeze {
        path: ParamPath::default(),
        head: config.head_params(),
    })
}

/// Scales all gradients together so their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_`. Returns the norm before clipping.
pub fn clip_grad_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: Option<f64>) -> f64 {
    struct Norm<'a> {
        grads: &'a GradientsParams,
        /// Sums of squares taken by Burn's operations, and those taken by the fused kernel.
        parts: Vec<Tensor<1>>,
        fused: f64,
    }
    impl ModuleVisitor for Norm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                match crate::kernels::sum_of_squares(&g) {
                    Some(sum) => self.fused += sum,
                    None => self.parts.push(g.powi_scalar(2).sum()),
                }
            }
        }
    }
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                let g = crate::kernels::scaled(g, self.factor);
                self.grads.register(param.id, g);
            }
        }
    }
    let mut norm = Norm {
        grads,
        parts: Vec::new(),
        fused: 0.0,
    };
    model.visit(&mut norm);
    let mut total = norm.fused;
    if !norm.parts.is_empty() {
        total += Tensor::cat(norm.parts, 0).sum().into_scalar::<f32>() as f64;
    }
    let total = total.sqrt();
    if let Some(max) = max_norm
        && total.is_finite()
        && total > max
    {
        let mut scale = Scale {
            grads,
            factor: max / (total + 1e-6),
        };
        model.visit(&mut scale);
    }
    total
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, TensorData};

    use super::*;

    fn values<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
        t.to_data().try_to_vec::<f32>().unwrap()
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    /// Three steps of the fused update against Burn's AdamW from the same state, with and
    /// without weight decay, on a parameter larger than one task's share (so threaded).
    #[test]
    fn the_fused_adamw_step_repeats_burns() {
        let device = Device::flex();
        for weight_decay in [0.05f32, 0.0] {
            let fused = FusedAdamW {
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay,
            };
            let burn = fused.burn();
            let shape = [300, 257];
            let start = Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let (mut ours, mut theirs) = (start.clone(), start);
            let (mut our_state, mut their_state) = (None, None);
            for step in 0..3 {
                let grad = Tensor::<2>::random(shape, Distribution::Normal(0.0, 0.1), &device);
                assert!(crate::kernels::adamw_applies(&[&ours, &grad]));
                let lr = 0.05 * (step + 1) as f64;
                (ours, our_state) = fused.step(lr, ours, grad.clone(), our_state);
                (theirs, their_state) = burn.step(lr, theirs, grad, their_state);
            }
            close(&values(&ours), &values(&theirs));
            let (a, b) = (our_state.unwrap().momentum, their_state.unwrap().momentum);
            assert_eq!((a.time, b.time), (3, 3));
            close(&values(&a.moment_1), &values(&b.moment_1));
            close(&values(&a.moment_2), &values(&b.moment_2));
        }
    }

    /// A parameter whose storage another tensor shares is copied, not written in place.
    #[test]
    fn the_fused_adamw_step_leaves_shared_tensors_alone() {
        let device = Device::flex();
        let param = Tensor::<1>::from_data(TensorData::new(vec![1.0f32; 40_000], [40_000]), &device);
        let kept = param.clone();
        let grad = param.ones_like();
        let fused = FusedAdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let (updated, _) = fused.step(0.01, param, grad, None);
        assert!(values(&kept).iter().all(|&v| v == 1.0), "the shared copy changed");
        assert!(
            values(&updated).iter().all(|&v| v < 0.99),
            "the update did not happen"
        );
    }
}
