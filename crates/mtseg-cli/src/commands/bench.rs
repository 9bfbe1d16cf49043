//! `mtseg bench`: speed of the paper's network, against PyTorch in the same run.

use std::path::PathBuf;

use anyhow::Result;
use mtseg::bench::{self, BenchOptions};

/// Measure the paper's network on mtseg's CPU kernels (or a GPU): (a) training samples/s on batches of
/// 64 voxels with three 51x51 patches, (b) one branch over a 256x256 slice, (c) dense
/// segmentation of a 64^3 volume; labelled voxels/s with dense output tiles; peak memory;
/// and PyTorch's figures in the same run when a Python with torch is given.
#[derive(clap::Args)]
pub struct Args {
    /// A tiny network and one repetition: checks that the benchmark runs (CI).
    #[arg(long)]
    quick: bool,
    /// Print one JSON object (train_samples_per_s, slice_seconds, volume_seconds, ...).
    #[arg(long)]
    json: bool,
    /// Python interpreter with PyTorch for the reference (default: $MTSEG_TORCH_PYTHON).
    #[arg(long)]
    torch_python: Option<PathBuf>,
    /// The reference script.
    #[arg(long, default_value = "bench/torch_reference.py")]
    torch_script: PathBuf,
    /// Timed repetitions of each figure (the median is reported).
    #[arg(long, default_value_t = 5)]
    repetitions: usize,
    /// Only the inference figures (b) and (c).
    #[arg(long)]
    no_training: bool,
    /// Where to run: mtseg's CPU kernels, or burn on a GPU (PyTorch then uses CUDA, and a
    /// 256^3 volume is timed too).
    #[arg(long, value_enum, default_value = "cpu")]
    device: super::DeviceArg,
}

pub fn run(args: Args) -> Result<()> {
    let options = BenchOptions {
        quick: args.quick,
        torch_python: args
            .torch_python
            .or_else(|| std::env::var_os("MTSEG_TORCH_PYTHON").map(PathBuf::from)),
        torch_script: args.torch_script,
        repetitions: args.repetitions,
        training: !args.no_training,
        hardware: args.device.into(),
    };
    let bar = crate::progress::bar(0, "bench");
    let report = bench::run(&options, |stage| bar.set_message(stage.to_string()));
    bar.finish_and_clear();
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}
