//! 3x3 convolution without padding on channels-last images (`h x w x c`, row-major): forward,
//! weight and input gradients. The sums run on the direct SIMD kernel of `direct.rs` where the
//! CPU and the channel count allow it; elsewhere they are three matrix products, with no
//! im2col copy:
//!
//! Output pixel p = y * w + x (over the input's full width) reads input pixels
//! p + dy * w + dx. For a fixed dy, the three dx taps of all channels of pixel p are the
//! 3 * ci consecutive values starting at input pixel p + dy * w: the input seen with a row
//! stride of ci is a (rows x 3ci) matrix whose rows overlap. So
//! `out = sum over dy of X_dy (m x 3ci) * W_dy (3ci x co)`, with m = (h - 2) * w - 2 rows
//! (the last two columns of each row are not valid outputs and are dropped when the result
//! is compacted to (w - 2) columns).

use rayon::prelude::*;

use super::direct::{self, Isa};
use super::matmul::{View, matmul};
use super::winograd::PreparedConv;

/// Weights as `[dy][dx][ci][co]`: three row-major (3ci x co) matrices, one per dy.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv3x3 {
    pub ci: usize,
    pub co: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl Conv3x3 {
    /// From burn's layout `[co][ci][ky][kx]`.
    pub fn from_oihw(ci: usize, co: usize, oihw: &[f32], bias: Vec<f32>) -> Self {
        let mut weight = vec![0f32; 9 * ci * co];
        for o in 0..co {
            for i in 0..ci {
                for dy in 0..3 {
                    for dx in 0..3 {
                        weight[((dy * 3 + dx) * ci + i) * co + o] =
                            oihw[((o * ci + i) * 3 + dy) * 3 + dx];
                    }
                }
            }
        }
        Conv3x3 {
            ci,
            co,
            weight,
            bias,
        }
    }

    /// Weights back in burn's layout `[co][ci][ky][kx]`.
    pub fn to_oihw(&self, weight: &[f32]) -> Vec<f32> {
        let (ci, co) = (self.ci, self.co);
        let mut out = vec![0f32; 9 * ci * co];
        for o in 0..co {
            for i in 0..ci {
                for dy in 0..3 {
                    for dx in 0..3 {
                        out[((o * ci + i) * 3 + dy) * 3 + dx] =
                            weight[((dy * 3 + dx) * ci + i) * co + o];
                    }
                }
            }
        }
        out
    }

    /// The kernel that carries output gradients back to the input: taps mirrored in both
    /// axes, input and output channels swapped, no bias.
    pub fn flipped(&self) -> Conv3x3 {
        let (ci, co) = (self.ci, self.co);
        let mut weight = vec![0f32; 9 * ci * co];
        for dy in 0..3 {
            for dx in 0..3 {
                for i in 0..ci {
                    for o in 0..co {
                        weight[(((2 - dy) * 3 + (2 - dx)) * co + o) * ci + i] =
                            self.weight[((dy * 3 + dx) * ci + i) * co + o];
                    }
                }
            }
        }
        Conv3x3 {
            ci: co,
            co: ci,
            weight,
            bias: vec![0.0; ci],
        }
    }

    fn tap_rows(&self) -> usize {
        3 * self.ci
    }
}

/// Rows of the full-width product for an `h x w` input.
fn full_rows(h: usize, w: usize) -> usize {
    (h - 2) * w - 2
}

