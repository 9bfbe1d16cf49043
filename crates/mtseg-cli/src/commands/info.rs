//! `mtseg info FILE...`: what a volume file holds.

use std::path::PathBuf;

use anyhow::Result;
use mtseg::io::{self, RawVolume, orientation::axcodes};
use serde::Serialize;

/// Print format, datatype, shape, spacing, orientation, affine and intensities of volumes; of
/// a DICOM folder holding several series, list them (UID, number, modality, description,
/// files, shape).
#[derive(clap::Args)]
pub struct Args {
    /// Volume files (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd), DICOM files or folders.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// One JSON object per file (affine row-major, RAS world as nibabel reports it).
    #[arg(long)]
    json: bool,
}

/// Integer-valued volumes with at most this many distinct values are listed as label maps.
const MAX_LISTED_LABELS: usize = 64;

#[derive(Serialize)]
struct Info {
    path: PathBuf,
    format: io::Format,
    compressed: bool,
    datatype: &'static str,
    /// Three spatial dimensions, and the number of volumes of a 4-D file.
    shape: Vec<usize>,
    spacing: [f64; 3],
    axcodes: [String; 3],
    qform_code: i16,
    sform_code: i16,
    affine: [[f64; 4]; 4],
    scl_slope: Option<f64>,
    scl_inter: Option<f64>,
    min: f64,
    max: f64,
    mean: f64,
    non_finite: usize,
    /// Distinct values when the volume looks like a label map.
    labels: Option<Vec<i64>>,
}

fn describe(path: PathBuf, raw: RawVolume) -> Info {
    let mut values = raw.voxels.to_f64();
    if let Some(s) = raw.scaling {
        values.iter_mut().for_each(|v| *v = *v * s.slope + s.inter);
    }
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = finite.iter().sum::<f64>() / finite.len().max(1) as f64;
    let labels = label_values(&values);
    Info {
        compressed: path.to_string_lossy().to_ascii_lowercase().ends_with(".gz")
            || raw.provenance.format != io::Format::Nifti1
                && raw.provenance.format != io::Format::Nifti2,
        path,
        format: raw.provenance.format,
        datatype: raw.voxels.datatype.name(),
        shape: raw
            .grid
            .shape
            .into_iter()
            .chain((raw.frames > 1).then_some(raw.frames))
            .collect(),
        spacing: raw.grid.spacing(),
        axcodes: axcodes(&raw.grid.affine).map(String::from),
        qform_code: raw.provenance.qform_code,
        sform_code: raw.provenance.sform_code,
        affine: raw.grid.affine_rows(),
        scl_slope: raw.scaling.map(|s| s.slope),
        scl_inter: raw.scaling.map(|s| s.inter),
        min,
        max,
        mean,
        non_finite: values.len() - finite.len(),
        labels,
    }
}

fn label_values(values: &[f64]) -> Option<Vec<i64>> {
    let mut distinct = std::collections::BTreeSet::new();
    for v in values {
        if !v.is_finite() || v.fract() != 0.0 {
            return None;
        }
        distinct.insert(*v as i64);
        if distinct.len() > MAX_LISTED_LABELS {
            return None;
        }
    }
    Some(distinct.into_iter().collect())
}

fn print_text(info: &Info) {
    let [sx, sy, sz] = info.spacing;
    let shape: Vec<String> = info.shape.iter().map(|d| d.to_string()).collect();
    println!("{}", info.path.display());
    println!("  format       {:?}", info.format);
    println!("  datatype     {}", info.datatype);
    println!(
        "  shape        {}{}",
        shape.join(" x "),
        if info.shape.len() > 3 {
            "  (4-D: one 3-D volume per frame)"
        } else {
            ""
        }
    );
    println!("  spacing      {sx:.4} x {sy:.4} x {sz:.4} mm");
    println!(
        "  orientation  {}  (qform_code {}, sform_code {})",
        info.axcodes.join(""),
        info.qform_code,
        info.sform_code
    );
    for (i, row) in info.affine.iter().take(3).enumerate() {
        let label = if i == 0 { "affine" } else { "" };
        println!(
            "  {label:<12} [{:>10.4} {:>10.4} {:>10.4} {:>10.4}]",
            row[0], row[1], row[2], row[3]
        );
    }
    if let (Some(slope), Some(inter)) = (info.scl_slope, info.scl_inter) {
        println!("  scaling      value * {slope} + {inter}");
    }
    println!(
        "  intensity    min {:.4}  max {:.4}  mean {:.4}",
        info.min, info.max, info.mean
    );
    if info.non_finite > 0 {
        println!(
            "  non-finite   {} voxels are NaN or infinite (read as 0 by mtseg)",
            info.non_finite
        );
    }
    if let Some(labels) = &info.labels {
        let list: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        println!("  label values {}", list.join(" "));
    }
}

/// A DICOM input of several series: one line (or JSON object) per series.
fn list_series(path: &std::path::Path, series: &[io::dicom::Series], json: bool) -> Result<()> {
    if !json {
        println!("{}: {} DICOM series", path.display(), series.len());
    }
    for s in series {
        let info = &s.info;
        if json {
            println!("{}", serde_json::to_string(info)?);
            continue;
        }
        let shape: Vec<String> = info.shape.iter().map(|d| d.to_string()).collect();
        println!(
            "  {}  #{}  {}  {}  {} files  {}",
            info.uid,
            info.series_number.map_or("-".into(), |n| n.to_string()),
            info.modality,
            if info.description.is_empty() {
                "-"
            } else {
                &info.description
            },
            info.files,
            match (&info.unreadable, shape.is_empty()) {
                (Some(why), _) => format!("not readable: {why}"),
                (None, true) => "not one volume (see the error when reading it)".to_string(),
                (None, false) => shape.join(" x "),
            }
        );
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    let mut failed = None;
    for path in args.files {
        let read = if io::dicom::is_dicom_input(&path) {
            match io::dicom::list(&path) {
                Ok(series) if series.len() > 1 => {
                    list_series(&path, &series, args.json)?;
                    continue;
                }
                Ok(_) => io::read_raw(&path),
                Err(e) => Err(e),
            }
        } else {
            io::read_raw(&path)
        };
        match read {
            Ok(raw) => {
                let info = describe(path, raw);
                if args.json {
                    println!("{}", serde_json::to_string(&info)?);
                } else {
                    print_text(&info);
                }
            }
            // Report every unreadable file, then fail with the first.
            Err(e) => {
                if failed.is_some() {
                    eprintln!("error: {e}");
                } else {
                    failed = Some(e);
                }
            }
        }
    }
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
