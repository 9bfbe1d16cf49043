//! Slices cut from a volume for the U-Net: a slice of one orientation with its neighbours as
//! channels, over a window of its plane, padded outside the volume. Training crops and
//! inference slices are cut by the same function, so the two agree on layout.

use crate::model::Orientation;
use crate::model::unet::{CONTEXT_SLICES, INPUT_CHANNELS};
use crate::preprocess::filter::gaussian_blur;

/// A volume in canonical layout (x fastest), with the value that stands for "outside"
/// (inference calls it `NetworkInput`).
#[derive(Clone, Copy)]
pub struct VolumeView<'a> {
    pub image: &'a [f32],
    pub shape: [usize; 3],
    /// Intensity outside the volume.
    pub pad: f32,
}

/// The window `[row0, row0 + h) x [col0, col0 + w)` of slice `slice` of orientation `o` and
/// of its `CONTEXT_SLICES` neighbours on each side, appended channel-major then row-major.
/// Rows and columns follow [`Orientation::plane_axes`].
pub fn stack(
    volume: VolumeView,
    o: Orientation,
    slice: isize,
    window: [isize; 2],
    size: [usize; 2],
    out: &mut Vec<f32>,
) {
    let context = CONTEXT_SLICES as isize;
    cut(
        volume,
        o,
        slice - context..=slice + context,
        window,
        size,
        out,
    );
}

/// [`stack`] pixel-major: for each position of the window (row-major), the slice and its
/// neighbours as `INPUT_CHANNELS` consecutive values. The layout mtseg's CPU kernels compute
/// in, so inference cuts its slices this way and never transposes them.
pub fn pixel_stack(
    volume: VolumeView,
    o: Orientation,
    slice: isize,
    window: [isize; 2],
    size: [usize; 2],
    out: &mut Vec<f32>,
) {
    let start = out.len();
    out.resize(start + size[0] * size[1] * INPUT_CHANNELS, volume.pad);
    let context = CONTEXT_SLICES as isize;
    for (channel, s) in (slice - context..=slice + context).enumerate() {
        let mut at = start + channel;
        window_of(volume.shape, o, s, window, size, |index| {
            if let Some(i) = index {
                out[at] = volume.image[i];
            }
            at += INPUT_CHANNELS;
        });
    }
}

/// The window of each slice of `slices`, appended slice-major then row-major.
fn cut(
    volume: VolumeView,
    o: Orientation,
    slices: std::ops::RangeInclusive<isize>,
    window: [isize; 2],
    size: [usize; 2],
    out: &mut Vec<f32>,
) {
    for s in slices {
        window_of(volume.shape, o, s, window, size, |index| {
            out.push(index.map_or(volume.pad, |i| volume.image[i]))
        });
    }
}

/// [`stack`] as if the volume had first been smoothed by a Gaussian of `sigma` voxels (what
/// resampling does to a scan): a block with a margin of 3 sigma on every side (slices
/// included) is cut, blurred, and its centre kept.
pub fn blurred_stack(
    volume: VolumeView,
    o: Orientation,
    slice: isize,
    window: [isize; 2],
    size: [usize; 2],
    sigma: f64,
    out: &mut Vec<f32>,
) {
    let margin = (3.0 * sigma).ceil() as usize;
    let m = margin as isize;
    let wide = size.map(|s| s + 2 * margin);
    let context = (CONTEXT_SLICES + margin) as isize;
    let mut block = Vec::with_capacity((2 * context as usize + 1) * wide[0] * wide[1]);
    let corner = [window[0] - m, window[1] - m];
    cut(
        volume,
        o,
        slice - context..=slice + context,
        corner,
        wide,
        &mut block,
    );
    // The block is a small volume with columns fastest, then rows, then slices.
    gaussian_blur(
        &mut block,
        [wide[1], wide[0], 2 * context as usize + 1],
        sigma,
    );
    for s in margin..margin + INPUT_CHANNELS {
        for r in margin..margin + size[0] {
            let start = (s * wide[0] + r) * wide[1] + margin;
            out.extend_from_slice(&block[start..start + size[1]]);
        }
    }
}

