//! The 3x3 convolution's sums as a direct SIMD kernel, for CPUs with AVX-512 or AVX2 and FMA:
//! the forward pass (one output row at a time) and the weight gradient of training. A block
//! of rows of sums (6 to 24 rows of one to four vectors of output channels, as many as the
//! registers hold) stays in registers while the terms stream past: nothing is packed, partial
//! sums never go back to memory, and each result is written once. With AVX-512 the last
//! vector of channels may be partial (masked), so any channel count runs here (the U-Net's
//! 20 and 40); with AVX2 whole vectors only. The matrix products of `conv.rs` compute the
//! same sums where this kernel does not apply (another CPU, or AVX2 and co not a multiple of
//! 8).
//!
//! Written by hand because no maintained crate offers a channels-last 3x3 convolution for
//! these sizes; tested against a direct scalar convolution.

use super::conv::Conv3x3;

/// A panel of sums, as raw pointers into checked slices:
/// `out[i][c] = init[i][c] + sum over segments s and steps t of a_s[i * a_row + t * a_step] *
/// b_s[t * b_step + c]`, for rows i < `rows` and columns c < `columns` (the vector lanes).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Panel {
    /// Up to three segments summed into the same results (the three dy of a convolution).
    a: [*const f32; 3],
    b: [*const f32; 3],
    segments: usize,
    a_row: usize,
    a_step: usize,
    b_step: usize,
    steps: usize,
    rows: usize,
    columns: usize,
    /// Initial values: row i at `init + i * init_row` (0: the same row, a bias, for all);
    /// null: zeros.
    init: *const f32,
    init_row: usize,
    /// Row i at `out + i * out_row`.
    out: *mut f32,
    out_row: usize,
}

/// The instruction set the kernel runs with on this CPU for `co` output channels, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
}

impl Isa {
    /// The widest instruction set this CPU runs the kernel with for `co` output channels.
    pub fn best_for(co: usize) -> Option<Isa> {
        [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .find(|isa| isa.supports(co))
    }

    /// Vector multiplications of a panel of `rows` rows by `columns` columns, per step.
    fn vectors(self, rows: usize, columns: usize) -> usize {
        let lanes = match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
        };
        rows * columns.div_ceil(lanes)
    }

    /// Whether this CPU has the instruction set and the kernel runs `co` channels on it: any
    /// number with AVX-512 (its masked loads and stores take a last, partial vector), whole
    /// vectors with AVX2 (whose masked stores are slow on AMD's cores).
    pub fn supports(self, co: usize) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                // Any count: the last vector of channels is masked.
                Isa::Avx512 => co > 0 && std::arch::is_x86_feature_detected!("avx512f"),
                Isa::Avx2 => {
                    co.is_multiple_of(8)
                        && std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = co;
            false
        }
    }
}

/// Output row `y` of the valid convolution of the `h x w x ci` image `x`, bias added:
/// `(w - 2) x co` values into `out_row`. `isa` must support `conv.co` on this CPU.
pub fn forward_row(conv: &Conv3x3, isa: Isa, x: &[f32], w: usize, y: usize, out_row: &mut [f32]) {
    let (ci, co) = (conv.ci, conv.co);
    assert!(w >= 3, "a 3x3 valid convolution needs at least 3 columns");
    // Checked products: the sizes are public fields, and overflow checks are off.
    assert!(
        extent(&[y + 3, w, ci]) <= x.len(),
        "direct convolution: input rows out of bounds"
    );
    assert!(
        extent(&[w - 2, co]) <= out_row.len(),
        "direct convolution: output row out of bounds"
    );
    assert!(conv.weight.len() == extent(&[9, ci, co]) && conv.bias.len() == co);
    // Output pixel i, dy: the 3 ci inputs from pixel (y + dy, i) on (the three dx taps of
    // all channels) against the 3 ci weight rows of dy.
    let taps = 3 * ci;
    let panel = Panel {
        a: [0, 1, 2].map(|dy| x[(y + dy) * w * ci..].as_ptr()),
        b: [0, 1, 2].map(|dy| conv.weight[dy * taps * co..].as_ptr()),
        segments: 3,
        a_row: ci,
        a_step: 1,
        b_step: co,
        steps: taps,
        rows: w - 2,
        columns: co,
        init: conv.bias.as_ptr(),
        init_row: 0,
        out: out_row.as_mut_ptr(),
        out_row: co,
    };
    // SAFETY: the largest input index is (y + 2) w ci + (w - 3) ci + 3 ci - 1 < (y + 3) w ci,
    // the largest weight index 9 ci co - 1, the largest output (w - 2) co - 1: all checked.
    unsafe { run(isa, &panel) };
}

