//! NIfTI-1 and NIfTI-2, `.nii` and `.nii.gz`.
//!
//! NIfTI-1 headers are parsed and written by the `nifti` crate. That crate knows no NIfTI-2
//! (540-byte header, 64-bit dims), so the NIfTI-2 header codec below is written by hand. Both
//! versions meet in [`HeaderFields`], from which the affine is chosen as nibabel does: the
//! sform if its code is set, else the qform, else a base affine from pixdim.

use std::fs::File;
use std::io::{Cursor, Read, Write};
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use nalgebra::{Matrix3, Matrix4};
use nifti::{Endianness, NiftiHeader, NiftiType, XForm};

use super::volume::{Affine, DataType, Format, Grid, Provenance};
use super::voxels::{RawVoxels, Scaling, checked_size, read_exact_bytes, stream_error};
use super::{RawVolume, is_gz, open_input};
use crate::error::{Error, Result};

const NIFTI1_HEADER_SIZE: i32 = 348;
const NIFTI2_HEADER_SIZE: i32 = 540;
const NIFTI2_MAGIC: [u8; 8] = *b"n+2\0\r\n\x1a\n";
/// NIFTI_INTENT_LABEL: tells viewers (Slicer, ITK-SNAP) that the voxels are class ids.
pub const INTENT_LABEL: i32 = 1002;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NiftiVersion {
    V1,
    V2,
}

/// The header fields of either NIfTI version, in the wider NIfTI-2 types.
#[derive(Clone, Debug, PartialEq)]
pub struct HeaderFields {
    pub dim: [i64; 8],
    pub datatype: i16,
    pub pixdim: [f64; 8],
    pub vox_offset: f64,
    pub scl_slope: f64,
    pub scl_inter: f64,
    pub cal_max: f64,
    pub cal_min: f64,
    pub slice_duration: f64,
    pub toffset: f64,
    pub slice_start: i64,
    pub slice_end: i64,
    pub slice_code: i32,
    pub xyzt_units: i32,
    pub dim_info: u8,
    pub intent_code: i32,
    pub intent_p: [f64; 3],
    pub intent_name: [u8; 16],
    pub descrip: [u8; 80],
    pub aux_file: [u8; 24],
    pub qform_code: i32,
    pub sform_code: i32,
    /// quatern_b, quatern_c, quatern_d.
    pub quatern: [f64; 3],
    /// qoffset_x, qoffset_y, qoffset_z.
    pub qoffset: [f64; 3],
    pub srow: [[f64; 4]; 3],
    pub big_endian: bool,
}

/// A NIfTI header read from a file: what a writer copies so that an output on the same grid
/// has the input's exact header geometry.
#[derive(Clone, Debug, PartialEq)]
pub struct NiftiTemplate {
    pub version: NiftiVersion,
    pub fields: HeaderFields,
}

