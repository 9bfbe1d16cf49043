//! End-to-end tests of the paper's workflow on generated phantoms: train, segment (files and
//! folders, with and without a task), evaluate, overlay, experiment (with resume), demo, the
//! U-Net architecture, the shipped model used when no --model is given, and `bench --quick`.

use std::path::{Path, PathBuf};

mod common;
use common::{mtseg, ok};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Small brain and breast phantoms, and a network small enough to train in seconds.
fn setup(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let data = dir.join("data");
    ok(&[
        "-q",
        "phantoms",
        "--out",
        s(&data),
        "--cases",
        "5",
        "--size",
        "24",
        "--tasks",
        "brain,breast",
    ]);
    let config = dir.join("tiny.toml");
    std::fs::write(
        &config,
        "[network]\ndepth = 3\nkernels = 6\nfc_width = 16\n\
         [training]\ntile = 4\nsamples_per_task = 2\nvalidate_every = 10\n",
    )
    .unwrap();
    (
        data.join("Dataset901_PhantomBrainMRI"),
        data.join("Dataset902_PhantomBreastMRI"),
        config,
    )
}

fn train(datasets: &[&Path], run: &Path, config: &Path, iterations: usize) {
    train_with(datasets, run, config, iterations, &[]);
}

/// `train` with more options.
fn train_with(datasets: &[&Path], run: &Path, config: &Path, iterations: usize, more: &[&str]) {
    let iterations = iterations.to_string();
    let mut args = vec!["-q", "train", "--datasets"];
    args.extend(datasets.iter().map(|d| s(d)));
    args.extend([
        "--out",
        s(run),
        "--config",
        s(config),
        "--iterations",
        &iterations,
    ]);
    args.extend(more);
    ok(&args);
}

/// For every scan of `scans`: its case name, its label map in `pred` (checked to lie on the
/// scan's grid) and its sidecar.
fn predictions(scans: &Path, pred: &Path) -> Vec<(String, mtseg::io::LabelMap, serde_json::Value)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(scans).unwrap() {
        let image_path = entry.unwrap().path();
        let name = image_path.file_name().unwrap().to_str().unwrap();
        let case = name.strip_suffix("_0000.nii.gz").unwrap().to_string();
        let image = mtseg::io::read_image(&image_path).unwrap();
        let labels = mtseg::io::read_labels(&pred.join(format!("{case}.nii.gz"))).unwrap();
        assert_eq!(labels.grid, image.grid, "{case}");
        let side = sidecar(&pred.join(format!("{case}.json")));
        found.push((case, labels, side));
    }
    found
}

