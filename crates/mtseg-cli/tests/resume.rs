//! Interrupted training resumes to the bit: a run killed with SIGKILL at a random moment
//! after a checkpoint, then resumed, ends with exactly the weights of an uninterrupted run.
//! Runs multi-threaded: the kernels' reductions are ordered, so no single-thread setting is
//! needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use mtseg::engine::ParamStore;
use mtseg::model::{Model, Network};

fn mtseg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mtseg"))
}

fn setup(dir: &Path) -> (PathBuf, PathBuf) {
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
    // Dropout on, so the per-iteration random streams are exercised too.
    std::fs::write(
        &config,
        r#"{"network": {"depth": 3, "kernels": 6, "fc_width": 16, "dropout": 0.3},
            "training": {"tile": 4, "samples_per_task": 2, "validate_every": 0, "checkpoint_every": 4}}"#,
    )
    .unwrap();
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

fn weights(model: &Path) -> Vec<(String, Vec<f32>)> {
    let Network::Triplanar(net) = Model::load_cpu(model).unwrap().net else {
        panic!("these runs train the triplanar network")
    };
    ParamStore::read(&net)
        .tensors
        .into_iter()
        .map(|(path, t)| (path, t.values))
        .collect()
}

/// A pseudo-random delay from the clock: where in the run the kill lands.
fn random_delay() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    Duration::from_millis((nanos % 150) as u64)
}

#[test]
fn a_killed_run_resumes_to_identical_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (data, config) = setup(dir.path());

    let straight = dir.path().join("straight");
    let args = train_args(&data, &config, &straight);
    common::ok(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let interrupted = dir.path().join("interrupted");
    let args = train_args(&data, &config, &interrupted);
    let mut child = mtseg()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
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

    let a = weights(&straight.join("model.mtseg"));
    let b = weights(&interrupted.join("model.mtseg"));
    assert_eq!(a.len(), b.len());
    for ((pa, va), (pb, vb)) in a.iter().zip(&b) {
        assert_eq!(pa, pb);
        assert!(
            va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{pa} differs after resuming"
        );
    }
}

#[test]
fn a_corrupted_checkpoint_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let (data, config) = setup(dir.path());
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
