//! Where the network runs: mtseg's own CPU kernels (the default), or burn on a GPU through
//! its wgpu backend, in builds with the `gpu` feature.

use std::fmt;

use burn::prelude::Device;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Hardware {
    /// mtseg's CPU kernels on every core (burn's Flex backend holds the weights).
    #[default]
    Cpu,
    /// The GPU that wgpu prefers (a discrete one first), through burn's wgpu backend.
    Gpu,
}

impl fmt::Display for Hardware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hardware::Cpu => "cpu",
            Hardware::Gpu => "gpu",
        })
    }
}

impl Hardware {
    /// The burn device that holds the network's tensors on this hardware. For the GPU this
    /// also checks that a GPU answers, so that a missing driver is a clear error up front
    /// rather than a panic deep inside the first kernel launch.
    pub fn burn_device(self) -> Result<Device> {
        match self {
            Hardware::Cpu => Ok(Device::flex()),
            Hardware::Gpu => gpu_device(),
        }
    }
}

#[cfg(feature = "gpu")]
fn gpu_device() -> Result<Device> {
    use burn::prelude::{Tensor, TensorData};
    use burn::tensor::DeviceKind;

    let device = Device::wgpu(DeviceKind::DefaultDevice);
    // burn initialises the runtime lazily and panics when no adapter exists: probe it once,
    // with the panic message kept out of the user's terminal.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let probe = std::panic::catch_unwind(|| {
        Tensor::<1>::from_data(TensorData::new(vec![1f32, 2.0], [2]), &device)
            .sum()
            .into_scalar::<f32>()
    });
    std::panic::set_hook(hook);
    match probe {
        Ok(3.0) => Ok(device),
        Ok(sum) => Err(Error::usage(format!(
            "the GPU answered 1 + 2 = {sum}: its driver is not usable"
        ))),
        Err(panic) => {
            let reason = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "no reason given".to_string());
            Err(Error::usage(format!(
                "no usable GPU: burn's wgpu backend could not start ({reason}). On Linux it \
                 needs a Vulkan loader (libvulkan.so.1) and the GPU driver's Vulkan ICD; see \
                 the README's GPU section"
            )))
        }
    }
}

#[cfg(not(feature = "gpu"))]
fn gpu_device() -> Result<Device> {
    Err(Error::usage(
        "this mtseg was built without the `gpu` feature: rebuild it with \
         `cargo build --release --features gpu` (see the README's GPU section)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_device_is_always_there() {
        assert!(Hardware::Cpu.burn_device().is_ok());
        assert_eq!(Hardware::default(), Hardware::Cpu);
    }

    #[cfg(not(feature = "gpu"))]
    #[test]
    fn asking_for_a_gpu_without_the_feature_says_how_to_get_one() {
        let message = Hardware::Gpu.burn_device().unwrap_err().to_string();
        assert!(message.contains("--features gpu"), "{message}");
    }
}
