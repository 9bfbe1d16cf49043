//! One optimisation step: mtseg's CPU kernels, or burn's autodiff on one GPU or several (the
//! U-Net on one).
//!
//! Several GPUs train data parallel, the way burn's own multi-device learner does it on
//! backends without collective operations (wgpu has none): one long-lived worker thread per
//! GPU gets a copy of the network and an equal share of the batch's cubes, its gradients come
//! back to the first GPU, are summed there (each shard's loss weighted by its share of the
//! cubes, so the sum is the batch's loss), and one Adam step updates the network. Batch
//! normalisation sees each GPU's share; its running statistics are the mean of the GPUs'.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::Instant;

use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;

use super::loss;
use crate::data::{Batch, Crops};
use crate::device::{Hardware, panic_message};
use crate::engine::{self, CpuNetwork, UNetLayers};
use crate::error::{Error, Result};
use crate::model::unet::INPUT_CHANNELS;
use crate::model::{self, OutputLayout, TrainConfig, TriplanarNet, UNet};

/// What one training step learns from, and how.
pub struct StepInput<'a> {
    pub batch: &'a Batch,
    pub layout: &'a OutputLayout,
    pub config: &'a TrainConfig,
    /// The kernels' dropout rate (burn's network carries its own).
    pub dropout: f64,
    pub lr: f64,
    /// Seeds the kernels' dropout, or burn's random stream on each device.
    pub seed: u64,
}

/// Who computes the gradients of a training step.
pub enum Stepper {
    /// mtseg's CPU kernels (burn's Adam applies their gradients), with the buffers they hand
    /// on from step to step.
    Kernels(engine::Workspace),
    /// burn's autodiff, data parallel over these devices (one is the usual case).
    Replicas(DataParallel),
}

impl Stepper {
    /// The kernels on the CPU; on the GPU, burn's autodiff on `devices` (from
    /// [`Hardware::burn_devices`]; the network must live on the first).
    pub fn new(hardware: Hardware, devices: Vec<Device>) -> Stepper {
        match hardware {
            Hardware::Cpu => Stepper::Kernels(engine::Workspace::default()),
            Hardware::Gpu => Stepper::Replicas(DataParallel::start(devices)),
        }
    }

    /// One step: returns the updated network and the loss.
    pub fn step(
        &self,
        net: TriplanarNet,
        optimizer: &mut ModuleOptimizer,
        input: &StepInput,
    ) -> Result<(TriplanarNet, f64)> {
        match self {
            Stepper::Kernels(workspace) => Ok(kernels_step(net, optimizer, input, workspace)),
            Stepper::Replicas(replicas) => replicas.step(net, optimizer, input),
        }
    }
}

/// The CPU kernels' gradients go to burn's Adam, their batch-norm running statistics into
/// the network.
fn kernels_step(
    net: TriplanarNet,
    optimizer: &mut ModuleOptimizer,
    input: &StepInput,
    workspace: &engine::Workspace,
) -> (TriplanarNet, f64) {
    let t0 = Instant::now();
    let cpu = CpuNetwork::from_burn(&net, input.dropout);
    let output = engine::train_step(
        &cpu,
        input.batch,
        input.layout,
        input.config,
        input.seed,
        workspace,
    );
    let t1 = Instant::now();
    output.write_running_statistics(&net);
    let grads = output.gradients(&net, &Device::flex());
    let net = optimizer.step(input.lr, net, grads);
    tracing::debug!(
        "kernels {:.3} s, optimizer {:.3} s",
        (t1 - t0).as_secs_f64(),
        t1.elapsed().as_secs_f64()
    );
    (net, output.loss)
}

impl Stepper {
    /// One U-Net step on `crops`: returns the updated network and the loss.
    pub fn unet_step(
        &self,
        net: UNet,
        optimizer: &mut ModuleOptimizer,
        crops: &Crops,
        layout: &OutputLayout,
        config: &TrainConfig,
        lr: f64,
    ) -> (UNet, f64) {
        match self {
            Stepper::Kernels(workspace) => {
                kernels_unet_step(net, optimizer, crops, layout, config, lr, workspace)
            }
            Stepper::Replicas(_) => burn_unet_step(net, optimizer, crops, layout, config, lr),
        }
    }
}

/// A U-Net step on the CPU kernels: their gradients go to burn's Adam, their batch-norm
/// running statistics into the network.
fn kernels_unet_step(
    net: UNet,
    optimizer: &mut ModuleOptimizer,
    crops: &Crops,
    layout: &OutputLayout,
    config: &TrainConfig,
    lr: f64,
    workspace: &engine::Workspace,
) -> (UNet, f64) {
    let t0 = Instant::now();
    let output = engine::unet_train_step(
        &UNetLayers::from_burn(&net),
        crops,
        layout,
        config,
        workspace,
    );
    let t1 = Instant::now();
    output.write_running_statistics(&net);
    let grads = output.gradients(&net, &Device::flex());
    let net = optimizer.step(lr, net, grads);
    tracing::debug!(
        "kernels {:.3} s, optimizer {:.3} s",
        (t1 - t0).as_secs_f64(),
        t1.elapsed().as_secs_f64()
    );
    (net, output.loss)
}

