//! Stage 6, train: the multi-task network trained on balanced mini-batches (cubes for the
//! triplanar network, slice crops for the U-Net) with Adam, validated on held-out cases,
//! checkpointed atomically and resumable to the bit.

pub mod log;
pub mod validate;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::Bytes;
use serde::{Deserialize, Serialize};

use crate::data::{self, BalancedSampler, RandomisedTask, TaskDraw, TrainingVolume};
use crate::datasets::{Modality, Split, Splits, Task, TaskSet, hold_out_validation};
use crate::device::Hardware;
use crate::engine::{StepInput, Stepper, dense_engine};
use crate::error::{Error, Result};
use crate::model::{
    Architecture, ModelFile, ModelMeta, Network, NetworkConfig, OutputLayout, Preset, TaskMeta,
    TrainConfig,
    file::{Expected, FORMAT_VERSION},
};
use crate::preprocess::Normalization;
use log::{History, IterationRow, ValidationRow};
use validate::ValidationCase;

/// Validation cases are cropped to this many voxels per axis.
const VALIDATION_EXTENT: usize = 64;

/// What to train and where.
#[derive(Clone, Debug)]
pub struct TrainRequest {
    /// One task per dataset: nnU-Net folders ([`Task::open`]) or cases held in memory
    /// ([`Task::in_memory`]).
    pub tasks: Vec<Task>,
    pub out: PathBuf,
    pub preset: Preset,
    /// Continue from `out/checkpoint.mtseg`.
    pub resume: bool,
    /// Start from this trained model's weights instead of random ones (fine-tuning): same
    /// tasks and network, a fresh optimizer and learning-rate schedule. A checkpoint to resume
    /// from wins over it.
    pub init_weights: Option<PathBuf>,
    /// Stop (with a checkpoint and a model) after this much wall time.
    pub time_budget: Option<Duration>,
    /// Train on these cases instead of each task's split (task name -> split).
    pub splits: Option<Vec<Split>>,
    /// mtseg's CPU kernels, or burn's autodiff on a GPU.
    pub hardware: Hardware,
    /// GPUs to train on, data parallel (1 on the CPU).
    pub gpus: usize,
}

impl TrainRequest {
    /// Trains `tasks` with `preset` into `out`: from scratch, on the CPU, without a time limit,
    /// on each task's split (a folder's `splits.json`, else every fifth case left out for
    /// testing; every case of a task held in memory).
    ///
    /// ```no_run
    /// use mtseg::datasets::{DatasetJson, Task};
    /// use mtseg::model::Preset;
    /// use mtseg::train::{self, Quiet, TrainRequest};
    ///
    /// # fn cases() -> Vec<(String, mtseg::io::Image, mtseg::io::LabelMap)> { unimplemented!() }
    /// let json = DatasetJson::new("Hippocampus", "MRI", &[("background", 0), ("anterior", 1), ("posterior", 2)]);
    /// let task = Task::in_memory(json, cases())?;
    /// let request = TrainRequest::new(vec![task], "runs/hippocampus", Preset::unet());
    /// let outcome = train::train(&request, &mut Quiet)?;
    /// let segmenter = mtseg::infer::Segmenter::builder().model(outcome.model).build()?;
    /// # Ok::<(), mtseg::Error>(())
    /// ```
    pub fn new(tasks: Vec<Task>, out: impl Into<PathBuf>, preset: Preset) -> Self {
        TrainRequest {
            tasks,
            out: out.into(),
            preset,
            resume: false,
            init_weights: None,
            time_budget: None,
            splits: None,
            hardware: Hardware::Cpu,
            gpus: 1,
        }
    }
}