/// `out = a * b` for row-major `a` (`rows x k`), `b` (`k x co`) and `out` (`rows x co`):
/// a plain matrix product on the kernel (the sixteen products of Winograd's transform).
/// `isa` must support `co` on this CPU.
pub fn matrix_product(
    isa: Isa,
    a: &[f32],
    b: &[f32],
    rows: usize,
    k: usize,
    co: usize,
    out: &mut [f32],
) {
    assert!(
        extent(&[rows, k]) <= a.len()
            && extent(&[k, co]) <= b.len()
            && extent(&[rows, co]) <= out.len(),
        "matrix product: operands out of bounds"
    );
    let panel = Panel {
        a: [a.as_ptr(); 3],
        b: [b.as_ptr(); 3],
        segments: 1,
        a_row: k,
        a_step: 1,
        b_step: co,
        steps: k,
        rows,
        columns: co,
        init: std::ptr::null(),
        init_row: 0,
        out: out.as_mut_ptr(),
        out_row: co,
    };
    // SAFETY: the largest index of a is rows k - 1, of b k co - 1, of out rows co - 1: all
    // checked.
    unsafe { run(isa, &panel) };
}

/// Adds the weight gradient of one image to `dw` (`[dy][dx][ci][co]`): for each dy,
/// `dW_dy (3ci x co) += X_dy^T (3ci x m) * dz (m x co)`, where row p of X_dy is the 3 ci
/// inputs from pixel p + dy w on and `dz` holds the output gradient over the input's full
/// width (`m = (h - 2) w - 2` rows, zero in the columns that are not outputs).
///
/// The lanes run over the output channels, or over the 3 ci taps (the transposed product,
/// `dW_dy^T = dz^T X_dy`) where that leaves fewer lanes idle: 20 channels fill two
/// AVX-512 vectors to 62%, the 60 taps of 20 inputs four to 94%.
pub fn add_weight_gradient(
    ci: usize,
    co: usize,
    isa: Isa,
    x: &[f32],
    w: usize,
    dz: &[f32],
    dw: &mut [f32],
) {
    assert!(
        co > 0 && dz.len().is_multiple_of(co),
        "weight gradient: dz is not m x co"
    );
    let m = dz.len() / co;
    let taps = 3 * ci;
    assert!(
        m > 0 && extent(&[m + 2 * w + 2, ci]) <= x.len(),
        "weight gradient: input out of bounds"
    );
    assert_eq!(
        dw.len(),
        extent(&[9, ci, co]),
        "weight gradient: dw is not 9 ci x co"
    );
    let transposed = isa.supports(taps) && isa.vectors(co, taps) < isa.vectors(taps, co);
    let mut dwt = if transposed {
        vec![0f32; 3 * co * taps]
    } else {
        Vec::new()
    };
    // The pixels in runs of STEPS: shorter sums round better, and a run's inputs and output
    // gradients stay in cache while every block of rows reads them.
    const STEPS: usize = 1024;
    for dy in 0..3 {
        for t0 in (0..m).step_by(STEPS) {
            let x_run = x[(dy * w + t0) * ci..].as_ptr();
            let dz_run = dz[t0 * co..].as_ptr();
            let steps = STEPS.min(m - t0);
            // The transposed product swaps the operands' roles and writes dW_dy^T to `dwt`.
            let (a, b, a_step, b_step, rows, columns, out) = if transposed {
                let dwt_dy = dwt[dy * co * taps..].as_mut_ptr();
                (dz_run, x_run, co, ci, co, taps, dwt_dy)
            } else {
                let dw_dy = dw[dy * taps * co..].as_mut_ptr();
                (x_run, dz_run, ci, co, taps, co, dw_dy)
            };
            let panel = Panel {
                a: [a; 3],
                b: [b; 3],
                segments: 1,
                a_row: 1,
                a_step,
                b_step,
                steps,
                rows,
                columns,
                init: out,
                init_row: columns,
                out,
                out_row: columns,
            };
            // SAFETY: the largest input index is dy w ci + 3 ci - 1 + (m - 1) ci
            // < (m + 2 w + 2) ci, the largest dz index m co - 1, the largest dw (and dwt)
            // index 9 ci co - 1: all checked. Each result is read (init) before it is written.
            unsafe { run(isa, &panel) };
        }
    }
    if transposed {
        for (dy, dwt_dy) in dwt.chunks_exact(co * taps).enumerate() {
            let dw_dy = &mut dw[dy * taps * co..][..taps * co];
            for (o, row) in dwt_dy.chunks_exact(taps).enumerate() {
                for (k, g) in row.iter().enumerate() {
                    dw_dy[k * co + o] += g;
                }
            }
        }
    }
}

