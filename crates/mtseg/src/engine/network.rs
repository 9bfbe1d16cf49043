//! The triplanar network on mtseg's own CPU kernels, fed by the weights of the burn network.
//! For inference, batch norm is folded into the convolution weights and ELU runs inside the
//! convolution's output pass.

use rayon::prelude::*;

use crate::engine::values;
use crate::model::{Orientation, TriplanarNet};
use burn::module::Param;
use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use mtseg_kernels::activation::elu_in_place;
use mtseg_kernels::conv::Conv3x3;
use mtseg_kernels::matmul::{View, matmul};
use mtseg_kernels::winograd::PreparedConv;

/// A convolution and the batch norm after it: a layer of a triplanar branch (or half a U-Net
/// block).
#[derive(Clone, Debug)]
pub struct BranchLayer {
    pub conv: Conv3x3,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
    pub epsilon: f32,
}

impl BranchLayer {
    /// The convolution with the batch norm after it (running statistics) folded in.
    pub fn folded(&self) -> Conv3x3 {
        let co = self.conv.co;
        let scale: Vec<f32> = (0..co)
            .map(|c| self.gamma[c] / (self.running_var[c] + self.epsilon).sqrt())
            .collect();
        let mut folded = self.conv.clone();
        for (i, w) in folded.weight.iter_mut().enumerate() {
            *w *= scale[i % co];
        }
        for (c, b) in folded.bias.iter_mut().enumerate() {
            *b = (*b - self.running_mean[c]) * scale[c] + self.beta[c];
        }
        folded
    }
}

/// A fully connected layer, weights as burn stores a 1x1 convolution: `[out][in]`.
#[derive(Clone, Debug)]
pub struct FullyConnected {
    pub inputs: usize,
    pub outputs: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl FullyConnected {
    /// `n x outputs` = `x (n x inputs) * W^T + b`.
    pub fn forward(&self, x: &[f32], n: usize, threads: usize) -> Vec<f32> {
        let mut out = vec![0f32; n * self.outputs];
        matmul(
            n,
            self.outputs,
            self.inputs,
            &mut out,
            View::rows(0, self.outputs),
            false,
            x,
            View::rows(0, self.inputs),
            &self.weight,
            View::transposed(0, self.inputs),
            threads,
        );
        for row in out.chunks_mut(self.outputs) {
            for (v, b) in row.iter_mut().zip(&self.bias) {
                *v += b;
            }
        }
        out
    }
}

/// A layer's bias, zeros if it has none.
pub(super) fn bias_or_zeros(bias: &Option<Param<Tensor<1>>>, outputs: usize) -> Vec<f32> {
    bias.as_ref()
        .map_or_else(|| vec![0.0; outputs], |b| values(b.val()))
}

/// A 3x3 convolution and the batch norm after it, as plain arrays.
pub(super) fn conv_and_norm(conv: &Conv2d, norm: &BatchNorm) -> BranchLayer {
    let [co, ci, _, _] = conv.weight.dims();
    BranchLayer {
        conv: Conv3x3::from_oihw(
            ci,
            co,
            &values(conv.weight.val()),
            bias_or_zeros(&conv.bias, co),
        ),
        gamma: values(norm.gamma.val()),
        beta: values(norm.beta.val()),
        // Synchronised: a training step's update is otherwise seen one step late.
        running_mean: values(norm.running_mean.value_sync()),
        running_var: values(norm.running_var.value_sync()),
        epsilon: norm.epsilon as f32,
    }
}

/// A 1x1 convolution as a dense layer over pixels.
pub(super) fn pixelwise(conv: &Conv2d) -> FullyConnected {
    let [outputs, inputs, _, _] = conv.weight.dims();
    FullyConnected {
        inputs,
        outputs,
        weight: values(conv.weight.val()),
        bias: bias_or_zeros(&conv.bias, outputs),
    }
}

/// The whole network as plain arrays.
#[derive(Clone, Debug)]
pub struct CpuNetwork {
    /// Axial, coronal, sagittal.
    pub branches: Vec<Vec<BranchLayer>>,
    pub fc1: FullyConnected,
    pub fc2: FullyConnected,
    pub classes: FullyConnected,
    pub task: Option<FullyConnected>,
    pub dropout: f32,
    pub kernels: usize,
}

impl CpuNetwork {
    /// From the burn network's modules (its current running statistics); `dropout` is the
    /// training step's rate.
    pub fn from_burn(net: &TriplanarNet, dropout: f64) -> Self {
        let branches = net
            .branches
            .iter()
            .map(|b| {
                b.layers
                    .iter()
                    .map(|l| conv_and_norm(&l.conv, &l.norm))
                    .collect()
            })
            .collect();
        let fc1 = pixelwise(&net.head.fc1);
        CpuNetwork {
            branches,
            kernels: fc1.inputs / 3,
            fc1,
            fc2: pixelwise(&net.head.fc2),
            classes: pixelwise(&net.head.classes),
            task: net.head.task.as_ref().map(pixelwise),
            dropout: dropout as f32,
        }
    }

