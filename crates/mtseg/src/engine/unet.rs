//! The 2.5-D U-Net's inference on mtseg's own CPU kernels, fed by the weights of the burn
//! network: batch norm folded into the 3x3 convolutions, ReLU in their output pass, images
//! channels-last; the 2x2 transposed convolutions and the 1x1 heads are matrix products on the
//! `gemm` crate. The slices of a batch run in parallel, one per core.

use rayon::prelude::*;

use super::network::{FullyConnected, bias_or_zeros, conv_and_norm, pixelwise};
use crate::engine::values;
use crate::model::UNet;
use crate::model::unet::{Block, INPUT_CHANNELS};
use burn::nn::BatchNorm;
use burn::nn::conv::{Conv2d, ConvTranspose2d};
use mtseg_kernels::matmul::{View, matmul};
use mtseg_kernels::winograd::PreparedConv;

/// A 3x3 convolution with the batch norm after it folded in (running statistics).
fn folded_conv(conv: &Conv2d, norm: &BatchNorm) -> PreparedConv {
    PreparedConv::new(conv_and_norm(conv, norm).folded())
}

/// A 2x2 transposed convolution of stride 2: each input pixel becomes a 2x2 block.
#[derive(Clone, Debug)]
pub struct UpConv {
    pub ci: usize,
    pub co: usize,
    /// `ci x (4 co)` row-major: input channel, then block position (ky, kx), then output.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl UpConv {
    pub(super) fn new(up: &ConvTranspose2d) -> Self {
        // burn's layout: [ci][co][ky][kx].
        let [ci, co, _, _] = up.weight.dims();
        let burn = values(up.weight.val());
        let mut weight = vec![0f32; ci * 4 * co];
        for i in 0..ci {
            for o in 0..co {
                for k in 0..4 {
                    weight[(i * 4 + k) * co + o] = burn[(i * co + o) * 4 + k];
                }
            }
        }
        UpConv {
            ci,
            co,
            weight,
            bias: bias_or_zeros(&up.bias, co),
        }
    }

    /// `h x w x ci` to `2h x 2w x co`.
    pub(super) fn forward(&self, x: &[f32], h: usize, w: usize) -> Vec<f32> {
        let co = self.co;
        let mut blocks = vec![0f32; h * w * 4 * co];
        matmul(
            h * w,
            4 * co,
            self.ci,
            &mut blocks,
            View::rows(0, 4 * co),
            false,
            x,
            View::rows(0, self.ci),
            &self.weight,
            View::rows(0, 4 * co),
            1,
        );
        let mut out = vec![0f32; 4 * h * w * co];
        for y in 0..h {
            for x in 0..w {
                for k in 0..4 {
                    let (ky, kx) = (k / 2, k % 2);
                    let src = &blocks[((y * w + x) * 4 + k) * co..][..co];
                    let dst = &mut out[((2 * y + ky) * 2 * w + 2 * x + kx) * co..][..co];
                    for ((d, s), b) in dst.iter_mut().zip(src).zip(&self.bias) {
                        *d = s + b;
                    }
                }
            }
        }
        out
    }
}

/// Two folded 3x3 convolutions with ReLU, keeping the size (zero padding, as burn's).
#[derive(Clone, Debug)]
struct FoldedBlock {
    first: PreparedConv,
    second: PreparedConv,
}

impl FoldedBlock {
    fn new(block: &Block) -> Self {
        FoldedBlock {
            first: folded_conv(&block.first, &block.first_norm),
            second: folded_conv(&block.second, &block.second_norm),
        }
    }

    fn forward(&self, x: &[f32], h: usize, w: usize) -> Vec<f32> {
        let x = same_conv_relu(&self.first, x, h, w);
        same_conv_relu(&self.second, &x, h, w)
    }
}

