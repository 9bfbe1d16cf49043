//! Raw voxel bytes as a file stores them, and their conversion to images (f32) and label maps
//! (integers). Shared by the NIfTI, NRRD and MetaImage readers.

use std::io::Read;
use std::path::Path;

use super::volume::DataType;
use crate::error::{Error, Result};

/// Volumes larger than this are refused before anything is allocated: 2^31 voxels is an
/// 8 GiB f32 image, beyond any scan mtseg is meant for, and far below what a corrupt header
/// can claim (a product of dims overflowing 64 bits).
pub const MAX_VOXELS: u64 = 1 << 31;

/// Voxel bytes in file order with their type and byte order.
#[derive(Clone, Debug)]
pub struct RawVoxels {
    pub bytes: Vec<u8>,
    pub datatype: DataType,
    pub big_endian: bool,
}

/// Linear scaling stored with the voxels (NIfTI scl_slope/scl_inter).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scaling {
    pub slope: f64,
    pub inter: f64,
}

/// Checks a shape before anything is allocated for it and returns its voxel and byte counts.
pub fn checked_size(path: &Path, dims: &[u64], datatype: DataType) -> Result<(usize, usize)> {
    let voxels = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            Error::invalid(
                path,
                format!("dimensions {dims:?} overflow: corrupt header?"),
            )
        })?;
    if voxels > MAX_VOXELS {
        return Err(Error::invalid(
            path,
            format!(
                "dimensions {dims:?} make {voxels} voxels ({:.1} GiB of {}): refusing volumes over {MAX_VOXELS} voxels",
                voxels as f64 * datatype.size() as f64 / (1u64 << 30) as f64,
                datatype.name()
            ),
        ));
    }
    let voxels = voxels as usize;
    Ok((voxels, voxels * datatype.size()))
}

