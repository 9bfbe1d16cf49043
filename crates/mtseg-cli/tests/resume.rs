//! Training repeats to the bit: a run killed with SIGKILL at a random moment after a
//! checkpoint, then resumed, ends with exactly the weights of an uninterrupted run that trains
//! at the same time on the same cores. Both networks: the paper's (mtseg's kernels, whose
//! reductions are ordered) and the U-Net (burn's autodiff on its CPU backend). No
//! single-thread setting is needed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use mtseg::model::{Model, Network};

fn mtseg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mtseg"))
}

/// Small settings for each network. Dropout on in the paper's, so the per-iteration random
/// streams are exercised too.
const TRIPLANAR: &str = r#"{"network": {"depth": 3, "kernels": 6, "fc_width": 16, "dropout": 0.3},
    "training": {"tile": 4, "samples_per_task": 2, "validate_every": 0, "checkpoint_every": 4}}"#;
const UNET: &str = r#"{"preset": "unet", "network": {"unet_levels": 2, "unet_width": 4},
    "training": {"crop": 16, "samples_per_task": 2, "validate_every": 0, "checkpoint_every": 4}}"#;

fn setup(dir: &Path, settings: &str) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    common::ok(&[
        "-q",
        "phantoms",
        "--out",
        data.to_str().unwrap(),
        "--cases",
        "2",
        "--size",
        "24",
        "--tasks",
        "brain,cardiac",
    ]);
    let config = dir.join("config.json");
    std::fs::write(&config, settings).unwrap();
    (data, config)
}

fn train_args<'a>(data: &'a Path, config: &'a Path, out: &'a Path) -> Vec<String> {
    vec![
        "-q".into(),
        "train".into(),
        "--datasets".into(),
        data.join("Dataset901_PhantomBrainMRI")
            .to_string_lossy()
            .into_owned(),
        data.join("Dataset903_PhantomCardiacCTA")
            .to_string_lossy()
            .into_owned(),
        "--out".into(),
        out.to_string_lossy().into_owned(),
        "--config".into(),
        config.to_string_lossy().into_owned(),
        "--iterations".into(),
        "120".into(),
    ]
}

/// Every weight of a network, in its modules' order.
#[derive(Default)]
struct Weights(Vec<Vec<f32>>);

impl ModuleVisitor for Weights {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0
            .push(param.val().into_data().try_to_vec::<f32>().unwrap());
    }
}

fn weights(model: &Path) -> Vec<Vec<f32>> {
    let mut weights = Weights::default();
    match Model::load_cpu(model).unwrap().net {
        Network::Triplanar(net) => net.visit(&mut weights),
        Network::UNet(net) => net.visit(&mut weights),
    }
    weights.0
}

fn spawn(args: &[String]) -> Child {
    mtseg()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A pseudo-random delay from the clock: where in the run the kill lands.
fn random_delay() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    Duration::from_millis((nanos % 150) as u64)
}

fn a_killed_run_resumes_to_the_weights_of_one_beside_it(settings: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (data, config) = setup(dir.path(), settings);

    let straight = dir.path().join("straight");
    let mut beside = spawn(&train_args(&data, &config, &straight));

    let interrupted = dir.path().join("interrupted");
    let args = train_args(&data, &config, &interrupted);
    let mut child = spawn(&args);
    let started = Instant::now();
    while !interrupted.join("checkpoint.mtseg").is_file()
        && started.elapsed() < Duration::from_secs(120)
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(random_delay());
    let killed_early = child.try_wait().unwrap().is_none();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    eprintln!(
        "killed {} the run had finished",
        if killed_early { "before" } else { "after" }
    );

    let mut resume = args.clone();
    resume.push("--resume".into());
    common::ok(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(beside.wait().unwrap().success());

    let a = weights(&straight.join("model.mtseg"));
    let b = weights(&interrupted.join("model.mtseg"));
    assert_eq!(a.len(), b.len());
    for (i, (va, vb)) in a.iter().zip(&b).enumerate() {
        assert!(
            va.len() == vb.len() && va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "parameter {i} differs after resuming"
        );
    }
}

#[test]
fn a_killed_triplanar_run_resumes_to_identical_weights() {
    a_killed_run_resumes_to_the_weights_of_one_beside_it(TRIPLANAR);
}

#[test]
fn a_killed_unet_run_resumes_to_identical_weights() {
    a_killed_run_resumes_to_the_weights_of_one_beside_it(UNET);
}

#[test]
fn a_corrupted_checkpoint_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let (data, config) = setup(dir.path(), TRIPLANAR);
    let out = dir.path().join("run");
    let args = train_args(&data, &config, &out);
    common::ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let checkpoint = out.join("checkpoint.mtseg");
    assert!(out.join("checkpoint.prev.mtseg").is_file());
    let bytes = std::fs::read(&checkpoint).unwrap();
    std::fs::write(&checkpoint, &bytes[..bytes.len() / 2]).unwrap();
    let mut resume = args.clone();
    resume.retain(|a| a != "-q");
    resume.push("--resume".into());
    let output = mtseg().args(&resume).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("checksum") && text.contains("checkpoint.prev.mtseg"),
        "{text}"
    );
}
