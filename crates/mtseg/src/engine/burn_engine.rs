//! The burn network itself as an [`Engine`], on any burn device: the GPU path of `segment`,
//! and the reference that mtseg's CPU kernels are tested against.

use burn::prelude::*;

use super::dense::Engine;
use crate::model::{Orientation, TriplanarNet};

pub struct BurnEngine {
    /// In evaluation mode, on `device`.
    pub net: TriplanarNet,
    pub device: Device,
}

impl BurnEngine {
    /// The network moved to `device`.
    pub fn new(net: &TriplanarNet, device: Device) -> Self {
        BurnEngine {
            net: net.clone().to_device(&device),
            device,
        }
    }

    fn tensor(&self, data: Vec<f32>, shape: [usize; 4]) -> Tensor<4> {
        Tensor::from_data(TensorData::new(data, shape), &self.device)
    }
}

/// A tensor's values (the networks compute in f32).
pub(crate) fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .try_into_vec::<f32>()
        .expect("the network computes in f32")
}

impl Engine for BurnEngine {
    fn depth(&self) -> usize {
        self.net.branches[0].layers.len()
    }

    fn kernels(&self) -> usize {
        self.net.head.fc1.weight.dims()[1] / 3
    }

    fn channels(&self) -> usize {
        self.net.head.classes.weight.dims()[0]
    }

    fn task_channels(&self) -> usize {
        self.net
            .head
            .task
            .as_ref()
            .map_or(0, |t| t.weight.dims()[0])
    }

    fn branch(
        &self,
        orientation: Orientation,
        slices: Vec<f32>,
        n: usize,
        h: usize,
        w: usize,
    ) -> Vec<f32> {
        let x = self.tensor(slices, [n, 1, h, w]);
        values(
            self.net
                .branch(orientation)
                .forward(x)
                .permute([0, 2, 3, 1]),
        )
    }

    fn head(&self, features: Vec<f32>, n: usize) -> (Vec<f32>, Vec<f32>) {
        let c = features.len() / n;
        // Each voxel a 1x1 image: the 1x1 convolutions are the fully connected layers.
        let x = self.tensor(features, [n, c, 1, 1]);
        let (logits, task) = self.net.head.forward(x);
        (values(logits), task.map(values).unwrap_or_default())
    }
}
