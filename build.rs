//! Tells the tests whether this CPU has AVX-512 BF16 (cfg `no_avx512_bf16` when it lacks
//! it), AVX-512 (cfg `no_avx512f`), AVX2 and FMA (cfg `no_avx2_fma`), and whether this machine has OpenBLAS (cfg
//! `no_openblas`), so the bf16-product, packed-kernel and system-BLAS tests report themselves
//! ignored, with the reason, instead of passing without testing anything.
//!
//! With the `cuda` feature only: links a stand-in for each LLVM entry point that Burn's CUDA
//! backend brings in but vitkit never calls.
//!
//! Why: Burn 0.22.1's CUDA backend always depends on cubecl-llvm, whose build downloads LLVM
//! (not reachable here); vitkit compiles its kernels with CubeCL's CUDA C++ (NVRTC) compiler
//! instead, so LLVM is never called, and `bench/build_cuda.sh` skips the download. The symbols
//! still have to resolve when a binary (vitkit or a test) links and when it is loaded: each
//! named in `bench/cuda_llvm_symbols.txt` gets a function that aborts if it were ever reached.
use std::path::PathBuf;
use std::process::Command;

/// Whether the machine building (and, for `cargo test`, running) vitkit has AVX-512 BF16.
fn host_has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the machine building (and testing) vitkit has AVX-512 (the packed AVX-512 kernel).
fn host_has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the machine building (and testing) vitkit runs the packed AVX2 + FMA kernel.
fn host_has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Where `kernels/blas.rs` finds OpenBLAS on Debian and Ubuntu (`libopenblas0-pthread`): when
/// none exists, cfg `no_openblas` marks its tests ignored, with the reason.
const OPENBLAS_FILES: [&str; 2] = [
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(no_avx512_bf16)");
    println!("cargo::rustc-check-cfg=cfg(no_openblas)");
    println!("cargo::rustc-check-cfg=cfg(no_avx2_fma)");
    println!("cargo::rustc-check-cfg=cfg(no_avx512f)");
    if !host_has_avx512f() {
        println!("cargo::rustc-cfg=no_avx512f");
    }
    if !host_has_avx2_fma() {
        println!("cargo::rustc-cfg=no_avx2_fma");
    }
    if !OPENBLAS_FILES.iter().any(|f| std::path::Path::new(f).exists()) {
        println!("cargo::rustc-cfg=no_openblas");
    }
    if !host_has_avx512_bf16() {
        println!("cargo::rustc-cfg=no_avx512_bf16");
    }
    let list = "bench/cuda_llvm_symbols.txt";
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={list}");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let names = std::fs::read_to_string(list).unwrap_or_else(|e| panic!("{list}: {e}"));
    let mut source = String::from("#include <stdlib.h>\n");
    for name in names
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        source.push_str(&format!("void {name}(void) {{ abort(); }}\n"));
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let (c, object) = (out.join("llvm_stubs.c"), out.join("llvm_stubs.o"));
    std::fs::write(&c, source).expect("write llvm_stubs.c");
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&compiler)
        .args(["-O1", "-fPIC", "-c"])
        .arg(&c)
        .arg("-o")
        .arg(&object)
        .status()
        .unwrap_or_else(|e| panic!("running {compiler}: {e}"));
    assert!(status.success(), "{compiler} failed on {}", c.display());
    println!("cargo:rustc-link-arg={}", object.display());
}
