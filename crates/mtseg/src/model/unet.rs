//! A 2.5-D U-Net, the stronger alternative to the paper's network (`architecture = "unet"`):
//!
//! ```text
//!   slice s-1, s, s+1 (3 channels)
//!     -> Block (w)  ----------------------------------------- skip --> Block (w) -> 1x1 classes
//!        pool -> Block (2w)  ----------------------- skip --> Block (2w) ^          -> 1x1 tasks
//!                pool -> ... -> Block (w 2^(levels-1)) -> 2x2 up-convolution ...
//!   Block: 3x3 conv (zero padding), batch norm, ReLU, twice.
//! ```
//!
//! It sees a whole slice, so its context is the whole plane rather than the triplanar
//! network's 25 voxels. The same weights run over the slices of all three orientations and
//! their logits are averaged per voxel ([`crate::engine::UNetEngine`]).

use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

use super::config::UNetConfig;

/// Neighbouring slices on each side of the segmented one, as extra input channels.
pub const CONTEXT_SLICES: usize = 1;
/// Input channels: the slice and its neighbours.
pub const INPUT_CHANNELS: usize = 2 * CONTEXT_SLICES + 1;

/// Two 3x3 convolutions with batch norm and ReLU, keeping the size.
#[derive(Module, Debug)]
pub struct Block {
    pub first: Conv2d,
    pub first_norm: BatchNorm,
    pub second: Conv2d,
    pub second_norm: BatchNorm,
}

impl Block {
    fn new(input: usize, output: usize, device: &Device) -> Self {
        let conv = |a, b| {
            Conv2dConfig::new([a, b], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Block {
            first: conv(input, output),
            first_norm: BatchNormConfig::new(output).init(device),
            second: conv(output, output),
            second_norm: BatchNormConfig::new(output).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = relu(self.first_norm.forward(self.first.forward(x)));
        relu(self.second_norm.forward(self.second.forward(x)))
    }
}

#[derive(Module, Debug)]
pub struct UNet {
    /// One block per level, full resolution first.
    pub encoder: Vec<Block>,
    /// From the deepest level up: 2x2 transposed convolutions halving the features.
    pub up: Vec<ConvTranspose2d>,
    /// From the deepest level up: blocks over the up-sampled features and the skip.
    pub decoder: Vec<Block>,
    pub pool: MaxPool2d,
    pub classes: Conv2d,
    /// Per-task output mode only: which task a pixel's scan belongs to.
    pub task: Option<Conv2d>,
}

impl UNet {
    pub fn new(config: &UNetConfig, outputs: usize, tasks: usize, device: &Device) -> Self {
        let levels = config.levels.max(1);
        let width = |level: usize| config.width << level;
        let encoder = (0..levels)
            .map(|l| {
                let input = if l == 0 { INPUT_CHANNELS } else { width(l - 1) };
                Block::new(input, width(l), device)
            })
            .collect();
        let up = (0..levels - 1)
            .rev()
            .map(|l| {
                ConvTranspose2dConfig::new([width(l + 1), width(l)], [2, 2])
                    .with_stride([2, 2])
                    .init(device)
            })
            .collect();
        let decoder = (0..levels - 1)
            .rev()
            .map(|l| Block::new(2 * width(l), width(l), device))
            .collect();
        let head = |n: usize| Conv2dConfig::new([width(0), n], [1, 1]).init(device);
        UNet {
            encoder,
            up,
            decoder,
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            classes: head(outputs),
            task: config.output_mode.has_task_head().then(|| head(tasks)),
        }
    }

    /// `[n, 3, h, w]` slice stacks (h and w multiples of 2^(levels-1)) to (`[n, outputs, h,
    /// w]` class logits, optional `[n, tasks, h, w]` task logits).
    pub fn forward(&self, mut x: Tensor<4>) -> (Tensor<4>, Option<Tensor<4>>) {
        let mut skips = Vec::with_capacity(self.encoder.len());
        for (level, block) in self.encoder.iter().enumerate() {
            if level > 0 {
                x = self.pool.forward(x);
            }
            x = block.forward(x);
            skips.push(x.clone());
        }
        skips.pop();
        for (up, block) in self.up.iter().zip(&self.decoder) {
            let skip = skips.pop().expect("one skip per decoder level");
            x = block.forward(Tensor::cat(vec![up.forward(x), skip], 1));
        }
        let task = self.task.as_ref().map(|t| t.forward(x.clone()));
        (self.classes.forward(x), task)
    }

    /// Slice sides must be a multiple of this.
    pub fn multiple(&self) -> usize {
        1 << (self.encoder.len() - 1)
    }

    pub fn channels(&self) -> usize {
        self.classes.weight.dims()[0]
    }

    pub fn task_channels(&self) -> usize {
        self.task.as_ref().map_or(0, |t| t.weight.dims()[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::OutputMode;

    #[test]
    fn logits_keep_the_slice_size_at_every_level_count() {
        let device = Device::flex();
        for levels in [1, 2, 3] {
            let config = UNetConfig::new()
                .with_levels(levels)
                .with_width(4)
                .with_output_mode(OutputMode::PerTask);
            let net = UNet::new(&config, 5, 2, &device);
            assert_eq!(net.multiple(), config.multiple());
            let x = Tensor::<4>::ones([2, INPUT_CHANNELS, 8, 12], &device);
            let (logits, task) = net.forward(x);
            assert_eq!(logits.dims(), [2, 5, 8, 12]);
            assert_eq!(
                task.expect("per-task mode has a task head").dims(),
                [2, 2, 8, 12]
            );
            assert_eq!((net.channels(), net.task_channels()), (5, 2));
        }
    }
}
