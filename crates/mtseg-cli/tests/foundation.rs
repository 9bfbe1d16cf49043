//! End-to-end tests of the foundation commands on generated phantoms: phantoms, info,
//! datasets check, convert, and their errors on bad input.

use std::path::Path;
use std::process::Output;

mod common;
use common::mtseg;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failed run: non-zero exit, one `error:` line naming `file` and saying `what`, no panic.
fn assert_clean_error(o: &Output, file: &str, what: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(line.contains(file), "error does not name {file}: {line}");
    assert!(line.contains(what), "error does not say '{what}': {line}");
}

fn make_phantoms(dir: &Path) {
    let out = dir.to_str().unwrap();
    let o = mtseg(&[
        "-q",
        "phantoms",
        "--out",
        out,
        "--cases",
        "2",
        "--size",
        "24",
        "--seed",
        "5",
        "--preview",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn phantoms_then_check_then_info_then_convert() {
    let dir = tempfile::tempdir().unwrap();
    make_phantoms(dir.path());
    let brain = dir.path().join("Dataset901_PhantomBrainMRI");
    assert!(brain.join("preview.png").is_file());
    assert!(dir.path().join("splits.json").is_file());

    let folders: Vec<String> = [
        "Dataset901_PhantomBrainMRI",
        "Dataset902_PhantomBreastMRI",
        "Dataset903_PhantomCardiacCTA",
    ]
    .iter()
    .map(|f| dir.path().join(f).to_string_lossy().into_owned())
    .collect();
    let mut args = vec!["datasets", "check"];
    args.extend(folders.iter().map(String::as_str));
    let o = mtseg(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("joint label space (9 outputs)"), "{text}");
    assert!(
        text.contains("PhantomCardiacCTA/coronary_arteries"),
        "{text}"
    );

    let image = brain.join("imagesTr/brain_000_0000.nii.gz");
    let o = mtseg(&["info", "--json", image.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(info["shape"], serde_json::json!([24, 24, 24]));
    assert_eq!(info["datatype"], "int16");
    let spacing = info["spacing"][0].as_f64().unwrap();
    assert!((spacing - 200.0 / 24.0).abs() < 1e-4);

    let converted = dir.path().join("converted.nii");
    let o = mtseg(&[
        "-q",
        "convert",
        image.to_str().unwrap(),
        converted.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o2 = mtseg(&["info", "--json", converted.to_str().unwrap()]);
    let info2: serde_json::Value = serde_json::from_str(stdout(&o2).trim()).unwrap();
    assert_eq!(info2["affine"], info["affine"]);
    assert_eq!(info2["mean"], info["mean"]);

    // Never over the input, never over an existing output without --overwrite.
    let o = mtseg(&["convert", image.to_str().unwrap(), image.to_str().unwrap()]);
    assert_clean_error(
        &o,
        "brain_000_0000.nii.gz",
        "refusing to write over the input",
    );
    let o = mtseg(&[
        "convert",
        image.to_str().unwrap(),
        converted.to_str().unwrap(),
    ]);
    assert_clean_error(&o, "converted.nii", "--overwrite");
}

#[test]
fn bad_input_gets_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let s = |name: &str| p(name).to_string_lossy().into_owned();

    let o = mtseg(&["info", &s("missing.nii.gz")]);
    assert_clean_error(&o, "missing.nii.gz", "No such file");

    std::fs::write(p("scan.png"), b"x").unwrap();
    assert_clean_error(
        &mtseg(&["info", &s("scan.png")]),
        "scan.png",
        "unknown file type",
    );

    std::fs::write(p("magic.nii"), vec![0u8; 400]).unwrap();
    assert_clean_error(
        &mtseg(&["info", &s("magic.nii")]),
        "magic.nii",
        "not a NIfTI",
    );

    // A valid file cut in half, gzip stream and all.
    make_phantoms(dir.path());
    let good = dir
        .path()
        .join("Dataset903_PhantomCardiacCTA/imagesTr/cardiac_000_0000.nii.gz");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(p("cut.nii.gz"), &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_error(
        &mtseg(&["info", &s("cut.nii.gz")]),
        "cut.nii.gz",
        "truncated",
    );

    std::fs::create_dir(p("folder.nii")).unwrap();
    assert_clean_error(
        &mtseg(&["info", &s("folder.nii")]),
        "folder.nii",
        "is a folder",
    );

    // dataset.json without labels.
    let dataset = dir.path().join("Dataset903_PhantomCardiacCTA");
    std::fs::write(
        dataset.join("dataset.json"),
        r#"{"channel_names": {"0": "CT"}, "file_ending": ".nii.gz", "numTraining": 2}"#,
    )
    .unwrap();
    assert_clean_error(
        &mtseg(&["datasets", "check", dataset.to_str().unwrap()]),
        "dataset.json",
        "missing field `labels`",
    );
}

/// `--threads N` sizes the pool every command computes on, before or after the subcommand.
#[test]
fn threads_set_the_pool_size() {
    for args in [
        &[
            "--threads",
            "1",
            "bench",
            "--network",
            "unet",
            "--quick",
            "--json",
        ][..],
        &[
            "bench",
            "--network",
            "unet",
            "--quick",
            "--json",
            "--threads",
            "1",
        ][..],
    ] {
        let o = mtseg(args);
        assert!(o.status.success(), "{}", stderr(&o));
        let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(report["threads"], 1);
        assert!(report["train_samples_per_s"].as_f64().unwrap() > 0.0);
        assert!(report["volume_seconds"].as_f64().unwrap() > 0.0);
    }
    let o = mtseg(&["--threads", "0", "info", "x.nii"]);
    assert!(!o.status.success());
    assert!(!stderr(&o).contains("panicked"));
}
