//! One training step of the triplanar network on the CPU kernels: forward with batch
//! statistics and dropout, the loss of [`crate::engine::loss`] (same definition), and the
//! backward pass, giving the gradient of every parameter in burn's layout and the updated
//! batch-norm running statistics, in the network's own structure ([`StepOutput`]), which
//! [`StepOutput::gradients`] hands to burn's optimizer parameter by parameter.

use std::sync::Mutex;

use multiversion::multiversion;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::gradients::{Filing, LayerGradients, LinearGradients, update_running};
use super::network::{CpuNetwork, FullyConnected};
use crate::data::Batch;
use crate::engine::loss::{task_runs, voxel_weights};
use crate::model::{Orientation, OutputLayout, OutputMode, TrainConfig, TriplanarNet};
use burn::optim::GradientsParams;
use burn::prelude::Device;
use mtseg_kernels::activation::{elu, elu_derivative_from_output, elu_in_place};
use mtseg_kernels::conv::{BackwardScratch, backward_image, input_gradient};
use mtseg_kernels::matmul::{View, matmul};
use mtseg_kernels::winograd::PreparedConv;

/// Batch-norm running statistics move this far towards each batch's (as in burn).
pub(super) const MOMENTUM: f32 = 0.1;

/// Images whose weight gradients one task of the backward pass sums: enough to share its
/// buffers, few enough to spread a batch's images over the cores.
const IMAGES_PER_GROUP: usize = 8;

/// What a step produces, in the structure of [`CpuNetwork`].
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutput {
    pub loss: f64,
    /// Per orientation (axial, coronal, sagittal), per layer.
    pub branches: Vec<Vec<LayerGradients>>,
    /// `[out][in]` weights (burn's `[out][in][1][1]`).
    pub fc1: LinearGradients,
    pub fc2: LinearGradients,
    pub classes: LinearGradients,
    pub task: Option<LinearGradients>,
}

impl StepOutput {
    /// The gradients for burn's optimizer, each filed under its parameter of `net` (tensors on
    /// `device`).
    pub fn gradients(&self, net: &TriplanarNet, device: &Device) -> GradientsParams {
        let mut filing = Filing::new(device);
        for (branch, grads) in net.branches.iter().zip(&self.branches) {
            for (layer, g) in branch.layers.iter().zip(grads) {
                filing.conv_and_norm(&layer.conv, &layer.norm, g);
            }
        }
        let head = &net.head;
        let layers = [
            (&head.fc1, &self.fc1),
            (&head.fc2, &self.fc2),
            (&head.classes, &self.classes),
        ];
        let task = head.task.as_ref().zip(self.task.as_ref());
        for (layer, g) in layers.into_iter().chain(task) {
            filing.linear(&layer.weight, &layer.bias, g);
        }
        filing.done()
    }

    /// Writes the new batch-norm running statistics into `net`.
    pub fn write_running_statistics(&self, net: &TriplanarNet) {
        for (branch, grads) in net.branches.iter().zip(&self.branches) {
            for (layer, g) in branch.layers.iter().zip(grads) {
                update_running(&layer.norm, g);
            }
        }
    }
}

/// Buffers that one training step hands on to the next: those of the saved activations,
/// which have the same sizes every step (clearing fresh buffers took 7% of a step on small
/// images; 2% with these kept and the backward's per-image buffers reused). A buffer from
/// here is taken only where every value is then written.
#[derive(Default)]
pub struct Workspace {
    free: Mutex<Vec<Vec<f32>>>,
}

/// Buffers a workspace keeps at most (a step of the paper's network saves 150): a batch
/// whose sizes keep changing must not make it grow without end.
const KEPT_BUFFERS: usize = 512;

impl Workspace {
    /// A buffer of `len` values, left from an earlier step if one has that length: its values
    /// are unspecified, and the caller overwrites all of them.
    pub(super) fn overwritten(&self, len: usize) -> Vec<f32> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        match free.iter().position(|b| b.len() == len) {
            Some(i) => free.swap_remove(i),
            None => vec![0f32; len],
        }
    }

    /// How many buffers are kept.
    #[cfg(test)]
    pub(super) fn kept(&self) -> usize {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Keeps `buffer` for a later [`Workspace::overwritten`].
    pub(super) fn keep(&self, buffer: Vec<f32>) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < KEPT_BUFFERS && !buffer.is_empty() {
            free.push(buffer);
        }
    }
}

/// Saved activations of one branch layer.
struct LayerCache {
    /// Normalised convolution output (n x h x w x K).
    normalised: Vec<f32>,
    /// The layer's output after ELU (the next layer's input).
    output: Vec<f32>,
    inv_std: Vec<f32>,
    /// The batch norm's running statistics moved towards this batch's.
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
    h: usize,
    w: usize,
}

