//! Every command that reads input, run on the malformed-input corpus
//! (tests/corpus/generate.rs): each must fail with one line naming the file and the problem
//! (or succeed where the input is legitimately readable), never panic, never hang, and never
//! take memory the data does not need (commands run under a 4 GiB address-space limit).

#[path = "../../../tests/corpus/generate.rs"]
mod generate;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use generate::{Expect, file_cases, write_dataset_cases};

/// Runs mtseg under a memory limit and a time limit.
fn mtseg(args: &[&str]) -> Output {
    let mut child = Command::new("bash")
        .arg("-c")
        .arg("ulimit -v 4194304; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_mtseg"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash runs");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("waiting works").is_some() {
            return child.wait_with_output().expect("output readable");
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("mtseg {args:?} hung for two minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What reading a file as one 3-D volume must give (`info` takes 4-D files too).
fn as_one_volume(expect: &Expect) -> Expect {
    match expect {
        Expect::InfoOnly(text) => Expect::Error(text),
        other => other.clone(),
    }
}

fn check(output: &Output, expect: &Expect, file: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{what}: panic\n{stderr}");
    match expect {
        Expect::InfoOnly(_) => assert!(
            output.status.success(),
            "{what}: expected success\n{stderr}"
        ),
        Expect::Ok => assert!(
            output.status.success(),
            "{what}: expected success\n{stderr}"
        ),
        Expect::Error(text) => {
            assert!(
                !output.status.success(),
                "{what}: expected failure, got success\n{stderr}"
            );
            let line = stderr
                .lines()
                .find(|l| l.starts_with("error:"))
                .unwrap_or_else(|| panic!("{what}: no error line\n{stderr}"));
            assert!(
                line.contains(file),
                "{what}: error does not name {file}: {line}"
            );
            assert!(
                line.contains(text),
                "{what}: error does not say '{text}': {line}"
            );
        }
    }
}

fn write_files(dir: &Path) -> Vec<(generate::FileCase, PathBuf)> {
    file_cases()
        .into_iter()
        .map(|case| {
            let path = dir.join(case.name);
            std::fs::write(&path, &case.bytes).unwrap();
            (case, path)
        })
        .collect()
}

/// Optionally keeps the generated corpus (fuzzing seeds): MTSEG_WRITE_CORPUS=DIR.
fn keep_corpus(cases: &[(generate::FileCase, PathBuf)]) {
    if let Ok(dir) = std::env::var("MTSEG_WRITE_CORPUS") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (case, _) in cases {
            std::fs::write(dir.join(case.name), &case.bytes).unwrap();
        }
    }
}

#[test]
fn the_corpus_is_large_enough() {
    let dir = tempfile::tempdir().unwrap();
    assert!(file_cases().len() + write_dataset_cases(dir.path()).len() >= 30);
}

#[test]
fn info_reads_or_refuses_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let cases = write_files(dir.path());
    keep_corpus(&cases);
    for (case, path) in cases.iter().filter(|(c, _)| !c.label_map) {
        let out = mtseg(&["info", path.to_str().unwrap()]);
        check(
            &out,
            &case.expect,
            case.name,
            &format!("info {}", case.name),
        );
    }
    // A folder where a file is expected.
    let folder = dir.path().join("a_folder.nii.gz");
    std::fs::create_dir(&folder).unwrap();
    check(
        &mtseg(&["info", folder.to_str().unwrap()]),
        &Expect::Error("is a folder"),
        "a_folder.nii.gz",
        "folder",
    );
}

#[test]
fn unreadable_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.nii");
    std::fs::write(&path, generate::Nifti1::default().bytes(&[0u8; 256])).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read(&path).is_ok() {
        eprintln!("SKIPPED: running as root, file permissions do not stop reads");
        return;
    }
    check(
        &mtseg(&["info", path.to_str().unwrap()]),
        &Expect::Error("Permission denied"),
        "locked.nii",
        "locked",
    );
}

#[test]
fn dataset_commands_refuse_broken_datasets() {
    let dir = tempfile::tempdir().unwrap();
    for (case, folder) in write_dataset_cases(dir.path()) {
        let f = folder.to_str().unwrap();
        // The file that errors is named in the message; the folder name is in every path.
        let out = mtseg(&["datasets", "check", f]);
        check(
            &out,
            &case.expect,
            case.name,
            &format!("datasets check {}", case.name),
        );
        if case.name == "ds_valid" {
            continue;
        }
        let out_dir = dir.path().join(format!("train_{}", case.name));
        let out = mtseg(&[
            "-q",
            "train",
            "--datasets",
            f,
            "--out",
            out_dir.to_str().unwrap(),
            "--iterations",
            "1",
        ]);
        check(
            &out,
            &case.expect,
            case.name,
            &format!("train {}", case.name),
        );
    }
}

