//! One training step of the 2.5-D U-Net on mtseg's own CPU kernels: forward with batch
//! statistics, the loss of [`crate::engine::loss::crop_loss`] (same definition), and the
//! backward pass, giving every parameter's gradient and the new batch-norm running statistics
//! in the network's own structure ([`UNetStepOutput`]), which
//! [`UNetStepOutput::gradients`] hands to burn's optimizer parameter by parameter.
//!
//! The 3x3 convolutions (one pixel of zero padding, as burn's) run on the kernels of `conv`,
//! `direct` and `winograd`; the transposed convolutions and the 1x1 heads are matrix
//! products. Images are channels-last and processed in parallel; every sum over images is
//! taken in image order, so a step's results do not depend on how rayon splits the work and
//! a resumed training repeats an uninterrupted one bit for bit.

use burn::optim::GradientsParams;
use burn::prelude::*;
use multiversion::multiversion;
use rayon::prelude::*;

use super::gradients::{Filing, LayerGradients, LinearGradients, update_running};
use super::network::{BranchLayer, FullyConnected, conv_and_norm, pixelwise};
use super::train::{
    Workspace, add_channel_sums, add_soft_dice, batch_statistics, dense_backward, moved_towards,
    norm_gradients, normalise_and_relu, pixels_cross_entropy, sum_in_order,
};
use super::unet::{UpConv, max_pool, pad_by_one};
use crate::data::Crops;
use crate::engine::loss::task_runs;
use crate::model::unet::{Block, INPUT_CHANNELS};
use crate::model::{OutputLayout, OutputMode, TrainConfig, UNet};
use mtseg_kernels::conv::{BackwardScratch, backward_image};
use mtseg_kernels::matmul::{View, matmul};
use mtseg_kernels::winograd::PreparedConv;

/// Pixels per parallel chunk of the element-wise passes (times the channels).
const CHUNK_PIXELS: usize = 1024;

/// The U-Net's parameters as plain arrays, in the burn network's structure.
#[derive(Clone, Debug)]
pub struct UNetLayers {
    /// Per level, full resolution first: the block's two convolutions with their batch norms.
    pub encoder: Vec<[BranchLayer; 2]>,
    /// From the deepest level up, as the decoder.
    pub up: Vec<UpConv>,
    pub decoder: Vec<[BranchLayer; 2]>,
    pub classes: FullyConnected,
    pub task: Option<FullyConnected>,
}

impl UNetLayers {
    pub fn from_burn(net: &UNet) -> Self {
        let block = |b: &Block| {
            [
                conv_and_norm(&b.first, &b.first_norm),
                conv_and_norm(&b.second, &b.second_norm),
            ]
        };
        UNetLayers {
            encoder: net.encoder.iter().map(block).collect(),
            up: net.up.iter().map(UpConv::new).collect(),
            decoder: net.decoder.iter().map(block).collect(),
            classes: pixelwise(&net.classes),
            task: net.task.as_ref().map(pixelwise),
        }
    }
}

/// What a step produces, in the structure of [`UNetLayers`].
#[derive(Clone, Debug, PartialEq)]
pub struct UNetStepOutput {
    pub loss: f64,
    pub encoder: Vec<[LayerGradients; 2]>,
    /// `[ci][co][2][2]` weights, from the deepest level up.
    pub up: Vec<LinearGradients>,
    pub decoder: Vec<[LayerGradients; 2]>,
    /// `[out][in]` weights (burn's `[out][in][1][1]`).
    pub classes: LinearGradients,
    pub task: Option<LinearGradients>,
}

impl UNetStepOutput {
    /// The gradients for burn's optimizer, each filed under its parameter of `net` (tensors on
    /// `device`).
    pub fn gradients(&self, net: &UNet, device: &Device) -> GradientsParams {
        let mut filing = Filing::new(device);
        let blocks = net
            .encoder
            .iter()
            .zip(&self.encoder)
            .chain(net.decoder.iter().zip(&self.decoder));
        for (block, [first, second]) in blocks {
            filing.conv_and_norm(&block.first, &block.first_norm, first);
            filing.conv_and_norm(&block.second, &block.second_norm, second);
        }
        for (up, g) in net.up.iter().zip(&self.up) {
            filing.linear(&up.weight, &up.bias, g);
        }
        let heads = std::iter::once((&net.classes, &self.classes))
            .chain(net.task.as_ref().zip(self.task.as_ref()));
        for (head, g) in heads {
            filing.linear(&head.weight, &head.bias, g);
        }
        filing.done()
    }

