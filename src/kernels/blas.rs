//! f32 products through a system OpenBLAS, loaded at run time, on CPUs where it beats the gemm
//! crate: those without AVX-512. There gemm's AVX2 micro-kernel ran 12–28% below OpenBLAS
//! 0.3.21's on every ViT product shape measured (one thread, Zen 3, `bench/gemm_vs_blas`); with
//! AVX-512 gemm's own kernel is the one vitkit was measured fastest with, so it stays.
//!
//! OpenBLAS only ever runs single-threaded, inside the parts vitkit cuts a product into for its
//! own rayon threads (`matmul::split_parts`): one thread pool in the process, not two fighting
//! over the cores. Without the library, or with `VITKIT_BLAS=gemm` (or `VITKIT_FUSED` leaving
//! out `blas`), every product stays on the gemm crate; `VITKIT_BLAS=openblas` asks for OpenBLAS
//! on any CPU, `VITKIT_BLAS=/path/lib.so` names the library file (one that cannot be loaded is
//! reported on stderr, and the products stay on gemm).

use std::ffi::{CString, c_int, c_void};
use std::sync::OnceLock;

use super::matmul::{View, ViewMut};

type Sgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);
type SetThreads = unsafe extern "C" fn(c_int);

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// The library's names: the loader's search path (Debian's `libopenblas0` links it there),
/// then the directory of Debian's pthread build itself.
const CANDIDATES: [&str; 2] = [
    "libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
];

/// Products below this many multiply-adds stay on gemm: a BLAS call's fixed cost (argument
/// checks, buffer set-up) outweighs its faster kernel on the attention heads' small products.
const MIN_MACS: usize = 64 * 64 * 64;

/// The loaded library's product, and the file it came from.
pub struct Blas {
    sgemm: Sgemm,
    pub path: String,
}

static BLAS: OnceLock<Option<Blas>> = OnceLock::new();

/// What runs the f32 products on the CPU: "openblas (PATH)" or "gemm".
pub fn product_backend() -> String {
    blas().map_or_else(|| "gemm".to_string(), |b| format!("openblas ({})", b.path))
}

/// The system BLAS in use, if any (loaded on first call; none while `VITKIT_FUSED` leaves
/// `blas` out).
pub fn blas() -> Option<&'static Blas> {
    if !super::enabled(super::Fused::SystemBlas) {
        return None;
    }
    BLAS.get_or_init(|| choose(std::env::var("VITKIT_BLAS").ok().as_deref()))
        .as_ref()
}

fn choose(setting: Option<&str>) -> Option<Blas> {
    let setting = setting.map(str::trim).filter(|v| !v.is_empty() && *v != "auto");
    let tried: Vec<&str> = match setting {
        Some("gemm" | "none") => return None,
        None if wide_simd() => return None,
        None => return CANDIDATES.iter().find_map(|p| open(p)),
        Some("openblas") => CANDIDATES.to_vec(),
        Some(path) => vec![path],
    };
    let found = tried.iter().find_map(|p| open(p));
    if found.is_none() {
        // Asked for by name and not there: say so rather than time the wrong thing silently.
        eprintln!(
            "vitkit: VITKIT_BLAS={}: no loadable OpenBLAS (tried {}); matrix products use the gemm crate",
            setting.unwrap_or_default(),
            tried.join(", ")
        );
    }
    found
}

/// Whether gemm takes its AVX-512 path on this CPU.
fn wide_simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `dlopen`s `path` and finds `cblas_sgemm`; OpenBLAS's own threads are turned down to one.
fn open(path: &str) -> Option<Blas> {
    let name = CString::new(path).ok()?;
    // SAFETY: loading a shared library runs its initialisers, which for a BLAS set up its
    // buffers; the handle is never closed, so the symbols stay valid for the process's life.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return None;
    }
    let symbol = |s: &str| -> *mut c_void {
        let s = CString::new(s).expect("symbol names hold no NUL");
        // SAFETY: a valid handle and a NUL-terminated name.
        unsafe { libc::dlsym(handle, s.as_ptr()) }
    };
    let sgemm = symbol("cblas_sgemm");
    let set_threads = symbol("openblas_set_num_threads");
    if sgemm.is_null() || set_threads.is_null() {
        return None;
    }
    // SAFETY: both symbols have these C signatures in every OpenBLAS.
    let (sgemm, set_threads) = unsafe {
        (
            std::mem::transmute::<*mut c_void, Sgemm>(sgemm),
            std::mem::transmute::<*mut c_void, SetThreads>(set_threads),
        )
    };
    // SAFETY: a plain setter of OpenBLAS's global thread count.
    unsafe { set_threads(1) };
    Some(Blas {
        sgemm,
        path: path.to_string(),
    })
}