fn sidecar(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn train_then_segment_then_evaluate_then_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let (brain, breast, config) = setup(dir.path());
    let run = dir.path().join("run");
    train(&[&brain, &breast], &run, &config, 30);
    for file in ["model.mtseg", "checkpoint.mtseg", "log.csv", "curves.png"] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let model = run.join("model.mtseg");

    // A folder of scans: one label map and sidecar per case, on the input's exact grid.
    let scans = brain.join("imagesTr");
    let segment_brains = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "-q",
            "segment",
            "-i",
            s(&scans),
            "-o",
            s(out),
            "--model",
            s(&model),
            "--task",
            "PhantomBrainMRI",
        ];
        args.extend(extra);
        ok(&args);
    };
    let pred = dir.path().join("pred");
    let stats = dir.path().join("stats.csv");
    segment_brains(&pred, &["--statistics", s(&stats)]);
    // What training chose on its validation cases, as the sidecars must report it.
    let meta = mtseg::model::Model::load_cpu(&model).unwrap().meta;
    assert_eq!(
        meta.largest_component.len(),
        2,
        "training records its choice"
    );
    let chosen = meta.largest_component_tasks();
    let postprocessing = match chosen.is_empty() {
        true => serde_json::Value::Null,
        false => serde_json::json!(
            chosen
                .iter()
                .map(|&t| format!("{}: largest connected object", meta.tasks[t].name))
                .collect::<Vec<_>>()
        ),
    };
    // One statistics row per scan, its volumes the label map's voxels times their volume.
    let mut rows = csv::Reader::from_path(&stats).unwrap();
    let header = rows.headers().unwrap().clone();
    let rows: Vec<csv::StringRecord> = rows.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 5);
    for (case, labels, side) in predictions(&brain.join("imagesTr"), &pred) {
        assert_eq!(side["task"], "PhantomBrainMRI");
        assert_eq!(side["label_values"], "dataset");
        assert_eq!(side["postprocessing"], postprocessing);
        assert!(side["quality"]["ok"].is_boolean());
        assert!(
            labels.data.iter().all(|&l| l <= 6),
            "{case}: not a brain label"
        );
        let row = rows
            .iter()
            .find(|r| r[0].contains(&format!("{case}_0000")))
            .unwrap_or_else(|| panic!("{case}: no statistics row"));
        for (name, id) in [("white_matter", 2u16), ("cortical_grey_matter", 1)] {
            let column = header
                .iter()
                .position(|h| h == format!("{name}_ml"))
                .unwrap();
            let voxels = labels.data.iter().filter(|&&l| l == id).count();
            let ml: f64 = row[column].parse().unwrap();
            let expected = voxels as f64 * labels.grid.voxel_ml();
            assert!(
                (ml - expected).abs() < 1e-3,
                "{case} {name}: {ml} against {expected}"
            );
            assert!((side["volumes_ml"][name].as_f64().unwrap() - expected).abs() < 1e-9);
        }
    }

    // The output exists now: segment refuses to overwrite it without --overwrite.
    let again = mtseg(&[
        "-q",
        "segment",
        "-i",
        s(&brain.join("imagesTr")),
        "-o",
        s(&pred),
        "--model",
        s(&model),
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"));

    // --keep-all-components writes the network's raw labels and says so; the default keeps one
    // connected object per task, so it never labels more voxels.
    let raw = dir.path().join("raw");
    segment_brains(&raw, &["--keep-all-components"]);
    for entry in std::fs::read_dir(&raw).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let Some(case) = name.strip_suffix(".nii.gz") else {
            continue;
        };
        let side = sidecar(&raw.join(format!("{case}.json")));
        assert!(side["postprocessing"].is_null());
        assert_eq!(side["voxels_removed_by_postprocessing"], 0);
        let foreground = |p: &Path| {
            let labels = mtseg::io::read_labels(p).unwrap();
            labels.data.iter().filter(|&&l| l > 0).count()
        };
        assert!(foreground(&pred.join(&name)) <= foreground(&path), "{case}");
    }

    let report = dir.path().join("report");
    ok(&[
        "-q",
        "evaluate",
        "--pred",
        s(&pred),
        "--ref",
        s(&brain.join("labelsTr")),
        "--labels",
        s(&brain.join("dataset.json")),
        "-o",
        s(&report),
    ]);
    let csv = std::fs::read_to_string(report.join("metrics.csv")).unwrap();
    assert!(csv.lines().next().unwrap().contains("dice"), "{csv}");
    // Five cases, six classes each.
    assert_eq!(csv.lines().count(), 1 + 5 * 6, "{csv}");
    let summary = std::fs::read_to_string(report.join("summary.md")).unwrap();
    assert!(summary.contains("white_matter"), "{summary}");

    let png = dir.path().join("overlay.png");
    ok(&[
        "-q",
        "overlay",
        "-i",
        s(&brain.join("imagesTr/brain_000_0000.nii.gz")),
        "-s",
        s(&pred.join("brain_000.nii.gz")),
        "-o",
        s(&png),
    ]);
    assert!(image::open(&png).unwrap().width() > 24);
}

/// The U-Net trains through the same command (its loss falls), its model file segments a
/// folder without a task, and the label maps lie on their inputs' grids.
#[test]
fn the_unet_trains_and_segments_on_the_input_grid() {
    let dir = tempfile::tempdir().unwrap();
    let (brain, breast, _) = setup(dir.path());
    let config = dir.path().join("unet.toml");
    let settings = "preset = \"unet\"\n[network]\nunet_levels = 2\nunet_width = 4\n\
         [training]\ncrop = 16\nsamples_per_task = 2\nvalidate_every = 20\n\
         [training.samples_by_task]\n";
    // A task that is not trained cannot be given a sample count.
    std::fs::write(&config, format!("{settings}Liver = 3\n")).unwrap();
    let refused = mtseg(&[
        "-q",
        "train",
        "--datasets",
        s(&brain),
        "--out",
        s(&dir.path().join("refused")),
        "--config",
        s(&config),
    ]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("'Liver'"),
        "{err}"
    );
    // The brain drawn more often than the breast.
    std::fs::write(&config, format!("{settings}PhantomBrainMRI = 3\n")).unwrap();
    let run = dir.path().join("run");
    train(&[&brain, &breast], &run, &config, 40);
    let losses = losses(&run);
    assert_eq!(losses.len(), 40);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(mean(&losses[30..]) < mean(&losses[..10]), "{losses:?}");

    let pred = dir.path().join("pred");
    let scans = brain.join("imagesTr");
    let model = run.join("model.mtseg");
    ok(&[
        "-q",
        "segment",
        "-i",
        s(&scans),
        "-o",
        s(&pred),
        "--model",
        s(&model),
    ]);
    for (case, _, side) in predictions(&scans, &pred) {
        assert_eq!(side["task_selection"], "task head", "{case}");
    }
}

/// The loss of every iteration in a run's log.
fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("log.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect()
}