    /// Writes the new batch-norm running statistics into `net`.
    pub fn write_running_statistics(&self, net: &UNet) {
        let blocks = net
            .encoder
            .iter()
            .zip(&self.encoder)
            .chain(net.decoder.iter().zip(&self.decoder));
        for (block, [first, second]) in blocks {
            update_running(&block.first_norm, first);
            update_running(&block.second_norm, second);
        }
    }
}

/// What one convolution + batch norm + ReLU keeps for the backward pass (`n x h x w x co`).
struct Saved {
    /// The normalised convolution output.
    normalised: Vec<f32>,
    /// The layer's output, after ReLU.
    output: Vec<f32>,
    inv_std: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
}

/// What one block keeps: its input and its two layers, on `h x w` images.
struct BlockSaved {
    input: Vec<f32>,
    layers: [Saved; 2],
    h: usize,
    w: usize,
}

impl BlockSaved {
    fn output(&self) -> &[f32] {
        &self.layers[1].output
    }

    /// Hands the block's buffers on to the next step once its gradients are computed.
    fn recycle(self, workspace: &Workspace) {
        workspace.keep(self.input);
        for layer in self.layers {
            workspace.keep(layer.normalised);
            workspace.keep(layer.output);
        }
    }
}

/// The ReLU's gradient from its output: `d = 0` where the output is 0.
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2+fma"))]
fn relu_backward(d: &mut [f32], outputs: &[f32]) {
    assert_eq!(d.len(), outputs.len());
    for (d, a) in d.iter_mut().zip(outputs) {
        *d = if *a > 0.0 { *d } else { 0.0 };
    }
}

/// One 3x3 convolution (zero padding), batch norm with the batch's statistics, ReLU, over
/// `n` images `h x w`.
fn layer_forward(
    layer: &BranchLayer,
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    workspace: &Workspace,
) -> Saved {
    let (ci, co) = (layer.conv.ci, layer.conv.co);
    let (in_size, out_size) = (h * w * ci, h * w * co);
    assert_eq!(x.len(), n * in_size, "a layer's input, n x h x w x ci");
    let conv = PreparedConv::new(layer.conv.clone());
    let mut z = workspace.overwritten(n * out_size);
    // Each image's batch-norm sums are taken while its output is still in cache.
    let parts = z
        .par_chunks_mut(out_size)
        .zip(x.par_chunks(in_size))
        .map_init(
            || (Vec::new(), Vec::new()),
            |(padded, scratch), (out, image)| {
                pad_by_one(image, h, w, ci, padded);
                conv.forward_image(padded, h + 2, w + 2, out, scratch, 1, &|_| {});
                let mut sums = (vec![0f64; co], vec![0f64; co]);
                add_channel_sums(out, out, &mut sums.0, &mut sums.1);
                sums
            },
        )
        .collect();
    let (mean, var, inv_std) = batch_statistics(parts, (n * h * w) as f64, layer.epsilon);
    let mut output = workspace.overwritten(z.len());
    z.par_chunks_mut(co * CHUNK_PIXELS)
        .zip(output.par_chunks_mut(co * CHUNK_PIXELS))
        .for_each(|(zs, os)| {
            normalise_and_relu(zs, os, &mean, &inv_std, &layer.gamma, &layer.beta);
        });
    Saved {
        normalised: z,
        output,
        inv_std,
        running_mean: moved_towards(&layer.running_mean, &mean),
        running_var: moved_towards(&layer.running_var, &var),
    }
}

fn block_forward(
    block: &[BranchLayer; 2],
    input: Vec<f32>,
    n: usize,
    h: usize,
    w: usize,
    workspace: &Workspace,
) -> BlockSaved {
    let first = layer_forward(&block[0], &input, n, h, w, workspace);
    let second = layer_forward(&block[1], &first.output, n, h, w, workspace);
    BlockSaved {
        input,
        layers: [first, second],
        h,
        w,
    }
}