/// Forward of one branch in training mode.
fn branch_forward(
    layers: &[super::network::BranchLayer],
    input: &[f32],
    n: usize,
    side: usize,
    workspace: &Workspace,
) -> Vec<LayerCache> {
    // Each image's outputs are written into buffers that may hold an earlier step's values.
    let ci = layers.first().map_or(0, |l| l.conv.ci);
    assert_eq!(
        input.len(),
        n * side * side * ci,
        "a branch's patches, n x side x side x ci"
    );
    let mut caches: Vec<LayerCache> = Vec::with_capacity(layers.len());
    let (mut h, mut w) = (side, side);
    for layer in layers {
        let x: &[f32] = caches.last().map_or(input, |c| &c.output);
        let co = layer.conv.co;
        let (ho, wo) = (h - 2, w - 2);
        let in_size = h * w * layer.conv.ci;
        let out_size = ho * wo * co;
        let conv = PreparedConv::new(layer.conv.clone());
        // Every value written: by the convolution, then by the normalisation.
        let mut z = workspace.overwritten(n * out_size);
        // Each image's batch-norm sums are taken while its output is still in cache.
        let parts = z
            .par_chunks_mut(out_size)
            .zip(x.par_chunks(in_size))
            .map_init(Vec::new, |scratch, (out, image)| {
                conv.forward_image(image, h, w, out, scratch, 1, &|_| {});
                let mut sums = (vec![0f64; co], vec![0f64; co]);
                add_channel_sums(out, out, &mut sums.0, &mut sums.1);
                sums
            })
            .collect();
        let (mean, var, inv_std) = batch_statistics(parts, (n * ho * wo) as f64, layer.epsilon);
        let mut output = workspace.overwritten(z.len());
        z.par_chunks_mut(co * 1024)
            .zip(output.par_chunks_mut(co * 1024))
            .for_each(|(zs, os)| {
                normalise_and_activate(zs, os, &mean, &inv_std, &layer.gamma, &layer.beta);
            });
        caches.push(LayerCache {
            normalised: z,
            output,
            inv_std,
            running_mean: moved_towards(&layer.running_mean, &mean),
            running_var: moved_towards(&layer.running_var, &var),
            h: ho,
            w: wo,
        });
        h = ho;
        w = wo;
    }
    caches
}

/// Batch-norm statistics from each image's (or chunk's) channel sums and sums of squares, in
/// order, over `count` values per channel: the mean, the (biased, as burn's) variance and
/// 1 / sqrt(variance + epsilon).
pub(super) fn batch_statistics(
    parts: Vec<(Vec<f64>, Vec<f64>)>,
    count: f64,
    epsilon: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let co = parts.first().map_or(0, |p| p.0.len());
    let (sum, sum2) = sum_in_order(parts, co);
    let mean: Vec<f32> = sum.iter().map(|s| (s / count) as f32).collect();
    let var: Vec<f32> = sum2
        .iter()
        .zip(&mean)
        .map(|(s2, m)| ((s2 / count) as f32 - m * m).max(0.0))
        .collect();
    let inv_std = var.iter().map(|v| 1.0 / (v + epsilon).sqrt()).collect();
    (mean, var, inv_std)
}

/// A running statistic moved [`MOMENTUM`] of the way towards the batch's.
pub(super) fn moved_towards(running: &[f32], batch: &[f32]) -> Vec<f32> {
    running
        .iter()
        .zip(batch)
        .map(|(o, v)| (1.0 - MOMENTUM) * o + MOMENTUM * v)
        .collect()
}

/// Batch norm's backward pass for one layer, from the sums over its output gradient `dy`
/// (after the activation's backward) and `dy * xh`.
pub(super) struct NormGradients {
    /// The gradients of gamma and beta.
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    shift: Vec<f32>,
    slope: Vec<f32>,
}

/// [`NormGradients`] from the per-chunk sums (in order) over `count` values per channel.
pub(super) fn norm_gradients(
    parts: Vec<(Vec<f64>, Vec<f64>)>,
    gamma: &[f32],
    count: f64,
) -> NormGradients {
    let (sum_dy, sum_dy_xh) = sum_in_order(parts, gamma.len());
    let scaled = |sums: &[f64]| -> Vec<f32> {
        gamma
            .iter()
            .zip(sums)
            .map(|(g, s)| (*g as f64 * s / count) as f32)
            .collect()
    };
    NormGradients {
        shift: scaled(&sum_dy),
        slope: scaled(&sum_dy_xh),
        gamma: sum_dy_xh.iter().map(|v| *v as f32).collect(),
        beta: sum_dy.iter().map(|v| *v as f32).collect(),
    }
}

impl NormGradients {
    /// `d` (the gradient at the normalised output `xh`) becomes the gradient at the norm's
    /// input.
    pub(super) fn backward(&self, d: &mut [f32], xh: &[f32], inv_std: &[f32], gamma: &[f32]) {
        batch_norm_backward(d, xh, inv_std, gamma, &self.shift, &self.slope);
    }
}

// The element-wise passes below are vectorised for the widest instruction set the CPU has:
// x86-64 builds target SSE2 alone, which runs 4 floats at a time.

/// Batch norm with the batch's statistics, then `activation`, over channels-last pixels: `z`
/// becomes the normalised value (kept for the backward pass), `out` the layer's output.
/// Inlined into each multiversioned caller, so that it is compiled for the caller's CPU.
#[inline(always)]
fn normalise_then(
    z: &mut [f32],
    out: &mut [f32],
    mean: &[f32],
    inv_std: &[f32],
    gamma: &[f32],
    beta: &[f32],
    activation: impl Fn(f32) -> f32,
) {
    let co = mean.len();
    assert!(z.len() == out.len() && z.len().is_multiple_of(co));
    for (zp, op) in z.chunks_exact_mut(co).zip(out.chunks_exact_mut(co)) {
        let statistics = mean.iter().zip(inv_std);
        let affine = gamma.iter().zip(beta);
        for (((z, o), (m, s)), (g, b)) in zp.iter_mut().zip(op).zip(statistics).zip(affine) {
            let xh = (*z - m) * s;
            *z = xh;
            *o = activation(g * xh + b);
        }
    }
}

