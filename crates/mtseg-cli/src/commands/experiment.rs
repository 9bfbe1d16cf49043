//! `mtseg experiment`: the paper's experiment on any datasets.

use std::path::PathBuf;

use anyhow::Result;
use mtseg::experiment::{self, ExperimentObserver, ExperimentRequest, RunSpec};
use mtseg::model::OutputMode;
use mtseg::train::Observer;

use super::train::{ModeArg, ProgressObserver, preset_from};

/// Train every combination of the given tasks (each alone, every pair, ..., all together)
/// with identical settings, segment each test split without telling the network the task,
/// evaluate, and write the paper-style table (results.md, results.csv, results.png) to OUT.
/// Finished combinations are skipped when run again.
#[derive(clap::Args)]
pub struct Args {
    /// nnU-Net raw dataset folders, one per task (test cases from a splits.json beside
    /// them, else every fifth case).
    #[arg(long, required = true, num_args = 1..)]
    datasets: Vec<PathBuf>,
    /// Output folder: one subfolder per trained combination, and results.md, results.csv and
    /// results.png.
    #[arg(long)]
    out: PathBuf,
    /// Settings: `paper`, `small`, `unet`, or a JSON/TOML file.
    #[arg(long, default_value = "small")]
    config: String,
    /// Iterations of every network (overrides the configuration).
    #[arg(long)]
    iterations: Option<usize>,
    /// Output layer of every network (see `mtseg train --help`).
    #[arg(long, value_enum)]
    output_mode: Option<ModeArg>,
    /// Also train the network on all tasks with the other output mode (one more row: for
    /// instance the paper's union softmax beside per-task outputs).
    #[arg(long)]
    compare_output_modes: bool,
    /// Only train these combinations, e.g. `--only 0 --only 1,2` (task indices in the order
    /// of --datasets); `--only 0,1:union` or `:per-task` sets that network's output mode.
    #[arg(long, value_delimiter = ';')]
    only: Vec<String>,
    /// Random seed of every network (overrides the configuration).
    #[arg(long)]
    seed: Option<u64>,
    /// Where to train and segment: mtseg's CPU kernels, or a GPU.
    #[arg(long, value_enum, default_value = "cpu")]
    device: super::DeviceArg,
}

/// `0,2` or `0,2:union`: task indices in the order of --datasets, then an optional mode.
fn parse_run(spec: &str, tasks: usize, default_mode: OutputMode) -> Result<RunSpec> {
    let usage = || {
        anyhow::anyhow!(
            "--only {spec}: task indices from 0 to {}, then optionally :union or :per-task",
            tasks - 1
        )
    };
    let (indices, mode) = match spec.split_once(':') {
        None => (spec, default_mode),
        Some((indices, "union")) => (indices, OutputMode::Union),
        Some((indices, "per-task")) => (indices, OutputMode::PerTask),
        Some(_) => return Err(usage()),
    };
    let tasks = indices
        .split(',')
        .map(|t| t.trim().parse::<usize>().ok().filter(|&t| t < tasks))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(usage)?;
    Ok(RunSpec {
        tasks,
        output_mode: mode,
    })
}

/// Prints one line per run and draws a progress bar during training.
pub struct ConsoleObserver {
    progress: Option<ProgressObserver>,
}

impl ConsoleObserver {
    pub fn new() -> Self {
        ConsoleObserver { progress: None }
    }
}

impl ExperimentObserver for ConsoleObserver {
    fn run_started(&mut self, index: usize, total: usize, label: &str, skipped: bool) {
        if let Some(p) = self.progress.take() {
            p.finish();
        }
        let state = if skipped {
            "done before, skipped"
        } else {
            "training"
        };
        eprintln!("[{}/{total}] {label}: {state}", index + 1);
    }

    fn training(&mut self) -> &mut dyn Observer {
        if let Some(p) = self.progress.take() {
            p.finish();
        }
        self.progress.insert(ProgressObserver::new("train"))
    }
}

impl Drop for ConsoleObserver {
    fn drop(&mut self) {
        if let Some(p) = self.progress.take() {
            p.finish();
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let preset = preset_from(&args.config, args.iterations, args.output_mode, args.seed)?;
    let tasks = args.datasets.len();
    let mode = preset.network.output_mode();
    let mut runs = if args.only.is_empty() {
        experiment::all_combinations(tasks, mode)
    } else {
        args.only
            .iter()
            .map(|spec| parse_run(spec, tasks, mode))
            .collect::<Result<Vec<_>>>()?
    };
    if args.compare_output_modes {
        let other = match mode {
            OutputMode::Union => OutputMode::PerTask,
            OutputMode::PerTask => OutputMode::Union,
        };
        runs.push(RunSpec {
            tasks: (0..tasks).collect(),
            output_mode: other,
        });
    }
    let request = ExperimentRequest {
        datasets: args.datasets,
        out: args.out.clone(),
        preset,
        runs,
        hardware: args.device.into(),
    };
    let table = experiment::run(&request, &mut ConsoleObserver::new())?;
    print!("{}", table.to_markdown());
    println!("\nwrote {}", args.out.join("results.md").display());
    Ok(())
}
