#!/usr/bin/env python3
"""Time to accuracy on the hippocampus task: mtseg's U-Net against nnU-Net v2's `2d`
configuration, each given the same wall-clock budget on the same machine, one after the other.

Both train on the training cases of ../shared/data/splits.json (20 of HippocampusMSD) and are
scored on its 10 test cases, by the same Dice code (below) on each tool's own prediction of
the whole scan, at snapshots of their weights taken during training.

- nnU-Net: `nnUNetv2_plan_and_preprocess -c 2d` then `nnUNetv2_train 502 2d all` with
  bench/nnunet/nnUNetTrainer_MtsegBudget.py: nnU-Net's default trainer, whose only change is
  the length (EPOCHS epochs of ITERATIONS iterations, so that the poly learning rate ends with
  the budget) and a snapshot of the weights after every epoch. Fold `all`: every training
  case. Predictions: `nnUNetv2_predict -chk snapshot_NNNN.pth -device cpu` (its default test
  time mirroring included).
- mtseg: `mtseg train --config bench/nnunet_hippocampus_60min.toml` (the hour;
  nnunet_hippocampus.toml: the same for 30 minutes) (the built-in model's U-Net and
  training settings on 64^2 crops, 16 per batch); `checkpoint.mtseg` is copied whenever it
  changes. Predictions: `mtseg segment --model SNAPSHOT` on the test folder.

Time is wall time since the training command started (mtseg: reading and preprocessing the
cases included; nnU-Net: from the start of its training loop, its preprocessing, about 30 s,
done before), snapshot writing excluded where the tool allows it (nnU-Net).

    torchenv/bin/pip install nnunetv2
    WORK=/tmp/nnunet-bench
    torchenv/bin/python bench/nnunet_time_to_accuracy.py prepare --work $WORK
    torchenv/bin/python bench/nnunet_time_to_accuracy.py nnunet --work $WORK --epochs 38
    torchenv/bin/python bench/nnunet_time_to_accuracy.py mtseg --work $WORK --mtseg target/release/mtseg --minutes 60
    torchenv/bin/python bench/nnunet_time_to_accuracy.py evaluate --work $WORK --mtseg target/release/mtseg
    torchenv/bin/python bench/nnunet_time_to_accuracy.py report --work $WORK --plot bench/nnunet_hippocampus.png
"""

import argparse
import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import nibabel as nib
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
TASK = "Dataset002_HippocampusMSD"
DATASET_ID = 502
NNUNET_NAME = f"Dataset{DATASET_ID}_HippocampusTrain"
TRAINER = "nnUNetTrainer_MtsegBudget"
CLASSES = {1: "anterior", 2: "posterior"}


def nnunet_env(work):
    env = dict(os.environ)
    env.update(
        nnUNet_raw=str(work / "raw"),
        nnUNet_preprocessed=str(work / "pre"),
        nnUNet_results=str(work / "results"),
    )
    return env


def nnunet_bin(name):
    return str(pathlib.Path(sys.executable).parent / name)


def nnunet_output(work):
    return work / "results" / NNUNET_NAME / f"{TRAINER}__nnUNetPlans__2d" / "fold_all"