pub fn read(path: &Path) -> Result<RawVolume> {
    let mut reader = open_input(path)?;
    let mut first = [0u8; 4];
    reader
        .read_exact(&mut first)
        .map_err(|e| stream_error(path, e))?;
    let (version, big_endian) = match (i32::from_le_bytes(first), i32::from_be_bytes(first)) {
        (NIFTI1_HEADER_SIZE, _) => (NiftiVersion::V1, false),
        (_, NIFTI1_HEADER_SIZE) => (NiftiVersion::V1, true),
        (NIFTI2_HEADER_SIZE, _) => (NiftiVersion::V2, false),
        (_, NIFTI2_HEADER_SIZE) => (NiftiVersion::V2, true),
        (le, _) => {
            return Err(Error::invalid(
                path,
                format!(
                    "not a NIfTI file: sizeof_hdr is {le}, expected 348 (NIfTI-1) or 540 (NIfTI-2)"
                ),
            ));
        }
    };
    let fields = match version {
        NiftiVersion::V1 => {
            let header = NiftiHeader::from_reader(Cursor::new(first).chain(&mut reader))
                .map_err(|e| nifti1_error(path, e))?;
            if header.magic == *b"ni1\0" {
                return Err(Error::invalid(
                    path,
                    "a NIfTI-1 header of a .hdr/.img pair: convert it to a single .nii file",
                ));
            }
            from_nifti1(&header)
        }
        NiftiVersion::V2 => {
            let mut bytes = vec![0u8; NIFTI2_HEADER_SIZE as usize];
            bytes[..4].copy_from_slice(&first);
            reader
                .read_exact(&mut bytes[4..])
                .map_err(|e| stream_error(path, e))?;
            parse_nifti2(path, &bytes, big_endian)?
        }
    };
    let header_size = match version {
        NiftiVersion::V1 => NIFTI1_HEADER_SIZE,
        NiftiVersion::V2 => NIFTI2_HEADER_SIZE,
    } as u64;

    let (shape, frames) = spatial_shape(path, &fields)?;
    let datatype = data_type(path, fields.datatype)?;
    let dims = [shape[0], shape[1], shape[2], frames].map(|d| d as u64);
    let (_, nbytes) = checked_size(path, &dims, datatype)?;
    let grid = Grid::new(shape, affine(path, &fields, shape)?);

    if !fields.vox_offset.is_finite() || fields.vox_offset < header_size as f64 {
        return Err(Error::invalid(
            path,
            format!(
                "vox_offset is {} but the voxel data cannot start inside the {header_size}-byte header",
                fields.vox_offset
            ),
        ));
    }
    let vox_offset = fields.vox_offset as u64;
    // An uncompressed file tells its size: check before reading or allocating anything.
    if !is_gz(path) {
        let file_len = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        if vox_offset + nbytes as u64 > file_len {
            return Err(Error::invalid(
                path,
                format!(
                    "truncated: the header places {nbytes} bytes of voxels at offset {vox_offset}, the file has {file_len} bytes"
                ),
            ));
        }
    }
    // Skip header extensions up to vox_offset.
    let skip = vox_offset - header_size;
    let skipped = std::io::copy(&mut (&mut reader).take(skip), &mut std::io::sink())
        .map_err(|e| stream_error(path, e))?;
    if skipped < skip {
        return Err(Error::invalid(
            path,
            format!("truncated: vox_offset {vox_offset} lies past the end of the file"),
        ));
    }
    let bytes = read_exact_bytes(path, reader, nbytes)?;

    let scaling = scaling(path, &fields)?;
    let provenance = Provenance {
        format: match version {
            NiftiVersion::V1 => Format::Nifti1,
            NiftiVersion::V2 => Format::Nifti2,
        },
        datatype,
        qform_code: fields.qform_code as i16,
        sform_code: fields.sform_code as i16,
        template: Some(NiftiTemplate { version, fields }),
    };
    Ok(RawVolume {
        voxels: RawVoxels {
            bytes,
            datatype,
            big_endian,
        },
        grid,
        provenance,
        scaling,
        frames,
    })
}

fn nifti1_error(path: &Path, e: nifti::NiftiError) -> Error {
    match e {
        nifti::NiftiError::InvalidFormat => Error::invalid(
            path,
            "not a NIfTI-1 file: the magic string is not 'n+1' (or 'ni1')",
        ),
        nifti::NiftiError::Io(io) => stream_error(path, io),
        other => Error::invalid(path, format!("bad NIfTI-1 header: {other}")),
    }
}

/// The three spatial dims (2-D images get one slice) and the number of 3-D volumes along the
/// higher ones.
fn spatial_shape(path: &Path, f: &HeaderFields) -> Result<([usize; 3], usize)> {
    let ndim = f.dim[0];
    if !(1..=7).contains(&ndim) {
        return Err(Error::invalid(
            path,
            format!("dim[0] is {ndim}, the number of dimensions must be 1 to 7"),
        ));
    }
    let ndim = ndim as usize;
    let dims = &f.dim[1..=ndim];
    if let Some((i, d)) = dims.iter().enumerate().find(|(_, d)| **d <= 0) {
        return Err(Error::invalid(
            path,
            format!("dim[{}] is {d}: every dimension must be at least 1", i + 1),
        ));
    }
    // Each dimension is at least 1, so the product only overflows for absurd headers.
    let frames = dims
        .iter()
        .skip(3)
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .filter(|&f| f <= usize::MAX as u64)
        .ok_or_else(|| Error::invalid(path, format!("dimensions {dims:?} overflow")))?;
    let get = |i: usize| dims.get(i).copied().unwrap_or(1) as usize;
    Ok(([get(0), get(1), get(2)], frames as usize))
}

