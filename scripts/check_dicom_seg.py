#!/usr/bin/env python3
"""DICOM in and DICOM SEG out, end to end, checked with pydicom and highdicom.

A classic MR series (one uncompressed slice per file) is made from a test-split T1 scan of
../shared/data; `mtseg segment` reads it (without --task) and writes a NIfTI label map and a
DICOM SEG. The SEG must read back with highdicom as a binary segmentation of the labels
present, in the source's frame of reference, study and patient; each frame must hold exactly
its label's pixels of the NIfTI label map, lie at its source slice, and reference it. The label
map must match the one mtseg gives for the original NIfTI (Dice of every class at least 0.98:
the series stores the scan's float intensities as integers).

usage: check_dicom_seg.py MTSEG DATA WORK
"""

import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

CASE = "IXI048"


def lps(ras):
    return np.array([-ras[0], -ras[1], ras[2]])


def write_series(image, folder):
    """The scan as a classic series: slice k of the third axis in file k; rows along the
    second voxel axis, columns along the first. Returns the slices' SOP instance UIDs and
    positions (LPS)."""
    folder.mkdir(parents=True)
    affine = image.affine
    data = np.asarray(image.get_fdata())
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    row_dir = lps(affine[:3, 0] / spacing[0])
    col_dir = lps(affine[:3, 1] / spacing[1])
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    slices = []
    for k in range(data.shape[2]):
        uid = generate_uid()
        position = lps((affine @ [0, 0, k, 1])[:3])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^T1", "MTSEG-1", "", "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study, "20261207", "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series, 3, "T1 from NIfTI"
        ds.Modality, ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = "MR", frame, ""
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in [*row_dir, *col_dir]]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.round(data[:, :, k].T).astype("<i2").tobytes()
        ds.save_as(folder / f"slice_{k:03d}.dcm", enforce_file_format=True)
        slices.append((uid, position))
    return slices, frame, study


def run(mtseg, *args):
    done = subprocess.run([mtseg, "-q", *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"mtseg {' '.join(map(str, args))} failed:\n{done.stderr}")


def main():
    mtseg, data, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    scan = data / "Dataset001_BrainTissueIXI" / "imagesTr" / f"{CASE}_0000.nii.gz"
    image = nib.load(scan)
    slices, frame_of_reference, study = write_series(image, work / "series")

    run(mtseg, "segment", "-i", work / "series", "-o", work / "seg.nii.gz", "--dicom-seg", work / "seg.dcm")
    run(mtseg, "segment", "-i", scan, "-o", work / "direct.nii.gz")
    labels_image = nib.load(work / "seg.nii.gz")
    labels = np.asarray(labels_image.dataobj)
    sidecar = json.loads((work / "seg.json").read_text())
    assert sidecar["task"] == "BrainTissueIXI", sidecar["task"]
    # The series stores its slices in another order than the NIfTI: compare in RAS order.
    canonical = lambda img: (np.asarray(nib.as_closest_canonical(img).dataobj), nib.as_closest_canonical(img).affine)
    (ours, ours_affine), (theirs, theirs_affine) = canonical(labels_image), canonical(nib.load(work / "direct.nii.gz"))
    assert ours.shape == theirs.shape and np.allclose(ours_affine, theirs_affine, atol=1e-3)
    for value in range(1, 7):
        a, b = ours == value, theirs == value
        dice = 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)
        assert dice >= 0.98, f"class {value}: Dice {dice:.3f} between the DICOM and NIfTI inputs"

    seg = hd.seg.segread(work / "seg.dcm")
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == frame_of_reference
    assert seg.StudyInstanceUID == study and seg.PatientID == "MTSEG-1"
    present = sorted(int(v) for v in np.unique(labels) if v > 0)
    names = {int(k): v for k, v in sidecar["labels"].items()}
    segment_labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert segment_labels == [names[v] for v in present], (segment_labels, present)
    sources = {uid for _, _, uid in seg.get_source_image_uids()}
    assert sources == {uid for uid, _ in slices}, "the SEG references other instances"

    # Slice k of the label map: where its first voxel lies (LPS), by source instance.
    where = {uid: position for uid, position in slices}
    by_position = {}
    for k in range(labels.shape[2]):
        by_position[k] = lps((labels_image.affine @ [0, 0, k, 1])[:3])
    for number, value in enumerate(present, start=1):
        for uid, position in slices:
            k = min(by_position, key=lambda j: np.abs(by_position[j] - position).sum())
            assert np.abs(by_position[k] - position).max() < 1e-3, "no slice of the label map here"
            mask = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[uid], segment_numbers=[number]
            )[0, :, :, 0]
            expected = (labels[:, :, k] == value).T
            assert np.array_equal(mask.astype(bool), expected), f"segment {number}, instance {uid}"
    raw = pydicom.dcmread(work / "seg.dcm")
    for item in raw.PerFrameFunctionalGroupsSequence:
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = np.array(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        assert np.abs(position - where[uid]).max() < 1e-3, "a frame lies off its source slice"
    print(f"DICOM SEG checked: {len(present)} segments x {len(slices)} slices, highdicom {hd.__version__}")


if __name__ == "__main__":
    main()
