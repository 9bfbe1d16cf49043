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
        Ok(self.burn_devices(1)?.remove(0))
    }

    /// `count` devices for data-parallel training: on the GPU the one wgpu prefers for one,
    /// else the first `count` discrete GPUs, each checked; on the CPU only one.
    pub fn burn_devices(self, count: usize) -> Result<Vec<Device>> {
        match (self, count) {
            (_, 0) => Err(Error::usage("at least one device is needed")),
            (Hardware::Cpu, 1) => Ok(vec![Device::flex()]),
            (Hardware::Cpu, _) => Err(Error::usage(
                "several devices train only on GPUs: add --device gpu",
            )),
            (Hardware::Gpu, 1) => Ok(vec![gpu_device(None)?]),
            (Hardware::Gpu, n) => (0..n).map(|i| gpu_device(Some(i))).collect(),
        }
    }
}

/// The text of a caught panic (burn reports GPU failures by panicking).
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "no reason given".to_string())
}

/// The GPU wgpu prefers, or the discrete GPU of this index, once it has answered.
#[cfg(feature = "gpu")]
fn gpu_device(discrete: Option<usize>) -> Result<Device> {
    use burn::prelude::{Tensor, TensorData};
    use burn::tensor::DeviceKind;

    let device = Device::wgpu(discrete.map_or(DeviceKind::DefaultDevice, DeviceKind::DiscreteGpu));
    let which = discrete.map_or("GPU".to_string(), |i| format!("discrete GPU {i}"));
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
        Ok(3.0) => {
            let identity = device.identity();
            let name = identity.as_ref().map_or("unnamed", |id| id.name.as_str());
            // wgpu falls back to a software renderer (Mesa's llvmpipe or lavapipe) when no
            // GPU driver answers: it runs on the CPU, far slower than mtseg's own kernels.
            let software = identity.as_ref().is_some_and(|id| id.physical.is_none());
            if software && std::env::var_os(ALLOW_SOFTWARE_GPU).is_none() {
                return Err(Error::usage(format!(
                    "no usable {which}: the only adapter wgpu found is the software renderer \
                     \"{name}\", which runs on the CPU far slower than mtseg's own kernels; use \
                     --device cpu (or set {ALLOW_SOFTWARE_GPU}=1 to use it anyway, to test the \
                     GPU path)"
                )));
            }
            tracing::info!("{which}: {name}");
            Ok(device)
        }
        Ok(sum) => Err(Error::usage(format!(
            "the {which} answered 1 + 2 = {sum}: its driver is not usable"
        ))),
        Err(panic) => Err(Error::usage(format!(
            "no usable {which}: burn's wgpu backend could not start ({}). On Linux it needs a \
             Vulkan loader (libvulkan.so.1) and the GPU driver's Vulkan ICD; see the README's \
             GPU section",
            panic_message(panic.as_ref())
        ))),
    }
}

/// Set to use a software renderer as the GPU: it checks the GPU path on a machine without one.
#[cfg(feature = "gpu")]
const ALLOW_SOFTWARE_GPU: &str = "MTSEG_ALLOW_SOFTWARE_GPU";

/// The name the GPU's driver gives it (say "NVIDIA H200"); `None` for the CPU.
#[cfg(feature = "gpu")]
pub fn gpu_name(device: &Device) -> Option<String> {
    device.identity().map(|identity| identity.name)
}

#[cfg(not(feature = "gpu"))]
pub fn gpu_name(_device: &Device) -> Option<String> {
    None
}

#[cfg(not(feature = "gpu"))]
fn gpu_device(_discrete: Option<usize>) -> Result<Device> {
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

    #[test]
    fn several_devices_are_gpus() {
        let message = Hardware::Cpu.burn_devices(2).unwrap_err().to_string();
        assert!(message.contains("--device gpu"), "{message}");
        assert!(Hardware::Gpu.burn_devices(0).is_err());
    }

    #[cfg(not(feature = "gpu"))]
    #[test]
    fn asking_for_a_gpu_without_the_feature_says_how_to_get_one() {
        let message = Hardware::Gpu.burn_device().unwrap_err().to_string();
        assert!(message.contains("--features gpu"), "{message}");
    }
}