/// Buffers one image's backward pass reuses for the next.
#[derive(Default)]
struct Scratch {
    padded: Vec<f32>,
    padded_gradient: Vec<f32>,
    forward: Vec<f32>,
    backward: BackwardScratch,
}

/// Back through ReLU, batch norm and the convolution of one layer whose input was `x`, `d`
/// being the gradient at its output: the gradient at its input (empty unless `want_dx`) and
/// the layer's gradients.
#[allow(clippy::too_many_arguments)]
fn layer_backward(
    layer: &BranchLayer,
    x: &[f32],
    saved: &Saved,
    mut d: Vec<f32>,
    n: usize,
    h: usize,
    w: usize,
    want_dx: bool,
) -> (Vec<f32>, LayerGradients) {
    let (ci, co) = (layer.conv.ci, layer.conv.co);
    let (in_size, out_size) = (h * w * ci, h * w * co);
    assert_eq!(d.len(), n * out_size, "a layer's output gradient");
    let chunk = co * CHUNK_PIXELS;
    let parts = d
        .par_chunks_mut(chunk)
        .zip(saved.output.par_chunks(chunk))
        .zip(saved.normalised.par_chunks(chunk))
        .map(|((d, outputs), xh)| {
            relu_backward(d, outputs);
            let mut sums = (vec![0f64; co], vec![0f64; co]);
            add_channel_sums(d, xh, &mut sums.0, &mut sums.1);
            sums
        })
        .collect();
    let norm = norm_gradients(parts, &layer.gamma, (n * h * w) as f64);
    let flipped = want_dx.then(|| PreparedConv::new(layer.conv.flipped()));
    let mut dx = if want_dx {
        vec![0f32; n * in_size]
    } else {
        Vec::new()
    };
    let mut dx_parts: Vec<Option<&mut [f32]>> = if want_dx {
        dx.chunks_mut(in_size).map(Some).collect()
    } else {
        (0..n).map(|_| None).collect()
    };
    let weight_len = layer.conv.weight.len();
    // One image per task: each sums its own weight gradients, added up in image order.
    let parts = d
        .par_chunks_mut(out_size)
        .zip(saved.normalised.par_chunks(out_size))
        .zip(x.par_chunks(in_size))
        .zip(dx_parts.par_iter_mut())
        .map_init(Scratch::default, |s, (((dz, xh), image), dx)| {
            norm.backward(dz, xh, &saved.inv_std, &layer.gamma);
            pad_by_one(image, h, w, ci, &mut s.padded);
            let mut dw = vec![0f32; weight_len];
            let mut db = vec![0f32; co];
            backward_image(
                &layer.conv,
                &s.padded,
                h + 2,
                w + 2,
                dz,
                &mut dw,
                &mut db,
                &mut s.backward,
            );
            // A same convolution's input gradient is the same convolution of the output
            // gradient with the flipped kernel.
            if let (Some(dx), Some(flipped)) = (dx.as_deref_mut(), &flipped) {
                pad_by_one(dz, h, w, co, &mut s.padded_gradient);
                flipped.forward_image(
                    &s.padded_gradient,
                    h + 2,
                    w + 2,
                    dx,
                    &mut s.forward,
                    1,
                    &|_| {},
                );
            }
            (dw, db)
        })
        .collect();
    let (dw, db) = sum_in_order(parts, weight_len);
    drop(dx_parts);
    let gradients = LayerGradients {
        weight: layer.conv.to_oihw(&dw),
        bias: db,
        gamma: norm.gamma,
        beta: norm.beta,
        running_mean: saved.running_mean.clone(),
        running_var: saved.running_var.clone(),
    };
    (dx, gradients)
}

/// Back through a block: the gradient at its input (empty unless `want_dx`) and its layers'
/// gradients.
fn block_backward(
    block: &[BranchLayer; 2],
    saved: &BlockSaved,
    d: Vec<f32>,
    n: usize,
    want_dx: bool,
) -> (Vec<f32>, [LayerGradients; 2]) {
    let (h, w) = (saved.h, saved.w);
    let [first, second] = &saved.layers;
    let (d_middle, g2) = layer_backward(&block[1], &first.output, second, d, n, h, w, true);
    let (d_input, g1) = layer_backward(&block[0], &saved.input, first, d_middle, n, h, w, want_dx);
    (d_input, [g1, g2])
}

