//! GFLOP/s of `y = x · wᵀ` (x `[m, k]` row-major, w `[n, k]` row-major: PyTorch's linear layer)
//! on one thread, for the gemm crate and each BLAS found, alternated round by round; best round.

use std::time::Instant;

type Sgemm = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    *const f32,
    i32,
    *const f32,
    i32,
    f32,
    *mut f32,
    i32,
);

const LIBRARIES: [(&str, &str); 2] = [
    (
        "openblas",
        "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    ),
    ("blis", "/usr/lib/x86_64-linux-gnu/blis-openmp/libblis.so.4"),
];

/// (m, n, k): ViT-Ti/4 at batch 64 (4,160 rows) and its weight gradient, ViT-B/16 at batch 8 and 1.
const SHAPES: [(usize, usize, usize); 7] = [
    (4160, 576, 192),
    (4160, 192, 768),
    (4160, 768, 192),
    (192, 576, 4160),
    (1576, 2304, 768),
    (1576, 3072, 768),
    (197, 2304, 768),
];

fn main() {
    for var in ["OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS", "OMP_NUM_THREADS"] {
        // SAFETY: set before any library is loaded or any other thread starts.
        unsafe { std::env::set_var(var, "1") };
    }
    let rounds: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    let mut libs = Vec::new();
    for (name, path) in LIBRARIES {
        // SAFETY: loading a system BLAS runs only its initialisers.
        match unsafe { libloading::Library::new(path) } {
            Ok(lib) => libs.push((name, lib)),
            Err(_) => eprintln!("{name}: not found at {path}, skipped"),
        }
    }
    // SAFETY: cblas_sgemm has this signature in every CBLAS.
    let blas: Vec<(&str, Sgemm)> = libs
        .iter()
        .filter_map(|(name, lib)| unsafe { lib.get::<Sgemm>(b"cblas_sgemm").ok().map(|f| (*name, *f)) })
        .collect();
    for (m, n, k) in SHAPES {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut y = vec![0f32; m * n];
        let mut best = vec![f64::MAX; 1 + blas.len()];
        for _ in 0..rounds {
            let t = Instant::now();
            // SAFETY: the three buffers match the shapes and strides given.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    y.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    x.as_ptr(),
                    1,
                    k as isize,
                    w.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            };
            best[0] = best[0].min(t.elapsed().as_secs_f64());
            for (i, (_, sgemm)) in blas.iter().enumerate() {
                let t = Instant::now();
                // SAFETY: row-major (101), x as is (111), w transposed (112); sizes as above.
                unsafe {
                    sgemm(
                        101,
                        111,
                        112,
                        m as i32,
                        n as i32,
                        k as i32,
                        1.0,
                        x.as_ptr(),
                        k as i32,
                        w.as_ptr(),
                        k as i32,
                        0.0,
                        y.as_mut_ptr(),
                        n as i32,
                    )
                };
                best[i + 1] = best[i + 1].min(t.elapsed().as_secs_f64());
            }
        }
        let rate = |s: f64| 2.0 * (m * n * k) as f64 / s / 1e9;
        let mut line = format!("{m:5} x {n:5} x {k:5}: gemm {:.1}", rate(best[0]));
        for (i, (name, _)) in blas.iter().enumerate() {
            line += &format!("  {name} {:.1}", rate(best[i + 1]));
        }
        println!("{line} GFLOP/s");
    }
}