/// `padded` becomes the `h x w x c` image `x` with a border of one zero pixel (burn's padding
/// of the 3x3 convolutions): `(h + 2) x (w + 2) x c`.
pub(super) fn pad_by_one(x: &[f32], h: usize, w: usize, c: usize, padded: &mut Vec<f32>) {
    let wp = w + 2;
    padded.clear();
    padded.resize((h + 2) * wp * c, 0.0);
    for (y, row) in x.chunks_exact(w * c).take(h).enumerate() {
        padded[((y + 1) * wp + 1) * c..][..w * c].copy_from_slice(row);
    }
}

/// `h x w x ci` to `h x w x co`: the input zero-padded by one pixel, convolved, ReLU.
fn same_conv_relu(conv: &PreparedConv, x: &[f32], h: usize, w: usize) -> Vec<f32> {
    let mut padded = Vec::new();
    pad_by_one(x, h, w, conv.conv.ci, &mut padded);
    let mut out = vec![0f32; h * w * conv.conv.co];
    let relu = |row: &mut [f32]| {
        for v in row {
            *v = v.max(0.0);
        }
    };
    conv.forward_image(&padded, h + 2, w + 2, &mut out, &mut Vec::new(), 1, &relu);
    out
}

/// 2x2 max pooling of stride 2 (`h` and `w` even).
pub(super) fn max_pool(x: &[f32], h: usize, w: usize, c: usize) -> Vec<f32> {
    let (ho, wo) = (h / 2, w / 2);
    let mut out = vec![f32::NEG_INFINITY; ho * wo * c];
    for y in 0..2 * ho {
        for xx in 0..2 * wo {
            let src = &x[(y * w + xx) * c..][..c];
            let dst = &mut out[((y / 2) * wo + xx / 2) * c..][..c];
            for (d, s) in dst.iter_mut().zip(src) {
                *d = d.max(*s);
            }
        }
    }
    out
}

/// The U-Net ready for CPU inference.
#[derive(Clone, Debug)]
pub struct FoldedUNet {
    encoder: Vec<FoldedBlock>,
    /// From the deepest level up, like the decoder.
    up: Vec<UpConv>,
    decoder: Vec<FoldedBlock>,
    classes: FullyConnected,
    task: Option<FullyConnected>,
}

impl FoldedUNet {
    /// From the burn network (its running statistics: the evaluation form).
    pub fn from_burn(net: &UNet) -> Self {
        FoldedUNet {
            encoder: net.encoder.iter().map(FoldedBlock::new).collect(),
            up: net.up.iter().map(UpConv::new).collect(),
            decoder: net.decoder.iter().map(FoldedBlock::new).collect(),
            classes: pixelwise(&net.classes),
            task: net.task.as_ref().map(pixelwise),
        }
    }

    pub fn channels(&self) -> usize {
        self.classes.outputs
    }

    pub fn task_channels(&self) -> usize {
        self.task.as_ref().map_or(0, |t| t.outputs)
    }

    /// Like [`UNet::forward`], on `n` slice stacks of `h x w` in the kernels' layout, pixels
    /// first (`[n, h, w, 3]`, [`crate::model::slices::pixel_stack`]): the class and task
    /// logits, `[n, h, w, channels]` and `[n, h, w, task_channels]`.
    pub fn forward(&self, stacks: &[f32], n: usize, h: usize, w: usize) -> (Vec<f32>, Vec<f32>) {
        let plane = h * w;
        assert_eq!(stacks.len(), n * INPUT_CHANNELS * plane, "slice stacks");
        let (c, tc) = (self.channels(), self.task_channels());
        let mut classes = vec![0f32; n * c * plane];
        let mut tasks = vec![0f32; n * tc * plane];
        // One (possibly empty) slice of task logits per stack: without a task head (union
        // mode) there are none, and zipping with no chunks at all would skip every stack.
        let task_chunks: Vec<&mut [f32]> = if tc == 0 {
            (0..n).map(|_| <&mut [f32]>::default()).collect()
        } else {
            tasks.chunks_mut(tc * plane).collect()
        };
        stacks
            .par_chunks(INPUT_CHANNELS * plane)
            .zip(classes.par_chunks_mut(c * plane))
            .zip(task_chunks)
            .for_each(|((stack, classes), tasks)| {
                let features = self.features(stack, h, w);
                classes.copy_from_slice(&self.classes.forward(&features, plane, 1));
                if let Some(task) = &self.task {
                    tasks.copy_from_slice(&task.forward(&features, plane, 1));
                }
            });
        (classes, tasks)
    }

