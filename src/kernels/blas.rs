//! Which code runs the f32 matrix products on the CPU, and the system OpenBLAS, loaded at run
//! time, as one of the choices.
//!
//! - `gemm`: the gemm crate (its AVX-512 kernels in builds with the `avx512` feature).
//! - `packed`: vitkit's own kernels (`packed.rs`), the widest this CPU and build run: AVX-512, or
//!   AVX2 + FMA (`packed-avx2` forces the latter). The AVX2 one is the default on x86-64 where
//!   gemm has no AVX-512 kernels (a CPU without AVX-512, or a build without the `avx512`
//!   feature): there it ran ahead of both gemm's AVX2 kernel and OpenBLAS 0.3.21 at every ViT
//!   product shape, and of OpenBLAS in all 14 benchmark steps and gemm in 13 (Zen 3;
//!   `examples/products.rs`, docs/performance.md), without needing a system library. With
//!   AVX-512, gemm stays the default: the packed AVX-512 kernel was level with it, not ahead
//!   (Zen 5, session 20).
//! - `openblas`: a system OpenBLAS (`VITKIT_BLAS=openblas`, or `VITKIT_BLAS=/path/lib.so` for a
//!   given file; one that cannot be loaded is reported on stderr, and the default is used).
//!
//! The packed kernel and OpenBLAS only ever run single-threaded, inside the parts vitkit cuts a
//! product into for its own rayon threads (`split::output_parts`): one thread pool in the
//! process, not two fighting over the cores. `VITKIT_FUSED` leaving out `blas` keeps every
//! product on the gemm crate.

use std::ffi::{CString, c_int, c_void};
use std::sync::OnceLock;

use super::packed::{self, Kernel};
use super::views::{View, ViewMut};

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

/// Products below this many multiply-adds stay on gemm when OpenBLAS is chosen: a BLAS call's
/// fixed cost (argument checks, buffer set-up) outweighs its faster kernel on the attention
/// heads' small products. The packed kernel takes every size (see [`product`]).
const MIN_MACS: usize = 64 * 64 * 64;

/// A loaded OpenBLAS's product, and the file it came from.
pub struct Blas {
    sgemm: Sgemm,
    pub path: String,
}

/// What runs the single-threaded parts of the products.
pub enum Products {
    Gemm,
    Packed(Kernel),
    OpenBlas(Blas),
}

static PRODUCTS: OnceLock<Products> = OnceLock::new();

/// What runs the f32 products on the CPU: "gemm", "packed (AVX2)", "packed (AVX-512)" or
/// "openblas (PATH)".
pub fn product_backend() -> String {
    match products() {
        Products::Gemm => "gemm".to_string(),
        Products::Packed(kernel) => format!("packed ({})", kernel.name()),
        Products::OpenBlas(b) => format!("openblas ({})", b.path),
    }
}

/// The products' code (chosen on first call; gemm while `VITKIT_FUSED` leaves `blas` out).
pub fn products() -> &'static Products {
    if !super::enabled(super::Fused::SystemBlas) {
        return &Products::Gemm;
    }
    PRODUCTS.get_or_init(|| choose(std::env::var("VITKIT_BLAS").ok().as_deref()))
}

/// Rows (or, `by_cols`, columns) of `dst` that each single-threaded part of a threaded product
/// should be a multiple of, for a kernel other than gemm's (see `split::output_parts`); `None`
/// for gemm, which threads its products itself.
pub fn part_align(dst: &ViewMut, by_cols: bool) -> Option<usize> {
    match products() {
        Products::Gemm => None,
        Products::Packed(kernel) => Some(kernel.tile_side(dst, by_cols)),
        // A multiple of OpenBLAS's tile sides (16 and 4 with AVX2).
        Products::OpenBlas(_) => Some(16),
    }
}

