//! DICOM SEG out: a label map on a DICOM series' grid written as a binary Segmentation object
//! (SOP class 1.2.840.10008.5.1.4.1.1.66.4), one segment per label present, one frame per
//! segment and source slice, each frame referencing its source image, in the source's frame
//! of reference and with its patient and study, under new series and instance UIDs. Written
//! with dicom-object; explicit VR little endian.

use std::path::Path;

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;
use rand::Rng;

use super::SeriesInfo;
use crate::LabelMap;
use crate::error::{Error, Result};

/// One segment: the label value it is made of, and what it is.
#[derive(Clone, Debug)]
pub struct Segment {
    pub label: u16,
    pub name: String,
    pub description: String,
}

/// A new UID under the 2.25 root (a random 128-bit number, ISO/IEC 9834-8).
pub fn new_uid() -> String {
    format!("2.25.{}", rand::rng().random::<u128>())
}

/// A DS value of at most 16 characters.
fn ds(value: f64) -> String {
    for precision in (0..=10).rev() {
        let text = format!("{value:.precision$}");
        let text = if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            text
        };
        if text.len() <= 16 {
            return if text == "-0" { "0".into() } else { text };
        }
    }
    format!("{value:.3e}")
}

fn ds_list(values: &[f64]) -> String {
    values.iter().map(|&v| ds(v)).collect::<Vec<_>>().join("\\")
}

fn element(
    tag: Tag,
    vr: VR,
    value: impl Into<dicom_core::value::Value<InMemDicomObject>>,
) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, value)
}

fn sequence(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

fn object(elements: Vec<DataElement<InMemDicomObject>>) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(elements)
}

