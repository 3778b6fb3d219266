//! GFLOP/s of one linear layer's product (`x · wᵀ`, `w` stored `[out, in]` as PyTorch keeps it)
//! at ViT's shapes, through vitkit's CPU kernels with whichever product code `VITKIT_BLAS`
//! chooses (`packed`, `openblas`, `gemm`; see `src/kernels/blas.rs`): run it once per choice to
//! see which is fastest on a CPU. `RAYON_NUM_THREADS=1` measures one core.
//!
//!     cargo run --release --example products -- [rounds]

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

fn main() {
    vitkit::device::init_runtime();
    let rounds: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    let device = Device::flex();
    println!(
        "products: {}, {} thread(s), best of {rounds}",
        vitkit::kernels::product_backend(),
        rayon::current_num_threads()
    );
    for (m, n, k) in SHAPES {
        let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 1.0), &device);
        let mut best = f64::MAX;
        for _ in 0..rounds {
            let (x, w) = (x.clone(), w.clone().transpose());
            let start = Instant::now();
            let y = vitkit::kernels::linear_with(x, w, None);
            best = best.min(start.elapsed().as_secs_f64());
            assert_eq!(y.dims(), [m, n]);
        }
        let gflops = 2.0 * (m * n * k) as f64 / best / 1e9;
        println!("{m:5} x {n:5} x {k:5}: {gflops:6.1} GFLOP/s");
    }
}
