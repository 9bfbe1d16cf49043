//! `mtseg bench`: speed of the paper's network or of the built-in U-Net, against PyTorch in
//! the same run.

use std::path::PathBuf;

use crate::bench::{self, BenchOptions};
use anyhow::Result;

/// Measure the paper's network on mtseg's CPU kernels (or a GPU): (a) training samples/s on batches of
/// 64 voxels with three 51x51 patches, (b) one branch over a 256x256 slice, (c) dense
/// segmentation of a 64^3 volume; labelled voxels/s with dense output tiles; peak memory;
/// and PyTorch's figures in the same run when a Python with torch is given. With `--network
/// unet`, the built-in model's U-Net: training crops/s on 18 crops of 96x96, and every slice
/// of the three orientations of a 120x120x90 grid.
#[derive(clap::Args)]
pub struct Args {
    /// Which network: the paper's triplanar one, or the built-in model's U-Net.
    #[arg(long, value_enum, default_value = "triplanar")]
    network: Network,
    /// A tiny network and one repetition: checks that the benchmark runs (CI).
    #[arg(long)]
    quick: bool,
    /// Print one JSON object (train_samples_per_s, slice_seconds, volume_seconds, ...).
    #[arg(long)]
    json: bool,
    /// Python interpreter with PyTorch for the reference (default: $MTSEG_TORCH_PYTHON).
    #[arg(long)]
    torch_python: Option<PathBuf>,
    /// The reference script [default: bench/torch_reference.py, or
    /// bench/torch_unet_reference.py with `--network unet`].
    #[arg(long)]
    torch_script: Option<PathBuf>,
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum Network {
    Triplanar,
    Unet,
}

pub fn run(args: Args) -> Result<()> {
    let torch_script = args.torch_script.unwrap_or_else(|| {
        PathBuf::from(match args.network {
            Network::Triplanar => "bench/torch_reference.py",
            Network::Unet => "bench/torch_unet_reference.py",
        })
    });
    let options = BenchOptions {
        quick: args.quick,
        torch_python: args
            .torch_python
            .or_else(|| std::env::var_os("MTSEG_TORCH_PYTHON").map(PathBuf::from)),
        torch_script,
        repetitions: args.repetitions,
        training: !args.no_training,
        hardware: args.device.into(),
    };
    let bar = crate::progress::bar(0, "bench");
    let progress = |stage: &str| bar.set_message(stage.to_string());
    let (json, table) = match args.network {
        Network::Triplanar => {
            let report = bench::run(&options, progress);
            bar.finish_and_clear();
            let report = report?;
            (serde_json::to_string(&report)?, report.to_table())
        }
        Network::Unet => {
            let report = bench::run_unet(&options, progress);
            bar.finish_and_clear();
            let report = report?;
            (serde_json::to_string(&report)?, report.to_table())
        }
    };
    if args.json {
        println!("{json}");
    } else {
        print!("{table}");
    }
    Ok(())
}
