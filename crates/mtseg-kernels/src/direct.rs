//! The 3x3 convolution's sums as a direct SIMD kernel, for CPUs with AVX-512 or AVX2 and FMA:
//! the forward pass (one output row at a time) and the weight gradient of training. A block
//! of rows of sums (6 to 24 rows of one to four vectors of output channels, as many as the
//! registers hold) stays in registers while the terms stream past: nothing is packed, partial sums never go back to
//! memory, and each result is written once. The matrix products of `conv.rs` compute the
//! same sums where this kernel does not apply (another CPU, or co not a multiple of 8).
//!
//! Written by hand because no maintained crate offers a channels-last 3x3 convolution for
//! these sizes; tested against a direct scalar convolution.

use super::conv::Conv3x3;

/// A panel of sums, as raw pointers into checked slices:
/// `out[i][c] = init[i][c] + sum over segments s and steps t of a_s[i * a_row + t * a_step] *
/// b_s[t * co + c]`, for rows i < `rows` and channels c < `co`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Panel {
    /// Up to three segments summed into the same results (the three dy of a convolution).
    a: [*const f32; 3],
    b: [*const f32; 3],
    segments: usize,
    a_row: usize,
    a_step: usize,
    steps: usize,
    rows: usize,
    co: usize,
    /// Initial values: row i at `init + i * init_row` (0: the same row, a bias, for all);
    /// null: zeros.
    init: *const f32,
    init_row: usize,
    /// Row i at `out + i * co`.
    out: *mut f32,
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

    /// Whether this CPU has the instruction set and `co` is a whole number of its vectors.
    pub fn supports(self, co: usize) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Isa::Avx512 => {
                    co.is_multiple_of(16) && std::arch::is_x86_feature_detected!("avx512f")
                }
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
        steps: taps,
        rows: w - 2,
        co,
        init: conv.bias.as_ptr(),
        init_row: 0,
        out: out_row.as_mut_ptr(),
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
        steps: k,
        rows,
        co,
        init: std::ptr::null(),
        init_row: 0,
        out: out.as_mut_ptr(),
    };
    // SAFETY: the largest index of a is rows k - 1, of b k co - 1, of out rows co - 1: all
    // checked.
    unsafe { run(isa, &panel) };
}

/// Adds the weight gradient of one image to `dw` (`[dy][dx][ci][co]`): for each dy,
/// `dW_dy (3ci x co) += X_dy^T (3ci x m) * dz (m x co)`, where row p of X_dy is the 3 ci
/// inputs from pixel p + dy w on and `dz` holds the output gradient over the input's full
/// width (`m = (h - 2) w - 2` rows, zero in the columns that are not outputs).
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
    // The pixels in runs of STEPS: shorter sums round better, and a run's inputs and output
    // gradients stay in cache while every block of rows reads them.
    const STEPS: usize = 1024;
    for dy in 0..3 {
        let dw_dy = dw[dy * taps * co..].as_mut_ptr();
        for t0 in (0..m).step_by(STEPS) {
            let panel = Panel {
                a: [x[(dy * w + t0) * ci..].as_ptr(); 3],
                b: [dz[t0 * co..].as_ptr(); 3],
                segments: 1,
                a_row: 1,
                a_step: ci,
                steps: STEPS.min(m - t0),
                rows: taps,
                co,
                init: dw_dy,
                init_row: co,
                out: dw_dy,
            };
            // SAFETY: the largest input index is dy w ci + 3 ci - 1 + (m - 1) ci
            // < (m + 2 w + 2) ci, the largest dz index m co - 1, the largest dw index
            // 9 ci co - 1: all checked. Each result is read (init) before it is written.
            unsafe { run(isa, &panel) };
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
        isa.supports(panel.co),
        "direct convolution: {isa:?} cannot run {} channels here",
        panel.co
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
/// accumulators spilled to the stack inside the loop).
macro_rules! kernel {
    ($isa:ident, $feature:literal, $lanes:literal, $registers:literal, $vectors:literal,
     $zero:ident, $load:ident, $broadcast:ident, $fma:ident, $store:ident) => {
        #[cfg(target_arch = "x86_64")]
        mod $isa {
            use std::arch::x86_64::*;

            use super::Panel;

            const LANES: usize = $lanes;

            /// SAFETY: the CPU has the instruction set; `panel`'s pointers cover its extents.
            #[target_feature(enable = $feature)]
            pub unsafe fn panel(panel: &Panel) {
                // Output channels in chunks of at most `$vectors` vectors; rows per block so
                // that the accumulators fill the registers.
                let mut c0 = 0;
                while c0 < panel.co {
                    let vectors = ((panel.co - c0) / LANES).min($vectors);
                    unsafe {
                        match vectors {
                            4 => chunk::<4, { $registers / 4 }>(panel, c0),
                            3 => chunk::<3, { $registers / 3 }>(panel, c0),
                            2 => chunk::<2, { $registers / 2 }>(panel, c0),
                            1 => chunk::<1, { $registers }>(panel, c0),
                            _ => unreachable!("co is a multiple of the vector width"),
                        }
                    }
                    c0 += vectors * LANES;
                }
            }

            #[target_feature(enable = $feature)]
            unsafe fn chunk<const NV: usize, const PB: usize>(panel: &Panel, c0: usize) {
                let mut i0 = 0;
                while i0 + PB <= panel.rows {
                    unsafe { block::<NV, PB>(panel, c0, i0) };
                    i0 += PB;
                }
                // The rest in blocks of four, then one by one: a single row's sums form one
                // dependent chain per vector, which leaves the multipliers idle.
                while PB > 4 && i0 + 4 <= panel.rows {
                    unsafe { block::<NV, 4>(panel, c0, i0) };
                    i0 += 4;
                }
                while i0 < panel.rows {
                    unsafe { block::<NV, 1>(panel, c0, i0) };
                    i0 += 1;
                }
            }

            /// Rows `i0..i0 + PB`, channels `c0..c0 + NV * LANES`. Addresses advance by
            /// wrapping pointer steps because after the last step they point past the
            /// slices (never read there), where `add` would be undefined behaviour.
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn block<const NV: usize, const PB: usize>(panel: &Panel, c0: usize, i0: usize) {
                let co = panel.co;
                unsafe {
                    let mut acc = [[$zero(); NV]; PB];
                    if !panel.init.is_null() {
                        let mut init = panel.init.wrapping_add(i0 * panel.init_row + c0);
                        for row in acc.iter_mut() {
                            for (v, value) in row.iter_mut().enumerate() {
                                *value = $load(init.wrapping_add(v * LANES));
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
                                *bv = $load(b.wrapping_add(v * LANES));
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
                            b = b.wrapping_add(co);
                        }
                    }
                    let mut out = panel.out.wrapping_add(i0 * co + c0);
                    for row in acc.iter() {
                        for (v, value) in row.iter().enumerate() {
                            $store(out.wrapping_add(v * LANES), *value);
                        }
                        out = out.wrapping_add(co);
                    }
                }
            }
        }
    };
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
    _mm512_storeu_ps
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
    _mm256_storeu_ps
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