fn choose(setting: Option<&str>) -> Products {
    let setting = setting.map(str::trim).filter(|v| !v.is_empty() && *v != "auto");
    // Where gemm has its AVX-512 kernels (this build, this CPU), they stay the default: vitkit's
    // own AVX-512 kernel was not consistently faster in whole steps (docs/performance.md,
    // session 20). Elsewhere the packed AVX2 kernel is.
    let default = || match packed::kernel() {
        Some(Kernel::Avx2) => Products::Packed(Kernel::Avx2),
        Some(Kernel::Avx512) | None => Products::Gemm,
    };
    let tried: Vec<&str> = match setting {
        None => return default(),
        Some("gemm" | "none") => return Products::Gemm,
        Some(name @ ("packed" | "packed-avx2")) => {
            let kernel = if name == "packed" {
                packed::kernel()
            } else {
                Some(Kernel::Avx2).filter(|k| k.runs_here())
            };
            if kernel.is_none() {
                eprintln!(
                    "vitkit: VITKIT_BLAS={name}: this CPU lacks AVX2 or FMA; matrix products use the gemm crate"
                );
            }
            return kernel.map_or(Products::Gemm, Products::Packed);
        }
        Some("openblas") => CANDIDATES.to_vec(),
        Some(path) => vec![path],
    };
    match tried.iter().find_map(|p| open(p)) {
        Some(blas) => Products::OpenBlas(blas),
        None => {
            // Asked for by name and not there: say so rather than time the wrong thing silently.
            let fallback = default();
            eprintln!(
                "vitkit: VITKIT_BLAS={}: no loadable OpenBLAS (tried {}); matrix products use {}",
                setting.unwrap_or_default(),
                tried.join(", "),
                if matches!(fallback, Products::Packed(_)) {
                    "the packed kernel"
                } else {
                    "the gemm crate"
                }
            );
            fallback
        }
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

/// `dst = s · a · b` (or `+=` when `accumulate`) on one thread through the packed kernel or
/// the system BLAS, when one is chosen (for BLAS: when the product is large enough and every
/// operand's strides suit CBLAS); returns whether it ran (if not, nothing was written).
///
/// # Safety
/// As `matmul::product`: `dst` overlaps neither input, nobody else touches it meanwhile, and
/// the storage behind the views outlives the call. When `accumulate` is false `dst` may be
/// uninitialised (neither reads it then).
pub unsafe fn product(dst: ViewMut, a: View, b: View, s: f32, accumulate: bool) -> bool {
    match products() {
        Products::Gemm => false,
        // Of every size: packing costs little even at NesT's 16-token attention products
        // (16 × 16 × 32), which gemm ran slower (NesT-mini's first-level attention, AVX2
        // build, two Zen 5 cores, three alternated rounds: 4.2–5.0 ms against 4.7–5.1).
        // SAFETY: the caller's guarantees carry over; `choose` checked the CPU's features.
        Products::Packed(kernel) => unsafe {
            packed::product(*kernel, dst, a, b, s, accumulate);
            true
        },
        // SAFETY: the caller's guarantees carry over.
        Products::OpenBlas(blas) => {
            let large = dst.rows.saturating_mul(dst.cols).saturating_mul(a.cols) >= MIN_MACS;
            large && unsafe { product_with(blas, dst, a, b, s, accumulate) }
        }
    }
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
    use crate::kernels::layouts::check_every_layout;

    fn openblas() -> Blas {
        CANDIDATES
            .iter()
            .find_map(|p| open(p))
            .expect("build.rs found an OpenBLAS library, but it did not load")
    }

    /// Every layout CBLAS takes, with and without accumulation, against sums in f64.
    #[test]
    #[cfg_attr(no_openblas, ignore = "no OpenBLAS library on this machine")]
    fn products_match_a_float64_sum_in_every_layout() {
        let blas = openblas();
        let shapes = [(80, 72, 64), (1, 512, 600), (600, 1, 512), (33, 257, 31)];
        check_every_layout(&shapes, |dst, a, b, s, accumulate| {
            // SAFETY: the checker's buffers are distinct and outlive the call.
            unsafe { product_with(&blas, dst, a, b, s, accumulate) }
        });
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
        assert!(matches!(choose(Some("gemm")), Products::Gemm));
        assert!(matches!(choose(Some("none")), Products::Gemm));
        let missing = choose(Some("/nonexistent/libopenblas.so.0"));
        assert!(!matches!(missing, Products::OpenBlas(_)));
        // The default is the packed AVX2 kernel wherever it is the widest one that runs
        // (with AVX-512 gemm's kernels are); `packed` asks for the widest.
        let widest = packed::kernel();
        let chosen = |p: &Products| match p {
            Products::Packed(k) => Some(*k),
            _ => None,
        };
        let default = widest.filter(|k| *k == Kernel::Avx2);
        assert_eq!(chosen(&choose(None)), default);
        assert_eq!(chosen(&missing), default);
        assert_eq!(chosen(&choose(Some("packed"))), widest);
        let avx2 = Some(Kernel::Avx2).filter(|k| k.runs_here());
        assert_eq!(chosen(&choose(Some("packed-avx2"))), avx2);
    }
}
