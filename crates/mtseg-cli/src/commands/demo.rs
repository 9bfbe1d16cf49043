//! `mtseg demo`: the paper's experiment on phantoms, with a report.

use std::path::PathBuf;

use crate::demo::{self, DemoOptions};
use anyhow::Result;

use super::experiment::ConsoleObserver;

/// Make phantoms of the paper's three tasks (brain MRI, breast MRI, cardiac CTA), train the
/// three single-task networks, the three pairs and the network on all three, test them, and
/// write a report: OUT/index.md with the table, a bar chart, training curves and test slices.
/// About 6 minutes on two cores; --quick takes about one.
#[derive(clap::Args)]
pub struct Args {
    /// Report folder (re-running resumes: finished networks are kept).
    #[arg(long, default_value = "mtseg-demo")]
    out: PathBuf,
    /// A run of about a minute (small phantoms, few iterations).
    #[arg(long)]
    quick: bool,
    /// Training iterations per network (default: 400, quick: 60).
    #[arg(long)]
    iterations: Option<usize>,
    /// Where to train and segment: mtseg's CPU kernels, or a GPU.
    #[arg(long, value_enum, default_value = "cpu")]
    device: super::DeviceArg,
}

pub fn run(args: Args) -> Result<()> {
    let mut options = if args.quick {
        DemoOptions::quick(args.out)
    } else {
        DemoOptions::full(args.out)
    };
    options.hardware = args.device.into();
    if let Some(n) = args.iterations {
        options.preset.training.iterations = n;
    }
    eprintln!(
        "mtseg demo: phantoms of 3 tasks ({} cases, {}^3 voxels), then 7 networks of {} iterations",
        options.cases, options.size, options.preset.training.iterations
    );
    let bar = crate::progress::bar((options.cases * 3) as u64, "phantoms");
    let outcome = demo::run(&options, &mut ConsoleObserver::new(), || bar.inc(1));
    bar.finish_and_clear();
    let outcome = outcome?;
    print!("{}", outcome.table.to_markdown());
    println!("\nreport: {}", outcome.index.display());
    Ok(())
}