/// 2x2 max pooling of `n` images `h x w x c`.
fn pool_all(x: &[f32], n: usize, h: usize, w: usize, c: usize, workspace: &Workspace) -> Vec<f32> {
    let mut out = workspace.overwritten(x.len() / 4);
    out.par_chunks_mut(h * w * c / 4)
        .zip(x.par_chunks(h * w * c))
        .for_each(|(out, image)| out.copy_from_slice(&max_pool(image, h, w, c)));
    debug_assert_eq!(out.len(), n * h * w * c / 4);
    out
}

/// Back through 2x2 max pooling of `n` images `h x w x c` (`x`, pooled into `pooled`): each
/// pooled gradient goes to the first pixel of its window that holds the maximum.
fn pool_backward(
    x: &[f32],
    pooled: &[f32],
    d_pooled: &[f32],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
) -> Vec<f32> {
    let (ho, wo) = (h / 2, w / 2);
    let mut dx = vec![0f32; n * h * w * c];
    dx.par_chunks_mut(h * w * c)
        .zip(x.par_chunks(h * w * c))
        .zip(
            pooled
                .par_chunks(ho * wo * c)
                .zip(d_pooled.par_chunks(ho * wo * c)),
        )
        .for_each(|((dx, x), (pooled, d))| {
            for p in 0..ho * wo {
                let (yo, xo) = (p / wo, p % wo);
                let window = [0, 1, w, w + 1].map(|o| (2 * yo * w + 2 * xo + o) * c);
                for ch in 0..c {
                    let max = pooled[p * c + ch];
                    let at = window
                        .iter()
                        .find(|&&i| x[i + ch] == max)
                        .expect("the maximum is in its window");
                    dx[at + ch] += d[p * c + ch];
                }
            }
        });
    dx
}

/// The transposed convolution of `n` images `h x w` and their concatenation with the skip
/// connection's images (`2h x 2w x cs`): the up-sampled features first, as burn's `cat`.
fn up_and_join(
    up: &UpConv,
    below: &[f32],
    skip: &[f32],
    n: usize,
    (h, w): (usize, usize),
    workspace: &Workspace,
) -> Vec<f32> {
    let pixels = 4 * h * w;
    let cs = skip.len() / (n * pixels);
    let joined_c = up.co + cs;
    let mut joined = workspace.overwritten(n * pixels * joined_c);
    joined
        .par_chunks_mut(pixels * joined_c)
        .zip(below.par_chunks(h * w * up.ci))
        .zip(skip.par_chunks(pixels * cs))
        .for_each(|((joined, below), skip)| {
            let upsampled = up.forward(below, h, w);
            for ((j, u), s) in joined
                .chunks_exact_mut(joined_c)
                .zip(upsampled.chunks_exact(up.co))
                .zip(skip.chunks_exact(cs))
            {
                j[..up.co].copy_from_slice(u);
                j[up.co..].copy_from_slice(s);
            }
        });
    joined
}

