//! Choice of compute device: the flex CPU backend by default, CUDA with the `cuda` feature.

use burn::tensor::Device;

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
