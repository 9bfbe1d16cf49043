//! mtseg's own CPU kernels for both networks: forward and backward for training (the
//! triplanar network's `train`, the U-Net's `unet_train`), and fused, batch-norm-folded
//! inference (the U-Net's in `unet`); the
//! convolutions on a SIMD kernel of our own (`direct`), most of them through Winograd's
//! transform (`winograd`), the dense layers on the `gemm` crate, both cores through rayon.
//! The burn network holds the weights and is the reference the kernels are tested against; on the CPU these
//! kernels are the one path users run.

pub mod activation;
pub mod burn_engine;
pub mod conv;
pub mod dense;
pub mod direct;
pub mod loss;
pub mod matmul;
pub mod network;
pub mod params;
pub mod step;
pub mod train;
pub mod unet;
pub mod unet_engine;
pub mod unet_train;
pub mod winograd;

pub use burn_engine::BurnEngine;
pub use dense::{Dense, DenseSettings, Engine, NetworkInput, Sampled};
pub use network::{CpuNetwork, FoldedNetwork};
pub use params::{ParamStore, write_values};
pub use step::{DataParallel, StepInput, Stepper};
pub use train::{StepOutput, Workspace, train_step};
pub use unet::FoldedUNet;
pub use unet_engine::UNetEngine;
pub use unet_train::{UNetLayers, UNetStepOutput, unet_train_step};

use burn::prelude::Device;

use crate::device::Hardware;
use crate::model::{Network, TriplanarNet};

/// The slab and batch sizes that suit `hardware`.
fn settings_for(hardware: Hardware) -> DenseSettings {
    match hardware {
        Hardware::Cpu => DenseSettings::default(),
        Hardware::Gpu => DenseSettings::gpu(),
    }
}

/// A triplanar network ready to run densely on `hardware`: mtseg's CPU kernels, or burn on
/// `device` (the GPU; its autodiff, if any, is dropped).
pub fn triplanar_engine(
    net: &TriplanarNet,
    hardware: Hardware,
    device: &Device,
) -> (Box<dyn Engine + Send>, DenseSettings) {
    let engine: Box<dyn Engine + Send> = match hardware {
        Hardware::Cpu => Box::new(FoldedNetwork::from_burn(net)),
        Hardware::Gpu => Box::new(BurnEngine::new(net, device.clone().without_autodiff())),
    };
    (engine, settings_for(hardware))
}

/// `net` ready to run densely on `hardware`, with the slab and batch sizes that suit it: the
/// triplanar network as [`triplanar_engine`], the U-Net through burn on `device` (burn's
/// Flex backend on the CPU).
pub fn dense_engine(
    net: &Network,
    hardware: Hardware,
    device: &Device,
) -> (Box<dyn Dense + Send>, DenseSettings) {
    let engine: Box<dyn Dense + Send> = match (net, hardware) {
        (Network::Triplanar(n), Hardware::Cpu) => Box::new(FoldedNetwork::from_burn(n)),
        (Network::Triplanar(n), Hardware::Gpu) => {
            Box::new(BurnEngine::new(n, device.clone().without_autodiff()))
        }
        (Network::UNet(n), Hardware::Cpu) => Box::new(UNetEngine::on_cpu(n)),
        (Network::UNet(n), Hardware::Gpu) => {
            Box::new(UNetEngine::on_device(n, device.clone().without_autodiff()))
        }
    };
    (engine, settings_for(hardware))
}

#[cfg(test)]
mod tests;