/// Back through [`up_and_join`]: from the gradient at the joined images, the gradient at the
/// transposed convolution's input (`n x h x w x ci`), at the skip connection, and the
/// convolution's gradients (weight `[ci][co][2][2]`).
fn up_and_join_backward(
    up: &UpConv,
    below: &[f32],
    d_joined: &[f32],
    n: usize,
    h: usize,
    w: usize,
) -> (Vec<f32>, Vec<f32>, LinearGradients) {
    let (ci, co) = (up.ci, up.co);
    let pixels = 4 * h * w;
    let joined_c = d_joined.len() / (n * pixels);
    let cs = joined_c - co;
    let mut d_below = vec![0f32; n * h * w * ci];
    let mut d_skip = vec![0f32; n * pixels * cs];
    let parts = d_below
        .par_chunks_mut(h * w * ci)
        .zip(d_skip.par_chunks_mut(pixels * cs))
        .zip(
            below
                .par_chunks(h * w * ci)
                .zip(d_joined.par_chunks(pixels * joined_c)),
        )
        .map(|((d_below, d_skip), (below, d_joined))| {
            // The up-sampled part's gradient as 2x2 blocks per input pixel, `hw x 4co`.
            let mut blocks = vec![0f32; h * w * 4 * co];
            let mut db = vec![0f32; co];
            for (p, (joined, skip)) in d_joined
                .chunks_exact(joined_c)
                .zip(d_skip.chunks_exact_mut(cs))
                .enumerate()
            {
                skip.copy_from_slice(&joined[co..]);
                let (y, x) = (p / (2 * w), p % (2 * w));
                let k = (y % 2) * 2 + x % 2;
                let at = (((y / 2) * w + x / 2) * 4 + k) * co;
                blocks[at..][..co].copy_from_slice(&joined[..co]);
                db.iter_mut().zip(&joined[..co]).for_each(|(b, g)| *b += g);
            }
            let mut dw = vec![0f32; ci * 4 * co];
            matmul(
                ci,
                4 * co,
                h * w,
                &mut dw,
                View::rows(0, 4 * co),
                false,
                below,
                View::transposed(0, ci),
                &blocks,
                View::rows(0, 4 * co),
                1,
            );
            matmul(
                h * w,
                ci,
                4 * co,
                d_below,
                View::rows(0, ci),
                false,
                &blocks,
                View::rows(0, 4 * co),
                &up.weight,
                View::transposed(0, 4 * co),
                1,
            );
            (dw, db)
        })
        .collect();
    let (dw, db) = sum_in_order(parts, ci * 4 * co);
    // From `[ci][ky kx][co]` to burn's `[ci][co][ky][kx]`.
    let mut weight = vec![0f32; ci * co * 4];
    for i in 0..ci {
        for o in 0..co {
            for k in 0..4 {
                weight[(i * co + o) * 4 + k] = dw[(i * 4 + k) * co + o];
            }
        }
    }
    (d_below, d_skip, LinearGradients { weight, bias: db })
}

/// The loss of [`crate::engine::loss::crop_loss`] from pixel-major class logits (`c` per
/// pixel) and task logits, and its gradient at both.
fn crop_loss(
    logits: &[f32],
    c: usize,
    task_logits: Option<(&[f32], usize)>,
    crops: &Crops,
    layout: &OutputLayout,
    config: &TrainConfig,
) -> (f64, Vec<f32>, Vec<f32>) {
    let pixels = crops.targets.len();
    let per_crop = crops.side * crops.side;
    let tasks = layout.groups.len();
    let all: Vec<usize> = (0..c).collect();
    let mut d_logits = vec![0f32; pixels * c];
    let mut loss = 0f64;
    let shares = config.task_share.shares(&crops.tasks, tasks);
    for ((group, run), share) in layout
        .groups
        .iter()
        .zip(task_runs(&crops.tasks, tasks))
        .zip(shares)
    {
        if run.is_empty() {
            continue;
        }
        // The task's softmax (every channel in union mode) and the Dice's positions in it:
        // every channel of the group, background included.
        let (channels, dice): (&[usize], Vec<usize>) = match layout.mode {
            OutputMode::Union => (&all, group.clone()),
            OutputMode::PerTask => (group, (0..group.len()).collect()),
        };
        let rows = run.start * per_crop..run.end * per_crop;
        let weight = (share / rows.len() as f64) as f32;
        let (logits, targets) = (&logits[rows.start * c..rows.end * c], &crops.targets[rows]);
        let grad = &mut d_logits[run.start * per_crop * c..run.end * per_crop * c];
        loss += pixels_cross_entropy(logits, c, channels, |v| targets[v] as usize, weight, grad);
        loss += add_soft_dice(logits, c, targets, channels, &dice, share, grad);
    }
    let mut d_task = Vec::new();
    if let Some((task_logits, tc)) = task_logits {
        let channels: Vec<usize> = (0..tc).collect();
        let weight = (config.task_loss_weight / pixels as f64) as f32;
        d_task = vec![0f32; pixels * tc];
        let task = |v: usize| crops.tasks[v / per_crop];
        loss += pixels_cross_entropy(task_logits, tc, &channels, task, weight, &mut d_task);
    }
    (loss, d_logits, d_task)
}

