//! `mtseg bench`: the speed of the paper's network on mtseg's kernels, measured as the
//! PyTorch reference (`bench/torch_reference.py`) measures it, with PyTorch in the same run
//! when it is installed:
//! (a) training samples/s on batches of 64 voxels with three 51x51 patches,
//! (b) seconds for one branch over a 256x256 slice (306x306 input),
//! (c) seconds to segment a 64^3 volume densely (three branches, head, argmax);
//! plus labelled voxels/s with dense output tiles, peak memory, and each figure's share of the
//! machine's measured sgemm rate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use burn::optim::{AdamConfig, ModuleOptimizer};
use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use mtseg::data::Batch;
use mtseg::datasets::{ClassInfo, LabelSpace, Modality, TaskInfo};
use mtseg::device::Hardware;
use mtseg::engine::{Dense, DenseSettings, NetworkInput, TriplanarEngine};
use mtseg::error::{Error, Result};
use mtseg::infer::{TaskChoice, segment};
use mtseg::model::{
    self, ModelMeta, OutputLayout, OutputMode, TaskMeta, TrainConfig, TriplanarConfig, UNetConfig,
    file::FORMAT_VERSION,
};
use mtseg::preprocess::{Normalization, Preprocessing};
use mtseg_kernels::matmul;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Tiny sizes and one repetition: checks that the benchmark runs, measures nothing.
    pub quick: bool,
    /// Python with PyTorch, to run the reference in the same run (skipped when absent).
    pub torch_python: Option<PathBuf>,
    pub torch_script: PathBuf,
    pub repetitions: usize,
    /// Measure training (figure a and the tiles); skipped, they are reported as not run.
    pub training: bool,
    /// mtseg's CPU kernels, or burn on a GPU (PyTorch then runs on CUDA).
    pub hardware: Hardware,
}

#[derive(Clone, Debug, Serialize)]
pub struct TorchFigures {
    pub train_samples_per_s: Option<f64>,
    pub slice_seconds: Option<f64>,
    pub volume_seconds: Option<f64>,
    /// PyTorch's f32 matrix product (2048^3 with the same threads, or 8192^3 on CUDA),
    /// GFLOP/s.
    pub sgemm_gflops: Option<f64>,
    /// A 256^3 volume, on a GPU only.
    pub large_volume_seconds: Option<f64>,
    pub version: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub quick: bool,
    /// `cpu` or `gpu`.
    pub device: String,
    /// The GPU's name, on a GPU.
    pub gpu: Option<String>,
    pub cpu: String,
    pub threads: usize,
    /// f32 matrix-product rate of the `gemm` crate that mtseg's kernels use (2048^3, all
    /// threads), or of burn on the GPU (8192^3), GFLOP/s.
    pub sgemm_gflops: f64,
    /// The side of that matrix product.
    pub sgemm_size: usize,
    /// Figure (a); `None` when training was not measured (`--no-training`).
    pub train_samples_per_s: Option<f64>,
    pub train_gflops: Option<f64>,
    pub slice_seconds: f64,
    pub slice_gflops: f64,
    pub volume_seconds: f64,
    pub volume_gflops: f64,
    /// Dense segmentation of a 256^3 volume, on a GPU only (issue target: under 2 s).
    pub large_volume_seconds: Option<f64>,
    /// Labelled voxels per second when training on cubes of k^3 output voxels.
    pub tile_voxels_per_s: Vec<(usize, f64)>,
    pub peak_rss_mb: f64,
    pub torch: Option<TorchFigures>,
}

