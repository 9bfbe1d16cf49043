//! mtseg's bottom layer, `mtseg::io`: medical volumes in and out, without the networks (this
//! crate builds without burn, for tools that only read and write volumes).
//!
//! Reads NIfTI-1/2 (`.nii`, `.nii.gz`), NRRD (`.nrrd`, `.nhdr`), MetaImage (`.mha`, `.mhd`)
//! and DICOM series ([`dicom`]) into one [`Volume`] type with a RAS+ voxel-to-world affine;
//! writes NIfTI and DICOM SEG. Every write is atomic (see [`atomic`]). Errors name the file
//! ([`error`]).
//!
//! ```no_run
//! # fn main() -> mtseg_io::Result<()> {
//! let image = mtseg_io::read_image("t1.nii.gz".as_ref())?;
//! println!("{:?} voxels, axes {:?}", image.grid.shape, mtseg_io::orientation::axcodes(&image.grid.affine));
//! mtseg_io::write_image("t1_copy.nii".as_ref(), &image)?;
//! # Ok(())
//! # }
//! ```

pub mod atomic;
pub mod dicom;
pub mod error;
pub mod metaimage;
pub mod nifti;
pub mod nrrd;
pub mod orientation;
mod text_header;
pub mod volume;
pub mod voxels;

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

pub use error::{Error, Result};
pub use orientation::Reorientation;
pub use volume::{Affine, DataType, Format, Grid, Image, LabelMap, Provenance, Volume};
pub use voxels::{RawVoxels, Scaling};

use nifti::Intent;

/// A volume as its file stores it: raw voxels (any type), scaling, grid and provenance. A
/// 4-D file (fMRI, diffusion, several echoes) holds `frames` 3-D volumes on the grid, one
/// after the other.
#[derive(Clone, Debug)]
pub struct RawVolume {
    pub voxels: RawVoxels,
    pub grid: Grid,
    pub provenance: Provenance,
    pub scaling: Option<Scaling>,
    /// 3-D volumes in the file (the product of its dimensions past the third), at least 1.
    pub frames: usize,
}

impl RawVolume {
    /// The image (f32 intensities, scaling applied) of a file holding one 3-D volume; a 4-D
    /// file of several is refused with how to pick one. NaN and infinite voxels are set to 0
    /// with a warning that counts them.
    pub fn into_image(self, path: &Path) -> Result<Image> {
        let raw = self.single(path)?;
        let mut data = raw.voxels.to_f32(raw.scaling);
        let bad = voxels::replace_non_finite(&mut data);
        if bad > 0 {
            tracing::warn!(
                "{}: {bad} voxels are NaN or infinite; they are read as 0",
                path.display()
            );
        }
        Ok(Volume {
            data,
            grid: raw.grid,
            provenance: raw.provenance,
        })
    }

    /// The one 3-D volume a scan must be for segmentation and training; a 4-D file with
    /// several is refused with how to pick one.
    fn single(self, path: &Path) -> Result<RawVolume> {
        if self.frames > 1 {
            return Err(Error::invalid(
                path,
                format!(
                    "a 4-D file of {} volumes where one 3-D volume is expected: pick one with \
                     `mtseg convert {} OUT.nii.gz --volume K` (K from 0 to {})",
                    self.frames,
                    path.display(),
                    self.frames - 1
                ),
            ));
        }
        Ok(self)
    }

    /// Volume `k` of a 4-D file as a 3-D one.
    pub fn volume(&self, path: &Path, k: usize) -> Result<RawVolume> {
        if k >= self.frames {
            return Err(Error::usage(format!(
                "{}: volume {k} asked for, the file has {} (0 to {})",
                path.display(),
                self.frames,
                self.frames - 1
            )));
        }
        let size = self.grid.len() * self.voxels.datatype.size();
        let mut one = self.clone();
        one.voxels.bytes = self.voxels.bytes[k * size..(k + 1) * size].to_vec();
        one.frames = 1;
        Ok(one)
    }
}

/// The file formats mtseg reads, recognised by file name.
pub fn format_of(path: &Path) -> Option<Format> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".nii") || name.ends_with(".nii.gz") {
        Some(Format::Nifti1)
    } else if name.ends_with(".nrrd") || name.ends_with(".nhdr") {
        Some(Format::Nrrd)
    } else if name.ends_with(".mha") || name.ends_with(".mhd") {
        Some(Format::MetaImage)
    } else {
        None
    }
}

/// Whether `path` names a volume file mtseg can read (by its ending).
pub fn is_volume_file(path: &Path) -> bool {
    format_of(path).is_some()
}

pub(crate) fn is_gz(path: &Path) -> bool {
    path.to_string_lossy().to_ascii_lowercase().ends_with(".gz")
}

/// Opens a file for reading with errors that say what is wrong (missing, a folder, no
/// permission), naming the file.
pub(crate) fn open_file(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::invalid(path, "is a folder, expected a file"));
    }
    File::open(path).map_err(|e| Error::io(path, e))
}