fn data_type(path: &Path, code: i16) -> Result<DataType> {
    Ok(match code {
        2 => DataType::U8,
        4 => DataType::I16,
        8 => DataType::I32,
        16 => DataType::F32,
        64 => DataType::F64,
        256 => DataType::I8,
        512 => DataType::U16,
        768 => DataType::U32,
        1024 => DataType::I64,
        1280 => DataType::U64,
        1 | 32 | 128 | 1536 | 1792 | 2048 | 2304 => {
            return Err(Error::invalid(
                path,
                format!(
                    "NIfTI datatype {code} (binary, complex, RGB or float128) is not a scalar image mtseg can use"
                ),
            ));
        }
        other => {
            return Err(Error::invalid(
                path,
                format!("unknown NIfTI datatype code {other}"),
            ));
        }
    })
}

fn nifti_code(datatype: DataType) -> NiftiType {
    match datatype {
        DataType::U8 => NiftiType::Uint8,
        DataType::I8 => NiftiType::Int8,
        DataType::U16 => NiftiType::Uint16,
        DataType::I16 => NiftiType::Int16,
        DataType::U32 => NiftiType::Uint32,
        DataType::I32 => NiftiType::Int32,
        DataType::U64 => NiftiType::Uint64,
        DataType::I64 => NiftiType::Int64,
        DataType::F32 => NiftiType::Float32,
        DataType::F64 => NiftiType::Float64,
    }
}

/// nibabel's rule: a zero or non-finite slope means "no scaling"; a finite slope needs a
/// finite intercept.
fn scaling(path: &Path, f: &HeaderFields) -> Result<Option<Scaling>> {
    if f.scl_slope == 0.0 || !f.scl_slope.is_finite() {
        if f.scl_slope.is_nan() {
            tracing::warn!(
                "{}: scl_slope is NaN; reading voxels unscaled",
                path.display()
            );
        }
        return Ok(None);
    }
    if !f.scl_inter.is_finite() {
        return Err(Error::invalid(
            path,
            format!(
                "scl_slope is {} but scl_inter is {}: cannot scale the voxels",
                f.scl_slope, f.scl_inter
            ),
        ));
    }
    if f.scl_slope == 1.0 && f.scl_inter == 0.0 {
        return Ok(None);
    }
    Ok(Some(Scaling {
        slope: f.scl_slope,
        inter: f.scl_inter,
    }))
}

/// The voxel-to-world affine, chosen as nibabel's `get_best_affine` does.
pub fn affine(path: &Path, f: &HeaderFields, shape: [usize; 3]) -> Result<Affine> {
    let affine = if f.sform_code != 0 {
        let s = &f.srow;
        Matrix4::new(
            s[0][0], s[0][1], s[0][2], s[0][3], s[1][0], s[1][1], s[1][2], s[1][3], s[2][0],
            s[2][1], s[2][2], s[2][3], 0.0, 0.0, 0.0, 1.0,
        )
    } else if f.qform_code != 0 {
        qform_affine(path, f)?
    } else {
        let zooms = positive_zooms(path, f, "the base affine (no qform or sform)")?;
        let mut a = Affine::identity();
        let signs = [-1.0, 1.0, 1.0];
        for axis in 0..3 {
            let zoom = zooms[axis] * signs[axis];
            a[(axis, axis)] = zoom;
            a[(axis, 3)] = -((shape[axis] as f64 - 1.0) / 2.0) * zoom;
        }
        a
    };
    check_affine(path, &affine)?;
    Ok(affine)
}

/// Rejects affines no grid can have: non-finite entries, or a zero-volume voxel.
pub fn check_affine(path: &Path, affine: &Affine) -> Result<()> {
    if affine.iter().any(|v| !v.is_finite()) {
        return Err(Error::invalid(
            path,
            "the voxel-to-world affine holds NaN or infinite values",
        ));
    }
    let det = affine.fixed_view::<3, 3>(0, 0).determinant();
    if det.abs() < 1e-12 {
        return Err(Error::invalid(
            path,
            "the voxel-to-world affine is singular: zero spacing or collapsed axes",
        ));
    }
    Ok(())
}

fn positive_zooms(path: &Path, f: &HeaderFields, used_for: &str) -> Result<[f64; 3]> {
    let zooms = [f.pixdim[1], f.pixdim[2], f.pixdim[3]];
    if zooms.iter().any(|z| !z.is_finite() || *z <= 0.0) {
        return Err(Error::invalid(
            path,
            format!(
                "pixdim[1..4] is {zooms:?}: spacing must be positive and finite for {used_for}"
            ),
        ));
    }
    Ok(zooms)
}