/// One training step of `net` on `crops`: the loss, every parameter's gradient and the new
/// running statistics. `workspace` hands the saved activations' buffers on from step to step.
pub fn unet_train_step(
    net: &UNetLayers,
    crops: &Crops,
    layout: &OutputLayout,
    config: &TrainConfig,
    workspace: &Workspace,
) -> UNetStepOutput {
    let threads = rayon::current_num_threads();
    let (n, side) = (crops.count, crops.side);
    let plane = side * side;
    let pixels = n * plane;
    let levels = net.encoder.len();
    assert!(
        side.is_multiple_of(1 << (levels - 1)),
        "crops of {side} pixels do not halve {} times",
        levels - 1
    );
    // From the workspace too: the first block's input goes back there with the block's
    // buffers.
    let stack = INPUT_CHANNELS * plane;
    let mut images = workspace.overwritten(n * stack);
    images
        .par_chunks_mut(stack)
        .zip(crops.images.par_chunks(stack))
        .for_each(|(out, crop)| channels_last(crop, plane, out));

    // Forward: the encoder, full resolution first, then the decoder from the deepest level up.
    let mut encoder: Vec<BlockSaved> = Vec::with_capacity(levels);
    let (mut h, mut w) = (side, side);
    for block in &net.encoder {
        let input = match encoder.last() {
            None => std::mem::take(&mut images),
            Some(above) => {
                (h, w) = (h / 2, w / 2);
                pool_all(
                    above.output(),
                    n,
                    above.h,
                    above.w,
                    above.layers[1].inv_std.len(),
                    workspace,
                )
            }
        };
        encoder.push(block_forward(block, input, n, h, w, workspace));
    }
    let mut decoder: Vec<BlockSaved> = Vec::with_capacity(levels - 1);
    for (i, (up, block)) in net.up.iter().zip(&net.decoder).enumerate() {
        let below = decoder.last().unwrap_or(&encoder[levels - 1]);
        let skip = &encoder[levels - 2 - i];
        let joined = up_and_join(
            up,
            below.output(),
            skip.output(),
            n,
            (below.h, below.w),
            workspace,
        );
        decoder.push(block_forward(block, joined, n, skip.h, skip.w, workspace));
    }
    let features = decoder.last().unwrap_or(&encoder[levels - 1]).output();
    let logits = net.classes.forward(features, pixels, threads);
    let task_logits = net
        .task
        .as_ref()
        .map(|t| t.forward(features, pixels, threads));
    let (loss, d_logits, d_task) = crop_loss(
        &logits,
        net.classes.outputs,
        task_logits
            .as_deref()
            .zip(net.task.as_ref().map(|t| t.outputs)),
        crops,
        layout,
        config,
    );

    // Backward: the heads, the decoder from the top down, then the encoder from the deepest
    // level up.
    let (dw, db, mut d) = dense_backward(&net.classes, features, &d_logits, pixels, true, threads);
    let classes = LinearGradients {
        weight: dw,
        bias: db,
    };
    let task = net.task.as_ref().map(|layer| {
        let (dw, db, dx) = dense_backward(layer, features, &d_task, pixels, true, threads);
        d.iter_mut().zip(&dx).for_each(|(a, b)| *a += b);
        LinearGradients {
            weight: dw,
            bias: db,
        }
    });
    let mut skip_gradients: Vec<Option<Vec<f32>>> = (0..levels).map(|_| None).collect();
    let mut decoder_gradients = Vec::with_capacity(levels - 1);
    let mut up_gradients = Vec::with_capacity(levels - 1);
    while let Some(saved) = decoder.pop() {
        let i = decoder.len();
        let (d_joined, g) = block_backward(&net.decoder[i], &saved, d, n, true);
        decoder_gradients.push(g);
        let below = decoder.last().unwrap_or(&encoder[levels - 1]);
        let (d_below, d_skip, g_up) =
            up_and_join_backward(&net.up[i], below.output(), &d_joined, n, below.h, below.w);
        up_gradients.push(g_up);
        skip_gradients[levels - 2 - i] = Some(d_skip);
        d = d_below;
        saved.recycle(workspace);
    }
    let mut encoder_gradients = Vec::with_capacity(levels);
    while let Some(saved) = encoder.pop() {
        let l = encoder.len();
        if let Some(skip) = skip_gradients[l].take() {
            d.iter_mut().zip(&skip).for_each(|(a, b)| *a += b);
        }
        let (d_input, g) = block_backward(&net.encoder[l], &saved, d, n, l > 0);
        encoder_gradients.push(g);
        d = match encoder.last() {
            Some(above) => pool_backward(
                above.output(),
                &saved.input,
                &d_input,
                n,
                above.h,
                above.w,
                above.layers[1].inv_std.len(),
            ),
            None => Vec::new(),
        };
        saved.recycle(workspace);
    }
    encoder_gradients.reverse();
    decoder_gradients.reverse();
    up_gradients.reverse();
    UNetStepOutput {
        loss,
        encoder: encoder_gradients,
        up: up_gradients,
        decoder: decoder_gradients,
        classes,
        task,
    }
}