/// Opens a file for reading, gunzipping it when its name ends in `.gz`.
pub(crate) fn open_input(path: &Path) -> Result<Box<dyn Read>> {
    let reader = BufReader::new(open_file(path)?);
    Ok(if is_gz(path) {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else {
        Box::new(reader)
    })
}

/// Reads any supported file as stored; a DICOM file or folder holding one series (see
/// [`dicom::read`] to pick one of several).
pub fn read_raw(path: &Path) -> Result<RawVolume> {
    if dicom::is_dicom_input(path) {
        return dicom::read(path, None).map(|(volume, _)| volume);
    }
    if path.is_dir() && format_of(path).is_none() {
        return Err(Error::invalid(
            path,
            "a folder without DICOM files: give a volume file (or a DICOM folder)",
        ));
    }
    match format_of(path) {
        Some(Format::Nrrd) => nrrd::read(path),
        Some(Format::MetaImage) => metaimage::read(path),
        Some(_) => nifti::read(path),
        None => Err(Error::invalid(
            path,
            "unknown file type: mtseg reads .nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd and DICOM",
        )),
    }
}

/// Reads an image as f32 intensities (scaling applied). NaN and infinite voxels are set to 0
/// with a warning that counts them.
pub fn read_image(path: &Path) -> Result<Image> {
    read_raw(path)?.into_image(path)
}

/// Reads a label map: every voxel must be a whole number from 0 to 65535.
pub fn read_labels(path: &Path) -> Result<LabelMap> {
    let raw = read_raw(path)?.single(path)?;
    let data = raw.voxels.to_labels(path, raw.scaling)?;
    Ok(Volume {
        data,
        grid: raw.grid,
        provenance: raw.provenance,
    })
}

fn check_output_name(path: &Path) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if name.ends_with(".nii") || name.ends_with(".nii.gz") {
        Ok(())
    } else {
        Err(Error::invalid(
            path,
            "mtseg writes NIfTI: give the output a .nii or .nii.gz name",
        ))
    }
}

/// Writes an image as float32 NIfTI, keeping the header geometry it was read with.
pub fn write_image(path: &Path, image: &Image) -> Result<()> {
    write_image_as(path, image, DataType::F32)
}

/// Writes an image as NIfTI of `datatype` (float32, or int16/uint8 with values rounded and
/// clamped to the type's range), keeping the header geometry it was read with.
pub fn write_image_as(path: &Path, image: &Image, datatype: DataType) -> Result<()> {
    check_output_name(path)?;
    let (grid, prov) = (&image.grid, &image.provenance);
    let data = &image.data;
    match datatype {
        DataType::F32 => {
            let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            nifti::write(path, grid, 1, prov, datatype, Intent::Image, None, &bytes)
        }
        DataType::I16 => {
            let v: Vec<u8> = data
                .iter()
                .flat_map(|v| {
                    (v.round().clamp(i16::MIN as f32, i16::MAX as f32) as i16).to_le_bytes()
                })
                .collect();
            nifti::write(path, grid, 1, prov, datatype, Intent::Image, None, &v)
        }
        DataType::U8 => {
            let v: Vec<u8> = data
                .iter()
                .map(|v| v.round().clamp(0.0, 255.0) as u8)
                .collect();
            nifti::write(path, grid, 1, prov, datatype, Intent::Image, None, &v)
        }
        other => Err(Error::usage(format!(
            "writing images as {} is not supported (float32, int16 or uint8)",
            other.name()
        ))),
    }
}

/// Writes a label map as uint8 NIfTI (uint16 when a label exceeds 255), with the label intent.
pub fn write_labels(path: &Path, labels: &LabelMap) -> Result<()> {
    check_output_name(path)?;
    let (grid, prov) = (&labels.grid, &labels.provenance);
    if labels.data.iter().all(|&v| v <= u8::MAX as u16) {
        let bytes: Vec<u8> = labels.data.iter().map(|&v| v as u8).collect();
        nifti::write(
            path,
            grid,
            1,
            prov,
            DataType::U8,
            Intent::Labels,
            None,
            &bytes,
        )
    } else {
        nifti::write(
            path,
            grid,
            1,
            prov,
            DataType::U16,
            Intent::Labels,
            None,
            &labels
                .data
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        )
    }
}

/// Writes a volume (3-D, or 4-D with all its frames) keeping its voxel type and scaling.
pub fn write_raw(path: &Path, volume: &RawVolume) -> Result<()> {
    check_output_name(path)?;
    let voxels = &volume.voxels;
    let t = voxels.datatype;
    let swapped: Vec<u8>;
    let little_endian = if voxels.big_endian {
        swapped = voxels
            .bytes
            .chunks_exact(t.size())
            .flat_map(|v| v.iter().rev().copied())
            .collect();
        &swapped
    } else {
        &voxels.bytes
    };
    nifti::write(
        path,
        &volume.grid,
        volume.frames,
        &volume.provenance,
        t,
        Intent::Image,
        // Stored values with their scaling, as the input has them.
        volume.scaling,
        little_endian,
    )
}
