//! Winograd's F(2x2, 3x3) for the 3x3 convolutions (Lavin and Gray, "Fast
//! algorithms for convolutional neural networks", CVPR 2016): each 2x2 block of outputs comes
//! from a 4x4 tile of inputs with 16 multiplications per pair of channels instead of 36,
//! 2.25x fewer. The tiles go into the transform's domain (`B^T d B`), the weights once, when
//! the network is loaded (`G g G^T`); there the convolution is sixteen matrix products
//! (tiles x ci by ci x co) on the direct kernel, and `A^T m A` brings each tile's products back
//! as a 2x2 block of outputs. The results differ from the direct sums by rounding only.
//! Inference and training's forward and input-gradient passes run on it (training transforms
//! its weights once per step); the weight gradient stays on the direct kernel.
//!
//! Written by hand because no maintained crate offers it for channels-last images; tested
//! against a direct scalar convolution.

use rayon::prelude::*;

use super::conv::{Conv3x3, forward_image};
use super::direct::{self, Isa};

/// Channels per step of the transforms: 16 (one AVX-512 vector) while as many remain, then 8
/// (one AVX2 vector), then 4 (the rest of the U-Net's 20 channels); channel counts are
/// multiples of 4.
const LANES: usize = 8;
const WIDE_LANES: usize = 16;
const NARROW_LANES: usize = 4;
type Lanes<const L: usize> = [f32; L];

/// Tiles transformed and multiplied together: few enough that their transforms (100 KB each
/// way for 32 channels) stay in the L2 cache, a multiple of the kernel's blocks of rows (6
/// with AVX2, 12 with AVX-512). 48 ran a slice 3% faster than 24 on a Zen 1 EPYC.
const TILES: usize = 48;

/// With fewer input channels (the first layer) the transforms cost more than they save.
const MIN_INPUTS: usize = 8;

/// A 3x3 convolution with its weights prepared for many images: on Winograd's transform
/// where this CPU's kernel covers its channels, else on the direct kernel or the matrix
/// products of `conv.rs`.
#[derive(Clone, Debug)]
pub struct PreparedConv {
    pub conv: Conv3x3,
    /// The kernel's instruction set and the weights in the transform's domain,
    /// `[16][ci][co]`.
    transformed: Option<(Isa, Vec<f32>)>,
}

impl PreparedConv {
    pub fn new(conv: Conv3x3) -> Self {
        // The transforms run whole steps of channels, in and out.
        let transformed = Isa::best_for(conv.co)
            .filter(|_| conv.ci >= MIN_INPUTS && conv.ci.is_multiple_of(NARROW_LANES))
            .filter(|_| conv.co.is_multiple_of(NARROW_LANES))
            .map(|isa| (isa, transformed_weights(&conv)));
        PreparedConv { conv, transformed }
    }

    /// Whether the convolution runs on Winograd's transform (on images of at least 4x4).
    pub fn is_transformed(&self) -> bool {
        self.transformed.is_some()
    }

    /// As [`forward_image`]: `x` is `h x w x ci`, `out` receives `(h-2) x (w-2) x co`, and
    /// each output row goes through `epilogue` while still in cache.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_image(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
        threads: usize,
        epilogue: &(impl Fn(&mut [f32]) + Sync),
    ) {
        let Some((isa, u)) = &self.transformed else {
            return forward_image(&self.conv, x, h, w, out, scratch, threads, epilogue);
        };
        if h < 4 || w < 4 {
            // Not one whole tile.
            return forward_image(&self.conv, x, h, w, out, scratch, threads, epilogue);
        }
        let (ci, co) = (self.conv.ci, self.conv.co);
        let (ho, wo) = (h - 2, w - 2);
        let pixels = h.checked_mul(w).and_then(|p| p.checked_mul(ci));
        assert!(
            pixels.is_some_and(|p| p <= x.len()),
            "Winograd convolution: input out of bounds"
        );
        let out = &mut out[..ho * wo * co];
        // Output rows two by two, the pair of a row of tiles; with an odd height the last
        // row alone, on the direct kernel.
        let pair = |(p, rows): (usize, &mut [f32]), buffers: &mut Vec<f32>| {
            if rows.len() == 2 * wo * co {
                tile_row(*isa, u, &self.conv, x, w, 2 * p, rows, buffers);
            } else {
                direct::forward_row(&self.conv, *isa, x, w, 2 * p, rows);
            }
            rows.chunks_mut(wo * co).for_each(epilogue);
        };
        if threads > 1 {
            out.par_chunks_mut(2 * wo * co)
                .enumerate()
                .for_each_init(Vec::new, |buffers, item| pair(item, buffers));
        } else {
            for item in out.chunks_mut(2 * wo * co).enumerate() {
                pair(item, scratch);
            }
        }
    }
}