/// Convolves one image: `x` is `h x w x ci`, `out` receives `(h-2) x (w-2) x co`. Each
/// output row's values (bias added) then go through `epilogue`, while still in cache.
#[allow(clippy::too_many_arguments)]
pub fn forward_image(
    conv: &Conv3x3,
    x: &[f32],
    h: usize,
    w: usize,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
    threads: usize,
    epilogue: &(impl Fn(&mut [f32]) + Sync),
) {
    assert!(
        h >= 3 && w >= 3,
        "a 3x3 valid convolution needs at least 3x3 pixels"
    );
    let co = conv.co;
    let (ho, wo) = (h - 2, w - 2);
    let out = &mut out[..ho * wo * co];
    let isa = Isa::best_for(co);
    if isa.is_none() {
        full_width_products(conv, x, h, w, scratch, threads);
    }
    let scratch = &scratch[..];
    let row = |(y, dst): (usize, &mut [f32])| {
        match isa {
            Some(isa) => direct::forward_row(conv, isa, x, w, y, dst),
            None => {
                for (xo, pixel) in dst.chunks_mut(co).enumerate() {
                    let src = &scratch[(y * w + xo) * co..][..co];
                    for ((d, s), b) in pixel.iter_mut().zip(src).zip(&conv.bias) {
                        *d = s + b;
                    }
                }
            }
        }
        epilogue(dst);
    };
    if threads > 1 {
        out.par_chunks_mut(wo * co).enumerate().for_each(row);
    } else {
        out.chunks_mut(wo * co).enumerate().for_each(row);
    }
}

/// The convolution as three matrix products into `scratch` (`m x co` over the input's full
/// width, no bias), for CPUs and channel counts the direct kernel does not cover.
fn full_width_products(
    conv: &Conv3x3,
    x: &[f32],
    h: usize,
    w: usize,
    scratch: &mut Vec<f32>,
    threads: usize,
) {
    let (ci, co) = (conv.ci, conv.co);
    let m = full_rows(h, w);
    // The first product overwrites the scratch: no need to clear it.
    if scratch.len() < m * co {
        scratch.resize(m * co, 0.0);
    }
    let k = conv.tap_rows();
    for dy in 0..3 {
        matmul(
            m,
            co,
            k,
            scratch,
            View::rows(0, co),
            dy > 0,
            x,
            View::rows(dy * w * ci, ci),
            &conv.weight,
            View::rows(dy * k * co, co),
            threads,
        );
    }
}

/// Buffers that a layer's backward pass reuses from image to image, so that each image does
/// not allocate and clear its own. No value is read before it is written for that image.
#[derive(Default)]
pub struct BackwardScratch {
    /// `dz` over the full width ([`backward_image`]).
    full: Vec<f32>,
    /// `dz` padded by two ([`input_gradient`]).
    padded: Vec<f32>,
    /// The forward pass's own scratch.
    forward: Vec<f32>,
}

/// Weight and bias gradients of one image: given `dz` (`(h-2) x (w-2) x co`, the loss
/// gradient at the convolution's output), adds them to `dw` and `db`.
#[allow(clippy::too_many_arguments)]
pub fn backward_image(
    conv: &Conv3x3,
    x: &[f32],
    h: usize,
    w: usize,
    dz: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
    scratch: &mut BackwardScratch,
) {
    let (ci, co) = (conv.ci, conv.co);
    let (ho, wo) = (h - 2, w - 2);
    let m = full_rows(h, w);
    let k = conv.tap_rows();
    // dz over the full width, zero in the columns that are not outputs (the last row stops
    // at its last output).
    let full = &mut scratch.full;
    full.resize(m * co, 0.0);
    for (y, row) in full.chunks_mut(w * co).enumerate().take(ho) {
        let src = &dz[y * wo * co..][..wo * co];
        row[..wo * co].copy_from_slice(src);
        row[wo * co..].fill(0.0);
        for pixel in src.chunks_exact(co) {
            for (b, g) in db.iter_mut().zip(pixel) {
                *b += g;
            }
        }
    }
    let full = &scratch.full;
    if let Some(isa) = Isa::best_for(co) {
        direct::add_weight_gradient(ci, co, isa, x, w, full, dw);
        return;
    }
    for dy in 0..3 {
        // dW_dy (3ci x co) += X_dy^T (3ci x m) * dz (m x co)
        matmul(
            k,
            co,
            m,
            dw,
            View::rows(dy * k * co, co),
            true,
            x,
            View::transposed(dy * w * ci, ci),
            full,
            View::rows(0, co),
            1,
        );
    }
}