/// Calls `each` for every position of the window of slice `slice`, in row-major order, with
/// the voxel's index in the volume (None outside it).
pub fn window_of(
    shape: [usize; 3],
    o: Orientation,
    slice: isize,
    window: [isize; 2],
    size: [usize; 2],
    mut each: impl FnMut(Option<usize>),
) {
    let (row_axis, col_axis) = o.plane_axes();
    let normal = o.normal_axis();
    let inside = |v: isize, axis: usize| v >= 0 && (v as usize) < shape[axis];
    let stride = [1, shape[0], shape[0] * shape[1]];
    let slice_ok = inside(slice, normal);
    for r in window[0]..window[0] + size[0] as isize {
        let row_ok = slice_ok && inside(r, row_axis);
        for c in window[1]..window[1] + size[1] as isize {
            let index = (row_ok && inside(c, col_axis)).then(|| {
                slice as usize * stride[normal]
                    + r as usize * stride[row_axis]
                    + c as usize * stride[col_axis]
            });
            each(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_hold_the_slice_and_its_neighbours_padded_outside() {
        // Voxel value = its index, volume 2 x 3 x 4.
        let image: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let view = VolumeView {
            image: &image,
            shape: [2, 3, 4],
            pad: -1.0,
        };
        let mut out = Vec::new();
        // Axial slice z = 0: the neighbour below is outside, rows x, columns y.
        stack(view, Orientation::Axial, 0, [0, 0], [2, 3], &mut out);
        assert_eq!(out[..6], [-1.0; 6]);
        assert_eq!(out[6..12], [0.0, 2.0, 4.0, 1.0, 3.0, 5.0]);
        assert_eq!(out[12..], [6.0, 8.0, 10.0, 7.0, 9.0, 11.0]);
        // Sagittal slice x = 1, window shifted past the volume's y end: rows y, columns z.
        out.clear();
        stack(view, Orientation::Sagittal, 1, [2, 0], [2, 2], &mut out);
        // Neighbour x = 0 comes first: y = 2 (z = 0, 1), then y = 3 (outside).
        assert_eq!(out[..4], [4.0, 10.0, -1.0, -1.0]);
        assert_eq!(out[4..8], [5.0, 11.0, -1.0, -1.0]);
        assert_eq!(out[8..], [-1.0; 4]);
    }

    #[test]
    fn pixel_stacks_are_stacks_with_the_slices_interleaved() {
        let image: Vec<f32> = (0..60).map(|v| v as f32).collect();
        let view = VolumeView {
            image: &image,
            shape: [3, 4, 5],
            pad: -1.0,
        };
        for o in Orientation::ALL {
            for (slice, window) in [(0, [0, 0]), (2, [-1, 1]), (4, [1, -2])] {
                let (mut by_slice, mut by_pixel) = (Vec::new(), Vec::new());
                stack(view, o, slice, window, [3, 4], &mut by_slice);
                pixel_stack(view, o, slice, window, [3, 4], &mut by_pixel);
                let interleaved: Vec<f32> = (0..12)
                    .flat_map(|p| (0..INPUT_CHANNELS).map(move |c| (c, p)))
                    .map(|(c, p)| by_slice[c * 12 + p])
                    .collect();
                assert_eq!(by_pixel, interleaved, "{o:?} slice {slice}");
            }
        }
    }

    #[test]
    fn blurred_stacks_smooth_across_rows_columns_and_slices() {
        // A single bright voxel in the middle of a 9^3 volume of zeros.
        let shape = [9, 9, 9];
        let mut image = vec![0.0f32; 729];
        let centre = 4 + 9 * 4 + 81 * 4;
        image[centre] = 1.0;
        let view = VolumeView {
            image: &image,
            shape,
            pad: 0.0,
        };
        let (mut sharp, mut blurred) = (Vec::new(), Vec::new());
        stack(view, Orientation::Axial, 4, [2, 2], [5, 5], &mut sharp);
        blurred_stack(
            view,
            Orientation::Axial,
            4,
            [2, 2],
            [5, 5],
            0.0,
            &mut blurred,
        );
        assert_eq!(sharp, blurred, "sigma 0 is the plain stack");
        blurred.clear();
        blurred_stack(
            view,
            Orientation::Axial,
            4,
            [2, 2],
            [5, 5],
            0.8,
            &mut blurred,
        );
        assert_eq!(blurred.len(), 3 * 25);
        let at = |c: usize, r: usize, col: usize| blurred[c * 25 + r * 5 + col];
        // The peak is lower, spread symmetrically to the neighbouring rows, columns and
        // slices, and the neighbouring slices (channels 0 and 2) are no longer empty.
        assert!(at(1, 2, 2) < 0.5 && at(1, 2, 2) > 0.0);
        assert!((at(1, 1, 2) - at(1, 3, 2)).abs() < 1e-6);
        assert!((at(1, 2, 1) - at(1, 2, 3)).abs() < 1e-6);
        assert!((at(1, 1, 2) - at(1, 2, 1)).abs() < 1e-6);
        assert!(at(0, 2, 2) > 0.0 && (at(0, 2, 2) - at(2, 2, 2)).abs() < 1e-6);
        assert!(at(1, 2, 2) > at(1, 1, 2) && at(1, 1, 2) > at(1, 0, 2));
        // Nothing is lost: the 5x5x3 window holds almost all of the blurred voxel.
        let total: f32 = blurred.iter().sum();
        assert!(total > 0.8 && total <= 1.0 + 1e-5, "{total}");
    }
}
