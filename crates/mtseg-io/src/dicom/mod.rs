//! DICOM series in, on dicom-rs (`dicom-object` for the data sets, `dicom-pixeldata` for the
//! pixel codecs): classic series (one slice per file), enhanced multi-frame files (per-frame
//! functional groups) and Siemens mosaics, from a file or a folder searched recursively.
//!
//! Files are grouped into series by SeriesInstanceUID, and within a series by slice
//! orientation and size when they differ. The slices of a series are sorted along their
//! normal; several frames at one position make it 4-D (ordered by temporal index, then by
//! number). The spacing must be uniform and the slices stacked straight along their normal:
//! a missing slice, uneven spacing or gantry tilt is refused, naming the series, rather than
//! read into a wrong volume. Stored values are masked to BitsStored (sign-extended from
//! HighBit when signed), then RescaleSlope and RescaleIntercept apply, per frame. The affine
//! comes from ImagePositionPatient, ImageOrientationPatient and PixelSpacing, turned from
//! DICOM's LPS to mtseg's RAS.

mod csa;
mod lengths;
pub mod seg;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;
use rayon::prelude::*;
use serde::Serialize;

use super::volume::{Affine, DataType, Format, Grid, Provenance};
use super::{RawVolume, RawVoxels, Scaling};
use crate::error::{Error, Result};

/// Transfer syntaxes whose pixel data the build decodes (dicom-pixeldata with its `native`
/// and `openjp2` features), by UID and name.
const DECODED: &[(&str, &str)] = &[
    ("1.2.840.10008.1.2", "Implicit VR Little Endian"),
    ("1.2.840.10008.1.2.1", "Explicit VR Little Endian"),
    ("1.2.840.10008.1.2.2", "Explicit VR Big Endian"),
    (
        "1.2.840.10008.1.2.1.99",
        "Deflated Explicit VR Little Endian",
    ),
    ("1.2.840.10008.1.2.5", "RLE Lossless"),
    ("1.2.840.10008.1.2.4.50", "JPEG Baseline"),
    ("1.2.840.10008.1.2.4.51", "JPEG Extended"),
    ("1.2.840.10008.1.2.4.57", "JPEG Lossless"),
    (
        "1.2.840.10008.1.2.4.70",
        "JPEG Lossless, first-order prediction",
    ),
    ("1.2.840.10008.1.2.4.90", "JPEG 2000 Lossless"),
    ("1.2.840.10008.1.2.4.91", "JPEG 2000"),
];

/// Transfer syntaxes refused by name: their codecs need C or C++ libraries that do not build
/// with cargo alone.
const REFUSED: &[(&str, &str)] = &[
    ("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless"),
    ("1.2.840.10008.1.2.4.81", "JPEG-LS Near-Lossless"),
    ("1.2.840.10008.1.2.4.110", "JPEG XL Lossless"),
    ("1.2.840.10008.1.2.4.111", "JPEG XL JPEG Recompression"),
    ("1.2.840.10008.1.2.4.112", "JPEG XL"),
];

/// SOP classes that hold no image to read (directories, presentation states, reports,
/// segmentations and other derived objects are left out of series).
fn holds_an_image(sop_class: &str) -> bool {
    !matches!(
        sop_class,
        "1.2.840.10008.1.3.10" | "1.2.840.10008.5.1.4.1.1.66.4" | "1.2.840.10008.5.1.4.1.1.481.3"
    ) && !sop_class.starts_with("1.2.840.10008.5.1.4.1.1.88.")
        && !sop_class.starts_with("1.2.840.10008.5.1.4.1.1.11.")
}

/// Whether `path` is a DICOM file: "DICM" after the 128-byte preamble (or at its start), or a
/// name ending in `.dcm`.
pub fn is_dicom_file(path: &Path) -> bool {
    use std::io::Read;
    let name = path.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".dcm") {
        return true;
    }
    let mut head = [0u8; 132];
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let n = file.read(&mut head).unwrap_or(0);
    (n >= 132 && &head[128..132] == b"DICM") || (n >= 4 && &head[..4] == b"DICM")
}

