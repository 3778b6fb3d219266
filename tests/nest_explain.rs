//! GradCAT and the class activation map on a constructed NesT whose only evidence sits in a
//! known block: the traversal must descend to it and the map must peak over it, wherever it
//! is put; and the errors for models without a block tree or a pooled linear head.

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use vitkit::explain::{ChannelReduce, GradCatOptions, GradSign, ScoreFrom, class_activation_map, grad_cat};
use vitkit::models::{Model, ModelConfig, NestConfig, VitConfig};

/// A 16x16 one-channel NesT with 2x2 patches (an 8x8 token grid), three levels of 2x2-token
/// blocks and no transformer layers, whose every step is (nearly) linear: the patch embedding
/// puts a patch's mean brightness in channel 0, the aggregations' convolutions are the
/// identity, each LayerNorm is made a plain mean subtraction (eps 1e6, scale 1000: the
/// variance of these small values is negligible beside eps), and class 0's logit reads channel
/// 0. A bright patch is then the only evidence for class 0.
fn constructed(device: &Device) -> Model {
    let config = NestConfig {
        in_chans: 1,
        num_classes: 2,
        ..NestConfig::new(16, 2, &[4; 3], &[1; 3], &[0; 3])
    };
    let Model::Nest(mut m) = ModelConfig::Nest(config).build(device).unwrap() else {
        unreachable!()
    };
    let t = |v: Vec<f32>, shape: Vec<usize>| TensorData::new(v, shape);
    let mut patch = vec![0f32; 4 * 4];
    patch[..4].fill(0.25);
    m.patch_embed.proj.weight = Param::from_tensor(Tensor::from_data(t(patch, vec![4, 1, 2, 2]), device));
    m.patch_embed.proj.bias = Param::from_tensor(Tensor::zeros([4], device));
    let linear_norm = |norm: &mut vitkit::nn::LayerNorm| {
        norm.eps = 1e6;
        norm.weight = Param::from_tensor(Tensor::full([4], 1000.0, device));
    };
    for level in &mut m.levels {
        let dims = level.pos_embed.val().dims();
        level.pos_embed = Param::from_tensor(Tensor::zeros(dims, device));
        if let Some(pool) = &mut level.pool {
            let mut identity = vec![0f32; 4 * 4 * 9];
            for c in 0..4 {
                identity[(c * 4 + c) * 9 + 4] = 1.0; // the centre tap of channel c → c
            }
            pool.conv.weight = Param::from_tensor(Tensor::from_data(t(identity, vec![4, 4, 3, 3]), device));
            pool.conv.bias = Param::from_tensor(Tensor::zeros([4], device));
            linear_norm(&mut pool.norm);
        }
    }
    linear_norm(&mut m.norm);
    // [d_in, d_out]: class 0 reads channel 0, class 1 channel 1.
    let head = t(vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0], vec![4, 2]);
    m.head.weight = Param::from_tensor(Tensor::from_data(head, device));
    m.head.bias = Some(Param::from_tensor(Tensor::zeros([2], device)));
    Model::Nest(m)
}

/// A black image with one bright 2x2-pixel patch at token `(ty, tx)`.
fn image(ty: usize, tx: usize, device: &Device) -> Tensor<4> {
    let mut v = vec![0f32; 16 * 16];
    for y in 2 * ty..2 * ty + 2 {
        for x in 2 * tx..2 * tx + 2 {
            v[y * 16 + x] = 1.0;
        }
    }
    Tensor::from_data(TensorData::new(v, [1, 1, 16, 16]), device)
}

#[test]
fn gradcat_descends_to_the_block_holding_the_evidence() {
    let device = Device::flex();
    let model = constructed(&device);
    // Tokens at multiples of 4 stay in one window of each symmetric max-pool (no copy leaks
    // into a neighbouring block), one position per quadrant of the image.
    for (ty, tx) in [(0, 0), (0, 4), (4, 0), (4, 4), (4, 0)] {
        for score_from in [ScoreFrom::Child, ScoreFrom::Parent] {
            for reduce in [ChannelReduce::Mean, ChannelReduce::GradCam] {
                let options = GradCatOptions {
                    sign: GradSign::Plus,
                    reduce,
                    score_from,
                };
                let cat = grad_cat(&model, image(ty, tx, &device), None, options).unwrap();
                assert_eq!(cat.class, 0, "the bright patch is class 0's evidence");
                assert_eq!(cat.path.len(), 2, "two choices below the root");
                // Level-1 blocks are 4x4 level-0 tokens; level-0 blocks 2x2.
                let what = format!("patch at token ({ty}, {tx}), {options:?}");
                assert_eq!(cat.path[0].level, 1);
                assert_eq!(cat.path[0].block, [ty / 4, tx / 4], "{what}");
                assert_eq!(cat.path[1].block, [ty / 2, tx / 2], "{what}");
                assert_eq!(
                    cat.path[1].pixels,
                    [4 * (ty / 2), 4 * (tx / 2), 4 * (ty / 2) + 4, 4 * (tx / 2) + 4]
                );
                assert!(cat.path.iter().all(|s| s.score > 0.0), "{what}: {:?}", cat.path);
                // With the gradient's sign flipped the evidence scores lowest instead.
                let minus = GradCatOptions {
                    sign: GradSign::Minus,
                    ..options
                };
                let flipped = grad_cat(&model, image(ty, tx, &device), None, minus).unwrap();
                assert!(flipped.path[0].score <= 0.0, "{what}");
            }
        }
    }
}

#[test]
fn cam_peaks_over_the_evidence_and_averages_to_the_logit() {
    let device = Device::flex();
    let model = constructed(&device);
    for (ty, tx) in [(0, 0), (0, 4), (4, 0), (4, 4)] {
        let x = image(ty, tx, &device);
        let cam = class_activation_map(&model, x.clone(), None).unwrap();
        assert_eq!((cam.class, cam.grid), (0, [2, 2]));
        let peak = (0..4).fold(0, |b, i| if cam.map[i] > cam.map[b] { i } else { b });
        assert_eq!(
            peak,
            (ty / 4) * 2 + tx / 4,
            "patch at token ({ty}, {tx}): {:?}",
            cam.map
        );
        let logits: Vec<f32> = model
            .classifier()
            .unwrap()
            .logits(x.clone())
            .into_data()
            .try_to_vec()
            .unwrap();
        let mean = cam.map.iter().sum::<f64>() / 4.0;
        assert!((mean - logits[0] as f64).abs() < 1e-5, "{mean} vs {}", logits[0]);
        // For a named class: class 1's map, whose mean is class 1's logit.
        let other = class_activation_map(&model, x, Some(1)).unwrap();
        assert_eq!(other.class, 1);
        let mean = other.map.iter().sum::<f64>() / 4.0;
        assert!((mean - logits[1] as f64).abs() < 1e-5);
    }
}

#[test]
fn models_without_a_block_tree_or_a_pooled_linear_head_are_refused() {
    let device = Device::flex();
    let vit = ModelConfig::Vit(VitConfig::new(16, 4, 16, 1, 2))
        .build(&device)
        .unwrap();
    let x = Tensor::<4>::zeros([1, 3, 16, 16], &device);
    let err = grad_cat(&vit, x.clone(), None, GradCatOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("tree of image blocks"), "{err}");
    let err = class_activation_map(&vit, x, None).unwrap_err().to_string();
    assert!(err.contains("mean pooling and one linear layer"), "{err}");
    let nest = constructed(&device);
    let err = grad_cat(&nest, image(0, 0, &device), Some(7), GradCatOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("out of range"), "{err}");
}
