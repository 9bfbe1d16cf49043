"""The Python package against the command-line tool on a real test scan (../shared/data, or
MTSEG_DATA), and its errors. MTSEG_BIN names the `mtseg` binary to compare with."""

import json
import os
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import mtseg

DATA = Path(os.environ.get("MTSEG_DATA", Path(__file__).parents[2] / ".." / "shared" / "data"))
SCAN = DATA / "Dataset001_BrainTissueIXI" / "imagesTr" / "IXI048_0000.nii.gz"
BIN = os.environ.get("MTSEG_BIN", str(Path(__file__).parents[2] / "target" / "debug" / "mtseg"))

needs_data = pytest.mark.skipif(
    not SCAN.is_file() and os.environ.get("MTSEG_REQUIRE_SHARED_DATA") != "1",
    reason=f"SKIPPED: {SCAN} is missing",
)


@pytest.fixture(scope="module")
def cli_labels(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "seg.nii.gz"
    subprocess.run([BIN, "-q", "segment", "-i", str(SCAN), "-o", str(out)], check=True)
    return np.asarray(nib.load(out).dataobj), json.loads(out.with_name("seg.json").read_text())


@needs_data
def test_an_array_and_its_affine_segment_as_the_cli_does(cli_labels):
    image = nib.load(SCAN)
    labels, info = mtseg.segment(np.asarray(image.dataobj), image.affine)
    expected, sidecar = cli_labels
    assert labels.shape == image.shape and labels.dtype == np.uint16
    assert np.array_equal(labels, expected)
    assert info["task"] == sidecar["task"] == "BrainTissueIXI"
    assert info["volumes_ml"] == pytest.approx(sidecar["volumes_ml"])
    assert info["quality"] == sidecar["quality"]
    assert set(info["labels"].values()) >= {"white_matter", "cortical_grey_matter"}


@needs_data
def test_a_nibabel_image_and_a_task_are_taken_directly(cli_labels):
    labels, info = mtseg.segment(nib.load(SCAN), task="BrainTissueIXI")
    assert info["task_selection"] == "given"
    assert np.array_equal(labels, cli_labels[0])


@needs_data
def test_files_are_read_and_segmented_as_the_cli_does(tmp_path, cli_labels):
    array, affine = mtseg.read(SCAN)
    image = nib.load(SCAN)
    assert np.allclose(affine, image.affine, atol=1e-5)
    assert np.allclose(array, image.get_fdata(), atol=1e-3)
    out = tmp_path / "seg.nii.gz"
    info = mtseg.segment_file(SCAN, out)
    assert info["output"] == str(out) and (tmp_path / "seg.json").is_file()
    assert np.array_equal(np.asarray(nib.load(out).dataobj), cli_labels[0])


def test_errors_are_python_exceptions_naming_the_file(tmp_path):
    missing = tmp_path / "absent.nii.gz"
    with pytest.raises(OSError, match="absent.nii.gz"):
        mtseg.read(missing)
    with pytest.raises(OSError, match="absent.nii.gz"):
        mtseg.segment_file(missing, tmp_path / "out.nii.gz")
    broken = tmp_path / "broken.nii"
    broken.write_bytes(b"not a volume at all")
    with pytest.raises(ValueError, match="broken.nii"):
        mtseg.read(broken)
    image = np.zeros((8, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="singular"):
        mtseg.segment(image, np.zeros((4, 4)))
    with pytest.raises(ValueError, match="4 x 4"):
        mtseg.segment(image, np.eye(3))
    with pytest.raises(ValueError, match="Nowhere"):
        mtseg.segment(image, np.eye(4), task="Nowhere")
    with pytest.raises(ValueError, match="affine"):
        mtseg.segment(image)