/// The network of the benchmark: the paper's (or a 3-layer one for `--quick`), with 9
/// outputs over three tasks like the paper's label space.
fn bench_meta(quick: bool) -> ModelMeta {
    let network = if quick {
        TriplanarConfig::new()
            .with_depth(3)
            .with_kernels(8)
            .with_fc_width(16)
    } else {
        TriplanarConfig::new()
    };
    let task = |name: &str, modality| TaskInfo {
        name: name.into(),
        modality,
    };
    let class = |task, name: &str, id| ClassInfo {
        task,
        name: name.into(),
        dataset_id: id,
    };
    let space = LabelSpace {
        tasks: vec![
            task("Brain", Modality::MR),
            task("Breast", Modality::MR),
            task("Cardiac", Modality::CT),
        ],
        classes: (1..=6)
            .map(|i| class(0, "tissue", i))
            .chain([class(1, "pectoral", 1), class(2, "coronary", 1)])
            .collect(),
    };
    let layout = OutputLayout::new(&space, OutputMode::Union);
    let preprocessing = Preprocessing {
        target_spacing: [1.0; 3],
        normalization: Normalization::MrRobustZ,
    };
    ModelMeta {
        format_version: FORMAT_VERSION,
        written_by: "bench".into(),
        tasks: space
            .tasks
            .iter()
            .map(|t| TaskMeta {
                name: t.name.clone(),
                modality: t.modality,
                classes: vec![],
                preprocessing: preprocessing.clone(),
                expected: None,
            })
            .collect(),
        network: network.into(),
        training: TrainConfig::new().with_tile(1).with_samples_per_task(21),
        label_space: space,
        layout,
        iterations: 0,
        validation_dice: None,
        largest_component: Vec::new(),
    }
}

/// Forward FLOPs of one branch over an `h x w` input.
fn branch_flops(config: &TriplanarConfig, h: usize, w: usize) -> f64 {
    (0..config.depth)
        .map(|l| {
            let ci = if l == 0 { 1 } else { config.kernels };
            let (oh, ow) = (h - 2 * (l + 1), w - 2 * (l + 1));
            2.0 * (oh * ow * ci * config.kernels * 9) as f64
        })
        .sum()
}

fn head_flops(config: &TriplanarConfig, voxels: usize, classes: usize) -> f64 {
    let f = config.fc_width;
    2.0 * voxels as f64 * (3 * config.kernels * f + f * f + f * classes) as f64
}