/// How CBLAS reads a strided `rows x cols` matrix in row-major layout, with its leading
/// dimension: not transposed (columns adjacent) or transposed (rows adjacent); `None` for other
/// strides. A single row (column) may have any stride across it: the smallest legal one is given.
fn layout(rows: usize, cols: usize, rs: isize, cs: isize) -> Option<(c_int, c_int)> {
    let (trans, lead, min) = match (rs, cs) {
        (_, 1) => (NO_TRANS, if rows == 1 { cols as isize } else { rs }, cols),
        (1, _) => (TRANS, if cols == 1 { rows as isize } else { cs }, rows),
        _ => return None,
    };
    let lead = usize::try_from(lead).ok().filter(|&l| l >= min.max(1))?;
    Some((trans, c_int::try_from(lead).ok()?))
}

/// `dst = s · a · b` (or `+=` when `accumulate`) on one thread through the system BLAS, when
/// one is loaded, the product is large enough and every operand's strides suit CBLAS; returns
/// whether it ran (if not, nothing was written).
///
/// # Safety
/// As `matmul::product`: `dst` overlaps neither input, nobody else touches it meanwhile, and
/// the storage behind the views outlives the call. When `accumulate` is false `dst` may be
/// uninitialised (BLAS does not read C when beta is 0).
pub unsafe fn product(dst: ViewMut, a: View, b: View, s: f32, accumulate: bool) -> bool {
    let large = dst.rows.saturating_mul(dst.cols).saturating_mul(a.cols) >= MIN_MACS;
    // SAFETY: the caller's guarantees carry over.
    large && blas().is_some_and(|blas| unsafe { product_with(blas, dst, a, b, s, accumulate) })
}

/// [`product`] through `blas`, whatever the product's size.
///
/// # Safety
/// As [`product`].
unsafe fn product_with(blas: &Blas, dst: ViewMut, a: View, b: View, s: f32, accumulate: bool) -> bool {
    // CBLAS writes a row-major C; a column-major one is the row-major Cᵀ = Bᵀ·Aᵀ.
    let (dst, a, b) = match dst.raw() {
        (_, _, 1) => (dst, a, b),
        (_, 1, _) => (dst.t(), b.t(), a.t()),
        _ => return false,
    };
    let ((dp, drs, _), (ap, ars, acs), (bp, brs, bcs)) = (dst.raw(), a.raw(), b.raw());
    let (Some((_, ldc)), Some((ta, lda)), Some((tb, ldb))) = (
        layout(dst.rows, dst.cols, drs, 1),
        layout(a.rows, a.cols, ars, acs),
        layout(b.rows, b.cols, brs, bcs),
    ) else {
        return false;
    };
    let (Ok(m), Ok(n), Ok(k)) = (
        c_int::try_from(dst.rows),
        c_int::try_from(dst.cols),
        c_int::try_from(a.cols),
    ) else {
        return false;
    };
    let beta = if accumulate { 1.0 } else { 0.0 };
    // SAFETY: shapes, strides and leading dimensions were checked against CBLAS's rules above,
    // and the views' extents when they were built; the caller's guarantees cover aliasing.
    unsafe { (blas.sgemm)(ROW_MAJOR, ta, tb, m, n, k, s, ap, lda, bp, ldb, beta, dp, ldc) };
    true
}

#[cfg(test)]
mod tests {
    use std::mem::MaybeUninit;

    use super::*;