def prepare(args):
    work, data = args.work, args.data / TASK
    split = json.loads((args.data / "splits.json").read_text())[TASK]
    raw = work / "raw" / NNUNET_NAME
    for sub in ["imagesTr", "labelsTr"]:
        (raw / sub).mkdir(parents=True, exist_ok=True)
    # Links, not copies: the data stays read-only where it is.
    for case in split["train"]:
        for sub, name in [("imagesTr", f"{case}_0000.nii.gz"), ("labelsTr", f"{case}.nii.gz")]:
            link = raw / sub / name
            if not link.exists():
                link.symlink_to(data / sub / name)
    dataset = json.loads((data / "dataset.json").read_text())
    dataset["numTraining"] = len(split["train"])
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=1))
    test = work / "test_images"
    test.mkdir(exist_ok=True)
    for case in split["test"]:
        link = test / f"{case}_0000.nii.gz"
        if not link.exists():
            link.symlink_to(data / "imagesTr" / f"{case}_0000.nii.gz")
    # mtseg trains on the dataset folder itself; splits.json beside it keeps the test cases out.
    trainer_dir = pathlib.Path(sys.executable).parent.parent
    target = next(trainer_dir.glob("lib/python*/site-packages/nnunetv2/training/nnUNetTrainer/variants"))
    shutil.copy(HERE / "nnunet" / f"{TRAINER}.py", target / f"{TRAINER}.py")
    subprocess.run(
        [nnunet_bin("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "2d", "-np", "2",
         "--verify_dataset_integrity"],
        env=nnunet_env(work), check=True)


def train_nnunet(args):
    env = nnunet_env(args.work)
    env.update(MTSEG_BENCH_EPOCHS=str(args.epochs), MTSEG_BENCH_ITERATIONS=str(args.iterations))
    subprocess.run(
        [nnunet_bin("nnUNetv2_train"), str(DATASET_ID), "2d", "all", "-tr", TRAINER, "-device", "cpu"],
        env=env, check=True)


def train_mtseg(args):
    out = args.work / "mtseg"
    snapshots = out / "snapshots"
    snapshots.mkdir(parents=True, exist_ok=True)
    started = time.time()
    process = subprocess.Popen(
        [args.mtseg, "-q", "train", "--datasets", str(args.data / TASK), "--out", str(out / "run"),
         "--config", str(args.config), "--minutes", str(args.minutes)])
    checkpoint = out / "run" / "checkpoint.mtseg"
    seen, rows = None, []
    while True:
        running = process.poll() is None
        if checkpoint.is_file():
            stamp = checkpoint.stat().st_mtime_ns
            if stamp != seen:
                seen = stamp
                n = len(rows) + 1
                # checkpoint.mtseg is replaced by a rename, so a copy is never half-written.
                shutil.copy(checkpoint, snapshots / f"snapshot_{n:04d}.mtseg")
                rows.append((n, stamp / 1e9 - started))
        if not running:
            break
        time.sleep(0.5)
    if process.returncode != 0:
        sys.exit(f"mtseg train failed ({process.returncode})")
    with open(out / "snapshots.csv", "w") as f:
        for n, seconds in rows:
            f.write(f"{n},{seconds:.2f}\n")


def dice_per_class(prediction, reference):
    p = np.asarray(nib.load(prediction).dataobj).astype(np.int64)
    r = np.asarray(nib.load(reference).dataobj).astype(np.int64)
    if p.shape != r.shape:
        sys.exit(f"{prediction}: shape {p.shape} differs from the reference's {r.shape}")
    out = {}
    for label in CLASSES:
        a, b = p == label, r == label
        total = a.sum() + b.sum()
        out[label] = 1.0 if total == 0 else 2.0 * (a & b).sum() / total
    return out


def score(folder, args):
    split = json.loads((args.data / "splits.json").read_text())[TASK]
    per_class = {label: [] for label in CLASSES}
    for case in split["test"]:
        d = dice_per_class(folder / f"{case}.nii.gz", args.data / TASK / "labelsTr" / f"{case}.nii.gz")
        for label, value in d.items():
            per_class[label].append(value)
    return {label: float(np.mean(values)) for label, values in per_class.items()}


def chosen(rows, every):
    """Every `every`-th snapshot and the last."""
    picked = [r for i, r in enumerate(rows) if (i + 1) % every == 0]
    if rows and rows[-1] not in picked:
        picked.append(rows[-1])
    return picked


def evaluate(args):
    results = []
    nnunet_rows = [line.split(",") for line in (nnunet_output(args.work) / "snapshots.csv").read_text().split()]
    for epoch, _, seconds in chosen(nnunet_rows, args.every):
        out = args.work / "predictions" / "nnunet" / f"epoch_{int(epoch):04d}"
        if not out.is_dir() or len(list(out.glob("*.nii.gz"))) < 10:
            subprocess.run(
                [nnunet_bin("nnUNetv2_predict"), "-i", str(args.work / "test_images"), "-o", str(out),
                 "-d", str(DATASET_ID), "-c", "2d", "-tr", TRAINER, "-f", "all",
                 "-chk", f"snapshot_{int(epoch):04d}.pth", "-device", "cpu", "-npp", "1", "-nps", "1"],
                env=nnunet_env(args.work), check=True, stdout=subprocess.DEVNULL)
        results.append(("nnU-Net 2d", float(seconds), f"epoch {epoch}", score(out, args)))
    mtseg_rows = [line.split(",") for line in (args.work / "mtseg" / "snapshots.csv").read_text().split()]
    for n, seconds in chosen(mtseg_rows, args.every):
        out = args.work / "predictions" / "mtseg" / f"snapshot_{int(n):04d}"
        if not out.is_dir() or len(list(out.glob("*.nii.gz"))) < 10:
            subprocess.run(
                [args.mtseg, "-q", "segment", "-i", str(args.work / "test_images"), "-o", str(out),
                 "--model", str(args.work / "mtseg" / "snapshots" / f"snapshot_{int(n):04d}.mtseg"),
                 "--overwrite"],
                check=True)
        results.append(("mtseg U-Net", float(seconds), f"checkpoint {n}", score(out, args)))
    with open(args.work / "curves.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["tool", "seconds", "snapshot"] + [f"dice_{name}" for name in CLASSES.values()] + ["dice_mean"])
        for tool, seconds, snapshot, d in results:
            values = [d[label] for label in CLASSES]
            w.writerow([tool, f"{seconds:.0f}", snapshot] + [f"{v:.4f}" for v in values]
                       + [f"{np.mean(values):.4f}"])
    print((args.work / "curves.csv").read_text())


def report(args):
    rows = list(csv.DictReader(open(args.work / "curves.csv")))
    tools = sorted({r["tool"] for r in rows})
    print("| tool | minutes | snapshot | anterior | posterior | mean |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tool']} | {float(r['seconds']) / 60:.1f} | {r['snapshot']} | {r['dice_anterior']} | "
              f"{r['dice_posterior']} | {r['dice_mean']} |")
    best = {}
    for tool in tools:
        curve = [(float(r["seconds"]), float(r["dice_mean"])) for r in rows if r["tool"] == tool]
        best[tool] = max(d for _, d in curve)
        print(f"{tool}: best test mean Dice {best[tool]:.4f}")
    nn = [(float(r["seconds"]), float(r["dice_mean"])) for r in rows if r["tool"] == "nnU-Net 2d"]
    mt = [(float(r["seconds"]), float(r["dice_mean"])) for r in rows if r["tool"] == "mtseg U-Net"]
    if nn and mt:
        nn_best_time = min(s for s, d in nn if d == best["nnU-Net 2d"])
        reach = [s for s, d in mt if d >= best["nnU-Net 2d"]]
        print(f"nnU-Net's best ({best['nnU-Net 2d']:.4f}) first at {nn_best_time / 60:.1f} min; "
              + (f"mtseg reaches it at {reach[0] / 60:.1f} min ({reach[0] / nn_best_time:.2f}x nnU-Net's time)"
                 if reach else "mtseg does not reach it within its budget"))
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        for tool, style in zip(tools, ["o-", "s-"]):
            curve = [(float(r["seconds"]) / 60, float(r["dice_mean"])) for r in rows if r["tool"] == tool]
            ax.plot(*zip(*curve), style, label=tool, markersize=4)
        ax.set_xlabel("training wall time (minutes, 2 CPU cores)")
        ax.set_ylabel("test-split mean Dice (anterior, posterior)")
        ax.set_title("Hippocampus (20 training cases, 10 test cases)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(args.plot)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ["prepare", "nnunet", "mtseg", "evaluate", "report"]:
        p = sub.add_parser(name)
        p.add_argument("--work", type=pathlib.Path, required=True)
        p.add_argument("--data", type=pathlib.Path, default=HERE.parent.parent / "shared" / "data")
        if name == "nnunet":
            p.add_argument("--epochs", type=int, required=True)
            p.add_argument("--iterations", type=int, default=250)
        if name in ["mtseg", "evaluate"]:
            p.add_argument("--mtseg", default="target/release/mtseg")
        if name == "mtseg":
            p.add_argument("--config", type=pathlib.Path, default=HERE / "nnunet_hippocampus_60min.toml")
            p.add_argument("--minutes", type=float, default=60.0, help="the budget: training stops here at the latest")
        if name == "evaluate":
            p.add_argument("--every", type=int, default=4, help="score every N-th snapshot and the last")
        if name == "report":
            p.add_argument("--plot", type=pathlib.Path)
    args = parser.parse_args()
    args.work = args.work.resolve()
    {"prepare": prepare, "nnunet": train_nnunet, "mtseg": train_mtseg, "evaluate": evaluate,
     "report": report}[args.command](args)


if __name__ == "__main__":
    main()