/// The weights in the transform's domain, `[16][ci][co]`: `G g G^T` for the 3x3 weights `g`
/// of each pair of channels.
fn transformed_weights(conv: &Conv3x3) -> Vec<f32> {
    let (ci, co) = (conv.ci, conv.co);
    // G g for three taps: four values.
    let g = |t: [f32; 3]| {
        [
            t[0],
            (t[0] + t[1] + t[2]) / 2.0,
            (t[0] - t[1] + t[2]) / 2.0,
            t[2],
        ]
    };
    let mut u = vec![0f32; 16 * ci * co];
    for i in 0..ci {
        for o in 0..co {
            let tap = |dy: usize, dx: usize| conv.weight[((dy * 3 + dx) * ci + i) * co + o];
            // Along the rows of taps, then along the columns.
            let rows = [0, 1, 2].map(|dy| g([0, 1, 2].map(|dx| tap(dy, dx))));
            for b in 0..4 {
                let column = g([0, 1, 2].map(|dy| rows[dy][b]));
                for (a, value) in column.into_iter().enumerate() {
                    u[((a * 4 + b) * ci + i) * co + o] = value;
                }
            }
        }
    }
    u
}

/// Output rows `y0` and `y0 + 1` into `rows` (`2 x (w - 2) x co`, bias added), from input
/// rows `y0..y0 + 4`, in batches of [`TILES`] tiles.
#[allow(clippy::too_many_arguments)]
fn tile_row(
    isa: Isa,
    u: &[f32],
    conv: &Conv3x3,
    x: &[f32],
    w: usize,
    y0: usize,
    rows: &mut [f32],
    buffers: &mut Vec<f32>,
) {
    let (ci, co) = (conv.ci, conv.co);
    let tiles = (w - 2).div_ceil(2);
    // Narrow images (training's patches) need less than a whole batch: less to clear.
    let most = TILES.min(tiles);
    let (v_len, m_len) = (16 * spread(most * ci), 16 * spread(most * co));
    if buffers.len() < v_len + m_len {
        buffers.resize(v_len + m_len, 0.0);
    }
    let (v, m) = buffers.split_at_mut(v_len);
    assert!(
        isa.supports(co),
        "Winograd convolution: {isa:?} cannot run {co} channels here"
    );
    for t0 in (0..tiles).step_by(TILES) {
        let n = TILES.min(tiles - t0);
        let batch = Batch {
            w,
            ci,
            co,
            y0,
            t0,
            n,
        };
        let (v_stride, m_stride) = (spread(n * ci), spread(n * co));
        // SAFETY: this CPU has the instruction set (checked before the loop).
        unsafe { compiled::inputs(isa, &batch, x, v) };
        for k in 0..16 {
            direct::matrix_product(
                isa,
                &v[k * v_stride..][..n * ci],
                &u[k * ci * co..][..ci * co],
                n,
                ci,
                co,
                &mut m[k * m_stride..][..n * co],
            );
        }
        // SAFETY: as above.
        unsafe { compiled::outputs(isa, &batch, m, &conv.bias, rows) };
    }
}

/// The distance between the 16 matrices of a batch's transforms, in floats: their length
/// rounded up to an odd number of 64-byte cache lines. The transforms write (and read) the 16
/// at once; a distance of a multiple of 2 KB (48 tiles x 32 channels is 6 KB) puts them all
/// in a few sets of the L1 cache, which then evicts them before they are used.
fn spread(len: usize) -> usize {
    const LINE: usize = 16;
    let lines = len.div_ceil(LINE);
    (lines | 1) * LINE
}

/// A batch of tiles: input rows `y0..y0 + 4` of a `w`-pixel-wide image, tiles `t0..t0 + n`
/// of the row.
struct Batch {
    w: usize,
    ci: usize,
    co: usize,
    y0: usize,
    t0: usize,
    n: usize,
}

