//! NRRD (`.nrrd` with attached data, `.nhdr` with a detached data file), raw, gzip or ASCII
//! encoded. Written by hand: no maintained Rust crate reads NRRD. Geometry (space directions,
//! space origin) is converted from the file's space (usually LPS) to RAS.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use super::text_header::{exactly, numbers, read_line};
use super::volume::{Affine, DataType, Format, Grid, Provenance};
use super::voxels::{RawVoxels, checked_size, read_exact_bytes, stream_error};
use super::{RawVolume, open_file};
use crate::error::{Error, Result};

pub fn read(path: &Path) -> Result<RawVolume> {
    let mut reader = BufReader::new(open_file(path)?);
    let mut total = 0;
    let magic = read_line(path, &mut reader, &mut total)?.unwrap_or_default();
    if !magic.starts_with("NRRD000") {
        return Err(Error::invalid(
            path,
            "not a NRRD file: it does not start with 'NRRD000'",
        ));
    }
    let mut fields = HashMap::new();
    loop {
        match read_line(path, &mut reader, &mut total)? {
            None => break,
            Some(line) if line.is_empty() => break,
            Some(line) if line.starts_with('#') => continue,
            Some(line) => {
                // "key:=value" lines are free-form key/value pairs, not fields.
                if line.contains(":=") {
                    continue;
                }
                let (key, value) = line.split_once(": ").ok_or_else(|| {
                    Error::invalid(path, format!("malformed header line '{line}'"))
                })?;
                fields.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
    }
    let field = |name: &str| fields.get(name).map(String::as_str);
    let required = |name: &str| {
        field(name).ok_or_else(|| Error::invalid(path, format!("missing NRRD field '{name}'")))
    };

    let datatype = data_type(path, required("type")?)?;
    let dimension: usize = required("dimension")?
        .parse()
        .map_err(|_| Error::invalid(path, "field 'dimension' is not a whole number"))?;
    if !(1..=16).contains(&dimension) {
        return Err(Error::invalid(
            path,
            format!("dimension {dimension} is not supported"),
        ));
    }
    let sizes = exactly(
        path,
        "sizes",
        numbers::<i64>(path, "sizes", required("sizes")?)?,
        dimension,
    )?;
    if let Some(bad) = sizes.iter().find(|&&s| s <= 0) {
        return Err(Error::invalid(
            path,
            format!("sizes holds {bad}: every size must be at least 1"),
        ));
    }
    let spatial = spatial_axes(path, field("kinds"), &sizes)?;
    let shape: [usize; 3] =
        std::array::from_fn(|i| spatial.get(i).map_or(1, |&a| sizes[a] as usize));
    let (_, nbytes) = checked_size(
        path,
        &sizes.iter().map(|&s| s as u64).collect::<Vec<_>>(),
        datatype,
    )?;

    let affine = geometry(path, &fields, &spatial, dimension)?;
    super::nifti::check_affine(path, &affine)?;

    let big_endian = match field("endian") {
        Some("big") => true,
        Some("little") | None => false,
        Some(other) => {
            return Err(Error::invalid(path, format!("unknown endian '{other}'")));
        }
    };
    let encoding = required("encoding")?.to_ascii_lowercase();
    let data_file = field("data file").or(field("datafile"));
    let source: Box<dyn BufRead> = match data_file {
        None => Box::new(reader),
        Some(name) => {
            if field("line skip")
                .or(field("lineskip"))
                .is_some_and(|v| v != "0")
                || field("byte skip")
                    .or(field("byteskip"))
                    .is_some_and(|v| v != "0")
            {
                return Err(Error::invalid(
                    path,
                    "detached data with 'line skip' or 'byte skip' is not supported",
                ));
            }
            let data_path = path.parent().unwrap_or(Path::new(".")).join(name);
            let file = open_file(&data_path).map_err(|e| {
                Error::invalid(path, format!("cannot open its data file {name}: {e}"))
            })?;
            Box::new(BufReader::new(file))
        }
    };
    let bytes = match encoding.as_str() {
        "raw" => read_exact_bytes(path, source, nbytes)?,
        "gzip" | "gz" => read_exact_bytes(path, MultiGzDecoder::new(source), nbytes)?,
        "ascii" | "text" | "txt" => read_ascii(path, source, datatype, nbytes / datatype.size())?,
        other => {
            return Err(Error::invalid(
                path,
                format!("NRRD encoding '{other}' is not supported (use raw, gzip or ascii)"),
            ));
        }
    };
    Ok(RawVolume {
        voxels: RawVoxels {
            bytes,
            datatype,
            big_endian: big_endian
                && encoding != "ascii"
                && encoding != "text"
                && encoding != "txt",
        },
        grid: Grid::new(shape, affine),
        provenance: Provenance {
            format: Format::Nrrd,
            datatype,
            qform_code: 1,
            sform_code: 1,
            template: None,
        },
        scaling: None,
        frames: 1,
    })
}

fn data_type(path: &Path, name: &str) -> Result<DataType> {
    Ok(match name {
        "signed char" | "int8" | "int8_t" => DataType::I8,
        "uchar" | "unsigned char" | "uint8" | "uint8_t" => DataType::U8,
        "short" | "short int" | "signed short" | "signed short int" | "int16" | "int16_t" => {
            DataType::I16
        }
        "ushort" | "unsigned short" | "unsigned short int" | "uint16" | "uint16_t" => DataType::U16,
        "int" | "signed int" | "int32" | "int32_t" => DataType::I32,
        "uint" | "unsigned int" | "uint32" | "uint32_t" => DataType::U32,
        "longlong"
        | "long long"
        | "long long int"
        | "signed long long"
        | "signed long long int"
        | "int64"
        | "int64_t" => DataType::I64,
        "ulonglong" | "unsigned long long" | "unsigned long long int" | "uint64" | "uint64_t" => {
            DataType::U64
        }
        "float" => DataType::F32,
        "double" => DataType::F64,
        other => {
            return Err(Error::invalid(
                path,
                format!("NRRD type '{other}' is not supported"),
            ));
        }
    })
}

/// The axes that are space (not channels or time). Without `kinds`, all axes are space. Any
/// other axis must have size 1, and at most three axes can be spatial.
fn spatial_axes(path: &Path, kinds: Option<&str>, sizes: &[i64]) -> Result<Vec<usize>> {
    let axes: Vec<usize> = match kinds {
        None => (0..sizes.len()).collect(),
        Some(kinds) => {
            let kinds: Vec<&str> = kinds.split_whitespace().collect();
            let kinds = exactly(path, "kinds", kinds, sizes.len())?;
            (0..sizes.len())
                .filter(|&i| matches!(kinds[i], "domain" | "space"))
                .collect()
        }
    };
    let non_spatial: i64 = (0..sizes.len())
        .filter(|i| !axes.contains(i))
        .map(|i| sizes[i])
        .product();
    if axes.len() > 3 || non_spatial > 1 {
        return Err(Error::invalid(
            path,
            format!(
                "{}-D image of sizes {sizes:?} where a 3-D volume is expected",
                sizes.len()
            ),
        ));
    }
    Ok(axes)
}

/// Sign flips that take the file's space to RAS.
fn to_ras(path: &Path, space: Option<&str>) -> Result<[f64; 3]> {
    Ok(match space.map(|s| s.to_ascii_lowercase()).as_deref() {
        Some("right-anterior-superior" | "ras") => [1.0, 1.0, 1.0],
        Some("left-anterior-superior" | "las") => [-1.0, 1.0, 1.0],
        Some("left-posterior-superior" | "lps") => [-1.0, -1.0, 1.0],
        // No space: ITK (which wrote most such files) works in LPS.
        None => [-1.0, -1.0, 1.0],
        Some(other) => {
            return Err(Error::invalid(
                path,
                format!("NRRD space '{other}' is not supported (RAS, LAS or LPS)"),
            ));
        }
    })
}

fn vector(path: &Path, field: &str, text: &str) -> Result<[f64; 3]> {
    let inner = text.trim().trim_start_matches('(').trim_end_matches(')');
    let v = exactly(path, field, numbers::<f64>(path, field, inner)?, 3)?;
    Ok([v[0], v[1], v[2]])
}

fn geometry(
    path: &Path,
    fields: &HashMap<String, String>,
    spatial: &[usize],
    dimension: usize,
) -> Result<Affine> {
    let flip = to_ras(path, fields.get("space").map(String::as_str))?;
    let mut affine = Affine::identity();
    if let Some(directions) = fields.get("space directions") {
        let items: Vec<&str> = directions
            .split(|c: char| c.is_whitespace())
            .filter(|s| !s.is_empty())
            .collect();
        let items = exactly(path, "space directions", items, dimension)?;
        for (column, &axis) in spatial.iter().enumerate() {
            let v = vector(path, "space directions", items[axis])?;
            for row in 0..3 {
                affine[(row, column)] = v[row] * flip[row];
            }
        }
    } else {
        let spacings = match fields.get("spacings") {
            Some(text) => exactly(
                path,
                "spacings",
                numbers::<f64>(path, "spacings", text)?,
                dimension,
            )?,
            None => vec![1.0; dimension],
        };
        for (column, &axis) in spatial.iter().enumerate() {
            affine[(column, column)] = spacings[axis] * flip[column];
        }
    }
    if let Some(origin) = fields.get("space origin") {
        let o = vector(path, "space origin", origin)?;
        for row in 0..3 {
            affine[(row, 3)] = o[row] * flip[row];
        }
    }
    Ok(affine)
}

/// ASCII-encoded voxels, re-encoded as little-endian bytes of `datatype`.
fn read_ascii(
    path: &Path,
    mut source: impl Read,
    datatype: DataType,
    count: usize,
) -> Result<Vec<u8>> {
    let mut text = String::new();
    source
        .read_to_string(&mut text)
        .map_err(|e| stream_error(path, e))?;
    let values = numbers::<f64>(path, "data", &text)?;
    if values.len() < count {
        return Err(Error::invalid(
            path,
            format!("truncated: {count} values expected, {} found", values.len()),
        ));
    }
    let mut bytes = Vec::with_capacity(count * datatype.size());
    for v in values.into_iter().take(count) {
        match datatype {
            DataType::U8 => bytes.push(v as u8),
            DataType::I8 => bytes.push(v as i8 as u8),
            DataType::U16 => bytes.extend_from_slice(&(v as u16).to_le_bytes()),
            DataType::I16 => bytes.extend_from_slice(&(v as i16).to_le_bytes()),
            DataType::U32 => bytes.extend_from_slice(&(v as u32).to_le_bytes()),
            DataType::I32 => bytes.extend_from_slice(&(v as i32).to_le_bytes()),
            DataType::U64 => bytes.extend_from_slice(&(v as u64).to_le_bytes()),
            DataType::I64 => bytes.extend_from_slice(&(v as i64).to_le_bytes()),
            DataType::F32 => bytes.extend_from_slice(&(v as f32).to_le_bytes()),
            DataType::F64 => bytes.extend_from_slice(&v.to_le_bytes()),
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_bytes(bytes: &[u8]) -> Result<RawVolume> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.nrrd");
        std::fs::write(&path, bytes).unwrap();
        read(&path)
    }

    #[test]
    fn lps_directions_become_ras() {
        let mut file = b"NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 2 1 1\nspace directions: (0.5,0,0) (0,0.5,0) (0,0,2)\nspace origin: (10,20,30)\nendian: little\nencoding: raw\n\n".to_vec();
        file.extend_from_slice(&[1, 0, 2, 0]);
        let v = read_bytes(&file).unwrap();
        assert_eq!(v.grid.shape, [2, 1, 1]);
        assert_eq!(v.grid.affine[(0, 0)], -0.5);
        assert_eq!(v.grid.affine[(1, 1)], -0.5);
        assert_eq!(v.grid.affine[(2, 2)], 2.0);
        assert_eq!(v.grid.affine[(0, 3)], -10.0);
        assert_eq!(v.grid.affine[(1, 3)], -20.0);
        assert_eq!(v.grid.affine[(2, 3)], 30.0);
        assert_eq!(v.voxels.to_f32(None), vec![1.0, 2.0]);
    }

    #[test]
    fn ascii_and_gzip_encodings_read() {
        let ascii =
            b"NRRD0004\ntype: float\ndimension: 3\nsizes: 3 1 1\nencoding: ascii\n\n1.5 2 -3\n";
        assert_eq!(
            read_bytes(ascii).unwrap().voxels.to_f32(None),
            vec![1.5, 2.0, -3.0]
        );

        use flate2::write::GzEncoder;
        use std::io::Write;
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&[7, 8, 9]).unwrap();
        let mut file =
            b"NRRD0005\ntype: uchar\ndimension: 3\nsizes: 1 3 1\nencoding: gzip\n\n".to_vec();
        file.extend(gz.finish().unwrap());
        assert_eq!(
            read_bytes(&file).unwrap().voxels.to_f32(None),
            vec![7.0, 8.0, 9.0]
        );
    }

    #[test]
    fn bad_headers_name_the_problem() {
        let cases: [(&[u8], &str); 4] = [
            (b"P6\n", "not a NRRD"),
            (
                b"NRRD0004\ndimension: 3\nsizes: 1 1 1\nencoding: raw\n\n",
                "'type'",
            ),
            (
                b"NRRD0004\ntype: short\ndimension: 4\nsizes: 2 2 2 3\nencoding: raw\n\n",
                "3-D volume",
            ),
            (
                b"NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n\n\x01",
                "truncated",
            ),
        ];
        for (bytes, expected) in cases {
            let err = read_bytes(bytes).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
    }
}
