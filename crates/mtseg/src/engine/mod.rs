//! Stage 8, running the networks: one inference boundary ([`Dense`]) with an engine per
//! architecture, each on mtseg's CPU kernels (the `mtseg-kernels` crate) or through burn on
//! a device; and one training step on either ([`Stepper`]): the kernels' forward and backward
//! passes (the triplanar network's `train`, the U-Net's `unet_train`) or burn's autodiff. The
//! burn networks hold the weights and are the reference the kernels are tested against; on
//! the CPU these kernels are the one path users run.

// The API: the inference boundary and its engines, and one training step. How the networks
// run on the kernels (their passes, gradients, loss) stays inside the crate.
mod dense;
mod gradients;
pub(crate) mod loss;
mod network;
#[cfg(test)]
mod params;
pub(crate) mod step;
mod train;
mod triplanar_engine;
mod unet;
mod unet_engine;
mod unet_train;

pub use dense::{Dense, DenseSettings, NetworkInput, OnSlab, Sampled};
pub(crate) use network::CpuNetwork;
pub use step::{DataParallel, StepInput, Stepper};
pub(crate) use train::{Workspace, train_step};
pub use triplanar_engine::TriplanarEngine;
pub(crate) use unet::FoldedUNet;
pub use unet_engine::UNetEngine;
pub(crate) use unet_train::{UNetLayers, unet_train_step};

use burn::prelude::Device;

use crate::device::Hardware;
use crate::model::Network;

/// `net` ready to run densely on `hardware`, with the slab and batch sizes that suit it: on
/// mtseg's CPU kernels, or through burn on `device` (the GPU; its autodiff, if any, is
/// dropped).
pub fn dense_engine(
    net: &Network,
    hardware: Hardware,
    device: &Device,
) -> (Box<dyn Dense + Send>, DenseSettings) {
    let engine: Box<dyn Dense + Send> = match net {
        Network::Triplanar(n) => Box::new(TriplanarEngine::new(n, hardware, device)),
        Network::UNet(n) => Box::new(UNetEngine::new(n, hardware, device)),
    };
    (engine, DenseSettings::for_hardware(hardware))
}

/// A tensor's values (the networks compute in f32).
pub(crate) fn values<const D: usize>(t: burn::prelude::Tensor<D>) -> Vec<f32> {
    t.into_data()
        .try_into_vec::<f32>()
        .expect("the network computes in f32")
}

#[cfg(test)]
mod tests;
