//! `mtseg evaluate`: predictions against references.

use std::path::PathBuf;

use anyhow::Result;
use mtseg::eval::{EvaluationTask, evaluate_folders};

/// Compare predicted label maps with references, case by case (matched by name): Dice, 95th
/// percentile Hausdorff distance and average symmetric surface distance in mm, volumes in
/// ml. Writes metrics.csv, metrics.json and summary.md into OUT. Predictions written by
/// `mtseg segment` carry a sidecar that tells their label values; with it, voxels given
/// another task's classes are reported as cross-task confusion.
#[derive(clap::Args)]
pub struct Args {
    /// Folder of predicted label maps.
    #[arg(long)]
    pred: PathBuf,
    /// Folder of reference label maps (e.g. a dataset's labelsTr).
    #[arg(long = "ref")]
    reference: PathBuf,
    /// The dataset.json naming the classes (default: every value found in the references).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// The task the scans belong to (default: dataset.json's name or its folder's).
    #[arg(long)]
    task: Option<String>,
    /// Report folder.
    #[arg(short, long)]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let task = match &args.labels {
        Some(path) => Some(EvaluationTask::from_dataset_json(path, args.task.clone())?),
        None => None,
    };
    let report = evaluate_folders(&args.pred, &args.reference, task)?;
    report.write(&args.out)?;
    print!("{}", report.to_markdown());
    println!("\nwrote {}", args.out.display());
    Ok(())
}