impl Batch {
    /// The first output column of tile `t` of the batch. With an odd width the last tile
    /// overlaps the one before it by a column (computed twice, the same values).
    fn column(&self, t: usize) -> usize {
        (2 * (self.t0 + t)).min(self.w - 4)
    }
}

/// `B^T d` for one column (or row) of four values of a tile.
#[inline(always)]
fn input_1d<const L: usize>(d: [Lanes<L>; 4]) -> [Lanes<L>; 4] {
    [
        lanewise(d[0], d[2], |a, b| a - b),
        lanewise(d[1], d[2], |a, b| a + b),
        lanewise(d[2], d[1], |a, b| a - b),
        lanewise(d[1], d[3], |a, b| a - b),
    ]
}

/// `A^T m` for one column (or row) of four products: two values.
#[inline(always)]
fn output_1d<const L: usize>(m: [Lanes<L>; 4]) -> [Lanes<L>; 2] {
    let middle = lanewise(m[1], m[2], |a, b| a + b);
    let difference = lanewise(m[1], m[2], |a, b| a - b);
    [
        lanewise(m[0], middle, |a, b| a + b),
        lanewise(difference, m[3], |a, b| a - b),
    ]
}

#[inline(always)]
fn lanewise<const L: usize>(mut a: Lanes<L>, b: Lanes<L>, f: impl Fn(f32, f32) -> f32) -> Lanes<L> {
    for (a, b) in a.iter_mut().zip(b) {
        *a = f(*a, b);
    }
    a
}

/// The `L` values at `at`.
///
/// SAFETY: `at..at + L` is inside the caller's checked slice.
#[inline(always)]
unsafe fn load<const L: usize>(at: *const f32) -> Lanes<L> {
    unsafe { at.cast::<Lanes<L>>().read_unaligned() }
}

/// SAFETY: as [`load`].
#[inline(always)]
unsafe fn store<const L: usize>(at: *mut f32, values: Lanes<L>) {
    unsafe { at.cast::<Lanes<L>>().write_unaligned(values) }
}

/// The batch's tiles in the transform's domain: `v[k][t][c]` for the 16 positions k of the
/// tile, its tiles t and input channels c, each k's matrix [`spread`] from the next.
///
/// The bounds are checked once here and the loops run on raw pointers: with a check per
/// access the compiler kept the 16 addresses of a tile on the stack, and the transform took a
/// fifth of a slice's time for a few additions per value.
#[inline(always)]
fn inputs<const W: usize>(batch: &Batch, x: &[f32], v: &mut [f32]) {
    let Batch { w, ci, y0, n, .. } = *batch;
    let stride = spread(n * ci);
    assert!(
        w >= 4
            && (y0 + 4) * w * ci <= x.len()
            && 16 * stride <= v.len()
            && ci.is_multiple_of(NARROW_LANES),
        "Winograd input transform: out of bounds"
    );
    let row = w * ci;
    for t in 0..n {
        // SAFETY (all accesses below): tile t's columns `column..column + 4` are inside the
        // row (`Batch::column`, with w >= 4), its rows inside `x` and its 16 outputs inside
        // `v` (checked above), and each step's lanes end at ci at the latest.
        let x_t = unsafe { x.as_ptr().add((y0 * w + batch.column(t)) * ci) };
        let v_t = unsafe { v.as_mut_ptr().add(t * ci) };
        let mut c = 0;
        while c + W <= ci {
            unsafe { input_lanes::<W>(x_t, row, ci, v_t, stride, c) };
            c += W;
        }
        while c + LANES <= ci {
            unsafe { input_lanes::<LANES>(x_t, row, ci, v_t, stride, c) };
            c += LANES;
        }
        while c < ci {
            unsafe { input_lanes::<NARROW_LANES>(x_t, row, ci, v_t, stride, c) };
            c += NARROW_LANES;
        }
    }
}