/// Receives training progress (the CLI draws a progress bar with it).
pub trait Observer {
    fn started(&mut self, _first_iteration: usize, _iterations: usize) {}
    fn iteration(&mut self, _row: &IterationRow) {}
    fn validated(&mut self, _row: &ValidationRow) {}
    fn message(&mut self, _text: &str) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

#[derive(Clone, Debug, Serialize)]
pub struct TrainOutcome {
    pub model: PathBuf,
    pub iterations: usize,
    pub best_validation_dice: Option<f64>,
    pub stopped_early: bool,
    pub seconds: f64,
    pub voxels_per_s: f64,
}

/// Trainer state stored in checkpoints, beside the weights and the optimizer.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TrainerState {
    /// Iterations completed.
    iteration: usize,
    sampler: BalancedSampler,
    history: History,
    best_dice: Option<f64>,
    validations_since_best: usize,
    elapsed_s: f64,
}

/// Everything training reads from the datasets.
pub struct TrainingData {
    pub meta: ModelMeta,
    pub volumes: Vec<TrainingVolume>,
    pub validation: Vec<ValidationCase>,
    /// Per task: what each mini-batch draws from it.
    pub draws: Vec<TaskDraw>,
}

/// Reads and preprocesses the training and validation cases of every task.
pub fn prepare(request: &TrainRequest, observer: &mut dyn Observer) -> Result<TrainingData> {
    request
        .preset
        .validate()
        .map_err(|m| Error::usage(format!("invalid settings: {m}")))?;
    let set = TaskSet::new(request.tasks.clone())?;
    let training = &request.preset.training;
    for (setting, named) in [
        (
            "samples_by_task",
            training.samples_by_task.keys().collect::<Vec<_>>(),
        ),
        (
            "domain_randomisation",
            training.domain_randomisation.keys().collect(),
        ),
    ] {
        if let Some(unknown) = named
            .into_iter()
            .find(|name| !set.tasks.iter().any(|t| &t.name == *name))
        {
            let names: Vec<&str> = set.tasks.iter().map(|t| t.name.as_str()).collect();
            return Err(Error::usage(format!(
                "{setting} names the task '{unknown}', which is not trained here (tasks: {})",
                names.join(", ")
            )));
        }
    }
    if let Some(ct) = set
        .tasks
        .iter()
        .find(|t| t.modality != Modality::MR && training.domain_randomisation.contains_key(&t.name))
    {
        return Err(Error::usage(format!(
            "domain_randomisation synthesises MR images: task {} is {:?}",
            ct.name, ct.modality
        )));
    }
    let layout = OutputLayout::new(&set.space, request.preset.network.output_mode());
    let mut volumes = Vec::new();
    let mut validation = Vec::new();
    let mut tasks = Vec::new();
    for (t, task) in set.tasks.iter().enumerate() {
        // Every case is checked before training starts (as nnU-Net verifies a dataset):
        // a broken test case should not surface only at the end of a long run.
        observer.message(&format!(
            "{}: checking {} cases",
            task.name,
            task.training.len() + task.test.len()
        ));
        task.check()?;
        let split = match &request.splits {
            Some(splits) => splits[t].clone(),
            None => Splits::find_for(task)?.split_for(task)?,
        };
        if split.train.is_empty() {
            return Err(Error::usage(format!(
                "task {} has no training case",
                task.name
            )));
        }
        let (train_ids, val_ids) = hold_out_validation(&split.train);
        observer.message(&format!(
            "{}: {} training cases, {} for validation, {} test cases left out",
            task.name,
            train_ids.len(),
            val_ids.len(),
            split.test.len()
        ));
        let train_cases = data::read_cases(task, t, &train_ids, &set.space)?;
        let val_cases = data::read_cases(task, t, &val_ids, &set.space)?;
        let joint_ids = set.space.task_classes(t);
        let (extents, class_volumes): (Vec<f64>, Vec<Vec<f64>>) = train_cases
            .iter()
            .chain(&val_cases)
            .map(|(_, image, labels)| {
                (
                    image.grid.largest_extent_mm(),
                    labels.volumes_ml(&joint_ids),
                )
            })
            .unzip();
        let expected = Expected::from_cases(&extents, &class_volumes, &task.classes);
        let mut preprocessing = data::plan_preprocessing(task.modality, &train_cases);
        let randomised = training.domain_randomisation.contains_key(&task.name);
        if randomised {
            preprocessing.normalization = Normalization::MrForegroundZ;
        }
        volumes.extend(data::prepare_cases(
            t,
            train_cases,
            &preprocessing,
            &set.space,
            randomised,
        ));
        validation.extend(
            data::prepare_cases(t, val_cases, &preprocessing, &set.space, false)
                .iter()
                .map(|v| ValidationCase::from_volume(v, VALIDATION_EXTENT)),
        );
        tasks.push(TaskMeta {
            name: task.name.clone(),
            modality: task.modality,
            classes: task.classes.clone(),
            preprocessing,
            expected: Some(expected),
        });
    }
    let draws = tasks
        .iter()
        .map(|t| TaskDraw {
            classes: t.classes.len(),
            samples: training.samples_of(&t.name),
            randomised: training
                .domain_randomisation
                .get(&t.name)
                .map(|&synthetic_share| RandomisedTask {
                    synthetic_share,
                    foreground_normalised: t.preprocessing.normalization.needs_foreground(),
                }),
        })
        .collect();
    let meta = ModelMeta {
        format_version: FORMAT_VERSION,
        written_by: format!("mtseg {}", env!("CARGO_PKG_VERSION")),
        network: request.preset.network.clone(),
        training: request.preset.training.clone(),
        label_space: set.space.clone(),
        layout,
        tasks,
        iterations: 0,
        validation_dice: None,
        largest_component: Vec::new(),
    };
    Ok(TrainingData {
        meta,
        volumes,
        validation,
        draws,
    })
}