fn qform_affine(path: &Path, f: &HeaderFields) -> Result<Affine> {
    let zooms = positive_zooms(path, f, "the qform")?;
    let [b, c, d] = f.quatern;
    let w2 = 1.0 - (b * b + c * c + d * d);
    // The same tolerance as nibabel: rounding can push |q| slightly over 1.
    let a = if w2 < 0.0 {
        if w2 < -3.0 * f32::EPSILON as f64 {
            return Err(Error::invalid(
                path,
                format!("qform quaternion ({b}, {c}, {d}) has a norm over 1"),
            ));
        }
        0.0
    } else {
        w2.sqrt()
    };
    #[rustfmt::skip]
    let r = Matrix3::new(
        a * a + b * b - c * c - d * d, 2.0 * (b * c - a * d), 2.0 * (b * d + a * c),
        2.0 * (b * c + a * d), a * a + c * c - b * b - d * d, 2.0 * (c * d - a * b),
        2.0 * (b * d - a * c), 2.0 * (c * d + a * b), a * a + d * d - c * c - b * b,
    );
    // qfac (pixdim[0]) of 0 or anything but -1 means 1, as nibabel fixes it on load.
    let qfac = if f.pixdim[0] == -1.0 { -1.0 } else { 1.0 };
    let scale =
        Matrix3::from_diagonal(&nalgebra::Vector3::new(zooms[0], zooms[1], zooms[2] * qfac));
    let m = r * scale;
    let mut affine = Affine::identity();
    affine.fixed_view_mut::<3, 3>(0, 0).copy_from(&m);
    for axis in 0..3 {
        affine[(axis, 3)] = f.qoffset[axis];
    }
    Ok(affine)
}

fn from_nifti1(h: &NiftiHeader) -> HeaderFields {
    let mut descrip = [0u8; 80];
    let n = h.descrip.len().min(80);
    descrip[..n].copy_from_slice(&h.descrip[..n]);
    HeaderFields {
        // NIfTI-1 dims are signed 16-bit; the crate reads them unsigned.
        dim: h.dim.map(|d| d as i16 as i64),
        datatype: h.datatype,
        pixdim: h.pixdim.map(|v| v as f64),
        vox_offset: h.vox_offset as f64,
        scl_slope: h.scl_slope as f64,
        scl_inter: h.scl_inter as f64,
        cal_max: h.cal_max as f64,
        cal_min: h.cal_min as f64,
        slice_duration: h.slice_duration as f64,
        toffset: h.toffset as f64,
        slice_start: h.slice_start as i64,
        slice_end: h.slice_end as i64,
        slice_code: h.slice_code as i32,
        xyzt_units: h.xyzt_units as i32,
        dim_info: h.dim_info,
        intent_code: h.intent_code as i32,
        intent_p: [h.intent_p1 as f64, h.intent_p2 as f64, h.intent_p3 as f64],
        intent_name: h.intent_name,
        descrip,
        aux_file: h.aux_file,
        qform_code: h.qform_code as i32,
        sform_code: h.sform_code as i32,
        quatern: [h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64],
        qoffset: [h.quatern_x as f64, h.quatern_y as f64, h.quatern_z as f64],
        srow: [
            h.srow_x.map(|v| v as f64),
            h.srow_y.map(|v| v as f64),
            h.srow_z.map(|v| v as f64),
        ],
        big_endian: h.endianness == Endianness::Big,
    }
}

/// Little helper to read NIfTI-2's fixed layout in either byte order.
struct Fields<'a> {
    bytes: &'a [u8],
    big: bool,
}

impl Fields<'_> {
    fn raw<const N: usize>(&self, at: usize) -> [u8; N] {
        self.bytes[at..at + N]
            .try_into()
            .expect("offset within header")
    }
    fn i16(&self, at: usize) -> i16 {
        let b = self.raw::<2>(at);
        if self.big {
            i16::from_be_bytes(b)
        } else {
            i16::from_le_bytes(b)
        }
    }
    fn i32(&self, at: usize) -> i32 {
        let b = self.raw::<4>(at);
        if self.big {
            i32::from_be_bytes(b)
        } else {
            i32::from_le_bytes(b)
        }
    }
    fn i64(&self, at: usize) -> i64 {
        let b = self.raw::<8>(at);
        if self.big {
            i64::from_be_bytes(b)
        } else {
            i64::from_le_bytes(b)
        }
    }
    fn f64(&self, at: usize) -> f64 {
        let b = self.raw::<8>(at);
        if self.big {
            f64::from_be_bytes(b)
        } else {
            f64::from_le_bytes(b)
        }
    }
}