/// Channels `c..c + L` of one tile (at `x_t`, rows `row` apart) into the transform's domain
/// (at `v_t`, the 16 positions `stride` apart).
///
/// SAFETY: as in [`inputs`].
#[inline(always)]
unsafe fn input_lanes<const L: usize>(
    x_t: *const f32,
    row: usize,
    ci: usize,
    v_t: *mut f32,
    stride: usize,
    c: usize,
) {
    // Along the columns of the tile, then along its rows (loops rather than `array::map`,
    // which the compiler left as calls).
    let mut columns = [[[0f32; L]; 4]; 4];
    for (j, column_j) in columns.iter_mut().enumerate() {
        let mut d = [[0f32; L]; 4];
        for (i, d) in d.iter_mut().enumerate() {
            *d = unsafe { load(x_t.add(i * row + j * ci + c)) };
        }
        *column_j = input_1d(d);
    }
    // `a` is the second index of `columns`: no iterator to walk instead.
    #[allow(clippy::needless_range_loop)]
    for a in 0..4 {
        let row = input_1d([columns[0][a], columns[1][a], columns[2][a], columns[3][a]]);
        for (b, values) in row.into_iter().enumerate() {
            unsafe { store(v_t.add((a * 4 + b) * stride + c), values) };
        }
    }
}

/// The products `m[k][t][o]` (laid out as [`inputs`] lays out `v`) back as each tile's 2x2
/// block of outputs, bias added, into `rows` (two output rows). Raw pointers as in [`inputs`].
#[inline(always)]
fn outputs<const W: usize>(batch: &Batch, m: &[f32], bias: &[f32], rows: &mut [f32]) {
    let Batch { w, co, n, .. } = *batch;
    let wo = w - 2;
    let stride = spread(n * co);
    assert!(
        w >= 4
            && 2 * wo * co <= rows.len()
            && 16 * stride <= m.len()
            && co <= bias.len()
            && co.is_multiple_of(NARROW_LANES),
        "Winograd output transform: out of bounds"
    );
    let bias = bias.as_ptr();
    for t in 0..n {
        // SAFETY (all accesses below): the tile's 2x2 outputs are inside the two rows
        // (`Batch::column`, with w >= 4), its 16 products inside `m` (checked above), and
        // each step's lanes end at co at the latest.
        let out_t = unsafe { rows.as_mut_ptr().add(batch.column(t) * co) };
        let m_t = unsafe { m.as_ptr().add(t * co) };
        let mut o = 0;
        while o + W <= co {
            unsafe { output_lanes::<W>(m_t, stride, bias, out_t, wo, co, o) };
            o += W;
        }
        while o + LANES <= co {
            unsafe { output_lanes::<LANES>(m_t, stride, bias, out_t, wo, co, o) };
            o += LANES;
        }
        while o < co {
            unsafe { output_lanes::<NARROW_LANES>(m_t, stride, bias, out_t, wo, co, o) };
            o += NARROW_LANES;
        }
    }
}

/// Channels `o..o + L` of one tile's products (at `m_t`, the 16 positions `stride` apart)
/// back as its 2x2 block of outputs (at `out_t`, rows `wo` pixels of `co` apart).
///
/// SAFETY: as in [`outputs`].
#[inline(always)]
unsafe fn output_lanes<const L: usize>(
    m_t: *const f32,
    stride: usize,
    bias: *const f32,
    out_t: *mut f32,
    wo: usize,
    co: usize,
    o: usize,
) {
    let mut columns = [[[0f32; L]; 2]; 4];
    for (b, column_b) in columns.iter_mut().enumerate() {
        let mut products = [[0f32; L]; 4];
        for (a, p) in products.iter_mut().enumerate() {
            *p = unsafe { load(m_t.add((a * 4 + b) * stride + o)) };
        }
        *column_b = output_1d(products);
    }
    let bias = unsafe { load(bias.add(o)) };
    // As in `inputs`.
    #[allow(clippy::needless_range_loop)]
    for i in 0..2 {
        let row = output_1d([columns[0][i], columns[1][i], columns[2][i], columns[3][i]]);
        for (j, values) in row.into_iter().enumerate() {
            let values = lanewise(values, bias, |a, b| a + b);
            unsafe { store(out_t.add((i * wo + j) * co + o), values) };
        }
    }
}

/// The transforms compiled for each instruction set, so that their lanes become vectors.
mod compiled {
    use super::{Batch, Isa};

