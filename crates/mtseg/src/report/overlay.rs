//! Pictures of volumes: orthogonal slices with a label overlay, in the radiological
//! convention viewers use (patient's right on the left of the screen, anterior and superior
//! up), at the true aspect ratio of the voxels.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::error::{Error, Result};
use crate::io::{Image, LabelMap, Reorientation};
use crate::preprocess::normalize::percentiles;

/// Distinct colours for label values 1, 2, ... (cycled).
const PALETTE: [[u8; 3]; 10] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 190, 212],
];

pub fn label_colour(label: u16) -> [u8; 3] {
    PALETTE[(label as usize - 1) % PALETTE.len()]
}

/// Which plane a slice lies in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plane {
    Axial,
    Coronal,
    Sagittal,
}

impl Plane {
    pub const ALL: [Plane; 3] = [Plane::Axial, Plane::Coronal, Plane::Sagittal];

    /// The canonical (RAS) axis held fixed by this plane.
    pub fn normal_axis(self) -> usize {
        match self {
            Plane::Axial => 2,
            Plane::Coronal => 1,
            Plane::Sagittal => 0,
        }
    }

    /// (column axis, row axis) of the picture; both drawn from high to low coordinates so
    /// that right is on the left and anterior/superior are up.
    fn picture_axes(self) -> (usize, usize) {
        match self {
            Plane::Axial => (0, 1),
            Plane::Coronal => (0, 2),
            Plane::Sagittal => (1, 2),
        }
    }
}

/// A volume and optional labels, reoriented to RAS for display.
pub struct View {
    image: Image,
    labels: Option<LabelMap>,
    window: (f32, f32),
}

impl View {
    pub fn new(image: &Image, labels: Option<&LabelMap>) -> Result<View> {
        if let Some(l) = labels
            && l.grid.shape != image.grid.shape
        {
            return Err(Error::usage(format!(
                "the label map's shape {:?} differs from the image's {:?}",
                l.grid.shape, image.grid.shape
            )));
        }
        let r = Reorientation::to_ras(&image.grid);
        let image = r.apply(image);
        let labels = labels.map(|l| r.apply(l));
        let p = percentiles(&image.data, &[0.5, 99.5]);
        Ok(View {
            image,
            labels,
            window: (p[0], p[1].max(p[0] + 1e-3)),
        })
    }

    /// The centre of the labelled foreground (or of the volume), in canonical voxels.
    pub fn foreground_centre(&self) -> [usize; 3] {
        let shape = self.image.grid.shape;
        let mut sum = [0f64; 3];
        let mut n = 0f64;
        if let Some(labels) = &self.labels {
            for (i, &l) in labels.data.iter().enumerate() {
                if l > 0 {
                    let c = labels.grid.coords(i);
                    for a in 0..3 {
                        sum[a] += c[a] as f64;
                    }
                    n += 1.0;
                }
            }
        }
        if n == 0.0 {
            return shape.map(|s| s / 2);
        }
        std::array::from_fn(|a| ((sum[a] / n).round() as usize).min(shape[a] - 1))
    }

