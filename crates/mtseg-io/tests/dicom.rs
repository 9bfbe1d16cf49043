//! The DICOM reader on real scanner files (`../shared/data/DICOM_dcm_qa`: classic, oblique,
//! enhanced multi-frame, Siemens mosaics, nine transfer syntaxes, 12-bit pixels), against
//! dcm2niix's NIfTI of each: the same stored values and world geometry. When the folder is
//! missing the tests print SKIPPED loudly, and fail under MTSEG_REQUIRE_SHARED_DATA=1.

use std::path::{Path, PathBuf};

use mtseg_io::{self as io, Reorientation, Volume};

fn dcm_qa() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/DICOM_dcm_qa");
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("MTSEG_REQUIRE_SHARED_DATA").as_deref() == Ok("1") {
        panic!("../shared/data/DICOM_dcm_qa is missing but MTSEG_REQUIRE_SHARED_DATA=1");
    }
    eprintln!("SKIPPED: ../shared/data/DICOM_dcm_qa not found; DICOM tests did not run");
    None
}

/// Volume `frame` of a raw volume as `value(stored)` on its grid, brought to RAS order.
fn canonical(raw: &io::RawVolume, frame: usize, value: impl Fn(f64) -> f64) -> Volume<f64> {
    let n = raw.grid.len();
    let values: Vec<f64> = raw.voxels.to_f64()[frame * n..(frame + 1) * n]
        .iter()
        .map(|&v| value(v))
        .collect();
    let volume = Volume {
        data: values,
        grid: raw.grid.clone(),
        provenance: raw.provenance.clone(),
    };
    Reorientation::to_ras(&volume.grid).apply(&volume)
}

/// Reads `input` with mtseg and `reference` (dcm2niix's NIfTI) and compares volume `frame` of
/// ours with the reference: the stored integers equal after `ours_from_reference` (our
/// rescale applied to the reference's stored values), the affines within 1e-3 mm.
fn compare(input: &Path, reference: &Path, frame: usize, rescale: Option<(f64, f64)>) {
    let ours = io::read_raw(input).unwrap_or_else(|e| panic!("{e}"));
    let theirs = io::read_raw(reference).unwrap();
    assert_eq!(ours.grid.shape, theirs.grid.shape, "{}", input.display());
    let (a, b) = match rescale {
        // Stored values on both sides.
        None => (canonical(&ours, frame, |v| v), canonical(&theirs, 0, |v| v)),
        // Our rescaled values against the reference's stored ones, rescaled as ours.
        Some((slope, inter)) => {
            let scaled = |raw: &io::RawVolume| {
                let s = raw.scaling.map_or((1.0, 0.0), |s| (s.slope, s.inter));
                move |v: f64| v * s.0 + s.1
            };
            (
                canonical(&ours, frame, scaled(&ours)),
                canonical(&theirs, 0, |v| v * slope + inter),
            )
        }
    };
    let affine = (a.grid.affine - b.grid.affine).abs().max();
    assert!(
        affine < 1e-3,
        "{}: affines differ by {affine} mm",
        input.display()
    );
    // Rescaled values are f32: a relative tolerance.
    let tolerance = if rescale.is_some() { 1e-6 } else { 0.0 };
    let worst = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f64::max);
    assert!(
        worst <= tolerance,
        "{}: voxels differ by {worst} (relative)",
        input.display()
    );
}

/// The rescale slope and intercept of every frame of an enhanced file, as it states them.
fn frame_rescales(file: &Path) -> Vec<(f64, f64)> {
    use dicom_dictionary_std::tags;
    let obj = dicom_object::open_file(file).unwrap();
    let frames = obj
        .element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .unwrap();
    frames
        .items()
        .unwrap()
        .iter()
        .map(|item| {
            let group = item
                .element(tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE)
                .unwrap();
            let transform = &group.items().unwrap()[0];
            let value = |tag| transform.element(tag).unwrap().to_float64().unwrap();
            (value(tags::RESCALE_SLOPE), value(tags::RESCALE_INTERCEPT))
        })
        .collect()
}