    /// The last decoder block's features of one `h x w x 3` image.
    fn features(&self, image: &[f32], h: usize, w: usize) -> Vec<f32> {
        let mut skips = Vec::with_capacity(self.encoder.len());
        let (mut x, mut h, mut w) = (image.to_vec(), h, w);
        for (level, block) in self.encoder.iter().enumerate() {
            if level > 0 {
                x = max_pool(&x, h, w, block.first.conv.ci);
                (h, w) = (h / 2, w / 2);
            }
            x = block.forward(&x, h, w);
            skips.push(x.clone());
        }
        skips.pop();
        for (up, block) in self.up.iter().zip(&self.decoder) {
            let skip = skips.pop().expect("one skip per decoder level");
            let upsampled = up.forward(&x, h, w);
            (h, w) = (2 * h, 2 * w);
            // The up-sampled features first, then the skip (burn's `cat` order).
            let sc = skip.len() / (h * w);
            x = Vec::with_capacity(h * w * (up.co + sc));
            for (u, s) in upsampled.chunks(up.co).zip(skip.chunks(sc)) {
                x.extend_from_slice(u);
                x.extend_from_slice(s);
            }
            x = block.forward(&x, h, w);
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{OutputMode, UNetConfig};
    use burn::module::{Param, RunningState};
    use burn::prelude::*;
    use burn::tensor::Distribution;

    /// Batch norm with statistics and affine parameters far from the identity, so that a
    /// wrong fold shows.
    fn perturbed(norm: &mut BatchNorm, device: &Device) {
        let n = norm.gamma.dims()[0];
        let random = |low, high| Tensor::<1>::random([n], Distribution::Uniform(low, high), device);
        norm.gamma = Param::from_tensor(random(0.5, 1.5));
        norm.beta = Param::from_tensor(random(-0.5, 0.5));
        norm.running_mean = RunningState::new(random(-0.3, 0.3));
        norm.running_var = RunningState::new(random(0.5, 2.0));
    }

    #[test]
    fn the_folded_unet_computes_what_the_burn_unet_computes() {
        let device = Device::flex();
        // Widths 8 and 16 at three levels: both the direct kernel's channel counts and, on
        // CPUs without it, the matrix-product path.
        // Both output modes: union mode has no task head.
        for (levels, width, mode) in [
            (3, 8, OutputMode::PerTask),
            (2, 16, OutputMode::PerTask),
            (3, 8, OutputMode::Union),
        ] {
            let config = UNetConfig::new()
                .with_levels(levels)
                .with_width(width)
                .with_output_mode(mode);
            let mut net = UNet::new(&config, 5, 2, &device);
            for block in net.encoder.iter_mut().chain(net.decoder.iter_mut()) {
                perturbed(&mut block.first_norm, &device);
                perturbed(&mut block.second_norm, &device);
            }
            let (n, h, w) = (3, 12, 8);
            let x = Tensor::<4>::random(
                [n, INPUT_CHANNELS, h, w],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            // The kernels' layout, pixels first; burn's is channels first.
            let input = values(x.clone().permute([0, 2, 3, 1]));
            let (logits, task_logits) = net.forward(x);
            let last = |t: Tensor<4>| values(t.permute([0, 2, 3, 1]));
            let (expected, expected_task) =
                (last(logits), task_logits.map(last).unwrap_or_default());
            let (got, got_task) = FoldedUNet::from_burn(&net).forward(&input, n, h, w);
            for (name, got, expected) in [
                ("classes", got, expected),
                ("tasks", got_task, expected_task),
            ] {
                assert_eq!(got.len(), expected.len(), "{name}");
                let worst = got
                    .iter()
                    .zip(&expected)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(worst < 1e-4, "{name}: max |difference| {worst}");
            }
        }
    }
}