/// [`normalise_then`] ELU (the triplanar network).
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2+fma"))]
fn normalise_and_activate(
    z: &mut [f32],
    out: &mut [f32],
    mean: &[f32],
    inv_std: &[f32],
    gamma: &[f32],
    beta: &[f32],
) {
    normalise_then(z, out, mean, inv_std, gamma, beta, elu);
}

/// [`normalise_then`] ReLU (the U-Net).
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2+fma"))]
pub(super) fn normalise_and_relu(
    z: &mut [f32],
    out: &mut [f32],
    mean: &[f32],
    inv_std: &[f32],
    gamma: &[f32],
    beta: &[f32],
) {
    normalise_then(z, out, mean, inv_std, gamma, beta, |v| v.max(0.0));
}

/// Per channel of channels-last `a` and `b`: adds the values of `a` to `sums` and the
/// products `a * b` to `products`, in f64 (batch-norm statistics with `b = a`, and the sums
/// of its backward pass).
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2+fma"))]
pub(super) fn add_channel_sums(a: &[f32], b: &[f32], sums: &mut [f64], products: &mut [f64]) {
    const LANES: usize = 8;
    let co = sums.len();
    assert!(a.len() == b.len() && a.len().is_multiple_of(co) && products.len() == co);
    if !co.is_multiple_of(LANES) {
        for (ap, bp) in a.chunks_exact(co).zip(b.chunks_exact(co)) {
            for (((s, p), a), b) in sums.iter_mut().zip(products.iter_mut()).zip(ap).zip(bp) {
                let a = *a as f64;
                *s += a;
                *p += a * *b as f64;
            }
        }
        return;
    }
    // Eight channels at a time over all pixels, with the running sums in registers, four
    // pixels apart (each pixel's addition would otherwise wait on the one before). Summing a
    // whole channel row per pixel instead kept them in memory, and for 16 channels the
    // compiler did not vectorise it.
    for c0 in (0..co).step_by(LANES) {
        let mut s = [[0f64; LANES]; 4];
        let mut p = [[0f64; LANES]; 4];
        let mut a4 = a.chunks_exact(4 * co);
        let mut b4 = b.chunks_exact(4 * co);
        for (a, b) in (&mut a4).zip(&mut b4) {
            for i in 0..4 {
                let x = &a[i * co + c0..][..LANES];
                let y = &b[i * co + c0..][..LANES];
                for k in 0..LANES {
                    let xk = x[k] as f64;
                    s[i][k] += xk;
                    p[i][k] += xk * y[k] as f64;
                }
            }
        }
        let rest = a4
            .remainder()
            .chunks_exact(co)
            .zip(b4.remainder().chunks_exact(co));
        for (a, b) in rest {
            for k in 0..LANES {
                let xk = a[c0 + k] as f64;
                s[0][k] += xk;
                p[0][k] += xk * b[c0 + k] as f64;
            }
        }
        for k in 0..LANES {
            sums[c0 + k] += (s[0][k] + s[1][k]) + (s[2][k] + s[3][k]);
            products[c0 + k] += (p[0][k] + p[1][k]) + (p[2][k] + p[3][k]);
        }
    }
}

/// The gradient through ELU, from its output: `d *= ELU'`.
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2+fma"))]
fn elu_backward(d: &mut [f32], outputs: &[f32]) {
    assert_eq!(d.len(), outputs.len());
    for (d, a) in d.iter_mut().zip(outputs) {
        *d *= elu_derivative_from_output(*a);
    }
}

/// The gradient through batch norm with batch statistics, in place, per channel:
/// `d = inv_std * (gamma * d - shift - xh * slope)`.
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2+fma"))]
fn batch_norm_backward(
    d: &mut [f32],
    xh: &[f32],
    inv_std: &[f32],
    gamma: &[f32],
    shift: &[f32],
    slope: &[f32],
) {
    let co = inv_std.len();
    assert!(d.len() == xh.len() && d.len().is_multiple_of(co));
    for (dp, xp) in d.chunks_exact_mut(co).zip(xh.chunks_exact(co)) {
        let per_channel = inv_std.iter().zip(gamma).zip(shift.iter().zip(slope));
        for ((d, x), ((s, g), (shift, slope))) in dp.iter_mut().zip(xp).zip(per_channel) {
            *d = s * (g * *d - shift - x * slope);
        }
    }
}

/// Sums per-chunk partial results in chunk order. rayon's `reduce` combines partials in an
/// order that depends on scheduling; floating-point sums would then differ between runs,
/// and a resumed training would not reproduce an uninterrupted one bit for bit.
pub(super) fn sum_in_order<T>(parts: Vec<(Vec<T>, Vec<T>)>, len: usize) -> (Vec<T>, Vec<T>)
where
    T: Copy + Default + std::ops::AddAssign,
{
    let mut a = vec![T::default(); len];
    let mut b = vec![T::default(); parts.first().map_or(len, |p| p.1.len())];
    for (x, y) in parts {
        a.iter_mut().zip(&x).for_each(|(s, v)| *s += *v);
        b.iter_mut().zip(&y).for_each(|(s, v)| *s += *v);
    }
    (a, b)
}