/// The product of `sizes`, or a panic when it overflows.
fn extent(sizes: &[usize]) -> usize {
    sizes
        .iter()
        .try_fold(1usize, |product, &s| product.checked_mul(s))
        .expect("direct convolution: sizes overflow")
}

/// SAFETY: `panel`'s pointers cover the indices its sizes reach.
unsafe fn run(isa: Isa, panel: &Panel) {
    assert!(
        isa.supports(panel.columns),
        "direct convolution: {isa:?} cannot run {} channels here",
        panel.columns
    );
    // SAFETY: the CPU has the instruction set (checked just above); the caller vouches for
    // the extents.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match isa {
            Isa::Avx512 => avx512::panel(panel),
            Isa::Avx2 => avx2::panel(panel),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = panel;
}

/// One kernel per instruction set, the same code over its vector type: `$lanes` floats a
/// vector, about `$registers` accumulators and at most `$vectors` vectors of channels per
/// block, so that the accumulators, the block's b row and one broadcast input fit the
/// vector registers (32 with AVX-512, 16 with AVX2: with four vectors of b, AVX2's twelve
/// accumulators spilled to the stack inside the loop). The last vector of a block goes
/// through `$load_last` and `$store_last` with a mask of its lanes in use.
macro_rules! kernel {
    ($isa:ident, $feature:literal, $lanes:literal, $registers:literal, $vectors:literal,
     $zero:ident, $load:ident, $broadcast:ident, $fma:ident, $store:ident,
     $load_last:path, $store_last:path) => {
        #[cfg(target_arch = "x86_64")]
        mod $isa {
            use std::arch::x86_64::*;

            use super::Panel;

            const LANES: usize = $lanes;

            /// SAFETY: the CPU has the instruction set; `panel`'s pointers cover its extents.
            #[target_feature(enable = $feature)]
            pub unsafe fn panel(panel: &Panel) {
                // Output channels in chunks of at most `$vectors` vectors, the last one
                // possibly partial; rows per block so that the accumulators fill the registers.
                let mut c0 = 0;
                while c0 < panel.columns {
                    let left = panel.columns - c0;
                    let vectors = left.div_ceil(LANES).min($vectors);
                    let last_lanes = (left - (vectors - 1) * LANES).min(LANES);
                    let last = ((1u32 << last_lanes) - 1) as u16;
                    unsafe {
                        match vectors {
                            4 => chunk::<4, { $registers / 4 }>(panel, c0, last),
                            3 => chunk::<3, { $registers / 3 }>(panel, c0, last),
                            2 => chunk::<2, { $registers / 2 }>(panel, c0, last),
                            1 => chunk::<1, { $registers }>(panel, c0, last),
                            _ => unreachable!("one to four vectors a chunk"),
                        }
                    }
                    c0 += vectors * LANES;
                }
            }

            #[target_feature(enable = $feature)]
            unsafe fn chunk<const NV: usize, const PB: usize>(panel: &Panel, c0: usize, last: u16) {
                let mut i0 = 0;
                while i0 + PB <= panel.rows {
                    unsafe { block::<NV, PB>(panel, c0, i0, last) };
                    i0 += PB;
                }
                // The rest in blocks of four, two, then one by one: a single row's sums form
                // one dependent chain per vector, which leaves the multipliers idle.
                while PB > 4 && i0 + 4 <= panel.rows {
                    unsafe { block::<NV, 4>(panel, c0, i0, last) };
                    i0 += 4;
                }
                while PB > 2 && i0 + 2 <= panel.rows {
                    unsafe { block::<NV, 2>(panel, c0, i0, last) };
                    i0 += 2;
                }
                while i0 < panel.rows {
                    unsafe { block::<NV, 1>(panel, c0, i0, last) };
                    i0 += 1;
                }
            }

            /// Rows `i0..i0 + PB`, channels `c0..c0 + NV * LANES`, the last vector's lanes
            /// masked by `last`. Addresses advance by wrapping pointer steps because after
            /// the last step they point past the slices (never read there), where `add`
            /// would be undefined behaviour.
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn block<const NV: usize, const PB: usize>(
                panel: &Panel,
                c0: usize,
                i0: usize,
                last: u16,
            ) {
                // Vector v of the channels from `at` on (NV is a constant: the test folds).
                let load = |at: *const f32, v: usize| unsafe {
                    if v + 1 == NV {
                        $load_last(at.wrapping_add(v * LANES), last)
                    } else {
                        $load(at.wrapping_add(v * LANES))
                    }
                };
                unsafe {
                    let mut acc = [[$zero(); NV]; PB];
                    if !panel.init.is_null() {
                        let mut init = panel.init.wrapping_add(i0 * panel.init_row + c0);
                        for row in acc.iter_mut() {
                            for (v, value) in row.iter_mut().enumerate() {
                                *value = load(init, v);
                            }
                            init = init.wrapping_add(panel.init_row);
                        }
                    }
                    for segment in 0..panel.segments {
                        let mut a = panel.a[segment].wrapping_add(i0 * panel.a_row);
                        let mut b = panel.b[segment].wrapping_add(c0);
                        for _ in 0..panel.steps {
                            let mut bv = [$zero(); NV];
                            for (v, bv) in bv.iter_mut().enumerate() {
                                *bv = load(b, v);
                            }
                            let mut a_row = a;
                            for row in acc.iter_mut() {
                                let value = $broadcast(_mm_load_ss(a_row));
                                for v in 0..NV {
                                    row[v] = $fma(value, bv[v], row[v]);
                                }
                                a_row = a_row.wrapping_add(panel.a_row);
                            }
                            a = a.wrapping_add(panel.a_step);
                            b = b.wrapping_add(panel.b_step);
                        }
                    }
                    let mut out = panel.out.wrapping_add(i0 * panel.out_row + c0);
                    for row in acc.iter() {
                        for (v, value) in row.iter().enumerate() {
                            let at = out.wrapping_add(v * LANES);
                            if v + 1 == NV {
                                $store_last(at, last, *value);
                            } else {
                                $store(at, *value);
                            }
                        }
                        out = out.wrapping_add(panel.out_row);
                    }
                }
            }
        }
    };
}

