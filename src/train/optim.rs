use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;

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
    let base = AdamWConfig::new()
        .with_beta_1(cfg.beta1 as f32)
        .with_beta_2(cfg.beta2 as f32)
        .with_epsilon(cfg.adam_eps as f32);
    let decayed = base.clone().with_weight_decay(cfg.weight_decay as f32);
    let undecayed = base.with_weight_decay(0.0).build();
    decayed
        .init()
        .with_group(ParamGroup::from_ids(no_decay_ids(model, config)), undecayed, None)
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
        parts: Vec<Tensor<1>>,
    }
    impl ModuleVisitor for Norm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                self.parts.push(g.powi_scalar(2).sum());
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
                self.grads.register(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    let mut norm = Norm {
        grads,
        parts: Vec::new(),
    };
    model.visit(&mut norm);
    if norm.parts.is_empty() {
        return 0.0;
    }
    let total = Tensor::cat(norm.parts, 0).sum().into_scalar::<f32>() as f64;
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