#[test]
fn every_supported_series_reads_as_dcm2niix_does() {
    let Some(q) = dcm_qa() else { return };
    // Nine transfer syntaxes of one Siemens mosaic; 7 and 8 are JPEG-LS, refused below.
    for n in [1, 2, 3, 4, 5, 6, 9] {
        compare(
            &q.join(format!("transfer_syntaxes/In/{n}.dcm")),
            &q.join(format!("transfer_syntaxes/Ref/{n}.nii")),
            0,
            None,
        );
    }
    // 12 bits stored in 16, unsigned (with stray high bits), unsigned stripes, signed stripes.
    for (file, reference) in [
        ("12bitUnsigned.dcm", "2.nii"),
        ("12bitUnsigned_0x0F0F.dcm", "3.nii"),
        ("12bitSigned_0x0F0F.dcm", "4.nii"),
    ] {
        compare(
            &q.join("bits_stored_12/In").join(file),
            &q.join("bits_stored_12/Ref").join(reference),
            0,
            None,
        );
    }
    // Classic oblique series, one slice per file.
    for (series, reference) in [
        ("5000", "5000_DTI_PA-SAG_20d.nii"),
        ("6000", "6000_DTI_PA-AX_20d.nii"),
    ] {
        compare(
            &q.join("oblique_canon/In").join(series),
            &q.join("oblique_canon/Ref").join(reference),
            0,
            None,
        );
    }
    // Enhanced multi-frame: four Siemens files of one 4-D series (64x64x6, four volumes).
    let siemens = q.join("enhanced_multiframe/In/Siemens/XA10");
    let raw = io::read_raw(&siemens).unwrap();
    assert_eq!((raw.grid.shape, raw.frames), ([64, 64, 6], 4));
    let reference =
        io::read_raw(&q.join("enhanced_multiframe/Ref/Siemens_REST1_w_SMS_PF7-8_6.nii")).unwrap();
    assert_eq!(reference.frames, 4);
    let n = raw.grid.len();
    let ours = Reorientation::to_ras(&raw.grid);
    let theirs = Reorientation::to_ras(&reference.grid);
    for t in 0..4 {
        let volume = |r: &io::RawVolume, o: &Reorientation| {
            let v = Volume {
                data: r.voxels.to_f64()[t * n..(t + 1) * n].to_vec(),
                grid: r.grid.clone(),
                provenance: r.provenance.clone(),
            };
            o.apply(&v)
        };
        let (a, b) = (volume(&raw, &ours), volume(&reference, &theirs));
        assert_eq!(a.data, b.data, "Siemens XA10 volume {t}");
        assert!((a.grid.affine - b.grid.affine).abs().max() < 1e-3);
    }
    // One Philips file of two volumes at the same 32 positions (magnitude, then a field map),
    // each with its own rescale: dcm2niix writes them as two files.
    let philips = q.join("enhanced_multiframe/In/Philips");
    let rescales = frame_rescales(&philips.join("IM_0027_fMAP.dcm"));
    for (frame, reference, first) in [
        (0, "Philips_WIP_B0_NS_801_e1.nii", 0),
        (1, "Philips_WIP_B0_NS_801_e2_fieldmaphz.nii", 32),
    ] {
        compare(
            &philips,
            &q.join("enhanced_multiframe/Ref").join(reference),
            frame,
            Some(rescales[first]),
        );
    }
}

#[test]
fn unsupported_and_ambiguous_inputs_are_refused_by_name() {
    let Some(q) = dcm_qa() else { return };
    for n in [7, 8] {
        let file = q.join(format!("transfer_syntaxes/In/{n}.dcm"));
        let err = io::read_raw(&file).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{n}.dcm")) && err.contains("JPEG-LS"),
            "{err}"
        );
    }
    // Two series in one folder: reading needs a choice, and lists them.
    let both = q.join("oblique_canon/In");
    let err = io::read_raw(&both).unwrap_err().to_string();
    assert!(
        err.contains("2 series") && err.contains("--series"),
        "{err}"
    );
    let series = io::dicom::list(&both).unwrap();
    assert_eq!(series.len(), 2);
    assert!(
        series
            .iter()
            .all(|s| s.info.shape == vec![80, 80, 40] && s.info.files == 40)
    );
    let (volume, info) = io::dicom::read(&both, Some(&series[1].info.uid)).unwrap();
    assert_eq!(info.uid, series[1].info.uid);
    assert_eq!(volume.grid.shape, [80, 80, 40]);
    // A 4-D series is not one image.
    let err = io::read_image(&q.join("enhanced_multiframe/In/Siemens/XA10")).unwrap_err();
    assert!(err.to_string().contains("4-D"), "{err}");
}