    /// The inference form: batch norm (running statistics) folded into each convolution.
    pub fn folded(&self) -> FoldedNetwork {
        let branches = self
            .branches
            .iter()
            .map(|layers| {
                layers
                    .iter()
                    .map(|l| PreparedConv::new(l.folded()))
                    .collect()
            })
            .collect();
        FoldedNetwork {
            branches,
            fc1: self.fc1.clone(),
            fc2: self.fc2.clone(),
            classes: self.classes.clone(),
            task: self.task.clone(),
        }
    }
}

/// The network ready for dense inference.
#[derive(Clone, Debug)]
pub struct FoldedNetwork {
    pub branches: Vec<Vec<PreparedConv>>,
    pub fc1: FullyConnected,
    pub fc2: FullyConnected,
    pub classes: FullyConnected,
    pub task: Option<FullyConnected>,
}

impl FoldedNetwork {
    pub fn from_burn(net: &TriplanarNet) -> Self {
        CpuNetwork::from_burn(net, 0.0).folded()
    }

    /// One image through a branch: `h x w` in, `(h - 2d) x (w - 2d) x K` out.
    fn branch_image(
        &self,
        layers: &[PreparedConv],
        image: &[f32],
        h: usize,
        w: usize,
        threads: usize,
    ) -> Vec<f32> {
        // Two buffers in turn: a fresh allocation per layer would fault in its pages again.
        let mut current = image.to_vec();
        let mut next = Vec::new();
        let (mut ch, mut cw) = (h, w);
        let mut scratch = Vec::new();
        for conv in layers {
            next.resize((ch - 2) * (cw - 2) * conv.conv.co, 0.0);
            conv.forward_image(
                &current,
                ch,
                cw,
                &mut next,
                &mut scratch,
                threads,
                &elu_in_place,
            );
            std::mem::swap(&mut current, &mut next);
            ch -= 2;
            cw -= 2;
        }
        current
    }
}

impl FoldedNetwork {
    /// `n` slices of `h x w` to features `n x (h - 2 depth) x (w - 2 depth) x K`.
    pub(super) fn branch(
        &self,
        orientation: Orientation,
        slices: &[f32],
        n: usize,
        h: usize,
        w: usize,
    ) -> Vec<f32> {
        let layers = &self.branches[orientation.index()];
        let threads = rayon::current_num_threads();
        if n < threads {
            // Few large slices: each matrix product uses every core.
            return slices
                .chunks(h * w)
                .flat_map(|image| self.branch_image(layers, image, h, w, threads))
                .collect();
        }
        let outputs: Vec<Vec<f32>> = slices
            .par_chunks(h * w)
            .map(|image| self.branch_image(layers, image, h, w, 1))
            .collect();
        outputs.concat()
    }

    /// Features of `n` voxels (`n x 3K`) to class and task logits, voxel-major.
    pub(super) fn head(&self, features: &[f32], n: usize) -> (Vec<f32>, Vec<f32>) {
        let threads = rayon::current_num_threads();
        let mut x = self.fc1.forward(features, n, threads);
        elu_in_place(&mut x);
        let mut x = self.fc2.forward(&x, n, threads);
        elu_in_place(&mut x);
        let task = self
            .task
            .as_ref()
            .map(|t| t.forward(&x, n, threads))
            .unwrap_or_default();
        (self.classes.forward(&x, n, threads), task)
    }
}