    /// One slice through `index` of the plane's normal axis, scaled so that the shorter
    /// side has at least `min_pixels` pixels.
    pub fn slice(&self, plane: Plane, index: usize, min_pixels: u32) -> RgbImage {
        let grid = &self.image.grid;
        let spacing = grid.spacing();
        let (cu, cv) = plane.picture_axes();
        let normal = plane.normal_axis();
        let (nu, nv) = (grid.shape[cu], grid.shape[cv]);
        // Pixel size: the finest in-plane spacing, then scaled up for small volumes.
        let pixel = spacing[cu].min(spacing[cv]);
        let (wu, wv) = (
            nu as f64 * spacing[cu] / pixel,
            nv as f64 * spacing[cv] / pixel,
        );
        let zoom = (min_pixels as f64 / wu.min(wv)).max(1.0);
        let (width, height) = ((wu * zoom).round() as u32, (wv * zoom).round() as u32);
        let (lo, hi) = self.window;
        let mut out = RgbImage::new(width.max(1), height.max(1));
        for py in 0..out.height() {
            for px in 0..out.width() {
                // High coordinates first: right on the left, anterior/superior on top.
                let u = nu
                    - 1
                    - ((px as f64 + 0.5) / width as f64 * nu as f64).min(nu as f64 - 1.0) as usize;
                let v = nv
                    - 1
                    - ((py as f64 + 0.5) / height as f64 * nv as f64).min(nv as f64 - 1.0) as usize;
                let mut c = [0usize; 3];
                c[cu] = u;
                c[cv] = v;
                c[normal] = index.min(grid.shape[normal] - 1);
                let i = grid.index(c[0], c[1], c[2]);
                let g = ((self.image.data[i] - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0;
                let mut rgb = [g; 3];
                if let Some(labels) = &self.labels {
                    let l = labels.data[i];
                    if l > 0 {
                        let colour = label_colour(l);
                        for k in 0..3 {
                            rgb[k] = 0.55 * rgb[k] + 0.45 * colour[k] as f32;
                        }
                    }
                }
                out.put_pixel(px, py, Rgb(rgb.map(|v| v as u8)));
            }
        }
        out
    }

    /// The three orthogonal slices through `centre`, side by side.
    pub fn three_planes(&self, centre: [usize; 3], min_pixels: u32) -> RgbImage {
        let panels: Vec<RgbImage> = Plane::ALL
            .iter()
            .map(|&p| self.slice(p, centre[p.normal_axis()], min_pixels))
            .collect();
        side_by_side(&panels, 4)
    }
}

/// Panels in a row on a black background, `gap` pixels apart, top-aligned.
pub fn side_by_side(panels: &[RgbImage], gap: u32) -> RgbImage {
    let width =
        panels.iter().map(|p| p.width()).sum::<u32>() + gap * panels.len().saturating_sub(1) as u32;
    let height = panels.iter().map(|p| p.height()).max().unwrap_or(1);
    let mut out = RgbImage::new(width.max(1), height);
    let mut x = 0;
    for p in panels {
        image::imageops::overlay(&mut out, p, x as i64, 0);
        x += p.width() + gap;
    }
    out
}

/// Panels stacked in a column.
pub fn stacked(rows: &[RgbImage], gap: u32) -> RgbImage {
    let width = rows.iter().map(|p| p.width()).max().unwrap_or(1);
    let height =
        rows.iter().map(|p| p.height()).sum::<u32>() + gap * rows.len().saturating_sub(1) as u32;
    let mut out = RgbImage::new(width, height.max(1));
    let mut y = 0;
    for r in rows {
        image::imageops::overlay(&mut out, r, 0, y as i64);
        y += r.height() + gap;
    }
    out
}

/// Writes a PNG atomically.
pub fn save_png(path: &Path, picture: &RgbImage) -> Result<()> {
    crate::io::atomic::write_with(path, |temp| {
        picture
            .save_with_format(temp, image::ImageFormat::Png)
            .map_err(|e| Error::invalid(path, format!("cannot write PNG: {e}")))
    })
}

/// `mtseg overlay`: three orthogonal slices through the foreground centre, with the label
/// map over the image.
pub fn overlay_png(image: &Image, labels: Option<&LabelMap>, out: &Path) -> Result<()> {
    let view = View::new(image, labels)?;
    let picture = view.three_planes(view.foreground_centre(), 256);
    save_png(out, &picture)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{DataType, Grid, Volume};

    #[test]
    fn slices_follow_the_radiological_convention() {
        // A bright voxel at high x (patient's right) and high y (anterior).
        let grid = Grid::axis_aligned([4, 4, 4], [1.0; 3]);
        let mut data = vec![0f32; 64];
        data[grid.index(3, 3, 2)] = 1.0;
        let image = Volume::filled(grid, 0f32, DataType::F32).with_data(data);
        let view = View::new(&image, None).unwrap();
        let axial = view.slice(Plane::Axial, 2, 4);
        assert_eq!(axial.dimensions(), (4, 4));
        // Right is drawn on the left, anterior on top: the bright pixel is top-left.
        assert_eq!(axial.get_pixel(0, 0)[0], 255);
        assert_eq!(axial.get_pixel(3, 3)[0], 0);
    }

    #[test]
    fn anisotropic_voxels_keep_their_aspect() {
        let grid = Grid::axis_aligned([10, 10, 5], [1.0, 1.0, 2.0]);
        let image = Volume::filled(grid, 1f32, DataType::F32);
        let view = View::new(&image, None).unwrap();
        let coronal = view.slice(Plane::Coronal, 5, 10);
        assert_eq!(coronal.dimensions(), (10, 10));
    }
}