/// Backward of one branch: `d_output` is the gradient at the last layer's output; returns
/// each layer's gradients and running statistics, first layer first. Each layer's saved
/// activations go back to `workspace` once its gradients are computed.
fn branch_backward(
    layers: &[super::network::BranchLayer],
    input: &[f32],
    mut caches: Vec<LayerCache>,
    n: usize,
    side: usize,
    mut d_output: Vec<f32>,
    workspace: &Workspace,
) -> Vec<LayerGradients> {
    let mut gradients = Vec::with_capacity(layers.len());
    for l in (0..layers.len()).rev() {
        let layer = &layers[l];
        let cache = caches.pop().expect("one saved layer per layer");
        let co = layer.conv.co;
        let (h, w) = if l == 0 {
            (side, side)
        } else {
            (caches[l - 1].h, caches[l - 1].w)
        };
        let x: &[f32] = if l == 0 { input } else { &caches[l - 1].output };
        // The passes below zip chunks of these, image by image.
        assert_eq!(d_output.len(), n * cache.h * cache.w * co);
        assert_eq!(x.len(), n * h * w * layer.conv.ci);
        // Through ELU (dY = dA * ELU'(Y), from the stored output), then batch norm's sums,
        // chunk by chunk while the chunk is in cache.
        let count = (n * cache.h * cache.w) as f64;
        let parts = d_output
            .par_chunks_mut(co * 1024)
            .zip(cache.output.par_chunks(co * 1024))
            .zip(cache.normalised.par_chunks(co * 1024))
            .map(|((d, outputs), xh)| {
                elu_backward(d, outputs);
                let mut s = vec![0f64; co];
                let mut sx = vec![0f64; co];
                add_channel_sums(d, xh, &mut s, &mut sx);
                (s, sx)
            })
            .collect();
        let g = &layer.gamma;
        let norm = norm_gradients(parts, g, count);
        // Through the convolution, image by image.
        let ci = layer.conv.ci;
        let (in_size, out_size) = (h * w * ci, cache.h * cache.w * co);
        let need_dx = l > 0;
        // Not from the workspace: kept there, the input gradients would add a third to the
        // memory that the saved activations take.
        let mut dx = if need_dx {
            vec![0f32; n * in_size]
        } else {
            Vec::new()
        };
        let mut dx_parts: Vec<Option<&mut [f32]>> = if need_dx {
            dx.chunks_mut(in_size).map(Some).collect()
        } else {
            (0..n).map(|_| None).collect()
        };
        let weight_len = layer.conv.weight.len();
        let flipped = need_dx.then(|| PreparedConv::new(layer.conv.flipped()));
        // Images in fixed groups, each summing its weight gradients in image order: the sums
        // do not depend on how rayon splits the work. Each group first goes back through batch
        // norm, which leaves it in cache for the convolution.
        let inv_std = &cache.inv_std;
        let group = IMAGES_PER_GROUP * out_size;
        let parts = d_output
            .par_chunks_mut(group)
            .zip(cache.normalised.par_chunks(group))
            .zip(x.par_chunks(IMAGES_PER_GROUP * in_size))
            .zip(dx_parts.par_chunks_mut(IMAGES_PER_GROUP))
            .map_init(
                BackwardScratch::default,
                |scratch, (((dzs, xh), images), dxs)| {
                    norm.backward(dzs, xh, inv_std, g);
                    let dzs = &*dzs;
                    let mut dw = vec![0f32; weight_len];
                    let mut db = vec![0f32; co];
                    let each = dzs.chunks(out_size).zip(images.chunks(in_size)).zip(dxs);
                    for ((dz, image), dx) in each {
                        backward_image(&layer.conv, image, h, w, dz, &mut dw, &mut db, scratch);
                        if let (Some(dx), Some(flipped)) = (dx.as_deref_mut(), &flipped) {
                            input_gradient(flipped, dz, h, w, dx, scratch);
                        }
                    }
                    (dw, db)
                },
            )
            .collect();
        let (dw, db) = sum_in_order(parts, weight_len);
        gradients.push(LayerGradients {
            weight: layer.conv.to_oihw(&dw),
            bias: db,
            gamma: norm.gamma,
            beta: norm.beta,
            running_mean: cache.running_mean,
            running_var: cache.running_var,
        });
        drop(dx_parts);
        d_output = dx;
        workspace.keep(cache.normalised);
        workspace.keep(cache.output);
    }
    gradients.reverse();
    gradients
}

/// Where cube voxel `v` (cube-major, then x, y, z) sits in each orientation's branch output
/// (`patches x k x k x K`): the index of its K features, per orientation.
fn feature_sources(cubes: usize, k: usize, kernels: usize) -> Vec<[usize; 3]> {
    let mut out = Vec::with_capacity(cubes * k * k * k);
    for b in 0..cubes {
        for x in 0..k {
            for y in 0..k {
                for z in 0..k {
                    // (patch along the normal axis, row, column) per orientation.
                    let at = |patch: usize, row: usize, col: usize| {
                        ((((b * k + patch) * k + row) * k) + col) * kernels
                    };
                    out.push([at(z, x, y), at(y, x, z), at(x, y, z)]);
                }
            }
        }
    }
    out
}