/// NIfTI-2 field offsets (nifti2.h).
fn parse_nifti2(path: &Path, bytes: &[u8], big_endian: bool) -> Result<HeaderFields> {
    if bytes[4..12] != NIFTI2_MAGIC {
        return Err(Error::invalid(
            path,
            "not a NIfTI-2 file: the magic string is not 'n+2'",
        ));
    }
    let h = Fields {
        bytes,
        big: big_endian,
    };
    let f64s = |at: usize, n: usize| -> Vec<f64> { (0..n).map(|i| h.f64(at + 8 * i)).collect() };
    let srow = |at: usize| -> [f64; 4] { f64s(at, 4).try_into().expect("4 values") };
    Ok(HeaderFields {
        datatype: h.i16(12),
        dim: std::array::from_fn(|i| h.i64(16 + 8 * i)),
        intent_p: [h.f64(80), h.f64(88), h.f64(96)],
        pixdim: std::array::from_fn(|i| h.f64(104 + 8 * i)),
        vox_offset: h.i64(168) as f64,
        scl_slope: h.f64(176),
        scl_inter: h.f64(184),
        cal_max: h.f64(192),
        cal_min: h.f64(200),
        slice_duration: h.f64(208),
        toffset: h.f64(216),
        slice_start: h.i64(224),
        slice_end: h.i64(232),
        descrip: h.raw::<80>(240),
        aux_file: h.raw::<24>(320),
        qform_code: h.i32(344),
        sform_code: h.i32(348),
        quatern: [h.f64(352), h.f64(360), h.f64(368)],
        qoffset: [h.f64(376), h.f64(384), h.f64(392)],
        srow: [srow(400), srow(432), srow(464)],
        slice_code: h.i32(496),
        xyzt_units: h.i32(500),
        intent_code: h.i32(504),
        intent_name: h.raw::<16>(508),
        dim_info: bytes[524],
        big_endian,
    })
}

/// The 540-byte NIfTI-2 header, little-endian, voxels at offset 544.
/// A NIfTI-1 header (348 bytes, little-endian, magic "n+1") and the empty extension flag:
/// written by hand because the `nifti` crate's writer sets scl_slope and scl_inter to 1 and 0.
fn encode_nifti1(f: &HeaderFields) -> Vec<u8> {
    let mut out = Vec::with_capacity(352);
    let f32s = |out: &mut Vec<u8>, values: &[f64]| {
        values
            .iter()
            .for_each(|v| out.extend_from_slice(&(*v as f32).to_le_bytes()))
    };
    out.extend_from_slice(&NIFTI1_HEADER_SIZE.to_le_bytes());
    // data_type, db_name, extents, session_error: unused.
    out.extend_from_slice(&[0u8; 10 + 18 + 4 + 2]);
    out.push(b'r');
    out.push(f.dim_info);
    f.dim
        .iter()
        .for_each(|d| out.extend_from_slice(&(*d as i16).to_le_bytes()));
    f32s(&mut out, &f.intent_p);
    out.extend_from_slice(&(f.intent_code as i16).to_le_bytes());
    out.extend_from_slice(&f.datatype.to_le_bytes());
    let bitpix = data_type(Path::new(""), f.datatype).map_or(0, |t| t.size() as i16 * 8);
    out.extend_from_slice(&bitpix.to_le_bytes());
    out.extend_from_slice(&(f.slice_start as i16).to_le_bytes());
    f32s(&mut out, &f.pixdim);
    f32s(&mut out, &[352.0, f.scl_slope, f.scl_inter]);
    out.extend_from_slice(&(f.slice_end as i16).to_le_bytes());
    out.push(f.slice_code as u8);
    out.push(f.xyzt_units as u8);
    f32s(
        &mut out,
        &[f.cal_max, f.cal_min, f.slice_duration, f.toffset],
    );
    // glmax, glmin: unused.
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&f.descrip);
    out.extend_from_slice(&f.aux_file);
    out.extend_from_slice(&(f.qform_code as i16).to_le_bytes());
    out.extend_from_slice(&(f.sform_code as i16).to_le_bytes());
    f32s(&mut out, &f.quatern);
    f32s(&mut out, &f.qoffset);
    for row in &f.srow {
        f32s(&mut out, row);
    }
    out.extend_from_slice(&f.intent_name);
    out.extend_from_slice(b"n+1\0");
    debug_assert_eq!(out.len(), 348);
    // Extension flag: no extensions follow.
    out.extend_from_slice(&[0u8; 4]);
    out
}

