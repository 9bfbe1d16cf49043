//! `segment --statistics FILE.csv`: one row per segmented scan, appended to a CSV that a
//! cohort's runs share: the scan, its output, the task, the quality verdict, and per class
//! its volume (ml) and the scan's mean intensity there. Columns are the union over the rows
//! (scans of different tasks leave each other's class columns empty). Each append rewrites
//! the file atomically under a lock, so concurrent shards and a killed run leave a whole,
//! readable CSV.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use super::SegmentReport;
use crate::error::{Error, Result};
use crate::io::atomic;

/// The leading columns, in order; the class columns follow.
const FIXED: [&str; 5] = ["input", "output", "task", "quality_ok", "quality_warnings"];

/// One scan's row: column name -> value.
pub fn row(report: &SegmentReport) -> BTreeMap<String, String> {
    let summary = &report.summary;
    let mut row = BTreeMap::new();
    row.insert("input".into(), report.input.display().to_string());
    row.insert("output".into(), report.output.display().to_string());
    row.insert("task".into(), summary.task.clone().unwrap_or_default());
    row.insert("quality_ok".into(), summary.quality.ok.to_string());
    row.insert(
        "quality_warnings".into(),
        summary.quality.warnings.join("; "),
    );
    for (class, ml) in &summary.volumes_ml {
        row.insert(format!("{class}_ml"), format!("{ml:.3}"));
    }
    for (class, mean) in &summary.mean_intensity {
        row.insert(format!("{class}_mean_intensity"), format!("{mean:.3}"));
    }
    row
}

/// Appends `report`'s row to the CSV at `path` (created if absent).
pub fn append(path: &Path, report: &SegmentReport) -> Result<()> {
    let lock_path = path.with_file_name(format!(
        ".{}.lock",
        path.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    ));
    let lock = File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
    lock.lock().map_err(|e| Error::io(&lock_path, e))?;
    let mut rows = if path.is_file() {
        read(path)?
    } else {
        Vec::new()
    };
    rows.push(row(report));
    let mut columns: Vec<String> = FIXED.iter().map(|c| c.to_string()).collect();
    for row in &rows {
        for column in row.keys() {
            if !columns.contains(column) {
                columns.push(column.clone());
            }
        }
    }
    let mut writer = csv::Writer::from_writer(Vec::new());
    let invalid = |e: csv::Error| Error::invalid(path, e.to_string());
    writer.write_record(&columns).map_err(invalid)?;
    for row in &rows {
        writer
            .write_record(
                columns
                    .iter()
                    .map(|c| row.get(c).map_or("", String::as_str)),
            )
            .map_err(invalid)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| Error::invalid(path, e.to_string()))?;
    atomic::write_bytes(path, &bytes)
}

/// The rows of a statistics CSV.
fn read(path: &Path) -> Result<Vec<BTreeMap<String, String>>> {
    let mut reader =
        csv::Reader::from_path(path).map_err(|e| Error::invalid(path, e.to_string()))?;
    let invalid = |e: csv::Error| {
        Error::invalid(
            path,
            format!("not a statistics CSV that mtseg can extend: {e}"),
        )
    };
    let header: Vec<String> = reader
        .headers()
        .map_err(invalid)?
        .iter()
        .map(String::from)
        .collect();
    if header.first().map(String::as_str) != Some("input") {
        return Err(Error::invalid(
            path,
            "not a statistics CSV of mtseg (its first column is not `input`): give another file",
        ));
    }
    reader
        .records()
        .map(|record| {
            let record = record.map_err(invalid)?;
            Ok(header
                .iter()
                .cloned()
                .zip(record.iter().map(String::from))
                .filter(|(_, v)| !v.is_empty())
                .collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::{Quality, Summary};
    use std::path::PathBuf;

    fn report(input: &str, task: &str, volumes: &[(&str, f64)], ok: bool) -> SegmentReport {
        SegmentReport {
            input: PathBuf::from(input),
            series: None,
            output: PathBuf::from(format!("{input}.seg.nii.gz")),
            model: PathBuf::from("m.mtseg"),
            summary: Summary {
                task: Some(task.into()),
                label_values: "dataset",
                labels: BTreeMap::new(),
                task_selection: "given",
                mirrored_left_right: Vec::new(),
                recognition: None,
                volumes_ml: volumes.iter().map(|(c, v)| (c.to_string(), *v)).collect(),
                mean_intensity: volumes
                    .iter()
                    .map(|(c, v)| (c.to_string(), v * 2.0))
                    .collect(),
                voxels_per_task: BTreeMap::new(),
                postprocessing: None,
                voxels_removed_by_postprocessing: 0,
                mean_probability: 0.9,
                mean_foreground_probability: 0.9,
                quality: Quality {
                    ok,
                    warnings: if ok {
                        vec![]
                    } else {
                        vec!["too small, really".into()]
                    },
                },
            },
            seconds: 1.0,
            written_by: "test".into(),
        }
    }

    #[test]
    fn rows_accumulate_with_the_union_of_the_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.csv");
        append(
            &path,
            &report("a, with comma.nii", "Brain", &[("grey", 600.0)], true),
        )
        .unwrap();
        append(
            &path,
            &report("b.nii", "Hippo", &[("anterior", 1.5)], false),
        )
        .unwrap();
        append(&path, &report("c.nii", "Brain", &[("grey", 610.25)], true)).unwrap();
        let rows = read(&path).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0]["input"], "a, with comma.nii");
        assert_eq!(rows[0]["grey_ml"], "600.000");
        assert_eq!(rows[0]["grey_mean_intensity"], "1200.000");
        assert!(!rows[0].contains_key("anterior_ml"));
        assert_eq!(rows[1]["anterior_ml"], "1.500");
        assert_eq!(rows[1]["quality_ok"], "false");
        assert_eq!(rows[1]["quality_warnings"], "too small, really");
        assert_eq!(rows[2]["grey_ml"], "610.250");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("input,output,task,quality_ok,quality_warnings,"));
        // A CSV that is not one of ours is left alone.
        let other = dir.path().join("other.csv");
        std::fs::write(&other, "a,b\n1,2\n").unwrap();
        let err = append(&other, &report("d.nii", "Brain", &[], true)).unwrap_err();
        assert!(err.to_string().contains("other.csv"), "{err}");
        assert_eq!(std::fs::read_to_string(&other).unwrap(), "a,b\n1,2\n");
    }
}