#[test]
fn label_maps_are_checked_in_datasets() {
    let dir = tempfile::tempdir().unwrap();
    let (valid, folder) = write_dataset_cases(dir.path())
        .into_iter()
        .find(|(c, _)| c.name == "ds_valid")
        .unwrap();
    assert!(matches!(valid.expect, Expect::Ok));
    for case in file_cases().into_iter().filter(|c| c.label_map) {
        std::fs::write(folder.join("labelsTr/a.nii.gz"), &case.bytes).unwrap();
        let out = mtseg(&["datasets", "check", folder.to_str().unwrap()]);
        check(
            &out,
            &case.expect,
            "a.nii.gz",
            &format!("label map {}", case.name),
        );
    }
}

/// A tiny model to segment with (two iterations on small phantoms).
fn tiny_model(dir: &Path) -> PathBuf {
    let data = dir.join("phantoms");
    let out = mtseg(&[
        "-q",
        "phantoms",
        "--out",
        data.to_str().unwrap(),
        "--cases",
        "2",
        "--size",
        "20",
        "--tasks",
        "brain",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.join("tiny.json");
    std::fs::write(&config, r#"{"network": {"depth": 2, "kernels": 4, "fc_width": 8}, "training": {"validate_every": 0}}"#).unwrap();
    let model_dir = dir.join("model");
    let out = mtseg(&[
        "-q",
        "train",
        "--datasets",
        data.join("Dataset901_PhantomBrainMRI").to_str().unwrap(),
        "--out",
        model_dir.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--iterations",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    model_dir.join("model.mtseg")
}

#[test]
fn segment_and_evaluate_refuse_broken_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    for (case, path) in write_files(&corpus).iter().filter(|(c, _)| !c.label_map) {
        let output = dir.path().join("seg.nii.gz");
        let out = mtseg(&[
            "-q",
            "segment",
            "-m",
            model.to_str().unwrap(),
            "-i",
            path.to_str().unwrap(),
            "-o",
            output.to_str().unwrap(),
            "--overwrite",
        ]);
        check(
            &out,
            &as_one_volume(&case.expect),
            case.name,
            &format!("segment {}", case.name),
        );
    }
    // A damaged model file.
    let bad_model = dir.path().join("damaged.mtseg");
    let mut bytes = std::fs::read(&model).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(&bad_model, &bytes).unwrap();
    let image = dir
        .path()
        .join("phantoms/Dataset901_PhantomBrainMRI/imagesTr/brain_000_0000.nii.gz");
    let out = mtseg(&[
        "segment",
        "-m",
        bad_model.to_str().unwrap(),
        "-i",
        image.to_str().unwrap(),
        "-o",
        dir.path().join("x.nii.gz").to_str().unwrap(),
    ]);
    check(
        &out,
        &Expect::Error("checksum"),
        "damaged.mtseg",
        "damaged model",
    );

    // evaluate: a reference folder holding a broken label map.
    let refs = dir.path().join("refs");
    let preds = dir.path().join("preds");
    std::fs::create_dir_all(&refs).unwrap();
    std::fs::create_dir_all(&preds).unwrap();
    let good = dir
        .path()
        .join("phantoms/Dataset901_PhantomBrainMRI/labelsTr/brain_000.nii.gz");
    std::fs::copy(&good, preds.join("case.nii.gz")).unwrap();
    for case in file_cases()
        .iter()
        .filter(|c| matches!(as_one_volume(&c.expect), Expect::Error(_)))
    {
        std::fs::write(refs.join("case.nii.gz"), &case.bytes).unwrap();
        let out = mtseg(&[
            "evaluate",
            "--pred",
            preds.to_str().unwrap(),
            "--ref",
            refs.to_str().unwrap(),
            "-o",
            dir.path().join("report").to_str().unwrap(),
        ]);
        check(
            &out,
            &Expect::Error(""),
            "case.nii.gz",
            &format!("evaluate {}", case.name),
        );
    }
}