fn encode_nifti2(f: &HeaderFields) -> Vec<u8> {
    let mut out = Vec::with_capacity(544);
    out.extend_from_slice(&NIFTI2_HEADER_SIZE.to_le_bytes());
    out.extend_from_slice(&NIFTI2_MAGIC);
    out.extend_from_slice(&f.datatype.to_le_bytes());
    let bitpix = data_type(Path::new(""), f.datatype).map_or(0, |t| t.size() as i16 * 8);
    out.extend_from_slice(&bitpix.to_le_bytes());
    f.dim
        .iter()
        .for_each(|d| out.extend_from_slice(&d.to_le_bytes()));
    f.intent_p
        .iter()
        .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    f.pixdim
        .iter()
        .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    out.extend_from_slice(&544i64.to_le_bytes());
    for v in [
        f.scl_slope,
        f.scl_inter,
        f.cal_max,
        f.cal_min,
        f.slice_duration,
        f.toffset,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&f.slice_start.to_le_bytes());
    out.extend_from_slice(&f.slice_end.to_le_bytes());
    out.extend_from_slice(&f.descrip);
    out.extend_from_slice(&f.aux_file);
    out.extend_from_slice(&f.qform_code.to_le_bytes());
    out.extend_from_slice(&f.sform_code.to_le_bytes());
    for v in f.quatern.iter().chain(&f.qoffset) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for v in f.srow.iter().flatten() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for v in [f.slice_code, f.xyzt_units, f.intent_code] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&f.intent_name);
    out.push(f.dim_info);
    out.extend_from_slice(&[0u8; 15]);
    debug_assert_eq!(out.len(), 540);
    // Extension flag: no extensions follow.
    out.extend_from_slice(&[0u8; 4]);
    out
}

/// What the written voxels mean, for the header's intent code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    Image,
    Labels,
}

/// The header for writing voxels of `datatype` on `grid`. When the volume still carries the
/// header it was read with and its grid is unchanged, every geometry field is copied from
/// it; otherwise sform and qform are both set from the affine.
fn header_for(
    path: &Path,
    grid: &Grid,
    frames: usize,
    provenance: &Provenance,
    datatype: DataType,
    intent: Intent,
    scaling: Option<Scaling>,
) -> Result<(NiftiVersion, HeaderFields)> {
    check_affine(path, &grid.affine)?;
    let kept = provenance.template.as_ref().filter(|t| {
        spatial_shape(path, &t.fields).ok().map(|(shape, _)| shape) == Some(grid.shape)
            && affine(path, &t.fields, grid.shape)
                .map(|a| (a - grid.affine).abs().max() < 1e-6)
                .unwrap_or(false)
    });
    let (version, mut fields) = match kept {
        Some(t) => (t.version, t.fields.clone()),
        None => (NiftiVersion::V1, fresh_header(grid, provenance)),
    };
    let version = if grid.shape.iter().any(|&d| d > i16::MAX as usize) {
        NiftiVersion::V2
    } else {
        version
    };
    fields.dim = [3, 1, 1, 1, 1, 1, 1, 1];
    for axis in 0..3 {
        fields.dim[axis + 1] = grid.shape[axis] as i64;
    }
    if frames > 1 {
        fields.dim[0] = 4;
        fields.dim[4] = frames as i64;
        // The template's time step when it had one.
        if fields.pixdim[4] <= 0.0 || !fields.pixdim[4].is_finite() {
            fields.pixdim[4] = 1.0;
        }
    }
    fields.datatype = nifti_code(datatype) as i16;
    (fields.scl_slope, fields.scl_inter) = scaling.map_or((1.0, 0.0), |s| (s.slope, s.inter));
    fields.cal_min = 0.0;
    fields.cal_max = 0.0;
    fields.big_endian = false;
    fields.intent_code = match intent {
        Intent::Image => 0,
        Intent::Labels => INTENT_LABEL,
    };
    fields.intent_p = [0.0; 3];
    fields.intent_name = [0; 16];
    let mut descrip = [0u8; 80];
    let text = b"mtseg";
    descrip[..text.len()].copy_from_slice(text);
    fields.descrip = descrip;
    Ok((version, fields))
}