/// Reads exactly `nbytes` from `reader`, growing the buffer only as data arrives, so a header
/// that lies about the size cannot make us allocate memory the file does not back.
pub fn read_exact_bytes(path: &Path, reader: impl Read, nbytes: usize) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(nbytes.min(64 << 20));
    reader
        .take(nbytes as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| stream_error(path, e))?;
    if bytes.len() < nbytes {
        return Err(Error::invalid(
            path,
            format!(
                "truncated: the header promises {nbytes} bytes of voxel data, the file holds {}",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

/// Turns the I/O errors of a (possibly gzip) stream into messages a user can act on.
pub fn stream_error(path: &Path, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            Error::invalid(path, "truncated: the file ends before its data does")
        }
        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => Error::invalid(
            path,
            format!("corrupt compressed data ({e}): the file is damaged or not what its name says"),
        ),
        _ => Error::io(path, e),
    }
}

macro_rules! decode_each {
    ($bytes:expr, $big:expr, $t:ty, $f:expr) => {{
        const N: usize = std::mem::size_of::<$t>();
        $bytes
            .chunks_exact(N)
            .map(|c| {
                let arr: [u8; N] = c.try_into().expect("chunks_exact gives N bytes");
                let v = if $big {
                    <$t>::from_be_bytes(arr)
                } else {
                    <$t>::from_le_bytes(arr)
                };
                $f(v)
            })
            .collect()
    }};
}

impl RawVoxels {
    pub fn len(&self) -> usize {
        self.bytes.len() / self.datatype.size()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Every voxel as f64, in file order (for statistics and exact conversions).
    pub fn to_f64(&self) -> Vec<f64> {
        let b = &self.bytes;
        let big = self.big_endian;
        match self.datatype {
            DataType::U8 => b.iter().map(|&v| v as f64).collect(),
            DataType::I8 => b.iter().map(|&v| v as i8 as f64).collect(),
            DataType::U16 => decode_each!(b, big, u16, |v| v as f64),
            DataType::I16 => decode_each!(b, big, i16, |v| v as f64),
            DataType::U32 => decode_each!(b, big, u32, |v| v as f64),
            DataType::I32 => decode_each!(b, big, i32, |v| v as f64),
            DataType::U64 => decode_each!(b, big, u64, |v| v as f64),
            DataType::I64 => decode_each!(b, big, i64, |v| v as f64),
            DataType::F32 => decode_each!(b, big, f32, |v| v as f64),
            DataType::F64 => decode_each!(b, big, f64, |v| v),
        }
    }

    /// Intensities as f32 with the scaling applied. Non-finite values stay as they are; the
    /// caller decides what to do with them (see [`replace_non_finite`]).
    pub fn to_f32(&self, scaling: Option<Scaling>) -> Vec<f32> {
        let b = &self.bytes;
        let big = self.big_endian;
        let mut out: Vec<f32> = match self.datatype {
            DataType::U8 => b.iter().map(|&v| v as f32).collect(),
            DataType::I8 => b.iter().map(|&v| v as i8 as f32).collect(),
            DataType::U16 => decode_each!(b, big, u16, |v| v as f32),
            DataType::I16 => decode_each!(b, big, i16, |v| v as f32),
            DataType::U32 => decode_each!(b, big, u32, |v| v as f32),
            DataType::I32 => decode_each!(b, big, i32, |v| v as f32),
            DataType::U64 => decode_each!(b, big, u64, |v| v as f32),
            DataType::I64 => decode_each!(b, big, i64, |v| v as f32),
            DataType::F32 => decode_each!(b, big, f32, |v| v),
            DataType::F64 => decode_each!(b, big, f64, |v| v as f32),
        };
        if let Some(Scaling { slope, inter }) = scaling {
            for v in &mut out {
                *v = (*v as f64 * slope + inter) as f32;
            }
        }
        out
    }

    /// Class ids: every voxel must be a whole number in 0..=65535 (after scaling). A float
    /// file whose values are all whole numbers is a valid label map.
    pub fn to_labels(&self, path: &Path, scaling: Option<Scaling>) -> Result<Vec<u16>> {
        if !self.datatype.is_float()
            && scaling.is_none()
            && matches!(self.datatype, DataType::U8 | DataType::U16)
        {
            // The common case, without a detour through f64.
            let b = &self.bytes;
            return Ok(match self.datatype {
                DataType::U8 => b.iter().map(|&v| v as u16).collect(),
                _ => decode_each!(b, self.big_endian, u16, |v| v),
            });
        }
        let values = self.to_f64();
        let mut labels = Vec::with_capacity(values.len());
        for (i, v) in values.into_iter().enumerate() {
            let v = match scaling {
                Some(s) => v * s.slope + s.inter,
                None => v,
            };
            if !v.is_finite() || v.fract() != 0.0 || !(0.0..=u16::MAX as f64).contains(&v) {
                return Err(Error::invalid(
                    path,
                    format!(
                        "not a label map: voxel {i} holds {v}, labels must be whole numbers from 0 to {}",
                        u16::MAX
                    ),
                ));
            }
            labels.push(v as u16);
        }
        Ok(labels)
    }
}

/// Sets NaN and infinite intensities to 0 and returns how many there were. Zero is what the
/// normalisation later maps to "no signal"; the reader warns with the count.
pub fn replace_non_finite(values: &mut [f32]) -> usize {
    let mut count = 0;
    for v in values.iter_mut().filter(|v| !v.is_finite()) {
        *v = 0.0;
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(bytes: Vec<u8>, datatype: DataType, big_endian: bool) -> RawVoxels {
        RawVoxels {
            bytes,
            datatype,
            big_endian,
        }
    }

    #[test]
    fn decodes_every_type_in_both_byte_orders() {
        let le = raw((-2i16).to_le_bytes().to_vec(), DataType::I16, false);
        let be = raw((-2i16).to_be_bytes().to_vec(), DataType::I16, true);
        assert_eq!(le.to_f32(None), vec![-2.0]);
        assert_eq!(be.to_f32(None), vec![-2.0]);
        let f = raw(1.5f64.to_be_bytes().to_vec(), DataType::F64, true);
        assert_eq!(f.to_f64(), vec![1.5]);
        let u = raw(vec![200], DataType::U8, false);
        let i = raw(vec![200], DataType::I8, false);
        assert_eq!(u.to_f32(None), vec![200.0]);
        assert_eq!(i.to_f32(None), vec![-56.0]);
    }

    #[test]
    fn scaling_applies_to_images() {
        let v = raw(vec![10, 20], DataType::U8, false);
        let s = Scaling {
            slope: 0.5,
            inter: -1.0,
        };
        assert_eq!(v.to_f32(Some(s)), vec![4.0, 9.0]);
    }

    #[test]
    fn whole_floats_are_labels_fractions_and_negatives_are_not() {
        let p = Path::new("x.nii");
        let whole: Vec<u8> = [0.0f32, 2.0, 1.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            raw(whole, DataType::F32, false).to_labels(p, None).unwrap(),
            vec![0, 2, 1]
        );
        let frac: Vec<u8> = 0.5f32.to_le_bytes().to_vec();
        let err = raw(frac, DataType::F32, false)
            .to_labels(p, None)
            .unwrap_err();
        assert!(err.to_string().contains("not a label map"), "{err}");
        let neg = raw((-1i16).to_le_bytes().to_vec(), DataType::I16, false);
        assert!(neg.to_labels(p, None).is_err());
        let nan = raw(f32::NAN.to_le_bytes().to_vec(), DataType::F32, false);
        assert!(nan.to_labels(p, None).is_err());
    }

    #[test]
    fn absurd_sizes_are_refused_before_allocation() {
        let p = Path::new("x.nii");
        assert!(checked_size(p, &[u64::MAX, 2, 1], DataType::U8).is_err());
        let err = checked_size(p, &[32767, 32767, 32767], DataType::F32).unwrap_err();
        assert!(err.to_string().contains("refusing"), "{err}");
        assert_eq!(
            checked_size(p, &[2, 3, 4], DataType::I16).unwrap(),
            (24, 48)
        );
    }

    #[test]
    fn short_streams_are_reported_as_truncated() {
        let p = Path::new("x.nii");
        let err = read_exact_bytes(p, &[1u8, 2, 3][..], 10).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        assert_eq!(
            read_exact_bytes(p, &[1u8, 2, 3][..], 2).unwrap(),
            vec![1, 2]
        );
    }

    #[test]
    fn non_finite_values_become_zero_and_are_counted() {
        let mut v = vec![1.0, f32::NAN, f32::INFINITY, -2.0];
        assert_eq!(replace_non_finite(&mut v), 2);
        assert_eq!(v, vec![1.0, 0.0, 0.0, -2.0]);
    }
}