/// The last vector's loads and stores: masked with AVX-512; with AVX2 every vector is whole
/// ([`Isa::supports`]) and the mask is not needed.
#[cfg(target_arch = "x86_64")]
mod last_vector {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    #[inline]
    pub unsafe fn load512(at: *const f32, lanes: u16) -> __m512 {
        unsafe { _mm512_maskz_loadu_ps(lanes, at) }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    pub unsafe fn store512(at: *mut f32, lanes: u16, value: __m512) {
        unsafe { _mm512_mask_storeu_ps(at, lanes, value) }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn load256(at: *const f32, lanes: u16) -> __m256 {
        debug_assert_eq!(lanes, 0xFF, "AVX2 runs whole vectors only");
        unsafe { _mm256_loadu_ps(at) }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn store256(at: *mut f32, lanes: u16, value: __m256) {
        debug_assert_eq!(lanes, 0xFF, "AVX2 runs whole vectors only");
        unsafe { _mm256_storeu_ps(at, value) }
    }
}

kernel!(
    avx512,
    "avx512f",
    16,
    24,
    4,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_broadcastss_ps,
    _mm512_fmadd_ps,
    _mm512_storeu_ps,
    super::last_vector::load512,
    super::last_vector::store512
);
kernel!(
    avx2,
    "avx2,fma",
    8,
    12,
    2,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_broadcastss_ps,
    _mm256_fmadd_ps,
    _mm256_storeu_ps,
    super::last_vector::load256,
    super::last_vector::store256
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::forward_image;
    use crate::conv::tests::{conv, image, reference};

    fn assert_close(got: &[f32], expected: &[f32], what: &str) {
        assert_eq!(got.len(), expected.len());
        for (i, (a, b)) in got.iter().zip(expected).enumerate() {
            assert!((a - b).abs() < 1e-4, "{what}: value {i}: {a} vs {b}");
        }
    }

    /// Every instruction set this CPU has, over channel counts that take one to three
    /// chunks of vectors and widths that leave partial blocks of pixels.
    #[test]
    fn every_instruction_set_here_matches_the_scalar_convolution() {
        let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .filter(|isa| isa.supports(16))
            .collect();
        if isas.is_empty() {
            eprintln!(
                "NOTE: this CPU has neither AVX-512 nor AVX2+FMA: only the matrix products run"
            );
        }
        for isa in isas {
            for (ci, co, h, w) in [
                (1, 16, 5, 31),
                (3, 32, 4, 9),
                (32, 32, 6, 17),
                (16, 48, 3, 3),
                (5, 96, 4, 28),
                (2, 160, 3, 7),
                (4, 8, 5, 19),
                (3, 24, 4, 9),
                (2, 40, 3, 6),
                // Partial last vectors (AVX-512 only): the U-Net's 20 and 40, and fewer
                // channels than one vector.
                (5, 20, 5, 14),
                (20, 40, 4, 11),
                (3, 5, 4, 9),
                (7, 50, 3, 8),
                // 15 rows of three vectors (AVX-512): blocks of eight, four, two and one.
                (3, 48, 3, 17),
                // A masked vector after a chunk of four whole ones.
                (3, 100, 3, 9),
            ] {
                if !isa.supports(co) {
                    continue;
                }
                let c = conv(ci, co);
                let x = image(h, w, ci);
                let expected = reference(&c, &x, h, w);
                let row_len = (w - 2) * co;
                for y in 0..h - 2 {
                    let mut row = vec![f32::NAN; row_len];
                    forward_row(&c, isa, &x, w, y, &mut row);
                    assert_close(
                        &row,
                        &expected[y * row_len..][..row_len],
                        &format!("{isa:?} ci {ci} co {co} w {w} row {y}"),
                    );
                }
            }
        }
    }

    /// The weight gradient on every instruction set here, added onto existing values,
    /// against the sums written out term by term.
    #[test]
    fn weight_gradients_match_the_sums_they_stand_for() {
        let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .filter(|isa| isa.supports(16))
            .collect();
        for isa in isas {
            for (ci, co, h, w) in [
                (1, 16, 5, 7),
                (3, 32, 6, 9),
                (32, 32, 5, 8),
                (5, 48, 4, 6),
                (2, 8, 4, 5),
                (3, 24, 40, 41),
                (5, 20, 9, 12),
                (20, 40, 6, 7),
                // Transposed: several runs of pixels, 72 taps (two chunks of columns).
                (24, 20, 40, 41),
            ] {
                if !isa.supports(co) {
                    continue;
                }
                let x = image(h, w, ci);
                let (ho, wo) = (h - 2, w - 2);
                let dz: Vec<f32> = (0..ho * wo * co)
                    .map(|i| ((i * 11) % 7) as f32 * 0.1 - 0.3)
                    .collect();
                let before: Vec<f32> = (0..9 * ci * co).map(|i| (i % 5) as f32).collect();
                let mut expected: Vec<f64> = before.iter().map(|v| *v as f64).collect();
                for y in 0..ho {
                    for xo in 0..wo {
                        for dy in 0..3 {
                            for dx in 0..3 {
                                for i in 0..ci {
                                    for o in 0..co {
                                        expected[((dy * 3 + dx) * ci + i) * co + o] +=
                                            x[((y + dy) * w + xo + dx) * ci + i] as f64
                                                * dz[(y * wo + xo) * co + o] as f64;
                                    }
                                }
                            }
                        }
                    }
                }
                // dz over the full width, as the backward pass lays it out.
                let m = ho * w - 2;
                let mut full = vec![0f32; m * co];
                for y in 0..ho {
                    for xo in 0..wo {
                        full[(y * w + xo) * co..][..co]
                            .copy_from_slice(&dz[(y * wo + xo) * co..][..co]);
                    }
                }
                let mut dw = before.clone();
                add_weight_gradient(ci, co, isa, &x, w, &full, &mut dw);
                for (j, (a, b)) in dw.iter().zip(&expected).enumerate() {
                    assert!(
                        (*a as f64 - b).abs() < 1e-3,
                        "{isa:?} ci {ci} co {co}: dw[{j}] {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn whole_images_on_two_threads_get_the_epilogue() {
        let (ci, co, h, w) = (8, 32, 9, 12);
        let c = conv(ci, co);
        let x = image(h, w, ci);
        let mut expected = reference(&c, &x, h, w);
        expected.iter_mut().for_each(|v| *v = v.max(0.0));
        let mut out = vec![0f32; expected.len()];
        let relu = |pixel: &mut [f32]| pixel.iter_mut().for_each(|v| *v = v.max(0.0));
        forward_image(&c, &x, h, w, &mut out, &mut Vec::new(), 2, &relu);
        assert_close(&out, &expected, "two threads");
    }

    #[test]
    fn rows_past_the_image_are_refused() {
        let Some(isa) = Isa::best_for(8) else {
            eprintln!("NOTE: no SIMD kernel on this CPU: nothing to check");
            return;
        };
        let c = conv(2, 8);
        let x = image(4, 5, 2);
        let past_the_end = std::panic::catch_unwind(move || {
            forward_row(&c, isa, &x, 5, 2, &mut [0.0; 3 * 8]);
        });
        assert!(
            past_the_end.is_err(),
            "row 2 of a 4-row image needs rows 2..5"
        );
        // Sizes whose products wrap around must not pass the checks either.
        let absurd = Conv3x3 {
            ci: (1 << 60) + 1,
            co: 16,
            weight: vec![0.0; 144],
            bias: vec![0.0; 16],
        };
        let wrapped = std::panic::catch_unwind(move || {
            forward_row(&absurd, isa, &[0.0; 48], 16, 0, &mut [0.0; 14 * 16]);
        });
        assert!(
            wrapped.is_err(),
            "a wrapped-around size passed the bounds checks"
        );
    }
}