/// A coded concept: (code value, coding scheme, meaning).
fn code(tag: Tag, value: &str, scheme: &str, meaning: &str) -> DataElement<InMemDicomObject> {
    sequence(
        tag,
        vec![object(vec![
            element(tags::CODE_VALUE, VR::SH, value),
            element(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
            element(tags::CODE_MEANING, VR::LO, meaning),
        ])],
    )
}

fn us(tag: Tag, value: u16) -> DataElement<InMemDicomObject> {
    element(tag, VR::US, PrimitiveValue::from(value))
}

/// Writes `labels` (on the grid of the series `source` describes, as `dicom::read` gave it)
/// as a DICOM SEG at `path`, a segment for each of `segments` whose label is present.
/// Returns the segments written.
pub fn write(
    path: &Path,
    labels: &LabelMap,
    source: &SeriesInfo,
    segments: &[Segment],
    description: &str,
) -> Result<Vec<Segment>> {
    let [columns, rows, slices] = labels.grid.shape;
    if slices != source.slices.len() {
        return Err(Error::invalid(
            path,
            format!(
                "the label map has {slices} slices, the source series {}",
                source.slices.len()
            ),
        ));
    }
    if rows > u16::MAX as usize || columns > u16::MAX as usize {
        return Err(Error::invalid(path, "slices too large for DICOM"));
    }
    let plane = rows * columns;
    let present: Vec<Segment> = segments
        .iter()
        .filter(|s| labels.data.contains(&s.label))
        .cloned()
        .collect();
    let now = chrono_now();
    let mut o = InMemDicomObject::new_empty();
    let text = |tag, vr, value: &str| element(tag, vr, value.to_string());
    for (tag, value) in &source.patient {
        let vr = match *tag {
            tags::PATIENT_NAME | tags::REFERRING_PHYSICIAN_NAME => VR::PN,
            tags::PATIENT_BIRTH_DATE | tags::STUDY_DATE => VR::DA,
            tags::STUDY_TIME => VR::TM,
            tags::PATIENT_SEX => VR::CS,
            tags::STUDY_INSTANCE_UID => VR::UI,
            tags::STUDY_ID | tags::ACCESSION_NUMBER => VR::SH,
            _ => VR::LO,
        };
        o.put(text(*tag, vr, value));
    }
    // Type 2 attributes of the patient and study modules, empty when the source has none.
    for (tag, vr) in [
        (tags::PATIENT_NAME, VR::PN),
        (tags::PATIENT_ID, VR::LO),
        (tags::PATIENT_BIRTH_DATE, VR::DA),
        (tags::PATIENT_SEX, VR::CS),
        (tags::STUDY_DATE, VR::DA),
        (tags::STUDY_TIME, VR::TM),
        (tags::STUDY_ID, VR::SH),
        (tags::ACCESSION_NUMBER, VR::SH),
        (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
    ] {
        if o.get(tag).is_none() {
            o.put(text(tag, vr, ""));
        }
    }
    if o.get(tags::STUDY_INSTANCE_UID).is_none() {
        o.put(text(tags::STUDY_INSTANCE_UID, VR::UI, &source.study_uid));
    }
    let instance = new_uid();
    for (tag, vr, value) in [
        (tags::SOP_CLASS_UID, VR::UI, uids::SEGMENTATION_STORAGE),
        (tags::SOP_INSTANCE_UID, VR::UI, instance.as_str()),
        (tags::MODALITY, VR::CS, "SEG"),
        (tags::SERIES_INSTANCE_UID, VR::UI, &new_uid()),
        (tags::SERIES_DESCRIPTION, VR::LO, description),
        (
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            &source.frame_of_reference_uid,
        ),
        (tags::POSITION_REFERENCE_INDICATOR, VR::LO, ""),
        (tags::MANUFACTURER, VR::LO, "mtseg"),
        (tags::MANUFACTURER_MODEL_NAME, VR::LO, "mtseg"),
        (tags::DEVICE_SERIAL_NUMBER, VR::LO, "1"),
        (tags::SOFTWARE_VERSIONS, VR::LO, env!("CARGO_PKG_VERSION")),
        (tags::CONTENT_DATE, VR::DA, &now.0),
        (tags::CONTENT_TIME, VR::TM, &now.1),
        (tags::SERIES_DATE, VR::DA, &now.0),
        (tags::SERIES_TIME, VR::TM, &now.1),
        (tags::CONTENT_LABEL, VR::CS, "MTSEG"),
        (tags::CONTENT_DESCRIPTION, VR::LO, description),
        (tags::CONTENT_CREATOR_NAME, VR::PN, "mtseg"),
        (tags::SEGMENTATION_TYPE, VR::CS, "BINARY"),
        (tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        (tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
    ] {
        o.put(text(tag, vr, value));
    }
    o.put(element(tags::SERIES_NUMBER, VR::IS, "9901"));
    o.put(element(tags::INSTANCE_NUMBER, VR::IS, "1"));
    o.put(element(
        tags::IMAGE_TYPE,
        VR::CS,
        PrimitiveValue::Strs(
            ["DERIVED", "PRIMARY"]
                .map(String::from)
                .into_iter()
                .collect(),
        ),
    ));
    for (tag, value) in [
        (tags::SAMPLES_PER_PIXEL, 1),
        (tags::ROWS, rows as u16),
        (tags::COLUMNS, columns as u16),
        (tags::BITS_ALLOCATED, 1),
        (tags::BITS_STORED, 1),
        (tags::HIGH_BIT, 0),
        (tags::PIXEL_REPRESENTATION, 0),
    ] {
        o.put(us(tag, value));
    }
    o.put(sequence(
        tags::SEGMENT_SEQUENCE,
        present
            .iter()
            .enumerate()
            .map(|(k, s)| {
                object(vec![
                    us(tags::SEGMENT_NUMBER, k as u16 + 1),
                    element(tags::SEGMENT_LABEL, VR::LO, s.name.clone()),
                    element(tags::SEGMENT_DESCRIPTION, VR::ST, s.description.clone()),
                    element(tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC"),
                    element(tags::SEGMENT_ALGORITHM_NAME, VR::LO, "mtseg"),
                    code(
                        tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
                        "91723000",
                        "SCT",
                        "Anatomical Structure",
                    ),
                    code(
                        tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
                        &format!("MTSEG{}", s.label),
                        "99MTSEG",
                        &s.name,
                    ),
                ])
            })
            .collect(),
    ));
    // Where the slices lie, for every frame alike; where each lies, per frame.
    let o6 = source.orientation;
    let [row_spacing, column_spacing] = source.pixel_spacing;
    let gap = labels.grid.spacing()[2];
    o.put(sequence(
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![object(vec![
            sequence(
                tags::PLANE_ORIENTATION_SEQUENCE,
                vec![object(vec![element(
                    tags::IMAGE_ORIENTATION_PATIENT,
                    VR::DS,
                    ds_list(&o6),
                )])],
            ),
            sequence(
                tags::PIXEL_MEASURES_SEQUENCE,
                vec![object(vec![
                    element(
                        tags::PIXEL_SPACING,
                        VR::DS,
                        ds_list(&[row_spacing, column_spacing]),
                    ),
                    element(tags::SLICE_THICKNESS, VR::DS, ds(gap)),
                    element(tags::SPACING_BETWEEN_SLICES, VR::DS, ds(gap)),
                ])],
            ),
        ])],
    ));
    let organisation = new_uid();
    o.put(sequence(
        tags::DIMENSION_ORGANIZATION_SEQUENCE,
        vec![object(vec![element(
            tags::DIMENSION_ORGANIZATION_UID,
            VR::UI,
            organisation.clone(),
        )])],
    ));
    let pointer = |dimension: Tag, group: Tag| {
        object(vec![
            element(
                tags::DIMENSION_ORGANIZATION_UID,
                VR::UI,
                organisation.clone(),
            ),
            element(
                tags::DIMENSION_INDEX_POINTER,
                VR::AT,
                PrimitiveValue::Tags([dimension].into_iter().collect()),
            ),
            element(
                tags::FUNCTIONAL_GROUP_POINTER,
                VR::AT,
                PrimitiveValue::Tags([group].into_iter().collect()),
            ),
        ])
    };
    o.put(sequence(
        tags::DIMENSION_INDEX_SEQUENCE,
        vec![
            pointer(
                tags::REFERENCED_SEGMENT_NUMBER,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
            ),
            pointer(tags::IMAGE_POSITION_PATIENT, tags::PLANE_POSITION_SEQUENCE),
        ],
    ));
    let mut frames = Vec::with_capacity(present.len() * slices);
    let mut bits = vec![0u8; (present.len() * slices * plane).div_ceil(8)];
    for (k, segment) in present.iter().enumerate() {
        for (z, slice) in source.slices.iter().enumerate() {
            let frame = frames.len();
            let start = frame * plane;
            for (p, &label) in labels.data[z * plane..(z + 1) * plane].iter().enumerate() {
                if label == segment.label {
                    let bit = start + p;
                    bits[bit / 8] |= 1 << (bit % 8);
                }
            }
            let mut reference = vec![
                element(
                    tags::REFERENCED_SOP_CLASS_UID,
                    VR::UI,
                    slice.sop_class.clone(),
                ),
                element(
                    tags::REFERENCED_SOP_INSTANCE_UID,
                    VR::UI,
                    slice.sop_instance.clone(),
                ),
                code(
                    tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                    "121322",
                    "DCM",
                    "Source image for image processing operation",
                ),
                // The frames lie on the source's own grid.
                element(tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES"),
            ];
            if let Some(f) = slice.frame {
                reference.push(element(
                    tags::REFERENCED_FRAME_NUMBER,
                    VR::IS,
                    f.to_string(),
                ));
            }
            frames.push(object(vec![
                sequence(
                    tags::DERIVATION_IMAGE_SEQUENCE,
                    vec![object(vec![
                        code(
                            tags::DERIVATION_CODE_SEQUENCE,
                            "113076",
                            "DCM",
                            "Segmentation",
                        ),
                        sequence(tags::SOURCE_IMAGE_SEQUENCE, vec![object(reference)]),
                    ])],
                ),
                sequence(
                    tags::FRAME_CONTENT_SEQUENCE,
                    vec![object(vec![element(
                        tags::DIMENSION_INDEX_VALUES,
                        VR::UL,
                        PrimitiveValue::U32([k as u32 + 1, z as u32 + 1].into_iter().collect()),
                    )])],
                ),
                sequence(
                    tags::PLANE_POSITION_SEQUENCE,
                    vec![object(vec![element(
                        tags::IMAGE_POSITION_PATIENT,
                        VR::DS,
                        ds_list(&slice.position),
                    )])],
                ),
                sequence(
                    tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                    vec![object(vec![us(
                        tags::REFERENCED_SEGMENT_NUMBER,
                        k as u16 + 1,
                    )])],
                ),
            ]));
        }
    }
    o.put(element(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        frames.len().to_string(),
    ));
    o.put(sequence(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, frames));
    let mut referenced: Vec<InMemDicomObject> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for slice in &source.slices {
        if seen.insert(slice.sop_instance.clone()) {
            referenced.push(object(vec![
                element(
                    tags::REFERENCED_SOP_CLASS_UID,
                    VR::UI,
                    slice.sop_class.clone(),
                ),
                element(
                    tags::REFERENCED_SOP_INSTANCE_UID,
                    VR::UI,
                    slice.sop_instance.clone(),
                ),
            ]));
        }
    }
    let series_uid = source.uid.split('#').next().unwrap_or_default();
    o.put(sequence(
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![object(vec![
            element(tags::SERIES_INSTANCE_UID, VR::UI, series_uid.to_string()),
            sequence(tags::REFERENCED_INSTANCE_SEQUENCE, referenced),
        ])],
    ));
    o.put(element(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(bits),
    ));
    let file = o
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .map_err(|e| Error::invalid(path, format!("cannot build the DICOM SEG: {e}")))?;
    crate::atomic::write_with(path, |temp| {
        file.write_to_file(temp)
            .map_err(|e| Error::invalid(path, format!("cannot write the DICOM SEG: {e}")))
    })?;
    Ok(present)
}

/// Today's date and the time (UTC) as DICOM DA and TM values.
fn chrono_now() -> (String, String) {
    let now = chrono::Utc::now();
    (
        now.format("%Y%m%d").to_string(),
        now.format("%H%M%S").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_fit_sixteen_characters() {
        assert_eq!(ds(0.1 + 0.2), "0.3");
        assert_eq!(ds(-0.0), "0");
        assert_eq!(ds(116.97943115234375), "116.9794311523");
        assert_eq!(ds(3.0), "3");
        for v in [1e-9, -123456.789012345, 1e20, 0.342_020_143_325_668_7] {
            assert!(ds(v).len() <= 16, "{v}: {}", ds(v));
        }
        assert_eq!(ds_list(&[1.0, -2.5]), "1\\-2.5");
    }

    #[test]
    fn dates_are_civil() {
        let (date, time) = chrono_now();
        assert_eq!((date.len(), time.len()), (8, 6));
        assert!(date.as_str() >= "20240101");
    }
}