/// A DICOM SEG of a label map on a real classic series: one segment per label present, one
/// frame per segment and slice holding exactly that label's pixels, each frame placed at its
/// source slice and referencing it, in the source's frame of reference and study.
#[test]
fn dicom_seg_frames_hold_the_labels_and_reference_their_slices() {
    use dicom_dictionary_std::tags;
    let Some(q) = dcm_qa() else { return };
    let folder = q.join("oblique_canon/In/5000");
    let series = io::dicom::list(&folder).unwrap().remove(0);
    let image = series.read(&folder).unwrap().into_image(&folder).unwrap();
    // Labels 1 and 3 in two boxes; label 2 is absent.
    let [nx, ny, nz] = image.grid.shape;
    let labels: Vec<u16> = (0..image.grid.len())
        .map(|i| {
            let [x, y, z] = image.grid.coords(i);
            match (x, y, z) {
                (10..30, 20..40, 5..9) => 1,
                (50..60, 5..15, 30..40) => 3,
                _ => 0,
            }
        })
        .collect();
    let label_map = image.with_data(labels.clone());
    let segments: Vec<io::dicom::seg::Segment> = [(1, "one"), (2, "two"), (3, "three")]
        .map(|(label, name)| io::dicom::seg::Segment {
            label,
            name: name.into(),
            description: format!("test: {name}"),
        })
        .to_vec();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seg.dcm");
    let written =
        io::dicom::seg::write(&path, &label_map, &series.info, &segments, "test").unwrap();
    assert_eq!(
        written.iter().map(|s| s.label).collect::<Vec<_>>(),
        vec![1, 3]
    );

    let seg = dicom_object::open_file(&path).unwrap();
    let text = |tag| seg.element(tag).unwrap().to_str().unwrap().to_string();
    assert_eq!(text(tags::SOP_CLASS_UID), "1.2.840.10008.5.1.4.1.1.66.4");
    assert_eq!(text(tags::MODALITY), "SEG");
    assert_eq!(
        text(tags::FRAME_OF_REFERENCE_UID),
        series.info.frame_of_reference_uid
    );
    assert_eq!(text(tags::STUDY_INSTANCE_UID), series.info.study_uid);
    assert_ne!(text(tags::SERIES_INSTANCE_UID), series.info.uid);
    let source = dicom_object::open_file(folder.join("5000_001.dcm")).unwrap();
    assert_eq!(
        text(tags::PATIENT_ID),
        source.element(tags::PATIENT_ID).unwrap().to_str().unwrap()
    );
    let frames = seg
        .element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(frames.len(), 2 * nz);
    let bits = seg.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    let plane = nx * ny;
    // Where each source instance lies.
    let positions: std::collections::BTreeMap<String, Vec<f64>> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| {
            let obj = dicom_object::open_file(e.unwrap().path()).unwrap();
            let uid = obj
                .element(tags::SOP_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let ipp = obj
                .element(tags::IMAGE_POSITION_PATIENT)
                .unwrap()
                .to_multi_float64()
                .unwrap();
            (uid, ipp)
        })
        .collect();
    for (f, frame) in frames.iter().enumerate() {
        let (segment, z) = (f / nz, f % nz);
        let label = [1u16, 3][segment];
        let item = |seq| &frame.element(seq).unwrap().items().unwrap()[0];
        let number = item(tags::SEGMENT_IDENTIFICATION_SEQUENCE)
            .element(tags::REFERENCED_SEGMENT_NUMBER)
            .unwrap()
            .to_int::<u16>()
            .unwrap();
        assert_eq!(number as usize, segment + 1);
        let position = item(tags::PLANE_POSITION_SEQUENCE)
            .element(tags::IMAGE_POSITION_PATIENT)
            .unwrap()
            .to_multi_float64()
            .unwrap();
        let derivation = item(tags::DERIVATION_IMAGE_SEQUENCE);
        let referenced = &derivation
            .element(tags::SOURCE_IMAGE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        let uid = referenced
            .element(tags::REFERENCED_SOP_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap();
        let source_position = &positions[uid.as_ref()];
        for a in 0..3 {
            assert!((position[a] - source_position[a]).abs() < 1e-3, "frame {f}");
        }
        for p in 0..plane {
            let bit = f * plane + p;
            let on = bits[bit / 8] & (1 << (bit % 8)) != 0;
            assert_eq!(on, labels[z * plane + p] == label, "frame {f}, pixel {p}");
        }
    }
}
