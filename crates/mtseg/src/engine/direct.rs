//! The 3x3 convolution's forward pass as a direct SIMD kernel, for CPUs with AVX-512 or
//! AVX2 and FMA. For a run of output pixels of one row, the sums of all their output
//! channels (up to four vectors each) stay in registers while the 3 x 3 x ci inputs stream
//! past: nothing is packed, partial sums never go back to memory, and each output is written
//! once. The three matrix products of `conv.rs` compute the same sums where this kernel does
//! not apply (another CPU, or co not a multiple of 8).
//!
//! Written by hand because no maintained crate offers a channels-last 3x3 convolution for
//! these sizes; tested against a direct scalar convolution.

use super::conv::Conv3x3;

/// One output row of one image, as raw pointers into checked slices.
struct Row {
    /// The input at row y, column 0, channel 0 (`x[y * w * ci]`).
    x: *const f32,
    w: usize,
    ci: usize,
    /// `[dy][dx][ci][co]`.
    weight: *const f32,
    co: usize,
    bias: *const f32,
    /// `(w - 2) x co` outputs.
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
    assert!(
        (y + 3) * w * ci <= x.len(),
        "direct convolution: input rows out of bounds"
    );
    assert!(
        (w - 2) * co <= out_row.len(),
        "direct convolution: output row out of bounds"
    );
    assert!(conv.weight.len() == 9 * ci * co && conv.bias.len() == co);
    assert!(
        isa.supports(co),
        "direct convolution: {isa:?} cannot run {co} channels here"
    );
    let row = Row {
        x: x[y * w * ci..].as_ptr(),
        w,
        ci,
        weight: conv.weight.as_ptr(),
        co,
        bias: conv.bias.as_ptr(),
        out: out_row.as_mut_ptr(),
    };
    // SAFETY: the CPU has the instruction set (checked just above), and every address the
    // kernel touches lies within the slices: inputs in rows y..y+3 of `x`, outputs in the
    // first (w - 2) x co values of `out_row`, weights and bias within theirs.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match isa {
            Isa::Avx512 => avx512::row(&row),
            Isa::Avx2 => avx2::row(&row),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// One kernel per instruction set, the same code over its vector type: `$lanes` floats a
/// vector, `$registers` accumulators at most (leaving room for weights and a broadcast).
macro_rules! kernel {
    ($isa:ident, $feature:literal, $lanes:literal, $registers:literal,
     $zero:ident, $load:ident, $broadcast:ident, $fma:ident, $store:ident) => {
        #[cfg(target_arch = "x86_64")]
        mod $isa {
            use std::arch::x86_64::*;

            use super::Row;

            const LANES: usize = $lanes;

            /// SAFETY: the CPU has the instruction set; `row`'s pointers cover its extents.
            #[target_feature(enable = $feature)]
            pub unsafe fn row(row: &Row) {
                // Output channels in chunks of at most four vectors; pixels per block so
                // that the accumulators fill the registers.
                let mut c0 = 0;
                while c0 < row.co {
                    let vectors = ((row.co - c0) / LANES).min(4);
                    unsafe {
                        match vectors {
                            4 => chunk::<4, { $registers / 4 }>(row, c0),
                            3 => chunk::<3, { $registers / 3 }>(row, c0),
                            2 => chunk::<2, { $registers / 2 }>(row, c0),
                            _ => chunk::<1, { $registers }>(row, c0),
                        }
                    }
                    c0 += vectors * LANES;
                }
            }

            #[target_feature(enable = $feature)]
            unsafe fn chunk<const NV: usize, const PB: usize>(row: &Row, c0: usize) {
                let wo = row.w - 2;
                let mut xo = 0;
                while xo + PB <= wo {
                    unsafe { block::<NV, PB>(row, c0, xo) };
                    xo += PB;
                }
                while xo < wo {
                    unsafe { block::<NV, 1>(row, c0, xo) };
                    xo += 1;
                }
            }

            /// Outputs `xo..xo + PB`, channels `c0..c0 + NV * LANES`. Addresses advance by
            /// wrapping pointer steps and loads go through intrinsics: in builds with debug
            /// assertions (the tests) checked arithmetic in this loop would cost more than the
            /// multiplications.
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn block<const NV: usize, const PB: usize>(row: &Row, c0: usize, xo: usize) {
                let (ci, co) = (row.ci, row.co);
                let taps = 3 * ci;
                unsafe {
                    let mut acc = [[$zero(); NV]; PB];
                    for v in 0..NV {
                        let b = $load(row.bias.wrapping_add(c0 + v * LANES));
                        for pixel in acc.iter_mut() {
                            pixel[v] = b;
                        }
                    }
                    // For a fixed dy the three dx taps of all channels are 3 ci consecutive
                    // inputs, and 3 ci consecutive weight rows.
                    for dy in 0..3 {
                        let mut x = row.x.wrapping_add((dy * row.w + xo) * ci);
                        let mut weight = row.weight.wrapping_add(dy * taps * co + c0);
                        for _ in 0..taps {
                            let mut wv = [$zero(); NV];
                            for (v, wv) in wv.iter_mut().enumerate() {
                                *wv = $load(weight.wrapping_add(v * LANES));
                            }
                            let mut input = x;
                            for pixel in acc.iter_mut() {
                                let value = $broadcast(_mm_load_ss(input));
                                for v in 0..NV {
                                    pixel[v] = $fma(value, wv[v], pixel[v]);
                                }
                                input = input.wrapping_add(ci);
                            }
                            x = x.wrapping_add(1);
                            weight = weight.wrapping_add(co);
                        }
                    }
                    let mut out = row.out.wrapping_add(xo * co + c0);
                    for pixel in acc.iter() {
                        for (v, value) in pixel.iter().enumerate() {
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
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_broadcastss_ps,
    _mm256_fmadd_ps,
    _mm256_storeu_ps
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::conv::forward_image;
    use crate::engine::conv::tests::{conv, reference};

    fn image(h: usize, w: usize, ci: usize) -> Vec<f32> {
        (0..h * w * ci)
            .map(|i| ((i * 31) % 17) as f32 / 17.0 - 0.4)
            .collect()
    }

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
    }
}
