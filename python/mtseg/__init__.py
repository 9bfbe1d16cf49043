"""mtseg from Python: one network, many segmentation tasks, many modalities.

The built-in model (brain tissue, hippocampus, chest CTA) segments arrays held in memory or
files on disk, and says how much to trust each result::

    import nibabel as nib
    import mtseg

    image = nib.load("T1.nii.gz")
    labels, info = mtseg.segment(image)                 # or mtseg.segment(array, affine)
    info["task"], info["volumes_ml"], info["quality"]   # what the JSON sidecar holds
    nib.save(nib.Nifti1Image(labels, image.affine), "seg.nii.gz")

Arrays are indexed ``[x, y, z]`` with a 4 x 4 voxel-to-world (RAS) affine, as nibabel gives
them. Errors arrive as ``ValueError`` (bad input, naming the file or argument) or ``OSError``
(a file that cannot be read or written). The network runs without the GIL.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Tuple, Union

import numpy as np

from . import _mtseg

__version__: str = _mtseg.__version__
__all__ = ["segment", "segment_file", "read", "__version__"]

PathLike = Union[str, "os.PathLike[str]"]


def _array_and_affine(image: Any, affine: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """A nibabel image, or an array with its affine, as float32 ``[x, y, z]`` and float64 4x4."""
    if affine is None:
        if not (hasattr(image, "affine") and hasattr(image, "get_fdata")):
            raise ValueError("give the image's affine, or a nibabel image that carries it")
        affine = image.affine
        image = image.get_fdata(dtype=np.float32)
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ValueError(f"a 3-D image is needed, not an array of shape {array.shape}")
    return array, np.asarray(affine, dtype=np.float64)


def segment(
    image: Any,
    affine: Optional[np.ndarray] = None,
    task: Optional[str] = None,
    model: Optional[PathLike] = None,
) -> Tuple[np.ndarray, dict]:
    """Segments an image held in memory.

    ``image`` is a nibabel image, or an array ``[x, y, z]`` with its 4 x 4 ``affine``;
    ``task`` one of the model's tasks (default: the model recognises it); ``model`` a model
    file from ``mtseg train`` (default: the built-in model). Returns the label map on the
    image's grid (uint16 ``[x, y, z]``; the task's own label values) and a dict with what the
    JSON sidecar of ``mtseg segment`` holds: ``task``, ``labels`` (value to class name),
    ``volumes_ml``, ``mean_intensity``, ``recognition`` and ``quality`` (``ok``, ``warnings``).
    """
    array, affine = _array_and_affine(image, affine)
    labels, summary = _mtseg.segment(
        array, affine, task, None if model is None else os.fspath(model)
    )
    return labels, json.loads(summary)


def segment_file(
    input: PathLike,
    output: PathLike,
    task: Optional[str] = None,
    model: Optional[PathLike] = None,
    probabilities: Optional[PathLike] = None,
) -> dict:
    """Segments the scan at ``input`` (NIfTI, NRRD, MetaImage or DICOM) into the label map
    ``output`` (.nii or .nii.gz) with its JSON sidecar beside it, as ``mtseg segment`` does;
    ``probabilities`` also writes the winning class's probability map. Returns the sidecar's
    content."""
    report = _mtseg.segment_file(
        os.fspath(input),
        os.fspath(output),
        task,
        None if model is None else os.fspath(model),
        None if probabilities is None else os.fspath(probabilities),
    )
    return json.loads(report)


def read(path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """Reads a volume (NIfTI, NRRD, MetaImage, DICOM): float32 intensities ``[x, y, z]`` and
    the 4 x 4 voxel-to-world (RAS) affine."""
    return _mtseg.read(os.fspath(path))
