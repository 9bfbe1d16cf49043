//! `mtseg segment`: label maps for scans, on their own grid.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use mtseg::infer::{SegmentReport, Segmenter, segment_file, statistics};
use mtseg::io;
use mtseg::model::SHIPPED_MODEL;

/// Segment a scan, every scan in a folder, or the series of a DICOM folder. Label maps are
/// written with the input's exact grid and header geometry, with a JSON sidecar that says
/// which label values they use and what the segmentation's quality verdict is.
#[derive(clap::Args)]
pub struct Args {
    /// A volume file, a folder of them, or DICOM (a file, or a folder searched recursively:
    /// each series is segmented).
    #[arg(short, long)]
    input: PathBuf,
    /// The label map to write (.nii or .nii.gz), or a folder when INPUT is a folder (for DICOM,
    /// one label map per series, named by series number and description).
    #[arg(short, long)]
    output: PathBuf,
    /// With a DICOM input holding several series: only this one (its SeriesInstanceUID, as
    /// `mtseg info` lists them).
    #[arg(long, value_name = "UID")]
    series: Option<String>,
    /// With a DICOM input of one series (or one picked by --series): also write the
    /// segmentation as a DICOM SEG object, one segment per label, referencing the source.
    #[arg(long, value_name = "OUT.dcm")]
    dicom_seg: Option<PathBuf>,
    /// A model file (model.mtseg from `mtseg train`) [default: the shipped model of brain
    /// tissue, hippocampus and chest CTA, see models/README.md].
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// Only this task's classes and background compete (default: the model decides), e.g.
    /// BrainTissueIXI, HippocampusMSD or ChestCTA with the shipped model.
    #[arg(long)]
    task: Option<String>,
    /// Also write the probability of the winning class (a confidence map) here; with a
    /// folder INPUT, a folder.
    #[arg(long)]
    probabilities: Option<PathBuf>,
    /// Where to run the network.
    #[arg(long, value_enum, default_value = "cpu")]
    device: super::DeviceArg,
    /// Replace existing outputs.
    #[arg(long)]
    overwrite: bool,
    /// Keep every connected piece of each task's labels (by default only each task's
    /// largest connected object is kept: islands in the scalp or neck are dropped).
    #[arg(long)]
    keep_all_components: bool,
    /// Test-time augmentation for this task (repeat for more): its classes also get a pass
    /// over the scan mirrored left-right, averaged in. Twice the time; only for left-right
    /// symmetric anatomy: with the shipped model, BrainTissueIXI (not HippocampusMSD, whose
    /// Dice it lowers; see models/README.md).
    #[arg(long, value_name = "TASK")]
    mirror: Vec<String>,
    /// Append one row per scan to this CSV (created if absent): input, output, task, quality
    /// verdict, and per class its volume in ml and the scan's mean intensity there.
    #[arg(long, value_name = "FILE.csv")]
    statistics: Option<PathBuf>,
    /// Exit with an error when a segmentation's quality verdict warns (for pipelines that
    /// must not go on with a likely wrong result); the outputs are written all the same.
    #[arg(long)]
    strict: bool,
    /// With a folder INPUT: segment only shard I of N (`--shard 0/4`), a deterministic
    /// subset, so that N jobs can share a cohort and one output folder.
    #[arg(long, value_parser = parse_shard)]
    shard: Option<(usize, usize)>,
}

fn parse_shard(text: &str) -> Result<(usize, usize), String> {
    let (i, n) = text.split_once('/').ok_or("expected I/N, e.g. 0/4")?;
    let i: usize = i.trim().parse().map_err(|_| "I must be a whole number")?;
    let n: usize = n.trim().parse().map_err(|_| "N must be a whole number")?;
    if n == 0 || i >= n {
        return Err(format!("shard {i}/{n}: I must be below N"));
    }
    Ok((i, n))
}

