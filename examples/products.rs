//! GFLOP/s of one linear layer's product (`x · wᵀ`, `w` stored `[out, in]` as PyTorch keeps it)
//! at ViT's shapes, through vitkit's CPU kernels with whichever product code `VITKIT_BLAS`
//! chooses (`packed`, `openblas`, `gemm`; see `src/kernels/blas.rs`): run it once per choice to
//! see which is fastest on a CPU. `RAYON_NUM_THREADS=1` measures one core. Shapes given as
//! `ROWS,OUT,IN` replace ViT's; `dw:ROWS,OUT,IN` times that layer's weight gradient instead
//! (`xᵀ · dy`, a sum over the rows: CMT's narrow convolutions have 16–128 channels and 10⁵ rows).
//!
//!     cargo run --release --example products -- [rounds] [[dw:]ROWS,OUT,IN ...]

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};

/// (rows, out, in): ViT-Ti/4 at batch 64 (4,160 tokens: qkv, fc2, fc1), its attention output
/// projection, ViT-B/16 at batch 8 (1,576 tokens: qkv, fc1, fc2) and at batch 1 (197: qkv).
const SHAPES: [(usize, usize, usize); 8] = [
    (4160, 576, 192),
    (4160, 192, 768),
    (4160, 768, 192),
    (4160, 192, 192),
    (1576, 2304, 768),
    (1576, 3072, 768),
    (1576, 768, 3072),
    (197, 2304, 768),
];

/// One shape to time, and whether it is the weight gradient rather than the forward product.
fn parse(arg: &str) -> (bool, (usize, usize, usize)) {
    let (grad, dims) = match arg.strip_prefix("dw:") {
        Some(rest) => (true, rest),
        None => (false, arg),
    };
    match dims.split(',').map(|v| v.parse().ok()).collect::<Vec<_>>()[..] {
        [Some(m), Some(n), Some(k)] => (grad, (m, n, k)),
        _ => panic!("shapes are [dw:]ROWS,OUT,IN (three numbers), not {arg}"),
    }
}

/// Best time in seconds of `rounds` calls of `run`.
fn best_of(rounds: usize, mut run: impl FnMut()) -> f64 {
    (0..rounds)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    vitkit::device::init_runtime();
    let rounds: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    let asked: Vec<_> = std::env::args().skip(2).map(|a| parse(&a)).collect();
    let shapes = if asked.is_empty() {
        SHAPES.iter().map(|&s| (false, s)).collect()
    } else {
        asked
    };
    let device = Device::flex();
    println!(
        "products: {}, {} thread(s), best of {rounds}",
        vitkit::kernels::product_backend(),
        rayon::current_num_threads()
    );
    for (grad, (m, n, k)) in shapes {
        let best = if grad {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
                .collect();
            let dy: Vec<f32> = (0..m * n)
                .map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5)
                .collect();
            best_of(rounds, || {
                let dw = vitkit::kernels::weight_gradient(&x, &dy, m, k, n);
                assert_eq!(dw.len(), k * n);
            })
        } else {
            let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
            let w = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 1.0), &device);
            best_of(rounds, || {
                let y = vitkit::kernels::linear_with(x.clone(), w.clone().transpose(), None);
                assert_eq!(y.dims(), [m, n]);
            })
        };
        let gflops = 2.0 * (m * n * k) as f64 / best / 1e9;
        let what = if grad { "dw " } else { "" };
        println!("{what}{m:5} x {n:5} x {k:5}: {gflops:6.1} GFLOP/s");
    }
}
