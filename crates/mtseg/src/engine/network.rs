//! The triplanar network on mtseg's own CPU kernels, fed by the weights of the burn network.
//! For inference, batch norm is folded into the convolution weights and ELU runs inside the
//! convolution's output pass.

use rayon::prelude::*;

use super::activation::elu_in_place;
use super::conv::Conv3x3;
use super::matmul::{View, matmul};
use super::params::ParamStore;
use super::winograd::PreparedConv;
use crate::model::{Orientation, TriplanarNet};

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
    fn read(store: &ParamStore, prefix: &str) -> Self {
        let w = store.get(&format!("{prefix}.weight"));
        FullyConnected {
            outputs: w.shape[0],
            inputs: w.shape[1],
            weight: w.values.clone(),
            bias: store.values(&format!("{prefix}.bias")),
        }
    }

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
    pub fn from_burn(net: &TriplanarNet, dropout: f64) -> Self {
        Self::from_store(&ParamStore::read(net), net, dropout)
    }

    pub fn from_store(store: &ParamStore, net: &TriplanarNet, dropout: f64) -> Self {
        let branches = (0..3)
            .map(|b| {
                net.branches[b]
                    .layers
                    .iter()
                    .enumerate()
                    .map(|(l, layer)| {
                        let p = format!("branches.{b}.layers.{l}");
                        let w = store.get(&format!("{p}.conv.weight"));
                        let (co, ci) = (w.shape[0], w.shape[1]);
                        BranchLayer {
                            conv: Conv3x3::from_oihw(
                                ci,
                                co,
                                &w.values,
                                store.values(&format!("{p}.conv.bias")),
                            ),
                            gamma: store.values(&format!("{p}.norm.gamma")),
                            beta: store.values(&format!("{p}.norm.beta")),
                            running_mean: store.values(&format!("{p}.norm.running_mean")),
                            running_var: store.values(&format!("{p}.norm.running_var")),
                            epsilon: layer.norm.epsilon as f32,
                        }
                    })
                    .collect()
            })
            .collect();
        let fc1 = FullyConnected::read(store, "head.fc1");
        CpuNetwork {
            branches,
            kernels: fc1.inputs / 3,
            fc1,
            fc2: FullyConnected::read(store, "head.fc2"),
            classes: FullyConnected::read(store, "head.classes"),
            task: net
                .head
                .task
                .as_ref()
                .map(|_| FullyConnected::read(store, "head.task")),
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
            kernels: self.kernels,
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
    pub kernels: usize,
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