fn adam(config: &crate::model::TrainConfig) -> AdamConfig {
    AdamConfig::new()
        .with_beta_1(config.beta1 as f32)
        .with_beta_2(config.beta2 as f32)
        .with_epsilon(config.epsilon as f32)
        .with_weight_decay(
            (config.weight_decay > 0.0).then(|| WeightDecayConfig::new(config.weight_decay as f32)),
        )
}

/// The per-iteration seed of burn's random stream (dropout): a function of the iteration
/// alone, so a resumed run draws the same masks as an uninterrupted one.
fn iteration_seed(seed: u64, iteration: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (iteration as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

fn learning_rate(config: &crate::model::TrainConfig, iteration: usize) -> f64 {
    let progress = iteration as f64 / config.iterations.max(1) as f64;
    config.learning_rate * (1.0 - progress).max(0.0).powf(config.lr_decay_power)
}

pub fn checkpoint_path(out: &Path) -> PathBuf {
    out.join("checkpoint.mtseg")
}

fn previous_checkpoint_path(out: &Path) -> PathBuf {
    out.join("checkpoint.prev.mtseg")
}

pub fn model_path(out: &Path) -> PathBuf {
    out.join("model.mtseg")
}

/// Loads the newest readable checkpoint, falling back to the previous one when the newest
/// is damaged.
fn load_checkpoint(out: &Path, observer: &mut dyn Observer) -> Result<ModelFile> {
    let newest = checkpoint_path(out);
    match ModelFile::load(&newest) {
        Ok(file) => Ok(file),
        Err(e) => {
            let previous = previous_checkpoint_path(out);
            if previous.is_file() {
                observer.message(&format!("{e}; resuming from {}", previous.display()));
                tracing::warn!("{e}; resuming from the previous checkpoint");
                ModelFile::load(&previous)
            } else {
                Err(e)
            }
        }
    }
}

/// Saves a checkpoint file, keeping the one before it as a fallback.
fn rotate_and_save_checkpoint(out: &Path, file: &ModelFile) -> Result<()> {
    let newest = checkpoint_path(out);
    if newest.is_file() {
        let previous = previous_checkpoint_path(out);
        std::fs::rename(&newest, &previous).map_err(|e| Error::io(&previous, e))?;
    }
    file.save(&newest)
}

/// Trains a model as requested; writes `model.mtseg`, `log.csv`, `curves.png` and
/// checkpoints into `request.out`.
pub fn train(request: &TrainRequest, observer: &mut dyn Observer) -> Result<TrainOutcome> {
    // burn's optimizer updates parameters of an autodiff module; on the CPU the gradients
    // come from mtseg's kernels as plain tensors, on a GPU from burn's autodiff. A missing
    // GPU is reported before the datasets are read.
    if request.preset.network.architecture() == Architecture::UNet && request.gpus > 1 {
        return Err(Error::usage(
            "the U-Net trains on one device: leave out --gpus",
        ));
    }
    let devices = request.hardware.burn_devices(request.gpus)?;
    let device = devices[0].clone().autodiff();
    let stepper = Stepper::new(request.hardware, devices);
    std::fs::create_dir_all(&request.out).map_err(|e| Error::io(&request.out, e))?;
    let data = prepare(request, observer)?;
    let config = request.preset.training.clone();
    let mut meta = data.meta.clone();

    let (mut net, mut optimizer, mut state) = start_or_resume(request, &meta, &device, observer)?;

    let started = Instant::now();
    let elapsed_before = state.elapsed_s;
    let mut stopped_early = false;
    let mut voxels_done = 0usize;
    observer.started(state.iteration, config.iterations);
    while state.iteration < config.iterations {
        let iteration = state.iteration + 1;
        let step_start = Instant::now();
        let lr = learning_rate(&config, state.iteration);
        let (next, loss, samples, voxels) = step(
            net,
            &mut state.sampler,
            &data,
            &meta,
            &config,
            &stepper,
            &mut optimizer,
            lr,
            iteration,
        )?;
        net = next;
        let seconds = step_start.elapsed().as_secs_f64();
        voxels_done += voxels;
        state.iteration = iteration;
        let row = IterationRow {
            iteration,
            loss,
            learning_rate: lr,
            samples_per_s: samples as f64 / seconds,
            voxels_per_s: voxels as f64 / seconds,
            elapsed_s: elapsed_before + started.elapsed().as_secs_f64(),
        };
        observer.iteration(&row);
        state.history.iterations.push(row);
        if !loss.is_finite() {
            return Err(Error::usage(format!(
                "the loss became {loss} at iteration {iteration}: lower the learning rate"
            )));
        }

        let out_of_time = request.time_budget.is_some_and(|b| started.elapsed() >= b);
        let last = iteration == config.iterations || out_of_time;
        if !data.validation.is_empty()
            && config.validate_every > 0
            && (iteration % config.validate_every == 0 || last)
        {
            stopped_early = validate_and_keep_best(
                request, &data, &mut meta, &mut state, &net, &device, observer,
            )?;
        }
        let stop = last || stopped_early;
        if iteration % config.checkpoint_every.max(1) == 0 || stop {
            state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
            save_checkpoint(&request.out, &meta, &net, &optimizer, &state)?;
        }
        if stop {
            if out_of_time {
                observer.message("time budget reached: stopping");
            }
            break;
        }
    }
    // Without validation the last weights are the model.
    if state.best_dice.is_none() {
        meta.iterations = state.iteration;
        write_model(&request.out, &meta, &net.valid())?;
    } else {
        choose_postprocessing(request, &data, &device, observer)?;
    }
    state.history.write_csv(&request.out.join("log.csv"))?;
    state
        .history
        .write_curves(&request.out.join("curves.png"))?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(TrainOutcome {
        model: model_path(&request.out),
        iterations: state.iteration,
        best_validation_dice: state.best_dice,
        stopped_early,
        seconds,
        voxels_per_s: voxels_done as f64 / seconds.max(1e-9),
    })
}

/// The network, optimizer and trainer state to train from: the checkpoint in `request.out`
/// when resuming, else fresh ones (the network from `request.init_weights` if given).
fn start_or_resume(
    request: &TrainRequest,
    meta: &ModelMeta,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<(Network, ModuleOptimizer, TrainerState)> {
    let config = &request.preset.training;
    // A crash between rotating and writing checkpoints leaves only the previous one.
    let has_checkpoint =
        checkpoint_path(&request.out).is_file() || previous_checkpoint_path(&request.out).is_file();
    Ok(if request.resume && has_checkpoint {
        let file = load_checkpoint(&request.out, observer)?;
        check_compatible(
            &file.meta,
            meta,
            &checkpoint_path(&request.out),
            Origin::Checkpoint,
        )?;
        let net = Network::from_bytes(
            &file.meta,
            &file.weights,
            device,
            &checkpoint_path(&request.out),
        )?;
        let optimizer: ModuleOptimizer = adam(config)
            .init()
            .from_bytes(Bytes::from_bytes_vec(file.optimizer.clone()))
            .map_err(|e| {
                Error::invalid(
                    checkpoint_path(&request.out),
                    format!("unreadable optimizer state: {e:?}"),
                )
            })?;
        let state: TrainerState = serde_json::from_slice(&file.trainer_state).map_err(|e| {
            Error::invalid(
                checkpoint_path(&request.out),
                format!("unreadable trainer state: {e}"),
            )
        })?;
        observer.message(&format!("resuming at iteration {}", state.iteration));
        (net, optimizer, state)
    } else {
        if request.resume {
            observer.message("no checkpoint to resume from: starting afresh");
        }
        let net = match &request.init_weights {
            Some(path) => {
                let file = ModelFile::load(path)?;
                check_compatible(&file.meta, meta, path, Origin::Model)?;
                observer.message(&format!("starting from the weights of {}", path.display()));
                Network::from_bytes(&file.meta, &file.weights, device, path)?
            }
            None => Network::init(meta, config.seed, device),
        };
        let state = TrainerState {
            iteration: 0,
            sampler: BalancedSampler::new(config.seed),
            history: History {
                class_names: (1..meta.label_space.num_classes() as u16)
                    .map(|j| meta.label_space.joint_name(j))
                    .collect(),
                ..History::default()
            },
            best_dice: None,
            validations_since_best: 0,
            elapsed_s: 0.0,
        };
        (net, adam(config).init(), state)
    })
}

/// One optimisation step on the sampler's next batch: the updated network, the loss, and the
/// batch's samples and labelled voxels.
#[allow(clippy::too_many_arguments)]
fn step(
    net: Network,
    sampler: &mut BalancedSampler,
    data: &TrainingData,
    meta: &ModelMeta,
    config: &TrainConfig,
    stepper: &Stepper,
    optimizer: &mut ModuleOptimizer,
    lr: f64,
    iteration: usize,
) -> Result<(Network, f64, usize, usize)> {
    Ok(match net {
        Network::Triplanar(triplanar) => {
            let NetworkConfig::Triplanar(sizes) = &meta.network else {
                unreachable!("a triplanar network has a triplanar configuration")
            };
            let batch = sampler.next_batch(
                &data.volumes,
                &data.draws,
                sizes.patch_size(),
                config,
                &meta.layout,
            );
            let input = StepInput {
                batch: &batch,
                layout: &meta.layout,
                config,
                dropout: sizes.dropout,
                lr,
                seed: iteration_seed(config.seed, iteration),
            };
            let (next, loss) = stepper.step(triplanar, optimizer, &input)?;
            (
                Network::Triplanar(next),
                loss,
                batch.cubes,
                batch.targets.len(),
            )
        }
        Network::UNet(unet) => {
            let crops = sampler.next_crops(&data.volumes, &data.draws, config, &meta.layout);
            let (next, loss) = stepper.unet_step(unet, optimizer, &crops, &meta.layout, config, lr);
            (Network::UNet(next), loss, crops.count, crops.targets.len())
        }
    })
}

/// Validates `net` on the held-out cases; a new best is written as the model. Returns whether
/// training stops early (no improvement for `patience` validations).
fn validate_and_keep_best(
    request: &TrainRequest,
    data: &TrainingData,
    meta: &mut ModelMeta,
    state: &mut TrainerState,
    net: &Network,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<bool> {
    let iteration = state.iteration;
    let evaluation_net = net.valid();
    let row = validate::validate(
        dense_engine(&evaluation_net, request.hardware, device)
            .0
            .as_ref(),
        &meta.layout,
        &meta.label_space,
        &data.validation,
        iteration,
    );
    observer.validated(&row);
    let improved = state.best_dice.is_none_or(|b| row.mean_dice > b);
    if improved {
        state.best_dice = Some(row.mean_dice);
        state.validations_since_best = 0;
        meta.iterations = iteration;
        meta.validation_dice = Some(row.mean_dice);
        write_model(&request.out, meta, &evaluation_net)?;
    } else {
        state.validations_since_best += 1;
    }
    state.history.validations.push(row);
    let config = &request.preset.training;
    let stop = config.patience > 0 && state.validations_since_best >= config.patience;
    if stop {
        observer.message(&format!(
            "validation Dice has not improved for {} validations: stopping early",
            config.patience
        ));
    }
    Ok(stop)
}

/// Saves a checkpoint of the training so far (model, optimizer, trainer state) and the log.
fn save_checkpoint(
    out: &Path,
    meta: &ModelMeta,
    net: &Network,
    optimizer: &ModuleOptimizer,
    state: &TrainerState,
) -> Result<()> {
    let file = ModelFile {
        meta: ModelMeta {
            iterations: state.iteration,
            ..meta.clone()
        },
        weights: net.to_bytes()?,
        optimizer: optimizer
            .into_bytes()
            .map_err(|e| Error::usage(format!("cannot serialise the optimizer: {e:?}")))?
            .to_vec(),
        trainer_state: serde_json::to_vec(state).expect("trainer state serialises"),
    };
    rotate_and_save_checkpoint(out, &file)?;
    state.history.write_csv(&out.join("log.csv"))
}

/// Decides, on the validation cases, for which tasks `segment` keeps only the largest
/// connected object, and records it in the model file.
fn choose_postprocessing(
    request: &TrainRequest,
    data: &TrainingData,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<()> {
    let path = model_path(&request.out);
    let mut file = ModelFile::load(&path)?;
    let net = Network::from_bytes(&file.meta, &file.weights, &Device::flex(), &path)?;
    let (engine, _) = dense_engine(&net.valid(), request.hardware, device);
    file.meta.largest_component = validate::largest_component_helps(
        engine.as_ref(),
        &file.meta.layout,
        &file.meta.label_space,
        &data.validation,
    );
    let chosen: Vec<String> = file
        .meta
        .largest_component_tasks()
        .iter()
        .map(|&t| file.meta.tasks[t].name.clone())
        .collect();
    observer.message(&format!(
        "largest connected object kept for: {}",
        if chosen.is_empty() {
            "no task".to_string()
        } else {
            chosen.join(", ")
        }
    ));
    file.save(&path)
}

fn write_model(out: &Path, meta: &ModelMeta, evaluation_net: &Network) -> Result<()> {
    ModelFile {
        meta: meta.clone(),
        weights: evaluation_net.to_bytes()?,
        optimizer: Vec::new(),
        trainer_state: Vec::new(),
    }
    .save(&model_path(out))
}

/// Where training continues from: a checkpoint continues the same training (same tasks,
/// labels, network, tile and crop), a model to start from needs the same tasks, labels and
/// network.
#[derive(Clone, Copy, PartialEq)]
enum Origin {
    Checkpoint,
    Model,
}

fn check_compatible(
    found: &ModelMeta,
    wanted: &ModelMeta,
    path: &Path,
    origin: Origin,
) -> Result<()> {
    let (what, advice) = match origin {
        Origin::Checkpoint => ("checkpoint", "use another --out folder"),
        Origin::Model => ("model", "train with the model's datasets"),
    };
    if found.label_space != wanted.label_space {
        return Err(Error::invalid(
            path,
            format!(
                "the {what} was trained on tasks {:?}, not {:?}: {advice}",
                found.task_names(),
                wanted.task_names()
            ),
        ));
    }
    if found.network != wanted.network {
        return Err(Error::invalid(
            path,
            format!("the {what}'s network settings differ from the requested ones"),
        ));
    }
    if origin == Origin::Checkpoint
        && (found.training.tile != wanted.training.tile
            || found.training.crop != wanted.training.crop)
    {
        return Err(Error::invalid(
            path,
            "the checkpoint's tile or crop settings differ from the requested ones",
        ));
    }
    Ok(())
}