    /// Storage for an `rows x cols` matrix, row-major with a padded row stride or, when
    /// `transposed`, column-major with a padded column stride; the padding holds NaN.
    fn matrix(rows: usize, cols: usize, transposed: bool, seed: u32) -> (Vec<f32>, isize, isize) {
        let (outer, inner) = if transposed { (cols, rows) } else { (rows, cols) };
        let stride = inner + 3;
        let mut data = vec![f32::NAN; outer * stride];
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        for o in 0..outer {
            for i in 0..inner {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                data[o * stride + i] = (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
            }
        }
        let (rs, cs) = if transposed {
            (1, stride as isize)
        } else {
            (stride as isize, 1)
        };
        (data, rs, cs)
    }

    fn at(data: &[f32], rs: isize, cs: isize, r: usize, c: usize) -> f32 {
        data[(r as isize * rs + c as isize * cs) as usize]
    }

    fn openblas() -> Blas {
        choose(Some("openblas")).expect("build.rs found an OpenBLAS library, but it did not load")
    }

    /// Every layout CBLAS takes (each operand as stored or transposed, the output row- or
    /// column-major), with and without accumulation, against a sum in f64; the output's
    /// padding is never written.
    #[test]
    #[cfg_attr(no_openblas, ignore = "no OpenBLAS library on this machine")]
    fn products_match_a_float64_sum_in_every_layout() {
        let blas = openblas();
        for (m, n, k) in [(80, 72, 64), (1, 512, 600), (600, 1, 512), (33, 257, 31)] {
            for bits in 0..16u32 {
                let [ta, tb, td, accumulate] = [0, 1, 2, 3].map(|i| bits >> i & 1 == 1);
                let (a, ars, acs) = matrix(m, k, ta, 1 + bits);
                let (b, brs, bcs) = matrix(k, n, tb, 2 + bits);
                let (d0, drs, dcs) = matrix(m, n, td, 3 + bits);
                let mut d: Vec<MaybeUninit<f32>> = d0.iter().map(|&v| MaybeUninit::new(v)).collect();
                let s = 0.75;
                let ran = unsafe {
                    product_with(
                        &blas,
                        ViewMut::strided(&mut d, 0, m, n, drs, dcs),
                        View::strided(&a, 0, m, k, ars, acs),
                        View::strided(&b, 0, k, n, brs, bcs),
                        s,
                        accumulate,
                    )
                };
                assert!(ran, "{m}x{n}x{k}, layout bits {bits:04b}: declined");
                // SAFETY: every element was initialised from `d0`.
                let d: Vec<f32> = d.iter().map(|v| unsafe { v.assume_init() }).collect();
                for r in 0..m {
                    for c in 0..n {
                        let sum: f64 = (0..k)
                            .map(|i| at(&a, ars, acs, r, i) as f64 * at(&b, brs, bcs, i, c) as f64)
                            .sum();
                        let want = s as f64 * sum
                            + if accumulate {
                                at(&d0, drs, dcs, r, c) as f64
                            } else {
                                0.0
                            };
                        let got = at(&d, drs, dcs, r, c) as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{m}x{n}x{k}, layout bits {bits:04b}, ({r}, {c}): {got} vs {want}"
                        );
                    }
                }
                let untouched = d
                    .iter()
                    .zip(&d0)
                    .filter(|(x, y)| y.is_nan() && !x.is_nan())
                    .count();
                assert_eq!(
                    untouched, 0,
                    "{m}x{n}x{k}, layout bits {bits:04b}: padding written"
                );
            }
        }
    }

    /// Strides CBLAS cannot express are left to gemm, with nothing written.
    #[test]
    #[cfg_attr(no_openblas, ignore = "no OpenBLAS library on this machine")]
    fn other_strides_are_declined() {
        let blas = openblas();
        let (m, n, k) = (64, 64, 64);
        let a = vec![1.0f32; 2 * m * k];
        let b = vec![1.0f32; k * n];
        let mut d = vec![MaybeUninit::new(-1.0f32); m * n];
        // Every other column of `a`: neither of its strides is 1.
        let ran = unsafe {
            product_with(
                &blas,
                ViewMut::strided(&mut d, 0, m, n, n as isize, 1),
                View::strided(&a, 0, m, k, 2 * k as isize, 2),
                View::row_major(&b, k, n),
                1.0,
                false,
            )
        };
        assert!(!ran);
        assert!(d.iter().all(|v| unsafe { v.assume_init() } == -1.0));
    }

    #[test]
    fn the_gemm_setting_and_a_missing_file_load_nothing() {
        assert!(choose(Some("gemm")).is_none());
        assert!(choose(Some("none")).is_none());
        assert!(choose(Some("/nonexistent/libopenblas.so.0")).is_none());
    }
}
