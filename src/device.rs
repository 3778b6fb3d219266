//! Choice of compute device: the flex CPU backend by default, CUDA with the `cuda` feature.

use burn::tensor::{Device, FloatDType};

/// The device named by `name` ("cpu", or "cuda"/"cuda:N" when built with the `cuda` feature).
pub fn parse_device(name: &str) -> crate::Result<Device> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        n if n == "cuda" || n.starts_with("cuda:") => {
            let index = n
                .strip_prefix("cuda:")
                .map(|i| i.parse::<usize>())
                .transpose()
                .map_err(|_| crate::VitError::Config(format!("bad device '{n}'")))?
                .unwrap_or(0);
            // The CUDA runtime panics on its first use where no driver is installed; say so first.
            if !cuda_driver_present() {
                return Err(crate::VitError::Config(format!(
                    "device '{n}': no NVIDIA driver found (libcuda.so.1 could not be loaded)"
                )));
            }
            Ok(Device::cuda(index))
        }
        other => Err(crate::VitError::Config(format!(
            "unknown device '{other}'; valid: cpu{}",
            if cfg!(feature = "cuda") {
                ", cuda, cuda:N"
            } else {
                " (build with --features cuda for GPUs)"
            }
        ))),
    }
}

/// Whether `device` is the flex CPU backend (with or without autodiff).
pub fn is_cpu(device: &Device) -> bool {
    use burn::backend::DispatchDevice;
    let flex = |d: &DispatchDevice| matches!(d, DispatchDevice::Flex(_));
    // An autodiff device dereferences to the device it wraps.
    flex(device.as_dispatch())
        || matches!(device.as_dispatch(), DispatchDevice::Autodiff(inner) if flex(inner))
}

/// Whether the NVIDIA driver library can be loaded (what the CUDA backend loads at first use).
#[cfg(feature = "cuda")]
fn cuda_driver_present() -> bool {
    ["libcuda.so.1", "libcuda.so"].iter().any(|name| {
        let name = std::ffi::CString::new(*name).expect("no interior NUL");
        // SAFETY: dlopen with a valid C string; the handle is closed right away.
        unsafe {
            let handle = libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
            if handle.is_null() {
                false
            } else {
                libc::dlclose(handle);
                true
            }
        }
    })
}

/// The floating-point type named by `name`: f32 (default), bf16 or f16.
pub fn parse_float_dtype(name: &str) -> crate::Result<FloatDType> {
    match name {
        "f32" | "fp32" | "float32" => Ok(FloatDType::F32),
        "bf16" | "bfloat16" => Ok(FloatDType::BF16),
        "f16" | "fp16" | "float16" => Ok(FloatDType::F16),
        other => Err(crate::VitError::Config(format!(
            "unknown dtype '{other}'; valid: f32, bf16, f16"
        ))),
    }
}

/// Makes `dtype` the type of every float tensor later created on `device`: parameters,
/// activations, gradients and optimizer state alike (what `model.to(dtype)` is in PyTorch;
/// there is no f32 master copy). Must come before the first tensor on the device.
///
/// vitkit's fused CPU kernels are f32-only: in another dtype the CPU runs Burn's own
/// operations.
pub fn set_float_dtype(device: &mut Device, dtype: FloatDType) -> crate::Result<()> {
    if dtype == FloatDType::F32 {
        return Ok(());
    }
    device
        .configure(dtype)
        .map_err(|e| crate::VitError::Config(format!("cannot compute in {dtype:?} on {device:?}: {e}")))
}

/// Process-wide settings that make training faster; call once at start-up.
///
/// glibc returns every freed block above 128 KiB to the kernel, so each training step paid
/// for fresh zeroed pages for each activation (measured: 20% of the step in page faults,
/// memset and memmove). Keeping freed memory in the heap removes that.
pub fn init_runtime() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; it is called before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
    // The thread that runs the model joins rayon's pool as worker 0. Otherwise every parallel
    // operation is handed from this thread to the pool's own workers while it sleeps on a futex,
    // and between operations those workers spin beside it: one thread more than there are
    // cores, and a sleep and a wake-up per operation. CMT's many small operations lost about a
    // tenth of a training step to that (perf: sched_yield and futex, 2-core Zen 3). An error
    // means a pool already exists (a library user built one); that one is kept.
    let pool = rayon::ThreadPoolBuilder::new().use_current_thread();
    if pool.build_global().is_ok() {
        DRIVING.set(true);
    }
}

thread_local! {
    /// Set on the thread that joined rayon's pool in [`init_runtime`].
    static DRIVING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the current thread may split work across the pool: any thread outside it, and the
/// thread that joined it in [`init_runtime`]; not the pool's own workers, which only run parts
/// of operations already split.
pub fn on_driving_thread() -> bool {
    rayon::current_thread_index().is_none() || DRIVING.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread outside the pool splits work; the pool's own workers do not (the thread that
    /// joins the pool in `init_runtime` is marked apart, see there).
    #[test]
    fn only_threads_that_drive_split_work() {
        assert!(on_driving_thread());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("a pool");
        let inside = pool.broadcast(|_| on_driving_thread());
        assert_eq!(inside, vec![false, false]);
    }
}