/// A U-Net step through burn's autodiff on the network's device.
pub(crate) fn burn_unet_step(
    net: UNet,
    optimizer: &mut ModuleOptimizer,
    crops: &Crops,
    layout: &OutputLayout,
    config: &TrainConfig,
    lr: f64,
) -> (UNet, f64) {
    let device = net.devices()[0].clone();
    let shape = [crops.count, INPUT_CHANNELS, crops.side, crops.side];
    let images = Tensor::<4>::from_data(TensorData::new(crops.images.clone(), shape), &device);
    let (logits, task_logits) = net.forward(images);
    let loss = loss::crop_loss(logits, task_logits, crops, layout, config, &device);
    let value = loss.clone().into_scalar::<f32>() as f64;
    let grads = GradientsParams::from_grads(loss.backward(), &net);
    (optimizer.step(lr, net, grads), value)
}

/// What a worker computes: the gradients of `weight` times the loss of `batch` (a share of
/// the step's batch) for a copy of `net` on its device.
struct Job {
    net: TriplanarNet,
    batch: Batch,
    layout: OutputLayout,
    config: TrainConfig,
    weight: f32,
    seed: u64,
}

/// A job's gradients (on the worker's device) and its shard's unweighted loss.
type Done = std::result::Result<(GradientsParams, f64), String>;

struct Worker {
    device: Device,
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    thread: Option<JoinHandle<()>>,
}

/// Data-parallel training over one or more devices (see the module's documentation).
pub struct DataParallel {
    workers: Vec<Worker>,
}

impl DataParallel {
    /// One worker thread per device. Threads live as long as this value, so each device's
    /// batch-norm updates always come from the same thread (burn averages them per thread).
    pub fn start(devices: Vec<Device>) -> DataParallel {
        let workers = devices
            .into_iter()
            .map(|device| {
                let device = device.autodiff();
                let (jobs, inbox) = channel::<Job>();
                let (outbox, done) = channel::<Done>();
                let worker_device = device.clone();
                let thread = std::thread::spawn(move || {
                    for job in inbox {
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            gradients(job, &worker_device)
                        }))
                        .map_err(|panic| panic_message(panic.as_ref()));
                        if outbox.send(result).is_err() {
                            break;
                        }
                    }
                });
                Worker {
                    device,
                    jobs: Some(jobs),
                    done,
                    thread: Some(thread),
                }
            })
            .collect();
        DataParallel { workers }
    }

    fn step(
        &self,
        net: TriplanarNet,
        optimizer: &mut ModuleOptimizer,
        input: &StepInput,
    ) -> Result<(TriplanarNet, f64)> {
        let batch = input.batch;
        let n = self.workers.len();
        if batch.cubes < n {
            return Err(Error::usage(format!(
                "a batch of {} cubes cannot be shared by {n} GPUs: raise samples_per_task",
                batch.cubes
            )));
        }
        let mut shares = Vec::with_capacity(n);
        for (i, worker) in self.workers.iter().enumerate() {
            let shard = batch.shard(i, n);
            let share = shard.cubes as f64 / batch.cubes as f64;
            shares.push(share);
            let job = Job {
                net: net.clone(),
                weight: share as f32,
                batch: shard,
                layout: input.layout.clone(),
                config: input.config.clone(),
                seed: input.seed.wrapping_add(i as u64),
            };
            let sent = worker.jobs.as_ref().is_some_and(|j| j.send(job).is_ok());
            if !sent {
                return Err(stopped(i));
            }
        }
        let main = &self.workers[0].device;
        let mut sum = GradientsAccumulator::<TriplanarNet>::new();
        let mut loss = 0.0;
        for ((i, worker), share) in self.workers.iter().enumerate().zip(shares) {
            let (grads, shard_loss) = worker
                .done
                .recv()
                .map_err(|_| stopped(i))?
                .map_err(|reason| Error::usage(format!("GPU {i} failed: {reason}")))?;
            loss += share * shard_loss;
            sum.accumulate(&net, grads.to_device(main, &net));
        }
        Ok((optimizer.step(input.lr, net, sum.grads()), loss))
    }
}

impl Drop for DataParallel {
    fn drop(&mut self) {
        // Closing the job channels ends the workers' loops.
        for worker in &mut self.workers {
            worker.jobs.take();
        }
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

fn stopped(i: usize) -> Error {
    Error::usage(format!("the training thread of GPU {i} stopped"))
}

/// A worker's part of a step: forward and backward of its shard on its own device.
fn gradients(job: Job, device: &Device) -> (GradientsParams, f64) {
    let replica = job.net.fork(device);
    // Dropout draws its masks in the forward pass (queued, not waited for, on a GPU).
    let loss = model::with_seed(device, job.seed, || {
        burn_loss(&replica, &job.batch, &job.layout, &job.config)
    });
    let value = loss.clone().into_scalar::<f32>() as f64;
    let grads = (loss * job.weight).backward();
    (GradientsParams::from_grads(grads, &replica), value)
}

/// The batch's loss computed by burn on the network's device (with autodiff if it has it).
pub(crate) fn burn_loss(
    net: &TriplanarNet,
    batch: &Batch,
    layout: &OutputLayout,
    config: &TrainConfig,
) -> Tensor<1> {
    let device = net.devices()[0].clone();
    let side = batch.patch_side;
    let n = batch.cubes * batch.tile;
    let patches = batch
        .patches
        .clone()
        .map(|p| Tensor::<4>::from_data(TensorData::new(p, [n, 1, side, side]), &device));
    let output = net.forward_cubes(patches, batch.cubes, batch.tile);
    loss::batch_loss(output, batch, layout, config, &device)
}