/// A header whose sform and qform both encode the grid's affine (as nibabel writes them).
fn fresh_header(grid: &Grid, provenance: &Provenance) -> HeaderFields {
    let mut h = NiftiHeader::default();
    let code = |c: i16| match c {
        1 => XForm::ScannerAnat,
        2 => XForm::AlignedAnat,
        3 => XForm::Talairach,
        4 => XForm::Mni152,
        _ => XForm::ScannerAnat,
    };
    h.set_sform(&grid.affine, code(provenance.sform_code));
    h.set_qform(&grid.affine, code(provenance.qform_code));
    // Millimetres and seconds.
    h.xyzt_units = 2 | 8;
    // The crate writes f32 sform rows; keep the exact f64 affine for NIfTI-2.
    let mut fields = from_nifti1(&h);
    for r in 0..3 {
        for c in 0..4 {
            fields.srow[r][c] = grid.affine[(r, c)];
        }
    }
    fields
}

/// Writes voxels given as little-endian bytes of `datatype` as a NIfTI file at `path`
/// (atomically; `.gz` endings are compressed): `frames` 3-D volumes on `grid`, 4-D when there
/// are several, their values scaled by `scaling` (scl_slope, scl_inter) when given.
#[allow(clippy::too_many_arguments)]
pub fn write(
    path: &Path,
    grid: &Grid,
    frames: usize,
    provenance: &Provenance,
    datatype: DataType,
    intent: Intent,
    scaling: Option<Scaling>,
    voxels: &[u8],
) -> Result<()> {
    assert_eq!(voxels.len(), grid.len() * frames * datatype.size());
    let (version, fields) = header_for(path, grid, frames, provenance, datatype, intent, scaling)?;
    let header = match version {
        NiftiVersion::V1 => encode_nifti1(&fields),
        NiftiVersion::V2 => encode_nifti2(&fields),
    };
    super::atomic::write_with(path, |temp| write_stream(temp, &header, voxels))
}

