//! `mtseg phantoms`: synthetic datasets of the paper's three tasks.

use std::path::PathBuf;

use anyhow::Result;
use mtseg::phantoms::{self, PhantomOptions, PhantomTask};

/// Write phantoms of the paper's three tasks (brain MRI tissues, breast MRI pectoral muscle,
/// cardiac CTA coronary arteries) as nnU-Net raw datasets, with a splits.json.
#[derive(clap::Args)]
pub struct Args {
    /// Folder to write the datasets into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Cases per task.
    #[arg(long, default_value_t = 6)]
    cases: usize,
    /// Voxels per side (isotropic; the field of view is fixed per task).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Random seed: the same seed gives the same phantoms.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Only these tasks (default: all three).
    #[arg(long, value_enum, value_delimiter = ',')]
    tasks: Vec<TaskArg>,
    /// Also write preview.png (a montage of slices with labels) in each dataset folder.
    #[arg(long)]
    preview: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TaskArg {
    Brain,
    Breast,
    Cardiac,
}

pub fn run(args: Args) -> Result<()> {
    let tasks = if args.tasks.is_empty() {
        PhantomTask::ALL.to_vec()
    } else {
        args.tasks
            .iter()
            .map(|t| match t {
                TaskArg::Brain => PhantomTask::Brain,
                TaskArg::Breast => PhantomTask::Breast,
                TaskArg::Cardiac => PhantomTask::Cardiac,
            })
            .collect()
    };
    let options = PhantomOptions {
        cases: args.cases,
        size: args.size,
        seed: args.seed,
        tasks: tasks.clone(),
    };
    let bar = crate::progress::bar((args.cases * tasks.len()) as u64, "phantoms");
    let folders = phantoms::write_datasets(&args.out, &options, || bar.inc(1))?;
    bar.finish_and_clear();
    for (folder, task) in folders.iter().zip(&tasks) {
        println!("{}", folder.display());
        if args.preview {
            let png = phantoms::write_preview(folder, *task, &options)?;
            println!("  preview {}", png.display());
        }
    }
    println!("{}", args.out.join("splits.json").display());
    Ok(())
}