/// `channels x pixels` to `pixels x channels` into `out` (every value written): the crops
/// come as burn's autodiff step takes them, the kernels compute pixels first.
fn channels_last(x: &[f32], pixels: usize, out: &mut [f32]) {
    let channels = x.len() / pixels;
    assert_eq!(out.len(), x.len(), "channels_last: sizes differ");
    for (c, plane) in x.chunks_exact(pixels).enumerate() {
        for (p, v) in plane.iter().enumerate() {
            out[p * channels + c] = *v;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use burn::module::{ModuleVisitor, Param, ParamId, RunningState};
    use burn::tensor::Distribution;

    use super::*;
    use crate::engine::values;
    use crate::model::{ModelMeta, UNetConfig};
    use crate::test_support::two_task_meta;

    /// Every float parameter's id and rank (running statistics included).
    #[derive(Default)]
    struct Collect(BTreeMap<ParamId, usize>);

    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.insert(param.id, D);
        }
    }

    /// Two crops of task A and one of task B, with random images and targets.
    fn crops(m: &ModelMeta, side: usize) -> Crops {
        let tasks = vec![0, 0, 1];
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        let plane = side * side;
        let images = (0..tasks.len() * INPUT_CHANNELS * plane)
            .map(|_| (next() % 2000) as f32 / 500.0 - 2.0)
            .collect();
        let targets = tasks
            .iter()
            .flat_map(|&t| {
                let mut labels = vec![0u16];
                labels.extend(m.label_space.task_classes(t));
                (0..plane)
                    .map(|_| m.layout.target(t, labels[next() % labels.len()]) as i64)
                    .collect::<Vec<_>>()
            })
            .collect();
        Crops {
            count: tasks.len(),
            side,
            images,
            targets,
            tasks,
        }
    }

    /// Batch norms with affine parameters and running statistics far from their start.
    fn perturbed(net: &mut UNet, device: &Device) {
        for block in net.encoder.iter_mut().chain(net.decoder.iter_mut()) {
            for norm in [&mut block.first_norm, &mut block.second_norm] {
                let n = norm.gamma.dims()[0];
                let random =
                    |low, high| Tensor::<1>::random([n], Distribution::Uniform(low, high), device);
                norm.gamma = Param::from_tensor(random(0.5, 1.5));
                norm.beta = Param::from_tensor(random(-0.5, 0.5));
                norm.running_mean = RunningState::new(random(-0.3, 0.3));
                norm.running_var = RunningState::new(random(0.5, 2.0));
            }
        }
    }

    fn worst(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn gradients_and_running_statistics_match_burn_autodiff() {
        // Width 8 at three levels: the direct kernel and Winograd's transform (8 to 32
        // channels); width 5 at two: partial vectors with AVX-512, else the matrix-product
        // path. Both output modes.
        for (levels, width, mode, side) in [
            (3, 8, OutputMode::PerTask, 16),
            (2, 5, OutputMode::Union, 12),
        ] {
            let network = UNetConfig::new()
                .with_levels(levels)
                .with_width(width)
                .with_output_mode(mode);
            let m = two_task_meta(network.clone(), &[(0, "a1", 1), (0, "a2", 2), (1, "b", 1)]);
            let config = TrainConfig::new().with_task_loss_weight(0.3);
            let device = Device::flex().autodiff();
            let mut net = UNet::new(&network, m.layout.channels(), 2, &device);
            perturbed(&mut net, &device);
            let crops = crops(&m, side);

            let ours = unet_train_step(
                &UNetLayers::from_burn(&net),
                &crops,
                &m.layout,
                &config,
                &Workspace::default(),
            );
            let shape = [crops.count, INPUT_CHANNELS, side, side];
            let images =
                Tensor::<4>::from_data(TensorData::new(crops.images.clone(), shape), &device);
            let (logits, task_logits) = net.forward(images);
            let loss = crate::engine::loss::crop_loss(
                logits,
                task_logits,
                &crops,
                &m.layout,
                &config,
                &device,
            );
            let expected_loss = loss.clone().into_scalar::<f32>() as f64;
            assert!(
                (ours.loss - expected_loss).abs() < 1e-4 * expected_loss.max(1.0),
                "loss {} against burn's {expected_loss}",
                ours.loss
            );
            let theirs = GradientsParams::from_grads(loss.backward(), &net);
            let mine = ours.gradients(&net, &Device::flex());
            let mut params = Collect::default();
            net.visit(&mut params);
            let mut compared = 0;
            for (id, rank) in &params.0 {
                let get = |g: &GradientsParams| match rank {
                    1 => g.get::<1>(*id).map(values),
                    _ => g.get::<4>(*id).map(values),
                };
                match (get(&theirs), get(&mine)) {
                    (Some(a), Some(b)) => {
                        let scale = a.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                        let d = worst(&a, &b);
                        assert!(
                            d <= 2e-3 * scale,
                            "levels {levels}: a gradient of {} values differs by {d} (scale {scale})",
                            a.len()
                        );
                        compared += 1;
                    }
                    (None, None) => {}
                    (a, b) => panic!(
                        "a gradient only on one side: burn {}, ours {}",
                        a.is_some(),
                        b.is_some()
                    ),
                }
            }
            // Per block 2 x (weight, bias, gamma, beta); per up-convolution and head 2.
            let heads = if mode == OutputMode::PerTask { 2 } else { 1 };
            assert_eq!(
                compared,
                8 * (2 * levels - 1) + 2 * (levels - 1) + 2 * heads
            );
            // burn's forward moved its running statistics; ours are the same.
            let blocks = net
                .encoder
                .iter()
                .zip(&ours.encoder)
                .chain(net.decoder.iter().zip(&ours.decoder));
            for (block, [first, second]) in blocks {
                for (norm, g) in [(&block.first_norm, first), (&block.second_norm, second)] {
                    assert!(worst(&values(norm.running_mean.value_sync()), &g.running_mean) < 1e-4);
                    assert!(worst(&values(norm.running_var.value_sync()), &g.running_var) < 1e-4);
                }
            }
        }
    }

    /// A workspace handed on from a step of another network (its buffers full of that
    /// step's values) gives the same step, bit for bit, as a fresh one.
    #[test]
    fn a_reused_workspace_gives_the_same_step() {
        let network = UNetConfig::new().with_levels(3).with_width(8);
        let m = two_task_meta(network.clone(), &[(0, "a1", 1), (0, "a2", 2), (1, "b", 1)]);
        let config = TrainConfig::new();
        let device = Device::flex();
        let [net, other] = [0; 2]
            .map(|_| UNetLayers::from_burn(&UNet::new(&network, m.layout.channels(), 2, &device)));
        let crops = crops(&m, 16);
        let step = |net: &UNetLayers, workspace: &Workspace| {
            unet_train_step(net, &crops, &m.layout, &config, workspace)
        };
        let used = Workspace::default();
        step(&other, &used);
        let kept = used.kept();
        let again = step(&net, &used);
        let fresh = step(&net, &Workspace::default());
        assert_eq!(again, fresh);
        assert_ne!(again, step(&other, &used), "the two networks differ");
        // Every buffer a step keeps is taken again by the next: the workspace does not grow.
        assert_eq!(used.kept(), kept, "the workspace grew from step to step");
    }
}