/// The input gradient of one image: `dx` (`h x w x ci`) from `dz` (`(h-2) x (w-2) x co`).
/// It is the valid convolution of `dz` padded by two with the flipped kernel
/// ([`Conv3x3::flipped`]), so it runs on the forward pass's kernels.
pub fn input_gradient(
    flipped: &PreparedConv,
    dz: &[f32],
    h: usize,
    w: usize,
    dx: &mut [f32],
    scratch: &mut BackwardScratch,
) {
    let co = flipped.conv.ci;
    let (ho, wo) = (h - 2, w - 2);
    let (hp, wp) = (h + 2, w + 2);
    let padded = &mut scratch.padded;
    padded.resize(hp * wp * co, 0.0);
    let (top, rest) = padded.split_at_mut(2 * wp * co);
    top.fill(0.0);
    let (middle, bottom) = rest.split_at_mut(ho * wp * co);
    bottom.fill(0.0);
    for (y, row) in middle.chunks_exact_mut(wp * co).enumerate() {
        row[..2 * co].fill(0.0);
        row[2 * co..][..wo * co].copy_from_slice(&dz[y * wo * co..][..wo * co]);
        row[(wo + 2) * co..].fill(0.0);
    }
    let forward = &mut scratch.forward;
    flipped.forward_image(&scratch.padded, hp, wp, dx, forward, 1, &|_| {});
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Direct convolution, for reference.
    pub(crate) fn reference(conv: &Conv3x3, x: &[f32], h: usize, w: usize) -> Vec<f32> {
        let (ci, co) = (conv.ci, conv.co);
        let mut out = vec![0f32; (h - 2) * (w - 2) * co];
        for y in 0..h - 2 {
            for xo in 0..w - 2 {
                for o in 0..co {
                    let mut acc = conv.bias[o];
                    for dy in 0..3 {
                        for dx in 0..3 {
                            for i in 0..ci {
                                acc += x[((y + dy) * w + xo + dx) * ci + i]
                                    * conv.weight[((dy * 3 + dx) * ci + i) * co + o];
                            }
                        }
                    }
                    out[((y * (w - 2)) + xo) * co + o] = acc;
                }
            }
        }
        out
    }

    /// An `h x w x ci` test image, values in [-0.4, 0.6).
    pub(crate) fn image(h: usize, w: usize, ci: usize) -> Vec<f32> {
        (0..h * w * ci)
            .map(|i| ((i * 31) % 17) as f32 / 17.0 - 0.4)
            .collect()
    }

    pub(crate) fn conv(ci: usize, co: usize) -> Conv3x3 {
        Conv3x3 {
            ci,
            co,
            weight: (0..9 * ci * co)
                .map(|i| ((i * 7) % 13) as f32 / 13.0 - 0.5)
                .collect(),
            bias: (0..co).map(|i| i as f32 * 0.1).collect(),
        }
    }

    #[test]
    fn forward_matches_direct_convolution() {
        for (ci, co, h, w) in [(1, 4, 5, 6), (3, 2, 7, 4), (4, 5, 3, 3)] {
            let c = conv(ci, co);
            let x: Vec<f32> = (0..h * w * ci)
                .map(|i| ((i * 31) % 17) as f32 / 17.0)
                .collect();
            let mut out = vec![0f32; (h - 2) * (w - 2) * co];
            forward_image(&c, &x, h, w, &mut out, &mut Vec::new(), 1, &|_| {});
            let expected = reference(&c, &x, h, w);
            for (a, b) in out.iter().zip(&expected) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn layout_round_trips_through_burns_order() {
        let c = conv(3, 2);
        let oihw = c.to_oihw(&c.weight);
        assert_eq!(Conv3x3::from_oihw(3, 2, &oihw, c.bias.clone()), c);
    }

    /// Scratch buffers left full of NaN, as if by another image: any value the backward
    /// passes read without writing it first shows in their results.
    fn used_scratch() -> BackwardScratch {
        BackwardScratch {
            full: vec![f32::NAN; 4096],
            padded: vec![f32::NAN; 4096],
            forward: vec![f32::NAN; 4096],
        }
    }

    /// The input gradient, on whichever kernel the flipped convolution runs, against the
    /// adjoint of the convolution written out term by term; one scratch for all sizes.
    #[test]
    fn input_gradient_is_the_adjoint_of_the_convolution() {
        let mut scratch = used_scratch();
        for (ci, co, h, w) in [(2, 3, 6, 5), (8, 16, 6, 7), (32, 32, 5, 9)] {
            let c = conv(ci, co);
            let dz: Vec<f32> = (0..(h - 2) * (w - 2) * co)
                .map(|i| ((i * 11) % 5) as f32 * 0.1 - 0.2)
                .collect();
            let mut expected = vec![0f64; h * w * ci];
            for y in 0..h - 2 {
                for x in 0..w - 2 {
                    for dy in 0..3 {
                        for dx in 0..3 {
                            for i in 0..ci {
                                for o in 0..co {
                                    expected[((y + dy) * w + x + dx) * ci + i] +=
                                        dz[(y * (w - 2) + x) * co + o] as f64
                                            * c.weight[((dy * 3 + dx) * ci + i) * co + o] as f64;
                                }
                            }
                        }
                    }
                }
            }
            let mut dx = vec![f32::NAN; h * w * ci];
            input_gradient(
                &PreparedConv::new(c.flipped()),
                &dz,
                h,
                w,
                &mut dx,
                &mut scratch,
            );
            for (i, (a, b)) in dx.iter().zip(&expected).enumerate() {
                assert!(
                    (*a as f64 - b).abs() < 1e-4,
                    "ci {ci} co {co}: dx[{i}] {a} vs {b}"
                );
            }
        }
    }

    /// Gradients against finite differences of sum(out * g).
    #[test]
    fn backward_matches_finite_differences() {
        let (ci, co, h, w) = (2, 3, 6, 5);
        let c = conv(ci, co);
        let x: Vec<f32> = (0..h * w * ci)
            .map(|i| ((i * 31) % 17) as f32 / 17.0 - 0.3)
            .collect();
        let g: Vec<f32> = (0..(h - 2) * (w - 2) * co)
            .map(|i| ((i * 11) % 5) as f32 - 2.0)
            .collect();
        let objective = |c: &Conv3x3, x: &[f32]| -> f64 {
            reference(c, x, h, w)
                .iter()
                .zip(&g)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum()
        };
        let mut dw = vec![0f32; c.weight.len()];
        let mut db = vec![0f32; co];
        let mut dx = vec![0f32; x.len()];
        let mut scratch = used_scratch();
        backward_image(&c, &x, h, w, &g, &mut dw, &mut db, &mut scratch);
        input_gradient(
            &PreparedConv::new(c.flipped()),
            &g,
            h,
            w,
            &mut dx,
            &mut scratch,
        );
        let eps = 1e-2;
        for i in [0, 5, x.len() - 1, x.len() / 2] {
            let (mut p, mut q) = (x.clone(), x.clone());
            p[i] += eps;
            q[i] -= eps;
            let numeric = (objective(&c, &p) - objective(&c, &q)) / (2.0 * eps as f64);
            assert!(
                (numeric - dx[i] as f64).abs() < 1e-2,
                "dx[{i}] {} vs {numeric}",
                dx[i]
            );
        }
        for i in [0, 7, c.weight.len() - 1] {
            let (mut p, mut q) = (c.clone(), c.clone());
            p.weight[i] += eps;
            q.weight[i] -= eps;
            let numeric = (objective(&p, &x) - objective(&q, &x)) / (2.0 * eps as f64);
            assert!(
                (numeric - dw[i] as f64).abs() < 1e-2,
                "dw[{i}] {} vs {numeric}",
                dw[i]
            );
        }
        let total: f32 = g.chunks(co).map(|px| px[1]).sum();
        assert!((db[1] - total).abs() < 1e-4);
    }
}