/// `case_0000.nii.gz` -> `case.nii.gz` (nnU-Net naming), `scan.nrrd` -> `scan.nii.gz`.
fn output_name(input: &Path) -> String {
    let name = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    let stem_len = [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"]
        .iter()
        .find(|e| lower.ends_with(*e))
        .map_or(name.len(), |e| name.len() - e.len());
    let stem = &name[..stem_len];
    format!("{}.nii.gz", stem.strip_suffix("_0000").unwrap_or(stem))
}

fn load_segmenter(args: &Args) -> Result<Segmenter> {
    let mut builder = Segmenter::builder()
        .hardware(args.device.into())
        .largest_component(!args.keep_all_components)
        .mirror_left_right(args.mirror.iter().cloned());
    if let Some(task) = &args.task {
        builder = builder.task(task.clone());
    }
    match &args.model {
        Some(path) => Ok(builder.model(path.clone()).build()?),
        None => {
            let segmenter = builder.build()?;
            tracing::info!(
                "no --model given: using the shipped model {} (tasks: {})",
                SHIPPED_MODEL,
                segmenter.meta().task_names().join(", ")
            );
            Ok(segmenter)
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let segmenter = load_segmenter(&args)?;
    if io::dicom::is_dicom_input(&args.input) {
        return run_dicom(&segmenter, &args);
    }
    if args.series.is_some() || args.dicom_seg.is_some() {
        bail!(
            "{}: --series and --dicom-seg need a DICOM input",
            args.input.display()
        );
    }
    if args.input.is_dir() {
        return run_folder(&segmenter, &args);
    }
    if args.shard.is_some() {
        bail!("--shard needs a folder as --input");
    }
    super::check_output(&args.input, &args.output, args.overwrite)?;
    if let Some(p) = &args.statistics {
        // Appended to, never replaced; but never the scan itself.
        super::check_output(&args.input, p, true)?;
    }
    if let Some(p) = &args.probabilities {
        super::check_output(&args.input, p, args.overwrite)?;
    }
    let report = segment_file(
        &segmenter,
        &args.input,
        &args.output,
        args.probabilities.as_deref(),
    )?;
    print_report(&report);
    warn_about(&report);
    if let Some(path) = &args.statistics {
        statistics::append(path, &report)?;
    }
    if args.strict && !report.summary.quality.ok {
        bail!(
            "{}: the segmentation's quality verdict warns (--strict)",
            args.input.display()
        );
    }
    Ok(())
}

fn print_report(report: &SegmentReport) {
    let summary = &report.summary;
    let task = summary
        .task
        .as_deref()
        .unwrap_or("several tasks (joint label values)");
    let recognised = summary
        .recognition
        .as_ref()
        .map(|r| format!(", recognised with confidence {:.2}", r.confidence))
        .unwrap_or_default();
    let verdict = if summary.quality.ok {
        "quality ok"
    } else {
        "quality WARNING"
    };
    println!(
        "{} -> {}  [{task}{recognised}, {verdict}, {:.1} s]",
        scan_name(report),
        report.output.display(),
        report.seconds
    );
}

/// The scan a report is about: its file, or a DICOM input and its series.
fn scan_name(report: &SegmentReport) -> String {
    match &report.series {
        Some(uid) => format!("{} (series {uid})", report.input.display()),
        None => report.input.display().to_string(),
    }
}

/// Each warning of the quality verdict on stderr, naming the scan (even with --quiet).
fn warn_about(report: &SegmentReport) {
    for warning in &report.summary.quality.warnings {
        eprintln!("warning: {}: {warning}", scan_name(report));
    }
}

/// A file name from a series' number and description: `5000_DTI_PA-SAG_20d.nii.gz`.
fn series_file_name(info: &io::dicom::SeriesInfo) -> String {
    let clean: String = info
        .description
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let number = info
        .series_number
        .map_or_else(|| info.uid.replace('#', "_"), |n| n.to_string());
    if clean.is_empty() {
        format!("{number}.nii.gz")
    } else {
        format!("{number}_{clean}.nii.gz")
    }
}

/// A DICOM input: every series (or the one --series names), each into its own label map.
fn run_dicom(segmenter: &Segmenter, args: &Args) -> Result<()> {
    let mut all = io::dicom::list(&args.input)?;
    if let Some(uid) = &args.series {
        let known: Vec<String> = all.iter().map(|s| s.info.uid.clone()).collect();
        all.retain(|s| &s.info.uid == uid);
        if all.is_empty() {
            bail!(
                "{}: no series {uid}; the series here are: {}",
                args.input.display(),
                known.join(", ")
            );
        }
    }
    let to_file = all.len() == 1 && io::format_of(&args.output).is_some();
    if args.dicom_seg.is_some() && all.len() > 1 {
        bail!(
            "{}: {} series here; --dicom-seg writes one: pick it with --series UID (`mtseg info` lists them)",
            args.input.display(),
            all.len()
        );
    }
    if !to_file {
        std::fs::create_dir_all(&args.output)
            .with_context(|| format!("{}: cannot create", args.output.display()))?;
    }
    for series in &all {
        let started = std::time::Instant::now();
        let output = if to_file {
            args.output.clone()
        } else {
            args.output.join(series_file_name(&series.info))
        };
        super::check_output(&args.input, &output, args.overwrite)?;
        if let Some(seg) = &args.dicom_seg {
            super::check_output(&args.input, seg, args.overwrite)?;
        }
        let image = series.read(&args.input)?.into_image(&args.input)?;
        let source = mtseg::infer::Source {
            input: &args.input,
            series: Some(&series.info.uid),
            started,
        };
        let probabilities = args.probabilities.as_ref().map(|p| {
            if to_file {
                p.clone()
            } else {
                p.join(series_file_name(&series.info))
            }
        });
        if let Some(parent) = probabilities.as_ref().and_then(|p| p.parent())
            && !to_file
        {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("{}: cannot create", parent.display()))?;
        }
        let (report, labels) = mtseg::infer::segment_and_write(
            segmenter,
            &image,
            &source,
            &output,
            probabilities.as_deref(),
        )?;
        print_report(&report);
        warn_about(&report);
        if let Some(path) = &args.statistics {
            statistics::append(path, &report)?;
        }
        if let Some(seg) = &args.dicom_seg {
            let task_name = report.summary.task.as_deref().unwrap_or("mtseg");
            let segments: Vec<io::dicom::seg::Segment> = report
                .summary
                .labels
                .iter()
                .filter(|(value, _)| **value > 0)
                .map(|(&label, name)| io::dicom::seg::Segment {
                    label,
                    name: name.clone(),
                    description: format!("{task_name}: {name}"),
                })
                .collect();
            let written = io::dicom::seg::write(
                seg,
                &labels,
                &series.info,
                &segments,
                &format!("mtseg {task_name}"),
            )?;
            if !crate::progress::is_quiet() {
                eprintln!("wrote {} ({} segments)", seg.display(), written.len());
            }
        }
        if args.strict && !report.summary.quality.ok {
            bail!(
                "{} series {}: the segmentation's quality verdict warns (--strict)",
                args.input.display(),
                series.info.uid
            );
        }
    }
    Ok(())
}

fn run_folder(segmenter: &Segmenter, args: &Args) -> Result<()> {
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&args.input)
        .with_context(|| format!("{}: cannot list the folder", args.input.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && io::is_volume_file(p))
        .collect();
    inputs.sort();
    if inputs.is_empty() {
        bail!(
            "{}: no volume files (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd)",
            args.input.display()
        );
    }
    if let Some((i, n)) = args.shard {
        inputs = inputs
            .into_iter()
            .enumerate()
            .filter(|(k, _)| k % n == i)
            .map(|(_, p)| p)
            .collect();
    }
    if args.output.exists() && !args.output.is_dir() {
        bail!(
            "{}: INPUT is a folder, so OUTPUT must be a folder",
            args.output.display()
        );
    }
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("{}: cannot create", args.output.display()))?;
    if let Some(p) = &args.probabilities {
        std::fs::create_dir_all(p).with_context(|| format!("{}: cannot create", p.display()))?;
    }
    let bar = crate::progress::bar(inputs.len() as u64, "segment");
    let (mut failures, mut warned) = (0, 0);
    for input in &inputs {
        let name = output_name(input);
        let output = args.output.join(&name);
        let probabilities = args.probabilities.as_ref().map(|p| p.join(&name));
        let result = super::check_output(input, &output, args.overwrite).and_then(|_| {
            let report = segment_file(segmenter, input, &output, probabilities.as_deref())?;
            if let Some(path) = &args.statistics {
                statistics::append(path, &report)?;
            }
            Ok(report)
        });
        match result {
            Ok(report) => {
                crate::progress::say(
                    &bar,
                    &format!(
                        "{} -> {}",
                        input.display(),
                        report.summary.task.as_deref().unwrap_or("joint labels")
                    ),
                );
                if !report.summary.quality.ok {
                    warned += 1;
                    bar.suspend(|| warn_about(&report));
                }
            }
            Err(e) => {
                failures += 1;
                // Errors are printed even with --quiet.
                eprintln!("error: {e:#}");
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "{} of {} scans segmented into {}; {warned} with quality warnings",
        inputs.len() - failures,
        inputs.len(),
        args.output.display()
    );
    if failures > 0 {
        bail!("{failures} scans failed (see above)");
    }
    if args.strict && warned > 0 {
        bail!("{warned} segmentations have quality warnings (--strict; see above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_follow_nnunet() {
        assert_eq!(
            output_name(Path::new("a/case_001_0000.nii.gz")),
            "case_001.nii.gz"
        );
        assert_eq!(output_name(Path::new("scan.nrrd")), "scan.nii.gz");
        assert_eq!(output_name(Path::new("x.NII")), "x.nii.gz");
    }

    #[test]
    fn shards_parse() {
        assert_eq!(parse_shard("1/4"), Ok((1, 4)));
        assert!(parse_shard("4/4").is_err());
        assert!(parse_shard("x").is_err());
    }
}
