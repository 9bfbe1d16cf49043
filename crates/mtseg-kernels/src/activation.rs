//! ELU (alpha = 1) with a branch-free exponential that the compiler vectorises: the
//! activation runs over every feature of every layer, and a libm `exp` per value would cost
//! as much as the convolutions.

use multiversion::multiversion;

/// e^x for x <= 0 (inputs below -87 are taken as -87): range reduction to r in
/// [-ln2/2, ln2/2], a degree-6 polynomial, and the power of two put in the exponent bits.
/// Relative error about 2e-7.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Round to nearest by adding and subtracting 1.5 * 2^23: exact for |y| < 2^22 and, unlike
    // `f32::round`, no library call on baseline x86-64.
    const ROUND: f32 = 12_582_912.0;
    let x = if x > -87.0 { x } else { -87.0 };
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // t = 1.5 * 2^23 + n exactly, so its mantissa bits hold n: no float-to-integer
    // conversion, which would keep the loops from vectorising well.
    let n_int = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
    p * scale
}

/// ELU of one value, as selects rather than a branch: features are positive and negative
/// in no predictable order, so a branch would be mispredicted half the time and would keep
/// the loops from vectorising. (e^0 - 1 is exactly 0 here.)
#[inline(always)]
pub fn elu(x: f32) -> f32 {
    let exp_minus_one = exp_nonpositive(if x < 0.0 { x } else { 0.0 }) - 1.0;
    // NaN stays NaN.
    if x <= 0.0 { exp_minus_one } else { x }
}

/// ELU in place, vectorised for the widest instruction set the CPU has (x86-64 builds
/// target SSE2 alone, so without the AVX versions the loop would run 4 floats at a time).
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2+fma"))]
pub fn elu_in_place(values: &mut [f32]) {
    for v in values.iter_mut() {
        *v = elu(*v);
    }
}

/// The derivative of ELU, from its output a: 1 where a > 0, a + 1 (= e^x) elsewhere.
#[inline(always)]
pub fn elu_derivative_from_output(a: f32) -> f32 {
    if a > 0.0 { 1.0 } else { a + 1.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_exact_exponential() {
        for i in 0..=20000 {
            let x = -(i as f32) * 0.005;
            let exact = x.exp();
            let fast = exp_nonpositive(x);
            assert!(
                (fast - exact).abs() <= 4e-7 * exact.max(1e-30) + 1e-38,
                "{x}: {fast} vs {exact}"
            );
        }
        assert_eq!(exp_nonpositive(-1000.0), exp_nonpositive(-87.0));
        assert_eq!(elu(2.5), 2.5);
        assert_eq!(elu(0.0), 0.0);
        assert_eq!(elu(1e-30), 1e-30);
        assert!(elu(f32::NAN).is_nan());
        // Every instruction set's loop gives the scalar function's values.
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 - 600.0) * 0.05).collect();
        let mut fast = x.clone();
        elu_in_place(&mut fast);
        for (a, b) in x.iter().zip(&fast) {
            assert_eq!(elu(*a), *b, "elu({a})");
        }
        assert!((elu(-1.0) - (-0.632_120_56)).abs() < 1e-6);
    }
}