/// `--init-weights` starts from a trained model: the first step's loss is the trained model's,
/// not a fresh network's; a model of other tasks or another network is refused, by name.
#[test]
fn fine_tuning_starts_from_the_given_model() {
    let dir = tempfile::tempdir().unwrap();
    let (brain, breast, config) = setup(dir.path());
    let trained = dir.path().join("trained");
    train(&[&brain, &breast], &trained, &config, 80);
    let model = trained.join("model.mtseg");

    let fresh = dir.path().join("fresh");
    train(&[&brain, &breast], &fresh, &config, 1);
    let tuned = dir.path().join("tuned");
    let init = ["--init-weights", s(&model)];
    train_with(&[&brain, &breast], &tuned, &config, 1, &init);
    let (trained_loss, fresh_loss, tuned_loss) =
        (losses(&trained), losses(&fresh)[0], losses(&tuned)[0]);
    let settled = trained_loss[70..].iter().sum::<f64>() / 10.0;
    assert!(
        tuned_loss < 0.5 * (settled + fresh_loss),
        "first loss {tuned_loss} from the trained model ({settled}), {fresh_loss} from scratch"
    );

    let refused = |datasets: &[&Path], config: &Path| {
        let mut args = vec!["-q", "train", "--datasets"];
        args.extend(datasets.iter().map(|d| s(d)));
        let out = dir.path().join("refused");
        args.extend(["--out", s(&out), "--config", s(config)]);
        args.extend(["--init-weights", s(&model)]);
        let run = mtseg(&args);
        assert!(!run.status.success());
        String::from_utf8_lossy(&run.stderr).into_owned()
    };
    let err = refused(&[&brain], &config);
    assert!(
        err.contains("model.mtseg") && err.contains("trained on tasks"),
        "{err}"
    );
    let wider = dir.path().join("wider.toml");
    let settings = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&wider, settings.replace("kernels = 6", "kernels = 8")).unwrap();
    let err = refused(&[&brain, &breast], &wider);
    assert!(
        err.contains("model.mtseg") && err.contains("network settings differ"),
        "{err}"
    );
}

#[test]
fn experiment_trains_every_combination_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (brain, breast, config) = setup(dir.path());
    let out = dir.path().join("experiment");
    let args = [
        "-q",
        "experiment",
        "--datasets",
        s(&brain),
        s(&breast),
        "--out",
        s(&out),
        "--config",
        s(&config),
        "--iterations",
        "10",
    ];
    let first = ok(&args);
    let table = std::fs::read_to_string(out.join("results.md")).unwrap();
    for row in [
        "| PhantomBrainMRI |",
        "| PhantomBreastMRI |",
        "| PhantomBrainMRI + PhantomBreastMRI |",
    ] {
        assert!(table.contains(row), "no row {row}: {table}");
    }
    assert!(out.join("results.csv").is_file() && out.join("results.png").is_file());
    // Run again: every network is finished, so nothing trains and the table is the same.
    let model = out.join("runs/PhantomBrainMRI+PhantomBreastMRI/model.mtseg");
    let written = std::fs::metadata(&model).unwrap().modified().unwrap();
    let second = ok(&args);
    assert_eq!(first, second);
    assert_eq!(
        std::fs::metadata(&model).unwrap().modified().unwrap(),
        written
    );
}