/// Elements per parallel chunk of the head's element-wise passes, and per random stream of
/// its dropout masks (so that the masks do not depend on how rayon splits the work).
const HEAD_CHUNK: usize = 16 * 1024;

/// ELU in place on a hidden layer of the head (`h` keeps the activations for the backward
/// pass), then dropout as burn applies it: zero with probability p, scale the rest by
/// 1 / (1 - p). Returns the dropped-out copy and the mask (`None` without dropout). Each
/// chunk draws its mask from its own stream of `seed`, numbered after `layer`.
fn activate_and_drop(h: &mut [f32], p: f32, seed: u64, layer: u64) -> (Vec<f32>, Option<Vec<f32>>) {
    h.par_chunks_mut(HEAD_CHUNK).for_each(elu_in_place);
    if p <= 0.0 {
        return (h.to_vec(), None);
    }
    let keep = 1.0 / (1.0 - p);
    let mut mask = vec![0f32; h.len()];
    let mut dropped = vec![0f32; h.len()];
    mask.par_chunks_mut(HEAD_CHUNK)
        .zip(dropped.par_chunks_mut(HEAD_CHUNK))
        .zip(h.par_chunks(HEAD_CHUNK))
        .enumerate()
        .for_each(|(chunk, ((mask, dropped), h))| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream((layer << 32) + chunk as u64);
            for ((m, d), a) in mask.iter_mut().zip(dropped).zip(h) {
                *m = if rng.random::<f32>() < p { 0.0 } else { keep };
                *d = a * *m;
            }
        });
    (dropped, Some(mask))
}

/// Back through `activate_and_drop`: `d *= mask * ELU'`, from ELU's output `a`.
fn drop_and_activate_backward(d: &mut [f32], a: &[f32], mask: Option<&[f32]>) {
    d.par_chunks_mut(HEAD_CHUNK)
        .zip(a.par_chunks(HEAD_CHUNK))
        .enumerate()
        .for_each(|(chunk, (d, a))| {
            if let Some(mask) = mask {
                let mask = &mask[chunk * HEAD_CHUNK..][..d.len()];
                d.iter_mut().zip(mask).for_each(|(d, m)| *d *= m);
            }
            elu_backward(d, a);
        });
}

/// `dW (out x in) = dY^T (out x n) * X (n x in)`, `db = column sums of dY`, and
/// `dX (n x in) = dY (n x out) * W (out x in)` when asked.
pub(super) fn dense_backward(
    layer: &FullyConnected,
    x: &[f32],
    dy: &[f32],
    n: usize,
    want_dx: bool,
    threads: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (i, o) = (layer.inputs, layer.outputs);
    let mut dw = vec![0f32; o * i];
    matmul(
        o,
        i,
        n,
        &mut dw,
        View::rows(0, i),
        false,
        dy,
        View::transposed(0, o),
        x,
        View::rows(0, i),
        threads,
    );
    let mut db = vec![0f32; o];
    for row in dy.chunks(o) {
        db.iter_mut().zip(row).for_each(|(b, g)| *b += g);
    }
    let mut dx = Vec::new();
    if want_dx {
        dx = vec![0f32; n * i];
        matmul(
            n,
            i,
            o,
            &mut dx,
            View::rows(0, i),
            false,
            dy,
            View::rows(0, o),
            &layer.weight,
            View::rows(0, i),
            threads,
        );
    }
    (dw, db, dx)
}

/// Softmax cross-entropy over `channels` of one voxel's logits: returns the weighted loss and
/// writes `weight * (softmax - onehot)` into `grad` at those channels.
pub(super) fn softmax_cross_entropy(
    logits: &[f32],
    channels: &[usize],
    target: usize,
    weight: f32,
    grad: &mut [f32],
) -> f64 {
    let max = channels
        .iter()
        .map(|&c| logits[c])
        .fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = channels.iter().map(|&c| (logits[c] - max).exp()).sum();
    for (position, &c) in channels.iter().enumerate() {
        let p = (logits[c] - max).exp() / sum;
        grad[c] = weight * (p - if position == target { 1.0 } else { 0.0 });
    }
    let picked = logits[channels[target]] - max;
    (weight as f64) * ((sum as f64).ln() - picked as f64)
}

