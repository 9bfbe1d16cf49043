//! Gaussian smoothing of volumes (x fastest), separable along each axis: what a scanner's
//! point-spread function, a thick slice or resampling does to an image.

use rayon::prelude::*;

/// Blurs `data` (on `shape`) by a Gaussian of `sigma` voxels along every axis.
pub fn gaussian_blur(data: &mut [f32], shape: [usize; 3], sigma: f64) {
    for axis in 0..3 {
        gaussian_blur_axis(data, shape, axis, sigma);
    }
}

/// Blurs `data` (on `shape`) by a Gaussian of `sigma` voxels along `axis` only; the volume's
/// border values continue outside it.
pub fn gaussian_blur_axis(data: &mut [f32], shape: [usize; 3], axis: usize, sigma: f64) {
    if sigma <= 0.0 {
        return;
    }
    let radius = (3.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32)
        .collect();
    let total: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / total).collect();
    let [nx, ny, _] = shape;
    let n = shape[axis];
    let stride = [1, nx, nx * ny][axis];
    let source = data.to_vec();
    // Every line along `axis` is independent; split the work by planes of z.
    let plane = nx * ny;
    data.par_chunks_mut(plane).enumerate().for_each(|(z, out)| {
        for y in 0..ny {
            for x in 0..nx {
                let coord = [x, y, z][axis] as isize;
                let base = x + nx * y + plane * z - coord as usize * stride;
                let mut acc = 0.0;
                for (k, w) in kernel.iter().enumerate() {
                    let c = (coord + k as isize - radius).clamp(0, n as isize - 1) as usize;
                    acc += w * source[base + c * stride];
                }
                out[x + nx * y] = acc;
            }
        }
    });
}

/// `mask` (on `shape`, x fastest) grown by `radius` voxels along each axis (a box): separable
/// maximum filters.
pub fn dilate(mask: &[bool], shape: [usize; 3], radius: [usize; 3]) -> Vec<bool> {
    let mut out = mask.to_vec();
    let strides = [1, shape[0], shape[0] * shape[1]];
    for axis in 0..3 {
        let (n, stride, r) = (shape[axis], strides[axis], radius[axis]);
        if r == 0 {
            continue;
        }
        let source = out.clone();
        for (i, o) in out.iter_mut().enumerate() {
            let coord = (i / stride) % n;
            let base = i - coord * stride;
            let (low, high) = (coord.saturating_sub(r), (coord + r).min(n - 1));
            *o = (low..=high).any(|c| source[base + c * stride]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_along_one_axis_spreads_only_along_it_and_keeps_the_total() {
        let shape = [9, 7, 5];
        let mut data = vec![0f32; 9 * 7 * 5];
        let at = |x: usize, y: usize, z: usize| x + 9 * (y + 7 * z);
        data[at(4, 3, 2)] = 1.0;
        gaussian_blur_axis(&mut data, shape, 1, 1.0);
        assert!(data[at(4, 3, 2)] < 0.5 && data[at(4, 2, 2)] > 0.1);
        assert!((data[at(4, 2, 2)] - data[at(4, 4, 2)]).abs() < 1e-6);
        assert_eq!(data[at(3, 3, 2)], 0.0);
        assert_eq!(data[at(4, 3, 1)], 0.0);
        let total: f32 = data.iter().sum();
        assert!((total - 1.0).abs() < 1e-5);
        gaussian_blur(&mut data, shape, 0.8);
        assert!(data[at(3, 3, 2)] > 0.0 && data[at(4, 3, 1)] > 0.0);
    }

    #[test]
    fn dilation_grows_a_box_per_axis() {
        let shape = [7, 6, 5];
        let mut mask = vec![false; 7 * 6 * 5];
        let at = |x: usize, y: usize, z: usize| x + 7 * (y + 6 * z);
        mask[at(3, 2, 2)] = true;
        let grown = dilate(&mask, shape, [2, 1, 0]);
        let count = grown.iter().filter(|m| **m).count();
        assert_eq!(count, 5 * 3);
        assert!(grown[at(1, 1, 2)] && grown[at(5, 3, 2)] && !grown[at(0, 2, 2)]);
        assert!(!grown[at(3, 2, 1)] && !grown[at(3, 4, 2)]);
    }

    #[test]
    fn blur_preserves_the_mean_and_smooths_a_step() {
        let shape = [8, 4, 4];
        let mut data: Vec<f32> = (0..128)
            .map(|i| if i % 8 < 4 { 0.0 } else { 1.0 })
            .collect();
        let before: f32 = data.iter().sum();
        gaussian_blur(&mut data, shape, 1.0);
        let after: f32 = data.iter().sum();
        assert!((before - after).abs() < 1e-3);
        assert!(data[3] > 0.1 && data[3] < 0.5 && data[4] > 0.5 && data[4] < 0.9);
    }
}
