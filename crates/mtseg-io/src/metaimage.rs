//! ITK MetaImage: `.mha` (header and data in one file) and `.mhd` with a separate raw file,
//! optionally zlib-compressed. Written by hand: no maintained Rust crate reads MetaImage.
//! MetaImage geometry is in ITK's LPS world; it is converted to RAS here.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;

use flate2::read::ZlibDecoder;

use super::text_header::{exactly, numbers, read_line};
use super::volume::{Affine, DataType, Format, Grid, Provenance};
use super::voxels::{RawVoxels, checked_size, read_exact_bytes};
use super::{RawVolume, open_file};
use crate::error::{Error, Result};

pub fn read(path: &Path) -> Result<RawVolume> {
    let mut reader = BufReader::new(open_file(path)?);
    let mut fields = HashMap::new();
    let mut total = 0;
    // ElementDataFile is always the last field; for LOCAL data the voxels follow its line.
    loop {
        let line = read_line(path, &mut reader, &mut total)?.ok_or_else(|| {
            Error::invalid(
                path,
                "not a MetaImage file, or truncated: no ElementDataFile field",
            )
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let (key, value) = line.split_once('=').ok_or_else(|| {
            Error::invalid(
                path,
                format!(
                    "not a MetaImage header: line '{}' has no '='",
                    truncate(&line)
                ),
            )
        })?;
        let key = key.trim().to_string();
        let value = value.trim().to_string();
        let last = key == "ElementDataFile";
        fields.insert(key, value);
        if last {
            break;
        }
    }
    let field = |name: &str| fields.get(name).map(String::as_str);
    let required = |name: &str| {
        field(name).ok_or_else(|| Error::invalid(path, format!("missing MetaImage field '{name}'")))
    };
    let flag = |name: &str| field(name).is_some_and(|v| v.eq_ignore_ascii_case("true"));

    let ndims: usize = required("NDims")?
        .parse()
        .map_err(|_| Error::invalid(path, "field 'NDims' is not a whole number"))?;
    if !(1..=3).contains(&ndims) {
        return Err(Error::invalid(
            path,
            format!("NDims is {ndims}: a 3-D volume is expected"),
        ));
    }
    if field("ElementNumberOfChannels").is_some_and(|c| c.trim() != "1") {
        return Err(Error::invalid(
            path,
            "multi-channel MetaImage where a scalar volume is expected",
        ));
    }
    let dims = exactly(
        path,
        "DimSize",
        numbers::<i64>(path, "DimSize", required("DimSize")?)?,
        ndims,
    )?;
    if let Some(bad) = dims.iter().find(|&&d| d <= 0) {
        return Err(Error::invalid(
            path,
            format!("DimSize holds {bad}: every size must be at least 1"),
        ));
    }
    let datatype = data_type(path, required("ElementType")?)?;
    let (_, nbytes) = checked_size(
        path,
        &dims.iter().map(|&d| d as u64).collect::<Vec<_>>(),
        datatype,
    )?;
    let shape: [usize; 3] = std::array::from_fn(|i| dims.get(i).map_or(1, |&d| d as usize));

    let affine = geometry(path, &fields, ndims)?;
    super::nifti::check_affine(path, &affine)?;

    let big_endian = flag("BinaryDataByteOrderMSB") || flag("ElementByteOrderMSB");
    let compressed = flag("CompressedData");
    let data_file = required("ElementDataFile")?;
    let source: Box<dyn BufRead> = if data_file.eq_ignore_ascii_case("LOCAL") {
        Box::new(reader)
    } else if data_file.contains('%') || data_file.eq_ignore_ascii_case("LIST") {
        return Err(Error::invalid(
            path,
            "MetaImage with one data file per slice is not supported",
        ));
    } else {
        let data_path = path.parent().unwrap_or(Path::new(".")).join(data_file);
        let mut file = open_file(&data_path).map_err(|e| {
            Error::invalid(path, format!("cannot open its data file {data_file}: {e}"))
        })?;
        // HeaderSize: bytes to skip in the data file; -1 means "the data is at the end".
        let header_size: i64 = field("HeaderSize").map_or(Ok(0), |v| {
            v.trim()
                .parse()
                .map_err(|_| Error::invalid(path, "field 'HeaderSize' is not a whole number"))
        })?;
        let seek = if header_size == -1 && !compressed {
            SeekFrom::End(-(nbytes as i64))
        } else {
            SeekFrom::Start(header_size.max(0) as u64)
        };
        file.seek(seek).map_err(|_| {
            Error::invalid(
                &data_path,
                format!("truncated: expected {nbytes} bytes of voxel data"),
            )
        })?;
        Box::new(BufReader::new(file))
    };
    let bytes = if compressed {
        read_exact_bytes(path, ZlibDecoder::new(source), nbytes)?
    } else {
        read_exact_bytes(path, source, nbytes)?
    };
    Ok(RawVolume {
        voxels: RawVoxels {
            bytes,
            datatype,
            big_endian,
        },
        grid: Grid::new(shape, affine),
        provenance: Provenance {
            format: Format::MetaImage,
            datatype,
            qform_code: 1,
            sform_code: 1,
            template: None,
        },
        scaling: None,
        frames: 1,
    })
}

fn truncate(line: &str) -> String {
    line.chars().take(40).collect()
}

fn data_type(path: &Path, name: &str) -> Result<DataType> {
    Ok(match name {
        "MET_UCHAR" => DataType::U8,
        "MET_CHAR" => DataType::I8,
        "MET_USHORT" => DataType::U16,
        "MET_SHORT" => DataType::I16,
        "MET_UINT" | "MET_ULONG" => DataType::U32,
        "MET_INT" | "MET_LONG" => DataType::I32,
        "MET_ULONG_LONG" => DataType::U64,
        "MET_LONG_LONG" => DataType::I64,
        "MET_FLOAT" => DataType::F32,
        "MET_DOUBLE" => DataType::F64,
        other => {
            return Err(Error::invalid(
                path,
                format!("MetaImage ElementType '{other}' is not supported"),
            ));
        }
    })
}

/// World = Offset + sum_i index_i * spacing_i * direction_i in LPS; then to RAS. ITK reads
/// TransformMatrix so that its i-th group of `ndims` numbers is the direction of voxel axis i.
fn geometry(path: &Path, fields: &HashMap<String, String>, ndims: usize) -> Result<Affine> {
    let get = |names: &[&str]| names.iter().find_map(|n| fields.get(*n));
    let spacing = match get(&["ElementSpacing", "ElementSize"]) {
        Some(text) => exactly(
            path,
            "ElementSpacing",
            numbers::<f64>(path, "ElementSpacing", text)?,
            ndims,
        )?,
        None => vec![1.0; ndims],
    };
    let offset = match get(&["Offset", "Origin", "Position"]) {
        Some(text) => exactly(path, "Offset", numbers::<f64>(path, "Offset", text)?, ndims)?,
        None => vec![0.0; ndims],
    };
    let matrix = match get(&["TransformMatrix", "Rotation", "Orientation"]) {
        Some(text) => exactly(
            path,
            "TransformMatrix",
            numbers::<f64>(path, "TransformMatrix", text)?,
            ndims * ndims,
        )?,
        None => (0..ndims * ndims)
            .map(|i| if i % (ndims + 1) == 0 { 1.0 } else { 0.0 })
            .collect(),
    };
    // LPS -> RAS.
    let flip = [-1.0, -1.0, 1.0];
    let mut affine = Affine::identity();
    for axis in 0..ndims {
        for row in 0..ndims {
            affine[(row, axis)] = matrix[axis * ndims + row] * spacing[axis] * flip[row];
        }
    }
    for row in 0..ndims {
        affine[(row, 3)] = offset[row] * flip[row];
    }
    Ok(affine)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn mha_with_local_data_and_lps_geometry() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = b"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\nCompressedData = False\nTransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 1 2 3\nElementSpacing = 0.5 0.5 2\nDimSize = 2 1 1\nElementType = MET_SHORT\nElementDataFile = LOCAL\n".to_vec();
        file.extend_from_slice(&[5, 0, 0xff, 0xff]);
        let v = read(&write(dir.path(), "a.mha", &file)).unwrap();
        assert_eq!(v.voxels.to_f32(None), vec![5.0, -1.0]);
        assert_eq!(v.grid.affine[(0, 0)], -0.5);
        assert_eq!(v.grid.affine[(1, 1)], -0.5);
        assert_eq!(v.grid.affine[(2, 2)], 2.0);
        assert_eq!(
            [
                v.grid.affine[(0, 3)],
                v.grid.affine[(1, 3)],
                v.grid.affine[(2, 3)]
            ],
            [-1.0, -2.0, 3.0]
        );
    }

    #[test]
    fn mhd_with_separate_compressed_raw() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&[1, 2, 3, 4]).unwrap();
        write(dir.path(), "b.zraw", &z.finish().unwrap());
        let header = b"ObjectType = Image\nNDims = 3\nCompressedData = True\nDimSize = 2 2 1\nElementType = MET_UCHAR\nElementDataFile = b.zraw\n";
        let v = read(&write(dir.path(), "b.mhd", header)).unwrap();
        assert_eq!(v.voxels.to_f32(None), vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn missing_raw_file_and_bad_type_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let header =
            b"NDims = 3\nDimSize = 2 2 1\nElementType = MET_UCHAR\nElementDataFile = gone.raw\n";
        let err = read(&write(dir.path(), "c.mhd", header))
            .unwrap_err()
            .to_string();
        assert!(err.contains("gone.raw"), "{err}");
        let header =
            b"NDims = 3\nDimSize = 2 2 1\nElementType = MET_STRING\nElementDataFile = LOCAL\n";
        let err = read(&write(dir.path(), "d.mha", header))
            .unwrap_err()
            .to_string();
        assert!(err.contains("MET_STRING"), "{err}");
    }
}