/// The soft Dice term of [`crate::engine::loss`] for one task's voxels: `logits` their rows
/// (`c` wide), the softmax over `channels`, the Dice over the positions `dice` among them.
/// Returns `weight` x (1 - the mean soft Dice) and adds its gradient at the logits to `grad`.
pub(super) fn add_soft_dice(
    logits: &[f32],
    c: usize,
    targets: &[i64],
    channels: &[usize],
    dice: &[usize],
    weight: f64,
    grad: &mut [f32],
) -> f64 {
    let m = channels.len();
    let mut probabilities = vec![0f64; targets.len() * m];
    probabilities
        .par_chunks_mut(LOSS_CHUNK * m)
        .zip(logits.par_chunks(LOSS_CHUNK * c))
        .for_each(|(p, l)| {
            for (p, l) in p.chunks_exact_mut(m).zip(l.chunks_exact(c)) {
                let max = channels
                    .iter()
                    .map(|&ch| l[ch])
                    .fold(f32::NEG_INFINITY, f32::max);
                for (p, &ch) in p.iter_mut().zip(channels) {
                    *p = ((l[ch] - max) as f64).exp();
                }
                let sum: f64 = p.iter().sum();
                p.iter_mut().for_each(|x| *x /= sum);
            }
        });
    let hit = |target: i64, q: usize| if target as usize == q { 1.0 } else { 0.0 };
    // Per chunk, then added up in chunk order.
    let parts = probabilities
        .par_chunks(LOSS_CHUNK * m)
        .zip(targets.par_chunks(LOSS_CHUNK))
        .map(|(p, t)| {
            let (mut overlap, mut sizes) = (vec![0f64; dice.len()], vec![0f64; dice.len()]);
            for (p, &target) in p.chunks_exact(m).zip(t) {
                for (k, &q) in dice.iter().enumerate() {
                    overlap[k] += p[q] * hit(target, q);
                    sizes[k] += p[q] + hit(target, q);
                }
            }
            (overlap, sizes)
        })
        .collect();
    let (overlap, sizes) = sum_in_order(parts, dice.len());
    let mean = (0..dice.len())
        .map(|k| (2.0 * overlap[k] + 1.0) / (sizes[k] + 1.0))
        .sum::<f64>()
        / dice.len() as f64;
    // d(1 - mean Dice)/dp per channel, then through the softmax: dz_j = p_j (g_j - g . p).
    let scale = weight / dice.len() as f64;
    grad.par_chunks_mut(LOSS_CHUNK * c)
        .zip(probabilities.par_chunks(LOSS_CHUNK * m))
        .zip(targets.par_chunks(LOSS_CHUNK))
        .for_each(|((grad, p), t)| {
            let mut g = vec![0f64; m];
            for ((grad, p), &target) in grad.chunks_exact_mut(c).zip(p.chunks_exact(m)).zip(t) {
                for (k, &q) in dice.iter().enumerate() {
                    let d = sizes[k] + 1.0;
                    g[q] = -scale * (2.0 * hit(target, q) * d - (2.0 * overlap[k] + 1.0)) / (d * d);
                }
                let dot: f64 = g.iter().zip(p).map(|(a, b)| a * b).sum();
                for (q, &ch) in channels.iter().enumerate() {
                    grad[ch] += (p[q] * (g[q] - dot)) as f32;
                }
            }
        });
    weight * (1.0 - mean)
}

/// Pixels per parallel chunk of the loss: a fixed number, so that its sums, taken per chunk
/// and then in chunk order, do not depend on the threads.
const LOSS_CHUNK: usize = 4096;

/// [`softmax_cross_entropy`] over every pixel of `logits` (`c` per pixel), the target of
/// pixel v being `target(v)`, its gradient into `grad`: the summed loss.
pub(super) fn pixels_cross_entropy(
    logits: &[f32],
    c: usize,
    channels: &[usize],
    target: impl Fn(usize) -> usize + Sync,
    weight: f32,
    grad: &mut [f32],
) -> f64 {
    let parts: Vec<f64> = grad
        .par_chunks_mut(LOSS_CHUNK * c)
        .zip(logits.par_chunks(LOSS_CHUNK * c))
        .enumerate()
        .map(|(chunk, (grad, logits))| {
            let first = chunk * LOSS_CHUNK;
            grad.chunks_exact_mut(c)
                .zip(logits.chunks_exact(c))
                .enumerate()
                .map(|(v, (grad, logits))| {
                    softmax_cross_entropy(logits, channels, target(first + v), weight, grad)
                })
                .sum()
        })
        .collect();
    parts.iter().sum()
}