    /// `$wide` channels per step while they last, then [`super::LANES`], then
    /// [`super::NARROW_LANES`].
    macro_rules! compiled_for {
        ($isa:ident, $feature:literal, $wide:expr) => {
            #[cfg(target_arch = "x86_64")]
            mod $isa {
                use super::super::{Batch, inputs, outputs};

                /// SAFETY: the CPU has the instruction set.
                #[target_feature(enable = $feature)]
                pub unsafe fn transform_inputs(batch: &Batch, x: &[f32], v: &mut [f32]) {
                    inputs::<{ $wide }>(batch, x, v)
                }

                /// SAFETY: the CPU has the instruction set.
                #[target_feature(enable = $feature)]
                pub unsafe fn transform_outputs(
                    batch: &Batch,
                    m: &[f32],
                    bias: &[f32],
                    rows: &mut [f32],
                ) {
                    outputs::<{ $wide }>(batch, m, bias, rows)
                }
            }
        };
    }
    compiled_for!(avx512, "avx512f", crate::winograd::WIDE_LANES);
    compiled_for!(avx2, "avx2,fma", crate::winograd::LANES);

    /// SAFETY: the CPU has `isa`.
    pub unsafe fn inputs(isa: Isa, batch: &Batch, x: &[f32], v: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        unsafe {
            match isa {
                Isa::Avx512 => avx512::transform_inputs(batch, x, v),
                Isa::Avx2 => avx2::transform_inputs(batch, x, v),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = isa;
            super::inputs::<{ super::LANES }>(batch, x, v)
        }
    }

    /// SAFETY: the CPU has `isa`.
    pub unsafe fn outputs(isa: Isa, batch: &Batch, m: &[f32], bias: &[f32], rows: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        unsafe {
            match isa {
                Isa::Avx512 => avx512::transform_outputs(batch, m, bias, rows),
                Isa::Avx2 => avx2::transform_outputs(batch, m, bias, rows),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = isa;
            super::outputs::<{ super::LANES }>(batch, m, bias, rows)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::tests::{conv, image, reference};

    /// Even and odd sizes (a last row on the direct kernel, a last tile overlapping its
    /// neighbour), rows of one batch of tiles and of two (the second partial), eight- and
    /// sixteen-wide transforms (on AVX-512), one and two threads, the epilogue.
    #[test]
    fn matches_the_direct_convolution() {
        let mut checked = false;
        for (ci, co, h, w) in [
            (8, 8, 4, 4),
            (16, 16, 7, 9),
            (32, 32, 10, 53),
            (8, 48, 5, 60),
            (40, 40, 6, 8),
            (16, 8, 9, 5),
            (16, 32, 6, TILES * 2 + 5),
            // Steps of four channels: the U-Net's 20 and 40 (20 outputs: AVX-512 only).
            (20, 20, 7, 10),
            (40, 20, 6, 9),
            (20, 40, 5, 12),
        ] {
            let c = conv(ci, co);
            let fast = PreparedConv::new(c.clone());
            if !fast.is_transformed() {
                continue;
            }
            checked = true;
            let x = image(h, w, ci);
            let mut expected = reference(&c, &x, h, w);
            let scale = expected.iter().fold(1f32, |s, v| s.max(v.abs()));
            expected.iter_mut().for_each(|v| *v = v.max(0.0));
            for threads in [1, 2] {
                let mut out = vec![f32::NAN; expected.len()];
                let relu = |row: &mut [f32]| row.iter_mut().for_each(|v| *v = v.max(0.0));
                fast.forward_image(&x, h, w, &mut out, &mut Vec::new(), threads, &relu);
                for (i, (a, b)) in out.iter().zip(&expected).enumerate() {
                    assert!(
                        (a - b).abs() < 1e-5 * scale,
                        "ci {ci} co {co} {h}x{w} threads {threads}: value {i}: {a} vs {b}"
                    );
                }
            }
        }
        if !checked {
            eprintln!("NOTE: no SIMD kernel on this CPU: Winograd's transform is not used here");
        }
    }

    #[test]
    fn applies_only_where_it_saves_work() {
        let first_layer = PreparedConv::new(conv(1, 32));
        assert!(!first_layer.is_transformed());
        let odd_inputs = PreparedConv::new(conv(10, 32));
        assert!(!odd_inputs.is_transformed());
        assert_eq!(
            PreparedConv::new(conv(32, 32)).is_transformed(),
            Isa::best_for(32).is_some()
        );
    }
}
