//! mtseg's own CPU kernels for both networks: forward and backward for training (the
//! triplanar network's `train`, the U-Net's `unet_train`), and fused, batch-norm-folded
//! inference (the U-Net's in `unet`); the
//! convolutions on a SIMD kernel of our own (`direct`), most of them through Winograd's
//! transform (`winograd`), the dense layers on the `gemm` crate, both cores through rayon.
//! The burn network holds the weights and is the reference the kernels are tested against; on the CPU these
//! kernels are the one path users run.

pub mod activation;
pub mod conv;
pub mod direct;
pub mod matmul;
pub mod network;
pub mod params;
pub mod train;
pub mod unet;
pub mod unet_train;
pub mod winograd;

pub use network::{CpuNetwork, FoldedNetwork};
pub use params::{ParamStore, write_values};
pub use train::{StepOutput, Workspace, train_step};
pub use unet::FoldedUNet;
pub use unet_train::{UNetLayers, UNetStepOutput, unet_train_step};

#[cfg(test)]
mod tests;
