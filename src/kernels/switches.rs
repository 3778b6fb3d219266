//! Switches for the fused CPU operations: `VITKIT_FUSED` names the ones in use (all by
//! default), so that what each buys can be measured by turning it off; and whether a kernel
//! applies to a tensor (enabled, f32, on the flex CPU backend).

use std::sync::OnceLock;

use burn::tensor::Tensor;

/// One bit per fused operation (and per shortcut that is not a kernel), for switching them off
/// one at a time to measure each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fused {
    Gelu = 1,
    Softmax = 2,
    LayerNorm = 4,
    Linear = 8,
    Attention = 16,
    /// Not a kernel: class-token pooling runs the last block for the class token alone.
    ClassTokenOnly = 32,
    /// The bias, GELU and residual add done inside the linear layers around them.
    Epilogue = 64,
    /// Not a kernel: threaded products split along the weights' output features (see
    /// `split::output_parts`) instead of gemm's own threading.
    SplitProducts = 128,
    /// Not a kernel: for few rows, linear layers read their `[out, in]` weight in place rather
    /// than have gemm pack it (see `matmul::weight_in_place`).
    WeightInPlace = 256,
    /// The channels-last depthwise convolution (`depthwise.rs`) instead of flex's grouped one.
    Depthwise = 512,
    /// BatchNorm over channels-last rows (`batch_norm.rs`) instead of Burn's.
    BatchNorm = 1024,
    /// Attention from separate q, k, v with a bias shared by the batch (`bias_attention.rs`,
    /// CMT's) instead of Burn's operations.
    BiasAttention = 2048,
    /// The 3×3, stride-2 max-pool in one pass with its backward (`max_pool.rs`, NesT's) instead
    /// of Burn's pairwise maxima.
    MaxPool = 4096,
    /// Not a kernel switch as such: products through a packed kernel or a system OpenBLAS,
    /// whichever `blas.rs` chooses (`VITKIT_BLAS`), instead of the gemm crate.
    SystemBlas = 8192,
    /// Not a kernel: a threaded product whose sum is much longer than its output (a weight
    /// gradient) cut along the sum (see `split::sum_parts`) instead of along the output.
    SplitSum = 16384,
    /// Not a kernel: a gemm product whose output is at most 16 wide along its contiguous side
    /// and long the other way written through a scratch laid out the other way (see
    /// `matmul::narrow_through_scratch`).
    NarrowScratch = 32768,
    /// Not a kernel: a threaded product cut into several parts per thread, which rayon hands to
    /// whichever thread is free (see `split::part_count`), rather than one part per thread.
    Balance = 65536,
    /// AdamW's update and gradient clipping's passes threaded and fused (`adamw.rs`) instead of
    /// Burn's tensor operations.
    AdamW = 131072,
    /// Not a kernel: the packed AVX2 kernel reads a row-major left operand where it lies
    /// rather than packing it (see `packed::x86::product`).
    DirectRows = 262144,
}

const ALL_FUSED: u32 = (1 << 19) - 1;

/// The names `VITKIT_FUSED` takes, with their bits.
const FUSED_NAMES: [(&str, u32); 20] = [
    ("gelu", Fused::Gelu as u32),
    ("softmax", Fused::Softmax as u32),
    ("layernorm", Fused::LayerNorm as u32),
    ("linear", Fused::Linear as u32),
    ("attention", Fused::Attention as u32),
    ("cls", Fused::ClassTokenOnly as u32),
    ("epilogue", Fused::Epilogue as u32),
    ("split", Fused::SplitProducts as u32),
    ("inplace", Fused::WeightInPlace as u32),
    ("depthwise", Fused::Depthwise as u32),
    ("batchnorm", Fused::BatchNorm as u32),
    ("biasattention", Fused::BiasAttention as u32),
    ("maxpool", Fused::MaxPool as u32),
    ("blas", Fused::SystemBlas as u32),
    ("sumsplit", Fused::SplitSum as u32),
    ("narrow", Fused::NarrowScratch as u32),
    ("balance", Fused::Balance as u32),
    ("adamw", Fused::AdamW as u32),
    ("rows", Fused::DirectRows as u32),
    ("all", ALL_FUSED),
];

/// The mask a `VITKIT_FUSED` value names: a comma-separated list of
/// `gelu,softmax,layernorm,linear,attention,epilogue,cls,split,inplace,depthwise,batchnorm,biasattention,maxpool,blas,sumsplit,narrow,balance,adamw,rows`, `all`, or `none`.
/// An unknown name is an error naming it (a typo must not switch every kernel off).
pub fn parse_fused(list: &str) -> Result<u32, String> {
    if list.trim() == "none" {
        return Ok(0);
    }
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            FUSED_NAMES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, bit)| *bit)
                .ok_or_else(|| {
                    let valid: Vec<&str> = FUSED_NAMES.iter().map(|(n, _)| *n).collect();
                    format!(
                        "VITKIT_FUSED names an unknown kernel '{name}'; valid: {}, none",
                        valid.join(", ")
                    )
                })
        })
        .try_fold(0, |mask, bit| bit.map(|b| mask | b))
}

/// `VITKIT_FUSED`'s mask (all kernels when unset), or the error for an invalid value.
fn fused_mask() -> &'static Result<u32, String> {
    static MASK: OnceLock<Result<u32, String>> = OnceLock::new();
    MASK.get_or_init(|| match std::env::var("VITKIT_FUSED") {
        Err(_) => Ok(ALL_FUSED),
        Ok(list) => parse_fused(&list),
    })
}

/// An error when `VITKIT_FUSED` is set to something [`parse_fused`] rejects; programs call
/// it at start-up (the `vitkit` binary does).
pub fn check_fused_env() -> Result<(), String> {
    fused_mask().clone().map(|_| ())
}

/// Whether the fused operation `op` is in use: all are, unless the environment variable
/// `VITKIT_FUSED` lists some (see [`parse_fused`]). For measuring what each buys. A program
/// that did not call [`check_fused_env`] and has an invalid value runs every kernel.
pub fn enabled(op: Fused) -> bool {
    let mask = match fused_mask() {
        Ok(mask) => *mask,
        Err(_) => ALL_FUSED,
    };
    mask & op as u32 != 0
}

/// Whether a fused kernel applies: it is enabled and `x` is an f32 tensor on the flex CPU backend
/// (with or without autodiff).
pub fn applies<const D: usize>(x: &Tensor<D>, op: Fused) -> bool {
    enabled(op) && on_flex(x) && x.dtype() == burn::tensor::DType::F32
}

/// Whether `x` lives on the flex CPU backend (with or without autodiff).
pub fn on_flex<const D: usize>(x: &Tensor<D>) -> bool {
    crate::device::is_cpu(&x.device())
}