/// Whether `path` is DICOM: a DICOM file, or a folder with DICOM files at some depth and no
/// other volume files of its own.
pub fn is_dicom_input(path: &Path) -> bool {
    if !path.is_dir() {
        return super::format_of(path).is_none() && is_dicom_file(path);
    }
    let own_volumes = std::fs::read_dir(path).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().is_file() && super::is_volume_file(&e.path()))
    });
    !own_volumes && !files_under(path).is_empty()
}

/// The DICOM files at `path`: the file itself, or every DICOM file under the folder, sorted.
fn files_under(path: &Path) -> Vec<PathBuf> {
    if !path.is_dir() {
        return vec![path.to_path_buf()];
    }
    let mut files = Vec::new();
    let mut folders = vec![path.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                folders.push(p);
            } else if is_dicom_file(&p) {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// How a frame's stored values become numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
struct PixelFormat {
    bits_allocated: u16,
    bits_stored: u16,
    high_bit: u16,
    signed: bool,
}

/// One 2-D image of a series: a classic file, a frame of an enhanced file, or a mosaic tile.
#[derive(Clone, Debug)]
struct Frame {
    file: PathBuf,
    /// Frame number in its file (0 for classic files).
    number: u32,
    /// For a mosaic tile: the tile's first row and column in the stored image.
    tile: Option<(usize, usize)>,
    rows: usize,
    columns: usize,
    position: [f64; 3],
    /// Row then column direction cosines (ImageOrientationPatient).
    orientation: [f64; 6],
    /// Between rows, between columns (mm).
    spacing: [f64; 2],
    rescale: (f64, f64),
    /// Within one position: temporal index, then acquisition and instance numbers.
    order: (i64, i64, i64, u32),
    sop_class: String,
    sop_instance: String,
    /// From an enhanced multi-frame file (its frames are referenced by number).
    multiframe: bool,
    format: PixelFormat,
    /// Why its pixels cannot be decoded, if they cannot.
    refused: Option<String>,
}

/// One slice of a series as a derived object references it.
#[derive(Clone, Debug)]
pub struct SourceSlice {
    pub sop_class: String,
    pub sop_instance: String,
    /// The frame (1-based) of a multi-frame source.
    pub frame: Option<u32>,
    /// ImagePositionPatient (LPS, mm).
    pub position: [f64; 3],
}

/// What a series is, besides its voxels (for `info`, and for a DICOM SEG of it).
#[derive(Clone, Debug, Serialize)]
pub struct SeriesInfo {
    /// SeriesInstanceUID, with `#k` appended to the k-th (from 2) group of a series split by
    /// orientation or size.
    pub uid: String,
    pub description: String,
    pub modality: String,
    pub series_number: Option<i64>,
    pub files: usize,
    /// Columns, rows, slices (and volumes, when 4-D).
    pub shape: Vec<usize>,
    pub study_uid: String,
    pub frame_of_reference_uid: String,
    /// Patient and study identification, copied into derived objects.
    #[serde(skip)]
    pub patient: BTreeMap<Tag, String>,
    /// The slices of the (first) volume, in its order.
    #[serde(skip)]
    pub slices: Vec<SourceSlice>,
    /// Why the series cannot be read, when some of its files cannot be decoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
    /// ImageOrientationPatient and PixelSpacing (between rows, between columns) of the slices.
    #[serde(skip)]
    pub orientation: [f64; 6],
    #[serde(skip)]
    pub pixel_spacing: [f64; 2],
}

/// The identification copied from a source into derived objects.
const PATIENT_AND_STUDY: [Tag; 10] = [
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::STUDY_ID,
    tags::ACCESSION_NUMBER,
    tags::REFERRING_PHYSICIAN_NAME,
];

/// A series found under a path, header by header.
pub struct Series {
    pub info: SeriesInfo,
    frames: Vec<Frame>,
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn floats(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    obj.get(tag)
        .and_then(|e| e.to_multi_float64().ok())
        .filter(|v| v.iter().all(|x| x.is_finite()))
}

fn int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    obj.get(tag).and_then(|e| e.to_int::<i64>().ok())
}

/// The first item of sequence `tag` of `item`.
fn first_item(item: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    item.get(tag)?.items()?.first()
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::invalid(path, what.to_string())
}

/// The frames one DICOM file contributes (its header read up to the pixel data).
fn frames_of(path: &Path) -> Result<(Vec<Frame>, InMemDicomObject)> {
    lengths::check(path)?;
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| invalid(path, format!("not a readable DICOM file: {e}")))?;
    let transfer_syntax = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let data: &InMemDicomObject = &obj;
    let sop_class = text(data, tags::SOP_CLASS_UID).unwrap_or_default();
    if !holds_an_image(&sop_class) {
        return Ok((Vec::new(), data.clone()));
    }
    // Files whose pixels cannot be decoded still belong to their series, which then cannot
    // be read (rather than be read without them).
    let refused = match REFUSED.iter().find(|(uid, _)| *uid == transfer_syntax) {
        Some((_, name)) => Some(format!(
            "pixel data in {name} ({transfer_syntax}), which mtseg does not decode: convert the \
             series to uncompressed DICOM (gdcmconv --raw) or NIfTI (dcm2niix) first"
        )),
        None if !DECODED.iter().any(|(uid, _)| *uid == transfer_syntax) => Some(format!(
            "pixel data in transfer syntax {transfer_syntax}, which mtseg does not decode"
        )),
        None => None,
    };
    let number = |tag| int(data, tag).ok_or_else(|| invalid(path, format!("no {tag} (required)")));
    let samples = int(data, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    if samples != 1 {
        return Err(invalid(
            path,
            format!("{samples} samples per pixel (colour): mtseg reads greyscale images"),
        ));
    }
    let rows = number(tags::ROWS)? as usize;
    let columns = number(tags::COLUMNS)? as usize;
    // 8192 x 8192 is past any scanner's slice; a decoder would allocate what a header claims.
    if rows == 0 || columns == 0 || rows * columns > 1 << 26 {
        return Err(invalid(
            path,
            format!("{rows} x {columns} pixels: not an image"),
        ));
    }
    let bits_allocated = number(tags::BITS_ALLOCATED)? as u16;
    if ![8, 16, 32].contains(&bits_allocated) {
        return Err(invalid(
            path,
            format!("{bits_allocated} bits allocated per pixel: mtseg reads 8, 16 or 32"),
        ));
    }
    let bits_stored = int(data, tags::BITS_STORED).unwrap_or(bits_allocated as i64) as u16;
    let high_bit = int(data, tags::HIGH_BIT).unwrap_or(bits_stored as i64 - 1) as u16;
    if bits_stored == 0
        || bits_stored > bits_allocated
        || high_bit >= bits_allocated
        || high_bit + 1 < bits_stored
    {
        return Err(invalid(
            path,
            format!(
                "bits stored {bits_stored} and high bit {high_bit} do not fit {bits_allocated} bits"
            ),
        ));
    }
    let format = PixelFormat {
        bits_allocated,
        bits_stored,
        high_bit,
        signed: int(data, tags::PIXEL_REPRESENTATION) == Some(1),
    };
    let sop_instance = text(data, tags::SOP_INSTANCE_UID).unwrap_or_default();
    let instance = int(data, tags::INSTANCE_NUMBER).unwrap_or(0);
    let acquisition = int(data, tags::ACQUISITION_NUMBER).unwrap_or(0);
    let rescale = |item: &InMemDicomObject| {
        let slope = floats(item, tags::RESCALE_SLOPE).and_then(|v| v.first().copied());
        let intercept = floats(item, tags::RESCALE_INTERCEPT).and_then(|v| v.first().copied());
        (
            slope.filter(|s| *s != 0.0).unwrap_or(1.0),
            intercept.unwrap_or(0.0),
        )
    };
    let orientation_of = |item: &InMemDicomObject| -> Option<[f64; 6]> {
        floats(item, tags::IMAGE_ORIENTATION_PATIENT)?
            .try_into()
            .ok()
    };
    let position_of = |item: &InMemDicomObject| -> Option<[f64; 3]> {
        floats(item, tags::IMAGE_POSITION_PATIENT)?.try_into().ok()
    };
    let spacing_of = |item: &InMemDicomObject| -> Option<[f64; 2]> {
        floats(item, tags::PIXEL_SPACING)?
            .try_into()
            .ok()
            .filter(|s: &[f64; 2]| s.iter().all(|v| *v > 0.0))
    };
    let missing = |what: &str| {
        invalid(
            path,
            format!("no {what}: the slice cannot be placed in space"),
        )
    };
    let base = Frame {
        file: path.to_path_buf(),
        number: 0,
        tile: None,
        rows,
        columns,
        position: [0.0; 3],
        orientation: [0.0; 6],
        spacing: [1.0; 2],
        rescale: rescale(data),
        order: (0, acquisition, instance, 0),
        sop_class,
        sop_instance,
        multiframe: false,
        format,
        refused,
    };

    let per_frame = data
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items());
    if let Some(items) = per_frame {
        // Enhanced multi-frame: each frame's groups, falling back on the shared ones.
        let shared = first_item(data, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
        let declared = int(data, tags::NUMBER_OF_FRAMES).unwrap_or(1);
        if declared != items.len() as i64 {
            return Err(invalid(
                path,
                format!("{declared} frames declared, {} described", items.len()),
            ));
        }
        let mut frames = Vec::with_capacity(items.len());
        for (f, item) in items.iter().enumerate() {
            let group =
                |tag| first_item(item, tag).or_else(|| shared.and_then(|s| first_item(s, tag)));
            let position = group(tags::PLANE_POSITION_SEQUENCE)
                .and_then(position_of)
                .ok_or_else(|| missing("frame position (PlanePositionSequence)"))?;
            let orientation = group(tags::PLANE_ORIENTATION_SEQUENCE)
                .and_then(orientation_of)
                .ok_or_else(|| missing("frame orientation (PlaneOrientationSequence)"))?;
            let spacing = group(tags::PIXEL_MEASURES_SEQUENCE)
                .and_then(spacing_of)
                .ok_or_else(|| missing("pixel spacing (PixelMeasuresSequence)"))?;
            let temporal = group(tags::FRAME_CONTENT_SEQUENCE)
                .and_then(|c| int(c, tags::TEMPORAL_POSITION_INDEX))
                .unwrap_or(0);
            frames.push(Frame {
                number: f as u32,
                position,
                orientation,
                spacing,
                rescale: group(tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE)
                    .map_or(base.rescale, rescale),
                order: (temporal, acquisition, instance, f as u32),
                multiframe: true,
                ..base.clone()
            });
        }
        return Ok((frames, data.clone()));
    }

    let frame_count = int(data, tags::NUMBER_OF_FRAMES).unwrap_or(1);
    if frame_count != 1 {
        return Err(invalid(
            path,
            format!("{frame_count} frames without per-frame functional groups: cannot place them"),
        ));
    }
    let position = position_of(data).ok_or_else(|| missing("ImagePositionPatient"))?;
    let orientation = orientation_of(data).ok_or_else(|| missing("ImageOrientationPatient"))?;
    let spacing = spacing_of(data).ok_or_else(|| missing("PixelSpacing"))?;
    let frame = Frame {
        position,
        orientation,
        spacing,
        ..base
    };
    let mosaic = data
        .get(tags::IMAGE_TYPE)
        .and_then(|e| e.to_multi_str().ok())
        .is_some_and(|types| types.iter().any(|t| t.trim() == "MOSAIC"));
    if mosaic {
        return Ok((mosaic_tiles(path, data, frame)?, data.clone()));
    }
    Ok((vec![frame], data.clone()))
}

/// The slices of a Siemens mosaic, each a tile of the stored image. ImagePositionPatient
/// places the whole mosaic as if it were one slice: the first tile's corner lies half the
/// difference of the sizes further along the rows and columns. The slices follow along the
/// CSA header's slice normal, SpacingBetweenSlices (or SliceThickness) apart.
fn mosaic_tiles(path: &Path, data: &InMemDicomObject, frame: Frame) -> Result<Vec<Frame>> {
    let csa = data
        .get(Tag(0x0029, 0x1010))
        .and_then(|e| e.to_bytes().ok())
        .map(|b| b.into_owned());
    let from_csa = |name: &str| csa.as_deref().and_then(|b| csa::field(b, name));
    let count = int(data, Tag(0x0019, 0x100A))
        .or_else(|| from_csa("NumberOfImagesInMosaic")?.first()?.parse().ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            invalid(
                path,
                "a Siemens mosaic without its number of images (0019,100A or the CSA header)",
            )
        })? as usize;
    let side = (count as f64).sqrt().ceil() as usize;
    let (rows, columns) = (frame.rows / side, frame.columns / side);
    if rows == 0 || columns == 0 || side * side < count {
        return Err(invalid(
            path,
            format!(
                "a mosaic of {count} images in {} x {} pixels",
                frame.rows, frame.columns
            ),
        ));
    }
    let o = frame.orientation;
    let (row_dir, col_dir) = ([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
    let normal = from_csa("SliceNormalVector")
        .and_then(|v| {
            let v: Vec<f64> = v.iter().filter_map(|s| s.parse().ok()).collect();
            <[f64; 3]>::try_from(v).ok()
        })
        .unwrap_or_else(|| cross(row_dir, col_dir));
    let gap = floats(data, tags::SPACING_BETWEEN_SLICES)
        .or_else(|| floats(data, tags::SLICE_THICKNESS))
        .and_then(|v| v.first().copied())
        .filter(|v| *v > 0.0)
        .ok_or_else(|| invalid(path, "a mosaic without its slice spacing"))?;
    let [row_spacing, column_spacing] = frame.spacing;
    let shift_columns = (frame.columns - columns) as f64 / 2.0 * column_spacing;
    let shift_rows = (frame.rows - rows) as f64 / 2.0 * row_spacing;
    let first: [f64; 3] = std::array::from_fn(|a| {
        frame.position[a] + row_dir[a] * shift_columns + col_dir[a] * shift_rows
    });
    Ok((0..count)
        .map(|k| Frame {
            tile: Some(((k / side) * rows, (k % side) * columns)),
            rows,
            columns,
            position: std::array::from_fn(|a| first[a] + normal[a] * gap * k as f64),
            order: (frame.order.0, frame.order.1, frame.order.2, k as u32),
            ..frame.clone()
        })
        .collect())
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// The series under `path`, in order of their series numbers.
pub fn list(path: &Path) -> Result<Vec<Series>> {
    let files = files_under(path);
    if files.is_empty() {
        return Err(invalid(path, "no DICOM files here"));
    }
    let results: Vec<Result<(Vec<Frame>, InMemDicomObject)>> =
        files.par_iter().map(|f| frames_of(f)).collect();
    // One file must read; in a folder an unreadable file is left out, loudly (the slice gap
    // it leaves in a series is caught when the series is read).
    let mut read = Vec::with_capacity(results.len());
    let mut first_error = None;
    for result in results {
        match result {
            Ok(frames) => read.push(frames),
            Err(e) if files.len() == 1 => return Err(e),
            Err(e) => {
                tracing::warn!("{e}; the file is left out");
                first_error.get_or_insert(e);
            }
        }
    }
    if read.iter().all(|(frames, _)| frames.is_empty()) {
        return Err(first_error.unwrap_or_else(|| invalid(path, "no DICOM image series here")));
    }
    // Series UID, then orientation and size within it.
    type Key = (String, [i64; 6], usize, usize, [i64; 2]);
    let mut groups: BTreeMap<Key, (Vec<Frame>, InMemDicomObject, usize)> = BTreeMap::new();
    for (frames, header) in read {
        let uid = text(&header, tags::SERIES_INSTANCE_UID).unwrap_or_default();
        let mut files_seen = std::collections::BTreeSet::new();
        for frame in frames {
            let key = (
                uid.clone(),
                frame.orientation.map(|v| (v * 1e4).round() as i64),
                frame.rows,
                frame.columns,
                frame.spacing.map(|v| (v * 1e4).round() as i64),
            );
            let first = files_seen.insert(frame.file.clone());
            let entry = groups
                .entry(key)
                .or_insert_with(|| (Vec::new(), header.clone(), 0));
            entry.2 += usize::from(first);
            entry.0.push(frame);
        }
    }
    let mut per_uid: BTreeMap<String, usize> = BTreeMap::new();
    let mut series: Vec<Series> = groups
        .into_iter()
        .map(|((uid, ..), (frames, header, files))| {
            let k = per_uid.entry(uid.clone()).or_default();
            *k += 1;
            let uid = if *k == 1 { uid } else { format!("{uid}#{k}") };
            let patient = PATIENT_AND_STUDY
                .iter()
                .filter_map(|&tag| text(&header, tag).map(|v| (tag, v)))
                .collect();
            Series {
                info: SeriesInfo {
                    description: text(&header, tags::SERIES_DESCRIPTION).unwrap_or_default(),
                    modality: text(&header, tags::MODALITY).unwrap_or_default(),
                    series_number: int(&header, tags::SERIES_NUMBER),
                    files,
                    shape: Vec::new(),
                    study_uid: text(&header, tags::STUDY_INSTANCE_UID).unwrap_or_default(),
                    frame_of_reference_uid: text(&header, tags::FRAME_OF_REFERENCE_UID)
                        .unwrap_or_default(),
                    patient,
                    slices: Vec::new(),
                    unreadable: frames.iter().find_map(|f| {
                        f.refused
                            .as_ref()
                            .map(|why| format!("{}: {why}", f.file.display()))
                    }),
                    orientation: frames[0].orientation,
                    pixel_spacing: frames[0].spacing,
                    uid,
                },
                frames,
            }
        })
        .collect();
    for s in &mut series {
        // The shape as the volume will have it, when its geometry holds.
        if let Ok(layout) = s.layout(path) {
            s.info.shape = layout.shape();
            s.info.slices = layout.slices;
        }
    }
    series.sort_by_key(|s| (s.info.series_number.unwrap_or(i64::MAX), s.info.uid.clone()));
    Ok(series)
}

/// A series' frames in volume order, with its grid.
struct Layout {
    grid: Grid,
    /// Frames, volume-major then slice by slice.
    frames: Vec<Frame>,
    volumes: usize,
    slices: Vec<SourceSlice>,
}

impl Layout {
    fn shape(&self) -> Vec<usize> {
        let mut shape = self.grid.shape.to_vec();
        if self.volumes > 1 {
            shape.push(self.volumes);
        }
        shape
    }
}

impl Series {
    /// Sorts the frames along the slice normal, checks the geometry, and builds the grid;
    /// errors name `path` and the series.
    fn layout(&self, path: &Path) -> Result<Layout> {
        let fail = |what: String| invalid(path, format!("series {}: {what}", self.info.uid));
        let first = &self.frames[0];
        let o = first.orientation;
        let (row_dir, col_dir) = ([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
        let normal = cross(row_dir, col_dir);
        let length = dot(normal, normal).sqrt();
        if !(0.9..1.1).contains(&length) {
            return Err(fail(
                "ImageOrientationPatient is not two unit vectors at right angles".into(),
            ));
        }
        let normal = normal.map(|v| v / length);
        let mut frames = self.frames.clone();
        frames.sort_by(|a, b| {
            dot(a.position, normal)
                .total_cmp(&dot(b.position, normal))
                .then(a.order.cmp(&b.order))
        });
        // Positions along the normal, frames at each.
        let mut positions: Vec<(f64, Vec<Frame>)> = Vec::new();
        for frame in frames {
            let d = dot(frame.position, normal);
            match positions.last_mut() {
                Some((at, group)) if (d - *at).abs() < 1e-3 => group.push(frame),
                _ => positions.push((d, vec![frame])),
            }
        }
        let volumes = positions[0].1.len();
        if let Some((d, group)) = positions.iter().find(|(_, g)| g.len() != volumes) {
            return Err(fail(format!(
                "{} frames at one position ({d:.2} mm along the normal) and {volumes} at \
                 another: an incomplete series?",
                group.len()
            )));
        }
        let gap = if positions.len() > 1 {
            let gaps: Vec<f64> = positions.windows(2).map(|w| w[1].0 - w[0].0).collect();
            let mut sorted = gaps.clone();
            sorted.sort_by(f64::total_cmp);
            let median = sorted[sorted.len() / 2];
            let uneven = gaps
                .iter()
                .any(|g| (g - median).abs() > 0.01 * median + 1e-3);
            if uneven {
                return Err(fail(format!(
                    "uneven slice spacing ({:.3} to {:.3} mm between slices): a missing \
                     slice, or slices of several acquisitions; not read into one volume",
                    sorted[0],
                    sorted[sorted.len() - 1]
                )));
            }
            // Straight along the normal: no shear (gantry tilt).
            let origin = positions[0].1[0].position;
            for (d, group) in &positions {
                let p = group[0].position;
                let along = d - positions[0].0;
                let off: f64 = (0..3)
                    .map(|a| (p[a] - origin[a] - normal[a] * along).powi(2))
                    .sum::<f64>()
                    .sqrt();
                if off > 1e-2 + 1e-3 * along.abs() {
                    return Err(fail(format!(
                        "slices shifted {off:.2} mm sideways along the stack (gantry tilt): \
                         not supported; resample the series to a straight grid first"
                    )));
                }
            }
            median
        } else {
            1.0
        };
        let [row_spacing, column_spacing] = first.spacing;
        let origin = positions[0].1[0].position;
        let mut lps = Affine::identity();
        for a in 0..3 {
            lps[(a, 0)] = row_dir[a] * column_spacing;
            lps[(a, 1)] = col_dir[a] * row_spacing;
            lps[(a, 2)] = normal[a] * gap;
            lps[(a, 3)] = origin[a];
        }
        // LPS to RAS: the first two world axes change sign.
        let mut ras = lps;
        for c in 0..4 {
            ras[(0, c)] = -lps[(0, c)];
            ras[(1, c)] = -lps[(1, c)];
        }
        let grid = Grid::new([first.columns, first.rows, positions.len()], ras);
        let slices = positions
            .iter()
            .map(|(_, group)| {
                let f = &group[0];
                SourceSlice {
                    sop_class: f.sop_class.clone(),
                    sop_instance: f.sop_instance.clone(),
                    frame: f.multiframe.then_some(f.number + 1),
                    position: f.position,
                }
            })
            .collect();
        let mut ordered = Vec::with_capacity(positions.len() * volumes);
        for v in 0..volumes {
            ordered.extend(positions.iter().map(|(_, group)| group[v].clone()));
        }
        Ok(Layout {
            grid,
            frames: ordered,
            volumes,
            slices,
        })
    }

    /// The series' voxels: every volume, rescaled (kept as stored integers with one scaling
    /// when every frame shares it); errors name `path`.
    pub fn read(&self, path: &Path) -> Result<RawVolume> {
        if let Some(why) = self
            .frames
            .iter()
            .find_map(|f| f.refused.as_ref().map(|why| invalid(&f.file, why)))
        {
            return Err(why);
        }
        let layout = self.layout(path)?;
        let plane = layout.grid.shape[0] * layout.grid.shape[1];
        let dims = [plane, layout.frames.len()].map(|d| d as u64);
        super::voxels::checked_size(path, &dims, DataType::I32)?;
        // The stored integers in the narrowest type that holds them all, with one scaling, or
        // (rescales differing from frame to frame) the rescaled values as f32.
        let rescale = layout.frames[0].rescale;
        let (datatype, scaling) = if layout.frames.iter().all(|f| f.rescale == rescale) {
            let formats = || layout.frames.iter().map(|f| f.format);
            let datatype =
                if formats().all(|f| f.bits_stored < 16 || f.signed && f.bits_stored == 16) {
                    DataType::I16
                } else if formats().all(|f| !f.signed && f.bits_stored <= 16) {
                    DataType::U16
                } else {
                    DataType::I32
                };
            let (slope, inter) = rescale;
            (
                datatype,
                (slope != 1.0 || inter != 0.0).then_some(Scaling { slope, inter }),
            )
        } else {
            (DataType::F32, None)
        };
        // Each file opened and decoded once, straight into its frames' places.
        let mut voxels = vec![0u8; plane * layout.frames.len() * datatype.size()];
        let mut by_file: BTreeMap<&Path, Vec<(&mut [u8], &Frame)>> = BTreeMap::new();
        for (place, frame) in voxels
            .chunks_mut(plane * datatype.size())
            .zip(&layout.frames)
        {
            by_file.entry(&frame.file).or_default().push((place, frame));
        }
        by_file
            .into_par_iter()
            .try_for_each(|(file, places)| decode_file(file, places, datatype))?;
        Ok(RawVolume {
            voxels: RawVoxels {
                bytes: voxels,
                datatype,
                big_endian: false,
            },
            grid: layout.grid,
            provenance: Provenance {
                format: Format::Dicom,
                ..Provenance::memory(datatype)
            },
            scaling,
            frames: layout.volumes,
        })
    }
}

/// Decodes the given frames of one file into their places, as `datatype` (stored values,
/// masked and sign-extended; rescaled when f32).
fn decode_file(file: &Path, places: Vec<(&mut [u8], &Frame)>, datatype: DataType) -> Result<()> {
    let obj: DefaultDicomObject = dicom_object::open_file(file)
        .map_err(|e| invalid(file, format!("not a readable DICOM file: {e}")))?;
    let pixels = obj
        .decode_pixel_data()
        .map_err(|e| invalid(file, format!("cannot decode its pixel data: {e}")))?;
    let stored_columns = pixels.columns() as usize;
    let stored_pixels = pixels.rows() as usize * stored_columns;
    for (place, frame) in places {
        let bytes = pixels.frame_data(frame.number).map_err(|_| {
            invalid(
                file,
                format!("frame {} is missing from the pixel data", frame.number + 1),
            )
        })?;
        let width = frame.format.bits_allocated as usize / 8;
        if bytes.len() < stored_pixels * width {
            return Err(invalid(
                file,
                format!(
                    "{} bytes of pixel data for {stored_pixels} pixels of {} bits",
                    bytes.len(),
                    frame.format.bits_allocated
                ),
            ));
        }
        let stored = Stored::of(frame.format);
        let (row0, col0) = frame.tile.unwrap_or((0, 0));
        let (slope, inter) = frame.rescale;
        let out_rows = place.chunks_exact_mut(frame.columns * datatype.size());
        for (r, out) in (row0..row0 + frame.rows).zip(out_rows) {
            let start = (r * stored_columns + col0) * width;
            let row = &bytes[start..start + frame.columns * width];
            let values = row.chunks_exact(width).map(|c| stored.value(c));
            let out = out.chunks_exact_mut(datatype.size());
            match datatype {
                DataType::I16 => out
                    .zip(values)
                    .for_each(|(o, v)| o.copy_from_slice(&(v as i16).to_le_bytes())),
                DataType::U16 => out
                    .zip(values)
                    .for_each(|(o, v)| o.copy_from_slice(&(v as u16).to_le_bytes())),
                DataType::I32 => out
                    .zip(values)
                    .for_each(|(o, v)| o.copy_from_slice(&v.to_le_bytes())),
                _ => out.zip(values).for_each(|(o, v)| {
                    o.copy_from_slice(&((v as f64 * slope + inter) as f32).to_le_bytes())
                }),
            }
        }
    }
    Ok(())
}

/// How a stored value is read from its bytes (native-endian, as decoded): the bits stored
/// (BitsStored ending at HighBit), sign-extended when signed. Other bits are not assumed to
/// be zero.
#[derive(Clone, Copy)]
struct Stored {
    shift: u32,
    mask: u64,
    /// The sign bit when signed (else 0).
    sign: u64,
}

impl Stored {
    fn of(format: PixelFormat) -> Stored {
        let bits = format.bits_stored as u32;
        Stored {
            shift: (format.high_bit + 1 - format.bits_stored) as u32,
            mask: (1u64 << bits) - 1,
            sign: if format.signed { 1 << (bits - 1) } else { 0 },
        }
    }

    #[inline]
    fn value(self, bytes: &[u8]) -> i32 {
        let raw = match bytes.len() {
            1 => bytes[0] as u64,
            2 => u16::from_ne_bytes([bytes[0], bytes[1]]) as u64,
            _ => u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as u64,
        };
        let v = (raw >> self.shift) & self.mask;
        // Two's complement of the stored width: subtract twice the sign bit when it is set.
        (v as i64 - ((v & self.sign) << 1) as i64) as i32
    }
}

/// The one series at `path` (or the one `series` names) and what it is.
pub fn read(path: &Path, series: Option<&str>) -> Result<(RawVolume, SeriesInfo)> {
    let mut all = list(path)?;
    let chosen = match series {
        Some(uid) => {
            let found = all.iter().position(|s| s.info.uid == uid).ok_or_else(|| {
                let known: Vec<&str> = all.iter().map(|s| s.info.uid.as_str()).collect();
                invalid(
                    path,
                    format!("no series {uid}; the series here are: {}", known.join(", ")),
                )
            })?;
            all.swap_remove(found)
        }
        None if all.len() == 1 => all.remove(0),
        None if all.is_empty() => return Err(invalid(path, "no DICOM image series here")),
        None => {
            let known: Vec<String> = all
                .iter()
                .map(|s| format!("{} ({})", s.info.uid, s.info.description))
                .collect();
            return Err(invalid(
                path,
                format!(
                    "{} series here: pick one with --series UID ({})",
                    all.len(),
                    known.join(", ")
                ),
            ));
        }
    };
    let volume = chosen.read(path)?;
    Ok((volume, chosen.info))
}