/// One training step of `net` on `batch`. `workspace` hands buffers on from step to step;
/// the results do not depend on it (a fresh one gives the same).
pub fn train_step(
    net: &CpuNetwork,
    batch: &Batch,
    layout: &OutputLayout,
    config: &TrainConfig,
    dropout_seed: u64,
    workspace: &Workspace,
) -> StepOutput {
    let threads = rayon::current_num_threads();
    let (cubes, k, side) = (batch.cubes, batch.tile, batch.patch_side);
    let n = cubes * k;
    let kernels = net.kernels;
    let voxels = batch.targets.len();

    // Branches, then the per-voxel features. The three branches run at once: on small images
    // each layer's passes are too short to keep both cores busy on their own.
    let caches: Vec<Vec<LayerCache>> = Orientation::ALL
        .par_iter()
        .map(|o| {
            let b = o.index();
            branch_forward(&net.branches[b], &batch.patches[b], n, side, workspace)
        })
        .collect();
    let sources = feature_sources(cubes, k, kernels);
    let width = 3 * kernels;
    let mut features = vec![0f32; voxels * width];
    for (v, src) in sources.iter().enumerate() {
        for o in 0..3 {
            let out = &caches[o].last().expect("at least one layer").output;
            features[v * width + o * kernels..][..kernels]
                .copy_from_slice(&out[src[o]..][..kernels]);
        }
    }

    // Head: fc1, ELU, dropout, fc2, ELU, dropout, class layer (and task layer).
    let mut a1 = net.fc1.forward(&features, voxels, threads);
    let (d1, mask1) = activate_and_drop(&mut a1, net.dropout, dropout_seed, 0);
    let mut a2 = net.fc2.forward(&d1, voxels, threads);
    let (d2, mask2) = activate_and_drop(&mut a2, net.dropout, dropout_seed, 1);
    let logits = net.classes.forward(&d2, voxels, threads);

    // Loss and its gradient at the logits.
    let c = net.classes.outputs;
    let mut d_logits = vec![0f32; voxels * c];
    let weights = voxel_weights(batch, layout.groups.len(), config);
    let per_cube = k * k * k;
    let all: Vec<usize> = (0..c).collect();
    let mut loss = 0f64;
    for v in 0..voxels {
        let task = batch.tasks[v / per_cube];
        let channels = match layout.mode {
            OutputMode::Union => &all,
            OutputMode::PerTask => &layout.groups[task],
        };
        loss += softmax_cross_entropy(
            &logits[v * c..][..c],
            channels,
            batch.targets[v] as usize,
            weights[v],
            &mut d_logits[v * c..][..c],
        );
    }
    if config.dice_weight > 0.0 {
        let tasks = layout.groups.len();
        let shares = config.task_share.shares(&batch.tasks, tasks);
        for ((group, run), share) in layout
            .groups
            .iter()
            .zip(task_runs(&batch.tasks, tasks))
            .zip(shares)
        {
            if run.is_empty() {
                continue;
            }
            let (channels, dice): (&[usize], Vec<usize>) = match layout.mode {
                OutputMode::Union => (&all, group[1..].to_vec()),
                OutputMode::PerTask => (group, (1..group.len()).collect()),
            };
            let rows = run.start * per_cube..run.end * per_cube;
            loss += add_soft_dice(
                &logits[rows.start * c..rows.end * c],
                c,
                &batch.targets[rows.clone()],
                channels,
                &dice,
                share * config.dice_weight,
                &mut d_logits[rows.start * c..rows.end * c],
            );
        }
    }
    let (classes, mut d_d2) = linear_backward(&net.classes, &d2, &d_logits, voxels, threads);
    let task = if let Some(task_layer) = &net.task {
        let task_logits = task_layer.forward(&d2, voxels, threads);
        let tc = task_layer.outputs;
        let channels: Vec<usize> = (0..tc).collect();
        let mut d_task = vec![0f32; voxels * tc];
        let w = config.task_loss_weight as f32 / voxels as f32;
        let target = |v: usize| batch.tasks[v / per_cube];
        loss += pixels_cross_entropy(&task_logits, tc, &channels, target, w, &mut d_task);
        let (task, d) = linear_backward(task_layer, &d2, &d_task, voxels, threads);
        d_d2.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
        Some(task)
    } else {
        None
    };

    // Back through the head.
    let mut d_h2 = d_d2;
    drop_and_activate_backward(&mut d_h2, &a2, mask2.as_deref());
    let (fc2, mut d_h1) = linear_backward(&net.fc2, &d1, &d_h2, voxels, threads);
    drop_and_activate_backward(&mut d_h1, &a1, mask1.as_deref());
    let (fc1, d_features) = linear_backward(&net.fc1, &features, &d_h1, voxels, threads);

    // Scatter the feature gradients back to each branch's output, then back through it (the
    // branches at once, as forward).
    let branches = caches
        .into_par_iter()
        .enumerate()
        .map(|(b, branch_caches)| {
            let mut d_out = vec![0f32; n * k * k * kernels];
            for (v, src) in sources.iter().enumerate() {
                d_out[src[b]..][..kernels]
                    .copy_from_slice(&d_features[v * width + b * kernels..][..kernels]);
            }
            branch_backward(
                &net.branches[b],
                &batch.patches[b],
                branch_caches,
                n,
                side,
                d_out,
                workspace,
            )
        })
        .collect();
    StepOutput {
        loss,
        branches,
        fc1,
        fc2,
        classes,
        task,
    }
}

