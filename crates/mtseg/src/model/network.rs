//! The paper's triplanar network as burn modules, laid out like its figure:
//!
//! ```text
//!   axial patch    -> Branch: depth x [3x3 conv (no padding), batch norm, ELU] -> K features
//!   coronal patch  -> Branch: ...                                              -> K features
//!   sagittal patch -> Branch: ...                                              -> K features
//!                      concatenated per voxel (3K) -> Head: 1x1 fc, ELU, dropout
//!                                                        -> 1x1 fc, ELU, dropout
//!                                                        -> 1x1 class layer (joint labels)
//! ```
//!
//! No pooling and no padding: a (P + k - 1)^2 patch gives a k x k tile of outputs, with
//! P = 1 + 2 * depth the receptive field. The same weights therefore train on tiles and run
//! fully convolutionally over whole slices.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig};
use burn::prelude::*;
use burn::tensor::activation::elu;

use super::config::TriplanarConfig;

/// The three orthogonal planes of the paper, each seen by its own branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Orientation {
    Axial,
    Coronal,
    Sagittal,
}

impl Orientation {
    pub const ALL: [Orientation; 3] = [
        Orientation::Axial,
        Orientation::Coronal,
        Orientation::Sagittal,
    ];

    /// The canonical (RAS) axis a slice of this orientation holds fixed.
    pub fn normal_axis(self) -> usize {
        match self {
            Orientation::Axial => 2,
            Orientation::Coronal => 1,
            Orientation::Sagittal => 0,
        }
    }

    /// The canonical axes along a slice's rows (first) and columns (second).
    pub fn plane_axes(self) -> (usize, usize) {
        match self {
            Orientation::Axial => (0, 1),
            Orientation::Coronal => (0, 2),
            Orientation::Sagittal => (1, 2),
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One layer of a branch: 3x3 convolution without padding, batch norm, ELU.
#[derive(Module, Debug)]
pub struct ConvBnElu {
    pub conv: Conv2d,
    pub norm: BatchNorm,
}

impl ConvBnElu {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        elu(self.norm.forward(self.conv.forward(x)), 1.0)
    }
}

/// The stack of convolution layers of one orientation.
#[derive(Module, Debug)]
pub struct Branch {
    pub layers: Vec<ConvBnElu>,
}

impl Branch {
    /// `[n, 1, h, w]` patches or slices to `[n, K, h - 2 depth, w - 2 depth]` features.
    pub fn forward(&self, mut x: Tensor<4>) -> Tensor<4> {
        for layer in &self.layers {
            x = layer.forward(x);
        }
        x
    }
}

/// The fully connected layers (as 1x1 convolutions) over the concatenated features.
#[derive(Module, Debug)]
pub struct Head {
    pub fc1: Conv2d,
    pub fc2: Conv2d,
    pub classes: Conv2d,
    /// Per-task output mode only: which task (dataset) a voxel's scan belongs to.
    pub task: Option<Conv2d>,
    pub dropout: Dropout,
}

impl Head {
    /// `[n, 3K, h, w]` features to (`[n, outputs, h, w]` class logits, optional
    /// `[n, tasks, h, w]` task logits).
    pub fn forward(&self, features: Tensor<4>) -> (Tensor<4>, Option<Tensor<4>>) {
        let x = self.dropout.forward(elu(self.fc1.forward(features), 1.0));
        let x = self.dropout.forward(elu(self.fc2.forward(x), 1.0));
        let task = self.task.as_ref().map(|t| t.forward(x.clone()));
        (self.classes.forward(x), task)
    }
}

/// The whole network: three branches and the head.
#[derive(Module, Debug)]
pub struct TriplanarNet {
    /// Axial, coronal, sagittal, in [`Orientation::ALL`] order.
    pub branches: Vec<Branch>,
    pub head: Head,
}

/// Network outputs for a batch of cubes of k^3 voxels: `[b, channels, k, k * k]`, voxel
/// (x, y, z) of a cube at row x, column y * k + z.
pub struct CubeOutput {
    pub logits: Tensor<4>,
    pub task_logits: Option<Tensor<4>>,
}

impl TriplanarNet {
    pub fn new(config: &TriplanarConfig, outputs: usize, tasks: usize, device: &Device) -> Self {
        let branch = || Branch {
            layers: (0..config.depth)
                .map(|i| {
                    let input = if i == 0 { 1 } else { config.kernels };
                    ConvBnElu {
                        conv: Conv2dConfig::new([input, config.kernels], [3, 3]).init(device),
                        norm: BatchNormConfig::new(config.kernels).init(device),
                    }
                })
                .collect(),
        };
        let features = 3 * config.kernels;
        let fc = |a: usize, b: usize| Conv2dConfig::new([a, b], [1, 1]).init(device);
        TriplanarNet {
            branches: (0..3).map(|_| branch()).collect(),
            head: Head {
                fc1: fc(features, config.fc_width),
                fc2: fc(config.fc_width, config.fc_width),
                classes: fc(config.fc_width, outputs),
                task: config
                    .output_mode
                    .has_task_head()
                    .then(|| fc(config.fc_width, tasks)),
                dropout: DropoutConfig::new(config.dropout).init(),
            },
        }
    }

    pub fn branch(&self, orientation: Orientation) -> &Branch {
        &self.branches[orientation.index()]
    }

    /// Runs a batch of `b` cubes of k^3 voxels. Each orientation gets `b * k` patches of
    /// `(P + k - 1)^2`, ordered cube-major, then by the slice's position along its normal
    /// axis; patch rows and columns follow [`Orientation::plane_axes`].
    pub fn forward_cubes(&self, patches: [Tensor<4>; 3], b: usize, k: usize) -> CubeOutput {
        let [axial, coronal, sagittal] = patches;
        let kernels = self.head.fc1.weight.dims()[1] / 3;
        // Branch outputs as [b, K, kx, ky, kz].
        let run = |o: Orientation, x: Tensor<4>| -> Tensor<5> {
            let f = self.branch(o).forward(x);
            let f: Tensor<5> = f.reshape([b, k, kernels, k, k]);
            match o {
                // [b, z, K, x, y] -> [b, K, x, y, z]
                Orientation::Axial => f.permute([0, 2, 3, 4, 1]),
                // [b, y, K, x, z] -> [b, K, x, y, z]
                Orientation::Coronal => f.permute([0, 2, 3, 1, 4]),
                // [b, x, K, y, z] -> [b, K, x, y, z]
                Orientation::Sagittal => f.permute([0, 2, 1, 3, 4]),
            }
        };
        let features = Tensor::cat(
            vec![
                run(Orientation::Axial, axial),
                run(Orientation::Coronal, coronal),
                run(Orientation::Sagittal, sagittal),
            ],
            1,
        )
        .reshape([b, 3 * kernels, k, k * k]);
        let (logits, task_logits) = self.head.forward(features);
        CubeOutput {
            logits,
            task_logits,
        }
    }
}
