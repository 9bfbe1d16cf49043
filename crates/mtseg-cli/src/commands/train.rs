//! `mtseg train`: train the multi-task network on nnU-Net datasets.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use indicatif::ProgressBar;
use mtseg::datasets::Task;
use mtseg::model::{OutputMode, Preset};
use mtseg::train::{
    self, Observer, TrainRequest,
    log::{IterationRow, ValidationRow},
};

/// Train one network on several segmentation tasks at once (one nnU-Net dataset per task).
/// Writes model.mtseg (everything `segment` needs), log.csv, curves.png and checkpoints to
/// OUT.
#[derive(clap::Args)]
pub struct Args {
    /// nnU-Net raw dataset folders, one per task.
    #[arg(long, required = true, num_args = 1..)]
    datasets: Vec<PathBuf>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Settings: `paper`, `small`, `unet`, or a JSON/TOML file overriding a preset.
    #[arg(long, default_value = "small")]
    config: String,
    /// Iterations (overrides the configuration).
    #[arg(long)]
    iterations: Option<usize>,
    /// Output layer: `union` (the paper's single softmax) or `per-task` (one softmax group
    /// per task and a task-recognition head; for tasks that label the same anatomy
    /// differently).
    #[arg(long, value_enum)]
    output_mode: Option<ModeArg>,
    /// Continue from OUT/checkpoint.mtseg.
    #[arg(long)]
    resume: bool,
    /// Start from this model's weights (fine-tuning, e.g. the shipped model on more data of
    /// its tasks): same tasks and network settings; optimizer and schedule start afresh. A
    /// checkpoint that --resume finds wins over it.
    #[arg(long, value_name = "MODEL")]
    init_weights: Option<PathBuf>,
    /// Stop after this many minutes (the model and a checkpoint are written).
    #[arg(long)]
    minutes: Option<f64>,
    /// Random seed (overrides the configuration).
    #[arg(long)]
    seed: Option<u64>,
    /// Where to train: mtseg's CPU kernels, or burn's autodiff on a GPU.
    #[arg(long, value_enum, default_value = "cpu")]
    device: super::DeviceArg,
    /// Train data parallel on this many GPUs (with --device gpu): each gets an equal share of
    /// every batch's cubes and the gradients are summed on the first.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    gpus: u16,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
    Union,
    PerTask,
}

impl From<ModeArg> for OutputMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Union => OutputMode::Union,
            ModeArg::PerTask => OutputMode::PerTask,
        }
    }
}

/// Draws training progress: iteration, loss, samples/s and ETA.
pub struct ProgressObserver {
    bar: ProgressBar,
}

impl ProgressObserver {
    pub fn new(label: &str) -> Self {
        let bar = crate::progress::bar(0, label);
        ProgressObserver { bar }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Observer for ProgressObserver {
    fn started(&mut self, first: usize, total: usize) {
        self.bar.set_length(total as u64);
        self.bar.set_position(first as u64);
        self.bar.reset_eta();
    }

    fn iteration(&mut self, row: &IterationRow) {
        self.bar.set_position(row.iteration as u64);
        self.bar.set_message(format!(
            "loss {:.3}  {:.1} samples/s  {:.0} voxels/s",
            row.loss, row.samples_per_s, row.voxels_per_s
        ));
    }

    fn validated(&mut self, row: &ValidationRow) {
        crate::progress::say(
            &self.bar,
            &format!(
                "iteration {:>6}: validation mean Dice {:.3}",
                row.iteration, row.mean_dice
            ),
        );
    }

    fn message(&mut self, text: &str) {
        crate::progress::say(&self.bar, text);
    }
}

pub fn preset_from(
    config: &str,
    iterations: Option<usize>,
    mode: Option<ModeArg>,
    seed: Option<u64>,
) -> Result<Preset> {
    let mut preset = Preset::named_or_file(config)?;
    if let Some(n) = iterations {
        preset.training.iterations = n;
    }
    if let Some(m) = mode {
        preset.network.set_output_mode(m.into());
    }
    if let Some(s) = seed {
        preset.training.seed = s;
    }
    Ok(preset)
}

pub fn run(args: Args) -> Result<()> {
    let preset = preset_from(&args.config, args.iterations, args.output_mode, args.seed)?;
    let hardware = args.device.into();
    let gpus = args.gpus.into();
    // A device that cannot train is reported before the datasets are opened.
    mtseg::device::Hardware::burn_devices(hardware, gpus)?;
    let request = TrainRequest {
        tasks: args
            .datasets
            .iter()
            .map(|folder| Task::open(folder))
            .collect::<mtseg::Result<_>>()?,
        out: args.out,
        preset,
        resume: args.resume,
        init_weights: args.init_weights,
        time_budget: args.minutes.map(|m| Duration::from_secs_f64(m * 60.0)),
        splits: None,
        hardware,
        gpus,
    };
    let mut observer = ProgressObserver::new("train");
    let outcome = train::train(&request, &mut observer);
    observer.finish();
    let outcome = outcome?;
    println!(
        "trained {} iterations in {:.0} s ({:.0} labelled voxels/s){}",
        outcome.iterations,
        outcome.seconds,
        outcome.voxels_per_s,
        if outcome.stopped_early {
            ", stopped early"
        } else {
            ""
        }
    );
    if let Some(d) = outcome.best_validation_dice {
        println!("best validation mean Dice {d:.3}");
    }
    println!("model {}", outcome.model.display());
    Ok(())
}