/// The header, then the voxels, gzipped when `temp`'s name ends in `.gz`.
fn write_stream(temp: &Path, header: &[u8], voxels: &[u8]) -> Result<()> {
    let file = File::create(temp).map_err(|e| Error::io(temp, e))?;
    let mut out: Box<dyn Write> = if is_gz(temp) {
        Box::new(GzEncoder::new(file, Compression::fast()))
    } else {
        Box::new(std::io::BufWriter::new(file))
    };
    let io = |e| Error::io(temp, e);
    out.write_all(header).map_err(io)?;
    out.write_all(voxels).map_err(io)?;
    out.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields_with(qform: [f64; 3], pixdim: [f64; 4]) -> HeaderFields {
        let mut f = from_nifti1(&NiftiHeader::default());
        f.sform_code = 0;
        f.qform_code = 1;
        f.quatern = qform;
        f.qoffset = [10.0, 20.0, 30.0];
        f.pixdim[..4].copy_from_slice(&pixdim);
        f
    }

    #[test]
    fn identity_qform_gives_zooms_and_offsets() {
        let f = fields_with([0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]);
        let a = affine(Path::new("q.nii"), &f, [5, 5, 5]).unwrap();
        assert_eq!(a[(0, 0)], 2.0);
        assert_eq!(a[(1, 1)], 3.0);
        assert_eq!(a[(2, 2)], 4.0);
        assert_eq!(a[(0, 3)], 10.0);
    }

    #[test]
    fn qfac_minus_one_flips_the_third_axis() {
        let f = fields_with([0.0, 0.0, 0.0], [-1.0, 1.0, 1.0, 2.0]);
        let a = affine(Path::new("q.nii"), &f, [5, 5, 5]).unwrap();
        assert_eq!(a[(2, 2)], -2.0);
    }

    #[test]
    fn a_180_degree_rotation_about_z_flips_x_and_y() {
        // b = c = 0, d = 1 -> a = 0: rotation by pi about z.
        let f = fields_with([0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]);
        let a = affine(Path::new("q.nii"), &f, [5, 5, 5]).unwrap();
        assert!((a[(0, 0)] + 1.0).abs() < 1e-12);
        assert!((a[(1, 1)] + 1.0).abs() < 1e-12);
        assert!((a[(2, 2)] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn base_affine_centres_the_grid_and_flips_x() {
        let mut f = fields_with([0.0; 3], [1.0, 2.0, 2.0, 2.0]);
        f.qform_code = 0;
        let a = affine(Path::new("b.nii"), &f, [11, 11, 11]).unwrap();
        assert_eq!(a[(0, 0)], -2.0);
        assert_eq!(a[(0, 3)], 10.0);
        assert_eq!(a[(1, 3)], -10.0);
    }

    #[test]
    fn zero_or_negative_spacing_is_an_error() {
        for bad in [0.0, -1.0, f64::NAN] {
            let f = fields_with([0.0; 3], [1.0, bad, 1.0, 1.0]);
            let err = affine(Path::new("z.nii"), &f, [2, 2, 2]).unwrap_err();
            assert!(err.to_string().contains("pixdim"), "{err}");
        }
    }

    /// A 4-D file is read with all its volumes and written back 4-D; one volume can be taken
    /// out; reading it as one 3-D image is refused with how to pick one. A fourth dimension
    /// of 1 is a 3-D image.
    #[test]
    fn four_d_files_keep_their_volumes() {
        let dir = tempfile::tempdir().unwrap();
        let grid = Grid::axis_aligned([3, 2, 2], [1.0, 2.0, 3.0]);
        let provenance = Provenance::memory(DataType::U16);
        let values: Vec<u16> = (0..grid.len() as u16 * 3).collect();
        for (name, frames) in [("a.nii", 3), ("b.nii.gz", 3), ("c.nii", 1)] {
            let path = dir.path().join(name);
            let voxels: Vec<u8> = values[..grid.len() * frames]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            write(
                &path,
                &grid,
                frames,
                &provenance,
                DataType::U16,
                Intent::Image,
                None,
                &voxels,
            )
            .unwrap();
            let raw = read(&path).unwrap();
            assert_eq!((raw.frames, raw.grid.shape), (frames, grid.shape), "{name}");
            let copy = dir.path().join(format!("copy_{name}"));
            crate::write_raw(&copy, &raw).unwrap();
            let again = read(&copy).unwrap();
            assert_eq!(again.voxels.bytes, raw.voxels.bytes, "{name}");
            assert_eq!(again.frames, frames);
            let last = raw.volume(&path, frames - 1).unwrap();
            assert_eq!(last.frames, 1);
            let expected: Vec<f32> = values[(frames - 1) * grid.len()..frames * grid.len()]
                .iter()
                .map(|&v| v as f32)
                .collect();
            assert_eq!(last.voxels.to_f32(None), expected);
            assert!(raw.volume(&path, frames).is_err());
            match crate::read_image(&path) {
                Ok(image) => assert_eq!(frames, 1, "{name}: {:?}", image.grid.shape),
                Err(e) => {
                    assert!(frames > 1);
                    let text = e.to_string();
                    assert!(text.contains(name) && text.contains("--volume"), "{text}");
                }
            }
        }
    }

    #[test]
    fn nifti1_header_round_trips_through_the_crates_reader() {
        let mut f = fields_with([0.25, -0.5, 0.125], [-1.0, 0.5, 0.75, 2.0]);
        f.dim = [4, 7, 6, 5, 3, 1, 1, 1];
        f.pixdim[4] = 1.5;
        f.datatype = 4;
        f.sform_code = 2;
        f.srow = [
            [0.5, 0.0, 0.0, -1.0],
            [0.0, 0.75, 0.0, -2.0],
            [0.0, 0.0, 2.0, -3.0],
        ];
        f.vox_offset = 352.0;
        f.scl_slope = 2.5;
        f.scl_inter = -1024.0;
        f.intent_code = INTENT_LABEL;
        f.descrip[..5].copy_from_slice(b"mtseg");
        f.xyzt_units = 10;
        f.big_endian = false;
        let bytes = encode_nifti1(&f);
        assert_eq!(bytes.len(), 352);
        let header = NiftiHeader::from_reader(std::io::Cursor::new(&bytes)).unwrap();
        assert_eq!(&header.magic, b"n+1\0");
        assert_eq!(header.bitpix, 16);
        assert_eq!(from_nifti1(&header), f);
    }

    #[test]
    fn nifti2_header_round_trips() {
        let mut f = fields_with([0.1, 0.2, 0.3], [1.0, 0.5, 0.6, 0.7]);
        f.dim = [3, 70000, 2, 3, 1, 1, 1, 1];
        f.datatype = 16;
        f.sform_code = 2;
        f.srow = [
            [0.5, 0.0, 0.0, -1.0],
            [0.0, 0.6, 0.0, -2.0],
            [0.0, 0.0, 0.7, -3.0],
        ];
        f.vox_offset = 544.0;
        f.scl_slope = 1.0;
        f.scl_inter = 0.0;
        f.big_endian = false;
        let bytes = encode_nifti2(&f);
        assert_eq!(bytes.len(), 544);
        let back = parse_nifti2(Path::new("x.nii"), &bytes[..540], false).unwrap();
        assert_eq!(back, f);
    }
}