#[test]
fn segment_without_a_model_uses_the_shipped_one() {
    let dir = tempfile::tempdir().unwrap();
    let (brain, _, _) = setup(dir.path());
    let scan = brain.join("imagesTr/brain_000_0000.nii.gz");
    let out = dir.path().join("seg.nii.gz");
    // The scan segmented with the shipped model into `out` for `task`, with `extra` options.
    let segment = |out: &Path, task: &str, extra: &[&str]| {
        let mut args = vec![
            "-q",
            "segment",
            "-i",
            s(&scan),
            "-o",
            s(out),
            "--task",
            task,
        ];
        args.extend(extra);
        mtseg(&args)
    };
    let run = segment(&out, "HippocampusMSD", &[]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let labels = mtseg::io::read_labels(&out).unwrap();
    assert_eq!(labels.grid, mtseg::io::read_image(&scan).unwrap().grid);
    assert!(
        labels.data.iter().all(|&l| l <= 2),
        "not a hippocampus label"
    );
    let side = sidecar(&dir.path().join("seg.json"));
    assert_eq!(side["model"], mtseg::model::SHIPPED_MODEL);
    assert_eq!(side["task"], "HippocampusMSD");

    // --device gpu runs (a `--features gpu` build with a GPU) or says in one line why not.
    let gpu = segment(
        &dir.path().join("gpu.nii.gz"),
        "HippocampusMSD",
        &["--device", "gpu"],
    );
    let err = String::from_utf8_lossy(&gpu.stderr);
    assert!(!err.contains("panicked"), "{err}");
    if !gpu.status.success() {
        assert!(
            err.contains("--features gpu") || err.contains("no usable GPU"),
            "{err}"
        );
    }

    // --mirror: the sidecar names the tasks that got a mirrored pass.
    let mirrored = dir.path().join("mirrored.nii.gz");
    let run = segment(&mirrored, "BrainTissueIXI", &["--mirror", "BrainTissueIXI"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(mtseg::io::read_labels(&mirrored).unwrap().grid, labels.grid);
    let side = sidecar(&dir.path().join("mirrored.json"));
    assert_eq!(side["mirrored_left_right"][0], "BrainTissueIXI");

    for unknown in [
        segment(&out, "Liver", &[]),
        segment(&out, "HippocampusMSD", &["--mirror", "Liver"]),
    ] {
        let err = String::from_utf8_lossy(&unknown.stderr);
        assert!(!unknown.status.success());
        assert!(
            err.contains("'Liver'") && err.contains("BrainTissueIXI") && err.contains("ChestCTA"),
            "{err}"
        );
    }
}

#[test]
fn the_quick_demo_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    ok(&["-q", "demo", "--quick", "--out", s(&out)]);
    let index = std::fs::read_to_string(out.join("index.md")).unwrap();
    assert!(index.contains("PhantomCardiacCTA"), "{index}");
    assert!(out.join("results.png").is_file());
    // The floor: after a minute of training, the network on all three tasks finds the white
    // matter and the pectoral muscle (0.85 and 0.83 when this was written).
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let columns: Vec<String> = results["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("{}/{}", c[0].as_str().unwrap(), c[1].as_str().unwrap()))
        .collect();
    let all_tasks = results["rows"].as_array().unwrap().last().unwrap();
    assert_eq!(
        all_tasks["label"].as_str().unwrap().matches(" + ").count(),
        2
    );
    for class in [
        "PhantomBrainMRI/white_matter",
        "PhantomBreastMRI/pectoral_muscle",
    ] {
        let column = columns.iter().position(|c| c == class).unwrap();
        let dice = all_tasks["dice"][column].as_f64().unwrap();
        assert!(dice >= 0.6, "{class}: Dice {dice:.3} below the floor 0.6");
    }
    // Training lowered the loss: the last ten iterations against the first ten.
    let folder = all_tasks["folder"].as_str().unwrap();
    let log = std::fs::read_to_string(out.join("runs").join(folder).join("log.csv")).unwrap();
    let losses: Vec<f64> = log
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&losses[..10]), mean(&losses[losses.len() - 10..]));
    assert!(last < 0.8 * first, "loss {first:.3} -> {last:.3}");
}

#[test]
fn several_devices_train_only_on_gpus() {
    let dir = tempfile::tempdir().unwrap();
    let train = |extra: &[&str]| {
        let mut args = vec![
            "-q",
            "train",
            "--datasets",
            "no-such-dataset",
            "--out",
            s(dir.path()),
        ];
        args.extend(extra);
        mtseg(&args)
    };
    // The device is checked before the datasets are read.
    let cpu = train(&["--gpus", "2"]);
    let err = String::from_utf8_lossy(&cpu.stderr);
    assert!(!cpu.status.success());
    assert!(
        err.contains("--device gpu") && !err.contains("panicked"),
        "{err}"
    );
    let none = train(&["--device", "gpu", "--gpus", "0"]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("--gpus"));
}

/// `bench --quick` (what CI runs) prints the table, and `--json` one object with mtseg's
/// figures; a figure that was skipped (`--no-training`) is "not run" and null, not a 0.
#[test]
fn bench_quick_reports_its_figures_and_what_it_skipped() {
    let json = |args: &[&str]| -> serde_json::Value {
        serde_json::from_str(&ok(args)).expect("bench --json prints one JSON object")
    };
    let all = json(&["-q", "bench", "--quick", "--json"]);
    for figure in ["train_samples_per_s", "slice_seconds", "volume_seconds"] {
        assert!(all[figure].as_f64().unwrap() > 0.0, "{figure}: {all}");
    }
    assert!(!all["tile_voxels_per_s"].as_array().unwrap().is_empty());

    let inference = json(&["-q", "bench", "--quick", "--no-training", "--json"]);
    assert!(inference["train_samples_per_s"].is_null(), "{inference}");
    assert!(inference["train_gflops"].is_null());
    assert!(
        inference["tile_voxels_per_s"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(inference["slice_seconds"].as_f64().unwrap() > 0.0);

    let table = ok(&["-q", "bench", "--quick", "--no-training"]);
    assert!(
        table.contains("| (a) training, samples/s (64 voxels x three 51x51 patches) | not run | not run | n/a | not run |"),
        "{table}"
    );
    assert!(
        table.contains("| (b) one branch, 256x256 slice, s |"),
        "{table}"
    );
    assert!(!table.contains("dense output tiles"), "{table}");
}