fn random_batch(
    cubes: usize,
    k: usize,
    receptive_field: usize,
    classes: usize,
    rng: &mut ChaCha8Rng,
) -> Batch {
    let side = receptive_field + k - 1;
    let mut patch = || {
        (0..cubes * k * side * side)
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect::<Vec<f32>>()
    };
    let patches = [patch(), patch(), patch()];
    let voxels = cubes * k * k * k;
    let labels: Vec<u16> = (0..voxels)
        .map(|_| rng.random_range(0..classes as u16))
        .collect();
    Batch {
        cubes,
        tile: k,
        patch_side: side,
        patches,
        targets: labels.iter().map(|&l| l as i64).collect(),
        labels,
        tasks: (0..cubes).map(|c| c * 3 / cubes).collect(),
        centre_classes: vec![0; cubes],
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Seconds per training step (forward, backward, Adam) on `batch`, median of `repetitions`:
/// mtseg's CPU kernels, or burn's autodiff on the GPU, as `mtseg train` runs them.
fn train_seconds(
    meta: &ModelMeta,
    batch: &Batch,
    repetitions: usize,
    hardware: Hardware,
    device: &Device,
) -> Result<f64> {
    let mut net = model::init_network(meta, 1, &device.clone().autodiff());
    let stepper = mtseg::engine::Stepper::new(hardware, vec![device.clone()]);
    let mut optimizer: ModuleOptimizer = AdamConfig::new().with_epsilon(1e-8).init();
    let config = &meta.training;
    let mut times = Vec::new();
    for i in 0..repetitions + 1 {
        let start = Instant::now();
        let input = mtseg::engine::StepInput {
            batch,
            layout: &meta.layout,
            config,
            dropout: 0.5,
            lr: 1e-3,
            seed: i as u64,
        };
        let (next, _) = stepper.step(net, &mut optimizer, &input)?;
        net = next;
        if i > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(median(times))
}

/// burn's f32 matrix product on the GPU, GFLOP/s.
fn device_sgemm_gflops(n: usize, device: &Device) -> Result<f64> {
    use burn::tensor::Distribution;
    let a = Tensor::<2>::random([n, n], Distribution::Default, device);
    let b = Tensor::<2>::random([n, n], Distribution::Default, device);
    let sync = || {
        device
            .sync()
            .map_err(|e| Error::usage(format!("the GPU failed: {e:?}")))
    };
    let mut times = Vec::new();
    for i in 0..6 {
        sync()?;
        let start = Instant::now();
        let _ = a.clone().matmul(b.clone());
        sync()?;
        if i > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(2.0 * (n as f64).powi(3) / median(times) / 1e9)
}

/// Seconds to segment a random `n^3` volume densely (three branches, head, argmax), median
/// of `repetitions` after one warm-up.
fn time_volume(
    engine: &dyn Dense,
    meta: &ModelMeta,
    settings: &DenseSettings,
    n: usize,
    repetitions: usize,
    rng: &mut ChaCha8Rng,
) -> f64 {
    let volume: Vec<f32> = (0..n * n * n).map(|_| rng.random::<f32>()).collect();
    let input = NetworkInput {
        image: &volume,
        shape: [n; 3],
        pad: 0.0,
    };
    median(
        (0..repetitions + 1)
            .map(|_| {
                let start = Instant::now();
                let _ = segment(
                    engine,
                    &meta.layout,
                    &input,
                    TaskChoice::Automatic,
                    settings,
                    &[],
                );
                start.elapsed().as_secs_f64()
            })
            .skip(1)
            .collect(),
    )
}

fn sgemm_gflops(n: usize) -> f64 {
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0f32; n * n];
    let threads = rayon::current_num_threads();
    let times: Vec<f64> = (0..6)
        .map(|_| {
            let start = Instant::now();
            matmul::matmul(
                n,
                n,
                n,
                &mut c,
                matmul::View::rows(0, n),
                false,
                &a,
                matmul::View::rows(0, n),
                &b,
                matmul::View::rows(0, n),
                threads,
            );
            start.elapsed().as_secs_f64()
        })
        .skip(1)
        .collect();
    2.0 * (n as f64).powi(3) / median(times) / 1e9
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Runs `bench/torch_reference.py MODE` and reads the `RESULT` line.
fn torch_result(
    python: &Path,
    script: &Path,
    mode: &str,
    key: &str,
    steps: usize,
    extra: &[&str],
) -> Option<f64> {
    let out = Command::new(python)
        .arg(script)
        .arg(mode)
        .args([
            "--steps",
            &steps.to_string(),
            "--threads",
            &rayon::current_num_threads().to_string(),
        ])
        .args(extra)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.starts_with("RESULT"))?;
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

fn torch_figures(options: &BenchOptions) -> Option<TorchFigures> {
    let python = options.torch_python.as_ref()?;
    let version = Command::new(python)
        .args(["-c", "import torch; print(torch.__version__)"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let steps = options.repetitions.max(3);
    let device: &[&str] = match options.hardware {
        Hardware::Cpu => &[],
        Hardware::Gpu => &["--device", "cuda"],
    };
    let run = |mode: &str, key: &str, steps: usize, extra: &[&str]| {
        let args: Vec<&str> = device.iter().chain(extra).copied().collect();
        torch_result(python, &options.torch_script, mode, key, steps, &args)
    };
    let volumes = options.repetitions.max(1);
    Some(TorchFigures {
        // `--no-training` skips figure (a) on both sides.
        train_samples_per_s: options
            .training
            .then(|| run("train", "samples_per_s", steps, &[]))
            .flatten(),
        slice_seconds: run("slice", "seconds", steps, &[]),
        volume_seconds: run("volume", "seconds", volumes, &[]),
        sgemm_gflops: run("sgemm", "gflops", steps, &[]),
        large_volume_seconds: match options.hardware {
            Hardware::Cpu => None,
            Hardware::Gpu => run("volume", "seconds", volumes, &["--size", "256"]),
        },
        version: String::from_utf8_lossy(&version.stdout).trim().to_string(),
    })
}

pub fn run(options: &BenchOptions, mut progress: impl FnMut(&str)) -> Result<BenchReport> {
    if options.repetitions == 0 {
        return Err(Error::usage("--repetitions must be at least 1"));
    }
    let meta = bench_meta(options.quick);
    let config = meta
        .network
        .as_triplanar()
        .expect("bench_meta describes the triplanar network");
    let rf = config.patch_size();
    let classes = meta.layout.channels();
    let reps = if options.quick {
        1
    } else {
        options.repetitions
    };
    let mut rng = ChaCha8Rng::seed_from_u64(7);

    let device = options.hardware.burn_device()?;
    progress("sgemm");
    let sgemm_size = match (options.quick, options.hardware) {
        (true, _) => 256,
        (false, Hardware::Cpu) => 2048,
        (false, Hardware::Gpu) => 8192,
    };
    let sgemm = match options.hardware {
        Hardware::Cpu => sgemm_gflops(sgemm_size),
        Hardware::Gpu => device_sgemm_gflops(sgemm_size, &device)?,
    };

    progress("training, 64 voxels x three 51x51 patches");
    let batch = random_batch(64, 1, rf, classes, &mut rng);
    let step = options
        .training
        .then(|| train_seconds(&meta, &batch, reps, options.hardware, &device))
        .transpose()?;
    let train_flops =
        3.0 * 64.0 * (3.0 * branch_flops(config, rf, rf) + head_flops(config, 1, classes));

    progress("one branch over a 256x256 slice");
    let net = model::init_network(&meta, 3, &device).valid();
    let engine = TriplanarEngine::new(&net, options.hardware, &device);
    let settings = DenseSettings::for_hardware(options.hardware);
    let slice = if options.quick { 64 } else { 256 };
    let side = slice + 2 * config.depth;
    let image: Vec<f32> = (0..side * side).map(|_| rng.random::<f32>()).collect();
    let slice_seconds = median(
        (0..reps + 1)
            .map(|_| {
                let start = Instant::now();
                let _ = engine.branch(model::Orientation::Axial, image.clone(), 1, side, side);
                start.elapsed().as_secs_f64()
            })
            .skip(1)
            .collect(),
    );
    let slice_flops = branch_flops(config, side, side);

    progress("dense segmentation of a 64^3 volume");
    let n = if options.quick { 16 } else { 64 };
    let volume_seconds = time_volume(&engine, &meta, &settings, n, reps.min(3), &mut rng);
    let volume_flops =
        3.0 * n as f64 * branch_flops(config, n + 2 * config.depth, n + 2 * config.depth)
            + head_flops(config, n * n * n, classes);
    let large_volume_seconds = match options.hardware {
        Hardware::Cpu => None,
        Hardware::Gpu => {
            progress("dense segmentation of a 256^3 volume");
            let n = if options.quick { 32 } else { 256 };
            Some(time_volume(
                &engine,
                &meta,
                &settings,
                n,
                reps.min(2),
                &mut rng,
            ))
        }
    };

    progress("dense output tiles");
    let tiles: &[usize] = match (options.training, options.quick) {
        (false, _) => &[],
        (true, true) => &[1, 2],
        (true, false) => &[1, 2, 4, 8, 12],
    };
    let tile_voxels_per_s = tiles
        .iter()
        .map(|&k| {
            let cubes = (64 / (k * k)).max(3);
            let batch = random_batch(cubes, k, rf, classes, &mut rng);
            let seconds = train_seconds(&meta, &batch, reps.min(3), options.hardware, &device)?;
            Ok((k, (cubes * k * k * k) as f64 / seconds))
        })
        .collect::<Result<_>>()?;

    let torch = if options.quick {
        None
    } else {
        progress("PyTorch reference");
        torch_figures(options)
    };
    Ok(BenchReport {
        quick: options.quick,
        device: options.hardware.to_string(),
        gpu: mtseg::device::gpu_name(&device),
        cpu: cpu_name(),
        threads: rayon::current_num_threads(),
        sgemm_gflops: sgemm,
        sgemm_size,
        train_samples_per_s: step.map(|step| 64.0 / step),
        train_gflops: step.map(|step| train_flops / step / 1e9),
        slice_seconds,
        slice_gflops: slice_flops / slice_seconds / 1e9,
        volume_seconds,
        volume_gflops: volume_flops / volume_seconds / 1e9,
        large_volume_seconds,
        tile_voxels_per_s,
        peak_rss_mb: peak_rss_mb(),
        torch,
    })
}

impl BenchReport {
    pub fn to_table(&self) -> String {
        let ratio = |ours: f64, theirs: Option<f64>, higher_is_better: bool| {
            theirs.map_or("n/a".to_string(), |t| {
                let r = if higher_is_better { ours / t } else { t / ours };
                format!("{r:.2}x")
            })
        };
        let torch = self.torch.as_ref();
        let t_train = torch.and_then(|t| t.train_samples_per_s);
        let t_slice = torch.and_then(|t| t.slice_seconds);
        let t_volume = torch.and_then(|t| t.volume_seconds);
        let fmt =
            |v: Option<f64>, d: usize| v.map_or("not run".to_string(), |x| format!("{x:.d$}"));
        // The machine's peak: the faster of the two matrix products measured.
        let torch_sgemm = torch.and_then(|t| t.sgemm_gflops);
        let peak = self.sgemm_gflops.max(torch_sgemm.unwrap_or(0.0));
        let share = |g: f64| format!("{:.0}%", 100.0 * g / peak);
        let (machine, sgemm) = match self.device.as_str() {
            "gpu" => (
                format!(
                    "GPU {} through burn's wgpu backend; PyTorch on CUDA",
                    self.gpu.as_deref().unwrap_or("unnamed")
                ),
                format!(
                    "{}^3: {:.0} GFLOP/s with burn",
                    self.sgemm_size, self.sgemm_gflops
                ),
            ),
            _ => (
                format!("{} ({} threads)", self.cpu, self.threads),
                format!(
                    "{}^3: {:.0} GFLOP/s with the gemm crate",
                    self.sgemm_size, self.sgemm_gflops
                ),
            ),
        };
        let mut out = format!(
            "{machine}, f32 matrix product {sgemm}, {} with PyTorch{}\n\n",
            torch_sgemm.map_or("not run".to_string(), |g| format!("{g:.0} GFLOP/s")),
            if self.quick {
                " -- QUICK RUN: tiny network, figures are not comparable"
            } else {
                ""
            }
        );
        out.push_str("| figure | mtseg | PyTorch | mtseg / PyTorch | mtseg GFLOP/s (share of the faster sgemm) |\n|---|---|---|---|---|\n");
        let train_ratio = self
            .train_samples_per_s
            .map_or("n/a".to_string(), |ours| ratio(ours, t_train, true));
        let train_gflops = self
            .train_gflops
            .map_or("not run".to_string(), |g| format!("{g:.0} ({})", share(g)));
        out.push_str(&format!(
            "| (a) training, samples/s (64 voxels x three 51x51 patches) | {} | {} | {train_ratio} | {train_gflops} |\n",
            fmt(self.train_samples_per_s, 1),
            fmt(t_train, 1),
        ));
        out.push_str(&format!(
            "| (b) one branch, 256x256 slice, s | {:.3} | {} | {} | {:.0} ({}) |\n",
            self.slice_seconds,
            fmt(t_slice, 3),
            ratio(self.slice_seconds, t_slice, false),
            self.slice_gflops,
            share(self.slice_gflops)
        ));
        out.push_str(&format!(
            "| (c) dense segmentation of 64^3, s | {:.2} | {} | {} | {:.0} ({}) |\n",
            self.volume_seconds,
            fmt(t_volume, 2),
            ratio(self.volume_seconds, t_volume, false),
            self.volume_gflops,
            share(self.volume_gflops)
        ));
        if let Some(seconds) = self.large_volume_seconds {
            out.push_str(&format!(
                "| (d) dense segmentation of 256^3, s | {seconds:.2} | {} | {} | |\n",
                fmt(torch.and_then(|t| t.large_volume_seconds), 2),
                ratio(seconds, torch.and_then(|t| t.large_volume_seconds), false),
            ));
        }
        if !self.tile_voxels_per_s.is_empty() {
            out.push_str("\nTraining on dense output tiles (cubes of k^3 voxels):\n\n| k | labelled voxels/s |\n|---|---|\n");
            for (k, v) in &self.tile_voxels_per_s {
                out.push_str(&format!("| {k} | {v:.0} |\n"));
            }
        }
        out.push_str(&format!(
            "\nPeak resident memory: {:.0} MB\n",
            self.peak_rss_mb
        ));
        if let Some(t) = torch {
            out.push_str(&format!("PyTorch {} in the same run.\n", t.version));
        } else {
            out.push_str(
                "PyTorch was not run (give --torch-python with a Python that has torch).\n",
            );
        }
        out
    }
}

/// `mtseg bench --network unet`: the built-in model's U-Net (models/unet.toml's network: width
/// 20, four levels, 9 class and 3 task logits) measured as `bench/torch_unet_reference.py`
/// measures it, with PyTorch in the same run when it is installed.
#[derive(Clone, Debug, Serialize)]
pub struct UNetBenchReport {
    pub quick: bool,
    pub device: String,
    pub gpu: Option<String>,
    pub cpu: String,
    pub threads: usize,
    /// Crops/s of training steps (forward, backward with the loss's Dice term, Adam) on
    /// batches of 18 random 96x96 crops, six per task; `None` with `--no-training`.
    pub train_samples_per_s: Option<f64>,
    /// Seconds to run every slice of the three orientations of a 120x120x90 grid (a 2 mm
    /// head), 16 slices per call, logits averaged per voxel.
    pub volume_seconds: f64,
    pub peak_rss_mb: f64,
    pub torch: Option<UNetTorchFigures>,
}

#[derive(Clone, Debug, Serialize)]
pub struct UNetTorchFigures {
    pub train_samples_per_s: Option<f64>,
    pub volume_seconds: Option<f64>,
    pub version: String,
}

/// The U-Net of the benchmark over three tasks of 4, 1 and 1 classes: per-task groups of 5,
/// 2 and 2 channels (9 class logits) and 3 task logits, as the reference.
fn unet_bench_meta(quick: bool) -> ModelMeta {
    let mut meta = bench_meta(true);
    meta.network = UNetConfig::new()
        .with_output_mode(OutputMode::PerTask)
        .with_levels(if quick { 2 } else { 4 })
        .with_width(if quick { 4 } else { 20 })
        .into();
    meta.label_space.classes.truncate(4);
    for (task, id) in [(1, 1), (2, 1)] {
        meta.label_space.classes.push(ClassInfo {
            task,
            name: "class".into(),
            dataset_id: id,
        });
    }
    meta.layout = OutputLayout::new(&meta.label_space, OutputMode::PerTask);
    meta
}

/// Seconds per U-Net training step on `crops`, median of `repetitions` after one warm-up.
fn unet_train_seconds(
    meta: &ModelMeta,
    crops: &mtseg::data::Crops,
    repetitions: usize,
    hardware: Hardware,
    device: &Device,
) -> Result<f64> {
    let model::Network::UNet(mut net) = model::Network::init(meta, 1, &device.clone().autodiff())
    else {
        unreachable!("a U-Net configuration gives a U-Net")
    };
    let stepper = mtseg::engine::Stepper::new(hardware, vec![device.clone()]);
    let mut optimizer: ModuleOptimizer = AdamConfig::new().with_epsilon(1e-8).init();
    let mut times = Vec::new();
    for i in 0..repetitions + 1 {
        let start = Instant::now();
        let (next, _) = stepper.unet_step(
            net,
            &mut optimizer,
            crops,
            &meta.layout,
            &meta.training,
            2e-3,
        );
        net = next;
        if i > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(median(times))
}

pub fn run_unet(options: &BenchOptions, mut progress: impl FnMut(&str)) -> Result<UNetBenchReport> {
    if options.repetitions == 0 {
        return Err(Error::usage("--repetitions must be at least 1"));
    }
    let meta = unet_bench_meta(options.quick);
    let reps = if options.quick {
        1
    } else {
        options.repetitions
    };
    let device = options.hardware.burn_device()?;
    let mut rng = ChaCha8Rng::seed_from_u64(7);

    progress("U-Net training, 18 crops of 96x96");
    let side = if options.quick { 16 } else { 96 };
    let tasks: Vec<usize> = (0..18).map(|c| c / 6).collect();
    let crops = mtseg::data::Crops {
        count: tasks.len(),
        side,
        images: (0..tasks.len() * mtseg::model::unet::INPUT_CHANNELS * side * side)
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect(),
        targets: tasks
            .iter()
            .flat_map(|&t| {
                let group = meta.layout.groups[t].len();
                (0..side * side)
                    .map(|_| rng.random_range(0..group) as i64)
                    .collect::<Vec<_>>()
            })
            .collect(),
        tasks,
    };
    let step = options
        .training
        .then(|| unet_train_seconds(&meta, &crops, reps, options.hardware, &device))
        .transpose()?;

    progress("U-Net over every slice of a 120x120x90 grid");
    let shape = if options.quick {
        [16, 16, 12]
    } else {
        [120, 120, 90]
    };
    let net = model::Network::init(&meta, 3, &device).valid();
    let (engine, mut settings) = mtseg::engine::dense_engine(&net, options.hardware, &device);
    settings.slice_batch = 16;
    let volume: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| rng.random::<f32>())
        .collect();
    let input = NetworkInput {
        image: &volume,
        shape,
        pad: 0.0,
    };
    let volume_seconds = median(
        (0..reps.min(3) + 1)
            .map(|_| {
                let start = Instant::now();
                engine.logits_by_slab(&input, &settings, &mut |_, _, _, _| {});
                start.elapsed().as_secs_f64()
            })
            .skip(1)
            .collect(),
    );

    let torch = if options.quick {
        None
    } else {
        progress("PyTorch reference");
        unet_torch_figures(options)
    };
    Ok(UNetBenchReport {
        quick: options.quick,
        device: options.hardware.to_string(),
        gpu: mtseg::device::gpu_name(&device),
        cpu: cpu_name(),
        threads: rayon::current_num_threads(),
        train_samples_per_s: step.map(|s| crops.count as f64 / s),
        volume_seconds,
        peak_rss_mb: peak_rss_mb(),
        torch,
    })
}

fn unet_torch_figures(options: &BenchOptions) -> Option<UNetTorchFigures> {
    let python = options.torch_python.as_ref()?;
    let version = Command::new(python)
        .args(["-c", "import torch; print(torch.__version__)"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let device: &[&str] = match options.hardware {
        Hardware::Cpu => &[],
        Hardware::Gpu => &["--device", "cuda"],
    };
    let steps = options.repetitions.max(3);
    let run = |mode: &str, key: &str, steps: usize| {
        torch_result(python, &options.torch_script, mode, key, steps, device)
    };
    Some(UNetTorchFigures {
        train_samples_per_s: options
            .training
            .then(|| run("train", "samples_per_s", steps))
            .flatten(),
        volume_seconds: run("volume", "seconds", options.repetitions.clamp(1, 3)),
        version: String::from_utf8_lossy(&version.stdout).trim().to_string(),
    })
}

impl UNetBenchReport {
    pub fn to_table(&self) -> String {
        let torch = self.torch.as_ref();
        let fmt =
            |v: Option<f64>, d: usize| v.map_or("not run".to_string(), |x| format!("{x:.d$}"));
        let ratio = |r: Option<f64>| r.map_or("n/a".to_string(), |r| format!("{r:.2}x"));
        let t_train = torch.and_then(|t| t.train_samples_per_s);
        let t_volume = torch.and_then(|t| t.volume_seconds);
        let machine = match self.device.as_str() {
            "gpu" => format!("GPU {}", self.gpu.as_deref().unwrap_or("unnamed")),
            _ => format!("{} ({} threads)", self.cpu, self.threads),
        };
        let mut out = format!(
            "The built-in model's U-Net on {machine}{}\n\n| figure | mtseg | PyTorch | mtseg / PyTorch |\n|---|---|---|---|\n",
            if self.quick {
                " -- QUICK RUN: tiny network, figures are not comparable"
            } else {
                ""
            }
        );
        out.push_str(&format!(
            "| training, crops/s (18 crops of 96x96) | {} | {} | {} |\n",
            fmt(self.train_samples_per_s, 1),
            fmt(t_train, 1),
            ratio(self.train_samples_per_s.zip(t_train).map(|(a, b)| a / b)),
        ));
        out.push_str(&format!(
            "| every slice of three orientations of 120x120x90, s | {:.2} | {} | {} |\n",
            self.volume_seconds,
            fmt(t_volume, 2),
            ratio(t_volume.map(|t| t / self.volume_seconds)),
        ));
        out.push_str(&format!(
            "\nPeak resident memory: {:.0} MB\n",
            self.peak_rss_mb
        ));
        match torch {
            Some(t) => out.push_str(&format!("PyTorch {} in the same run.\n", t.version)),
            None => out.push_str(
                "PyTorch was not run (give --torch-python with a Python that has torch).\n",
            ),
        }
        out
    }
}
