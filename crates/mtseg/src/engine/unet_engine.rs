//! The U-Net run densely: every slice of every orientation (with its neighbours), the class and
//! task logits of the three orientations averaged per voxel. It holds the logits of the whole
//! volume (channels x voxels floats), so unlike the triplanar network's slabs its memory grows
//! with the volume. On the CPU the slices run on mtseg's own kernels ([`FoldedUNet`]), on a
//! GPU through burn.

use burn::prelude::*;

use crate::device::Hardware;

use super::dense::{Dense, DenseSettings, NetworkInput, OnSlab, Sampled};
use super::values;
use crate::engine::FoldedUNet;
use crate::model::slices;
use crate::model::unet::INPUT_CHANNELS;
use crate::model::{Orientation, UNet};

/// What runs the network over a batch of slice stacks.
enum Runner {
    Cpu(FoldedUNet),
    /// In evaluation mode, on `device` (boxed: the burn module is the larger of the two).
    Burn {
        net: Box<UNet>,
        device: Device,
    },
}

pub struct UNetEngine {
    runner: Runner,
    channels: usize,
    task_channels: usize,
    multiple: usize,
}

impl UNetEngine {
    /// On `hardware`: mtseg's CPU kernels, or burn on `device` (its autodiff, if any,
    /// dropped).
    pub fn new(net: &UNet, hardware: Hardware, device: &Device) -> Self {
        match hardware {
            Hardware::Cpu => Self::on_cpu(net),
            Hardware::Gpu => Self::on_device(net, device.clone().without_autodiff()),
        }
    }

    /// On mtseg's CPU kernels.
    pub fn on_cpu(net: &UNet) -> Self {
        Self::with(net, Runner::Cpu(FoldedUNet::from_burn(net)))
    }

    /// Through burn, the network moved to `device`.
    pub fn on_device(net: &UNet, device: Device) -> Self {
        let runner = Runner::Burn {
            net: Box::new(net.clone().to_device(&device)),
            device,
        };
        Self::with(net, runner)
    }

    fn with(net: &UNet, runner: Runner) -> Self {
        UNetEngine {
            runner,
            channels: net.channels(),
            task_channels: net.task_channels(),
            multiple: net.multiple(),
        }
    }

    /// Class and task logits (`[n, h, w, channels]`, `[n, h, w, task channels]`) of `n` slice
    /// stacks of `h x w`, pixels first (`[n, h, w, 3]`).
    fn forward(&self, stacks: Vec<f32>, n: usize, h: usize, w: usize) -> (Vec<f32>, Vec<f32>) {
        match &self.runner {
            Runner::Cpu(folded) => folded.forward(&stacks, n, h, w),
            Runner::Burn { net, device } => {
                // burn's convolutions take channels first: permuted on the device.
                let shape = [n, h, w, INPUT_CHANNELS];
                let x = Tensor::<4>::from_data(TensorData::new(stacks, shape), device);
                let (logits, task_logits) = net.forward(x.permute([0, 3, 1, 2]));
                let last = |t: Tensor<4>| values(t.permute([0, 2, 3, 1]));
                (last(logits), task_logits.map(last).unwrap_or_default())
            }
        }
    }

    /// The padded plane of `o`'s slices of `input`: its sides, multiples of the network's.
    fn plane(&self, input: &NetworkInput, o: Orientation) -> [usize; 2] {
        let (row_axis, col_axis) = o.plane_axes();
        let m = self.multiple;
        [
            input.shape[row_axis].div_ceil(m) * m,
            input.shape[col_axis].div_ceil(m) * m,
        ]
    }

    /// Adds a third of the logits of every slice of `o` to `classes` and `tasks`.
    fn add_orientation(
        &self,
        input: &NetworkInput,
        o: Orientation,
        batch: usize,
        classes: &mut [f32],
        tasks: &mut [f32],
    ) {
        let size = self.plane(input, o);
        let plane = size[0] * size[1];
        let count = input.shape[o.normal_axis()];
        let (c, tc) = (self.channels, self.task_channels);
        let mut first = 0;
        while first < count {
            let last = (first + batch.max(1)).min(count);
            let mut stacks = Vec::with_capacity((last - first) * INPUT_CHANNELS * plane);
            for s in first..last {
                slices::pixel_stack(*input, o, s as isize, [0, 0], size, &mut stacks);
            }
            let (logits, task_logits) = self.forward(stacks, last - first, size[0], size[1]);
            for (i, s) in (first..last).enumerate() {
                let mut p = 0;
                slices::window_of(input.shape, o, s as isize, [0, 0], size, |voxel| {
                    if let Some(v) = voxel {
                        let at = i * plane + p;
                        for (sum, l) in classes[v * c..][..c].iter_mut().zip(&logits[at * c..]) {
                            *sum += l / 3.0;
                        }
                        for (sum, l) in tasks[v * tc..][..tc]
                            .iter_mut()
                            .zip(&task_logits[at * tc..])
                        {
                            *sum += l / 3.0;
                        }
                    }
                    p += 1;
                });
            }
            first = last;
        }
    }
}

impl Dense for UNetEngine {
    fn logit_channels(&self) -> usize {
        self.channels
    }

    fn task_logit_channels(&self) -> usize {
        self.task_channels
    }

    /// One slab: the whole volume.
    fn logits_by_slab(&self, input: &NetworkInput, settings: &DenseSettings, on_slab: &mut OnSlab) {
        let n: usize = input.shape.iter().product();
        let mut classes = vec![0f32; n * self.channels];
        let mut tasks = vec![0f32; n * self.task_channels];
        for o in Orientation::ALL {
            self.add_orientation(input, o, settings.slice_batch, &mut classes, &mut tasks);
        }
        on_slab(0, input.shape[2], &classes, &tasks);
    }

    /// Each orientation's slices at `slices` evenly spaced positions (each slice's own
    /// logits, not averaged over orientations).
    fn sampled_logits(
        &self,
        input: &NetworkInput,
        settings: &DenseSettings,
        slices: usize,
    ) -> Sampled {
        let (c, tc) = (self.channels, self.task_channels);
        let mut sampled = Sampled::default();
        for o in Orientation::ALL {
            let size = self.plane(input, o);
            let plane = size[0] * size[1];
            let count = input.shape[o.normal_axis()];
            let k = slices.clamp(1, count);
            // The middle of k equal parts of the volume.
            let positions: Vec<usize> = (0..k).map(|i| (2 * i + 1) * count / (2 * k)).collect();
            for batch in positions.chunks(settings.slice_batch.max(1)) {
                let mut stacks = Vec::with_capacity(batch.len() * INPUT_CHANNELS * plane);
                for &s in batch {
                    slices::pixel_stack(*input, o, s as isize, [0, 0], size, &mut stacks);
                }
                let (logits, task_logits) = self.forward(stacks, batch.len(), size[0], size[1]);
                for (i, &s) in batch.iter().enumerate() {
                    let mut p = 0;
                    slices::window_of(input.shape, o, s as isize, [0, 0], size, |voxel| {
                        if let Some(v) = voxel {
                            let at = i * plane + p;
                            sampled.voxels.push(v);
                            sampled.logits.extend_from_slice(&logits[at * c..][..c]);
                            sampled
                                .task_logits
                                .extend_from_slice(&task_logits[at * tc..][..tc]);
                        }
                        p += 1;
                    });
                }
            }
        }
        sampled
    }
}
