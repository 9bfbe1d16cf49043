//! The U-Net run densely: every slice of every orientation (with its neighbours), the class and
//! task logits of the three orientations averaged per voxel. It holds the logits of the whole
//! volume (channels x voxels floats), so unlike the triplanar network's slabs its memory grows
//! with the volume.

use burn::prelude::*;

use super::burn_engine::values;
use super::dense::{Dense, DenseSettings, NetworkInput, OnSlab};
use crate::data::slices;
use crate::model::unet::INPUT_CHANNELS;
use crate::model::{Orientation, UNet};

pub struct UNetEngine {
    /// In evaluation mode, on `device`.
    net: UNet,
    device: Device,
}

impl UNetEngine {
    /// The network moved to `device`.
    pub fn new(net: &UNet, device: Device) -> Self {
        UNetEngine {
            net: net.clone().to_device(&device),
            device,
        }
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
        let (row_axis, col_axis) = o.plane_axes();
        let m = self.net.multiple();
        let size = [
            input.shape[row_axis].div_ceil(m) * m,
            input.shape[col_axis].div_ceil(m) * m,
        ];
        let plane = size[0] * size[1];
        let count = input.shape[o.normal_axis()];
        let (c, tc) = (self.net.channels(), self.net.task_channels());
        let mut first = 0;
        while first < count {
            let last = (first + batch.max(1)).min(count);
            let mut stacks = Vec::with_capacity((last - first) * INPUT_CHANNELS * plane);
            for s in first..last {
                slices::stack(*input, o, s as isize, [0, 0], size, &mut stacks);
            }
            let shape = [last - first, INPUT_CHANNELS, size[0], size[1]];
            let x = Tensor::<4>::from_data(TensorData::new(stacks, shape), &self.device);
            let (logits, task_logits) = self.net.forward(x);
            let logits = values(logits);
            let task_logits = task_logits.map(values).unwrap_or_default();
            for (i, s) in (first..last).enumerate() {
                let mut p = 0;
                slices::window_of(input.shape, o, s as isize, [0, 0], size, |voxel| {
                    if let Some(v) = voxel {
                        for k in 0..c {
                            classes[v * c + k] += logits[(i * c + k) * plane + p] / 3.0;
                        }
                        for k in 0..tc {
                            tasks[v * tc + k] += task_logits[(i * tc + k) * plane + p] / 3.0;
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
        self.net.channels()
    }

    fn task_logit_channels(&self) -> usize {
        self.net.task_channels()
    }

    /// One slab: the whole volume.
    fn logits_by_slab(&self, input: &NetworkInput, settings: &DenseSettings, on_slab: &mut OnSlab) {
        let n: usize = input.shape.iter().product();
        let mut classes = vec![0f32; n * self.net.channels()];
        let mut tasks = vec![0f32; n * self.net.task_channels()];
        for o in Orientation::ALL {
            self.add_orientation(input, o, settings.slice_batch, &mut classes, &mut tasks);
        }
        on_slab(0, input.shape[2], &classes, &tasks);
    }
}
