//! `mtseg._mtseg`: the native half of the Python package, a thin layer over the library's
//! in-memory API (`mtseg::infer::Segmenter::segment`). Arrays are indexed `[x, y, z]` as
//! nibabel gives them, with the voxel-to-world (RAS) affine beside them; the GIL is released
//! while the network runs. The Python half (`python/mtseg/__init__.py`) adds nibabel images
//! and type hints.

use std::path::{Path, PathBuf};

use mtseg::device::Hardware;
use mtseg::infer::{Segmenter, segment_file as segment_file_native};
use mtseg::io::{self, Affine, DataType, Grid, Volume};
use numpy::ndarray::{Array2, Array3, ShapeBuilder};
use numpy::{IntoPyArray, PyArray2, PyArray3, PyReadonlyArray2, PyReadonlyArray3};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

/// A library error as a Python exception: files that cannot be read or written are
/// `OSError`s, the rest `ValueError`s; the message names the file.
fn to_python(e: mtseg::Error) -> PyErr {
    match e {
        mtseg::Error::Io { .. } => PyOSError::new_err(e.to_string()),
        other => PyValueError::new_err(other.to_string()),
    }
}

fn segmenter(model: Option<PathBuf>, task: Option<String>) -> Result<Segmenter, mtseg::Error> {
    let mut builder = Segmenter::builder().hardware(Hardware::Cpu);
    if let Some(path) = model {
        builder = builder.model(path);
    }
    if let Some(task) = task {
        builder = builder.task(task);
    }
    builder.build()
}

fn affine_of(affine: &PyReadonlyArray2<'_, f64>) -> PyResult<Affine> {
    let a = affine.as_array();
    if a.shape() != [4, 4] {
        return Err(PyValueError::new_err(format!(
            "the affine must be 4 x 4, not {:?}",
            a.shape()
        )));
    }
    Ok(Affine::from_fn(|r, c| a[[r, c]]))
}

/// Segments an image held in memory. `image` is `[x, y, z]` float32, `affine` its 4 x 4
/// voxel-to-world (RAS) matrix; `task` a task name of the model (default: recognised),
/// `model` a model file (default: the built-in one). Returns the label map on the image's
/// grid (uint16, `[x, y, z]`) and the sidecar's content as JSON text.
#[pyfunction]
#[pyo3(signature = (image, affine, task=None, model=None))]
fn segment<'py>(
    py: Python<'py>,
    image: PyReadonlyArray3<'py, f32>,
    affine: PyReadonlyArray2<'py, f64>,
    task: Option<String>,
    model: Option<PathBuf>,
) -> PyResult<(Bound<'py, PyArray3<u16>>, String)> {
    let view = image.as_array();
    let shape: [usize; 3] = [view.shape()[0], view.shape()[1], view.shape()[2]];
    // x fastest, as the library stores volumes, whatever the array's memory order.
    let data: Vec<f32> = view.t().iter().copied().collect();
    let affine = affine_of(&affine)?;
    io::nifti::check_affine(Path::new("the image's affine"), &affine).map_err(to_python)?;
    if shape.contains(&0) {
        return Err(PyValueError::new_err(format!("an empty image of shape {shape:?}")));
    }
    let grid = Grid::new(shape, affine);
    let image = Volume::filled(grid, 0f32, DataType::F32).with_data(data);
    let (labels, summary) = py
        .detach(|| {
            let segmented = segmenter(model, task)?.segment(&image)?;
            let summary = serde_json::to_string(&segmented.summary)
                .map_err(|e| mtseg::Error::usage(e.to_string()))?;
            Ok::<_, mtseg::Error>((segmented.labels.data, summary))
        })
        .map_err(to_python)?;
    let labels = Array3::from_shape_vec(shape.f(), labels)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok((labels.into_pyarray(py), summary))
}

/// Segments the scan at `input` into the label map `output` (.nii or .nii.gz) with its JSON
/// sidecar beside it, as `mtseg segment` does; returns the sidecar as JSON text.
#[pyfunction]
#[pyo3(signature = (input, output, task=None, model=None, probabilities=None))]
fn segment_file(
    py: Python<'_>,
    input: PathBuf,
    output: PathBuf,
    task: Option<String>,
    model: Option<PathBuf>,
    probabilities: Option<PathBuf>,
) -> PyResult<String> {
    py.detach(|| {
        if input.canonicalize().ok() == output.canonicalize().ok() && output.exists() {
            return Err(mtseg::Error::invalid(&output, "refusing to write over the input"));
        }
        let segmenter = segmenter(model, task)?;
        let report = segment_file_native(&segmenter, &input, &output, probabilities.as_deref())?;
        serde_json::to_string(&report).map_err(|e| mtseg::Error::usage(e.to_string()))
    })
    .map_err(to_python)
}

/// Reads a volume (NIfTI, NRRD, MetaImage, DICOM): its intensities as float32 `[x, y, z]`
/// and its 4 x 4 voxel-to-world (RAS) affine.
#[pyfunction]
fn read<'py>(
    py: Python<'py>,
    path: PathBuf,
) -> PyResult<(Bound<'py, PyArray3<f32>>, Bound<'py, PyArray2<f64>>)> {
    let image = py
        .detach(|| io::read_image(Path::new(&path)))
        .map_err(to_python)?;
    let data = Array3::from_shape_vec(image.grid.shape.f(), image.data)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    let affine = Array2::from_shape_fn((4, 4), |(r, c)| image.grid.affine[(r, c)]);
    Ok((data.into_pyarray(py), affine.into_pyarray(py)))
}

#[pymodule]
fn _mtseg(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(segment, m)?)?;
    m.add_function(wrap_pyfunction!(segment_file, m)?)?;
    m.add_function(wrap_pyfunction!(read, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