/// Dense backward: the layer's weight and bias gradients, and the input gradient.
fn linear_backward(
    layer: &FullyConnected,
    x: &[f32],
    dy: &[f32],
    n: usize,
    threads: usize,
) -> (LinearGradients, Vec<f32>) {
    let (weight, bias, dx) = dense_backward(layer, x, dy, n, true, threads);
    (LinearGradients { weight, bias }, dx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_sums_match_one_value_at_a_time() {
        // Channel counts on the vector path (multiples of 8) and off it; pixel counts with
        // and without a remainder of four.
        for (co, pixels) in [(16, 7), (16, 64), (32, 9), (8, 3), (5, 11)] {
            let a: Vec<f32> = (0..co * pixels)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..co * pixels)
                .map(|i| ((i * 53 % 97) as f32 - 40.0) / 9.0)
                .collect();
            // The sums are added to what is there.
            let mut sums = vec![1.0; co];
            let mut products = vec![2.0; co];
            add_channel_sums(&a, &b, &mut sums, &mut products);
            for c in 0..co {
                let values = (0..pixels).map(|p| (a[p * co + c] as f64, b[p * co + c] as f64));
                let expected_sum = 1.0 + values.clone().map(|(x, _)| x).sum::<f64>();
                let expected_product = 2.0 + values.map(|(x, y)| x * y).sum::<f64>();
                assert!(
                    (sums[c] - expected_sum).abs() < 1e-9,
                    "co {co}, channel {c}"
                );
                assert!((products[c] - expected_product).abs() < 1e-9, "co {co}");
            }
        }
    }

    #[test]
    fn dropout_keeps_its_share_scaled_and_repeats_with_its_seed() {
        let len = 3 * HEAD_CHUNK + 123;
        let h: Vec<f32> = (0..len).map(|i| (i % 17) as f32 / 4.0 - 2.0).collect();
        let mut a = h.clone();
        let (dropped, mask) = activate_and_drop(&mut a, 0.25, 7, 0);
        let mask = mask.expect("a mask with p > 0");
        for i in 0..len {
            assert!((a[i] - elu(h[i])).abs() < 1e-6, "ELU in place");
            assert!(mask[i] == 0.0 || mask[i] == 1.0 / 0.75);
            assert_eq!(dropped[i], a[i] * mask[i]);
        }
        let share = mask.iter().filter(|&&m| m == 0.0).count() as f64 / len as f64;
        assert!((share - 0.25).abs() < 0.01, "dropped {share}");
        // Chunks draw from streams of their own; the same seed and layer repeat the mask,
        // another layer draws another.
        assert_ne!(mask[..HEAD_CHUNK], mask[HEAD_CHUNK..2 * HEAD_CHUNK]);
        let again = activate_and_drop(&mut h.clone(), 0.25, 7, 0).1;
        assert_eq!(again.as_ref(), Some(&mask));
        let other_layer = activate_and_drop(&mut h.clone(), 0.25, 7, 1).1;
        assert_ne!(other_layer.as_ref(), Some(&mask));
        // Without dropout nothing is dropped.
        let (kept, none) = activate_and_drop(&mut h.clone(), 0.0, 7, 0);
        assert!(none.is_none());
        assert_eq!(kept, a);

        // Backward: d * mask * ELU'(a).
        let mut d = vec![1.5f32; len];
        drop_and_activate_backward(&mut d, &a, Some(&mask));
        for i in 0..len {
            assert_eq!(d[i], 1.5 * mask[i] * elu_derivative_from_output(a[i]));
        }
    }

    /// The loss over more pixels than one chunk: the same bits on one thread and on three,
    /// and the values (and a gradient) of the formulas written out pixel by pixel.
    #[test]
    fn the_loss_in_chunks_is_the_loss_pixel_by_pixel_on_any_threads() {
        let (pixels, c) = (2 * LOSS_CHUNK + 777, 4);
        let channels = [0, 2, 3];
        let logits: Vec<f32> = (0..pixels * c)
            .map(|i| ((i * 29 % 61) as f32 - 30.0) / 11.0)
            .collect();
        let targets: Vec<i64> = (0..pixels).map(|v| ((v * 7 / 5) % 3) as i64).collect();
        let loss = |logits: &[f32]| {
            let mut grad = vec![0f32; pixels * c];
            let target = |v: usize| targets[v] as usize;
            let ce = pixels_cross_entropy(logits, c, &channels, target, 0.5, &mut grad);
            let dice = add_soft_dice(logits, c, &targets, &channels, &[1, 2], 0.7, &mut grad);
            (ce, dice, grad)
        };
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
            pool.expect("a thread pool").install(|| loss(&logits))
        };
        let one = on(1);
        assert_eq!(one, on(3), "the loss depends on the threads");

        // Pixel by pixel, in f64.
        let softmax = |v: usize| -> Vec<f64> {
            let e: Vec<f64> = channels
                .iter()
                .map(|&ch| (logits[v * c + ch] as f64).exp())
                .collect();
            let sum: f64 = e.iter().sum();
            e.into_iter().map(|x| x / sum).collect()
        };
        let ce: f64 = (0..pixels)
            .map(|v| -0.5 * softmax(v)[targets[v] as usize].ln())
            .sum();
        let mean_dice = [1, 2]
            .iter()
            .map(|&q| {
                let (mut overlap, mut size) = (0.0, 0.0);
                for (v, &target) in targets.iter().enumerate() {
                    let (p, hit) = (softmax(v)[q], (target as usize == q) as u8 as f64);
                    overlap += p * hit;
                    size += p + hit;
                }
                (2.0 * overlap + 1.0) / (size + 1.0)
            })
            .sum::<f64>()
            / 2.0;
        assert!(
            (one.0 - ce).abs() < 1e-6 * ce,
            "cross-entropy {} vs {ce}",
            one.0
        );
        let dice = 0.7 * (1.0 - mean_dice);
        assert!((one.1 - dice).abs() < 1e-7, "Dice term {} vs {dice}", one.1);
        // The gradient of a logit in the last chunk, against a central difference.
        let i = (pixels - 5) * c + 2;
        let total = |x: f32| {
            let mut moved = logits.clone();
            moved[i] = x;
            let (ce, dice, _) = loss(&moved);
            ce + dice
        };
        let eps = 1e-2;
        let numeric = (total(logits[i] + eps) - total(logits[i] - eps)) / (2.0 * eps as f64);
        assert!(
            (numeric - one.2[i] as f64).abs() < 1e-4,
            "gradient {} vs {numeric}",
            one.2[i]
        );
    }
}
