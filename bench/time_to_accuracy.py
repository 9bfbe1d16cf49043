#!/usr/bin/env python3
"""Time to accuracy: mtseg (dense output tiles) against PyTorch trained the paper's way.

Both train the same triplanar network (bench/time_to_accuracy.toml: 8 layers of 16 kernels per
branch, fully connected 64, dropout 0.2, one union softmax) on the same three-task phantom set
(`mtseg phantoms`), with the same class-balanced choice of sample centres, no augmentation, and
are scored the same way: mean Dice over the classes of every task on the held-out validation
case of each task (the last training case, as `mtseg train` holds it out), by dense inference
over the whole volume. Only training time counts (sampling included, validation excluded).

- mtseg: `mtseg train --config bench/time_to_accuracy.toml` (cubes of 8^3 output voxels per
  sample); its log.csv gives the validation Dice after each 10 iterations and the time of
  every step.
- PyTorch: the paper's sampling, independent voxels with three 17x17 patches each, 70 per
  task and batch (or, with --task-mix config, the same 210 split as mtseg's cubes are), Adam,
  evaluated every --eval-every seconds of training.

PyTorch trains until it holds --target mean Dice (two of three validations in a row at or
above it) or for --max-seconds. Prints when each first reaches --target and each of the
--report values, at one validation and held, with the ratios, and writes a CSV of both curves.
--torch-csv reads PyTorch's curve from an earlier run's CSV instead (the same phantoms and
seed), to score another mtseg setting against the same reference.
Needs a Python with torch, numpy and nibabel:

    python3 -m venv torchenv && torchenv/bin/pip install torch numpy nibabel
    cargo build --bin mtseg     # the dev profile is optimised (Cargo.toml)
    torchenv/bin/python bench/time_to_accuracy.py --mtseg target/debug/mtseg --out /tmp/tta
"""

import argparse
import csv
import json
import pathlib
import subprocess
import sys
import time
import tomllib

import nibabel as nib
import numpy as np
import torch
from torch import nn

from time_to_accuracy_summary import first_holding, first_reaching, read_curves

HERE = pathlib.Path(__file__).resolve().parent
CT_AIR_HU = -950.0


# ---- data: the same phantoms, splits and normalisation as mtseg -------------------------


def percentiles(values, qs):
    """mtseg's percentiles: rank round(q/100 * (n-1)) of a sorted subsample of ~2M values."""
    stride = max(len(values) // 2_000_000, 1)
    sample = np.sort(values[::stride])
    return [sample[min(int(round(q / 100 * (len(sample) - 1))), len(sample) - 1)] for q in qs]


def clipped_mean_std(values, lower, upper):
    clipped = np.clip(values, lower, upper).astype(np.float64)
    return clipped.mean(), max(clipped.std(), 1e-6)


def normalise_mr(data):
    """Robust z-score over the body (voxels above 5% of the 1-99 percentile range)."""
    flat = data.ravel()
    p1, p99 = percentiles(flat, [1, 99])
    body = flat[flat > p1 + 0.05 * (p99 - p1)]
    if len(body) < 16:
        body = flat
    lower, upper = percentiles(body, [0.5, 99.5])
    upper = max(upper, lower + 1e-3)
    mean, std = clipped_mean_std(body, lower, upper)
    return ((np.clip(data, lower, upper) - mean) / std).astype(np.float32)


def ct_window(images):
    """One window for a CT dataset, from its training voxels denser than air."""
    body = np.concatenate([im.ravel()[im.ravel() > CT_AIR_HU] for im in images])
    lower, upper = percentiles(body, [0.5, 99.5])
    upper = max(upper, lower + 1.0)
    mean, std = clipped_mean_std(body, lower, upper)
    return lambda data: ((np.clip(data, lower, upper) - mean) / std).astype(np.float32)


class Case:
    def __init__(self, image, labels, task, offset, radius):
        self.task = task
        self.shape = image.shape
        self.pad = float(image.min())
        # Joint labels: the task's class i is offset + i, background 0 (union softmax).
        self.labels = np.where(labels > 0, labels + offset, 0).astype(np.int64)
        self.padded = np.pad(image, radius, constant_values=self.pad)
        self.class_voxels = None


def load_tasks(phantoms, radius):
    """Training and validation cases of every phantom task, in mtseg's task order."""
    splits = json.loads((phantoms / "splits.json").read_text())
    train, validation, classes = [], [], []
    offset = 0
    for task, name in enumerate(sorted(splits)):
        folder = phantoms / name
        meta = json.loads((folder / "dataset.json").read_text())
        n_classes = len(meta["labels"]) - 1
        ids = splits[name]["train"]
        held = max(len(ids) // 10, 1) if len(ids) >= 3 else 0
        read = lambda sub, f: nib.load(folder / sub / f).get_fdata(dtype=np.float32)
        images = [read("imagesTr", f"{i}_0000.nii.gz") for i in ids]
        labels = [read("labelsTr", f"{i}.nii.gz").astype(np.int64) for i in ids]
        if meta["channel_names"]["0"].upper() == "CT":
            normalise = ct_window(images[: len(ids) - held])
        else:
            normalise = normalise_mr
        for k, (image, label) in enumerate(zip(images, labels)):
            case = Case(normalise(image), label, task, offset, radius)
            if k < len(ids) - held:
                case.class_voxels = [np.flatnonzero(label.ravel() == c) for c in range(n_classes + 1)]
                train.append(case)
            else:
                validation.append(case)
        classes.append(n_classes)
        offset += n_classes
    return train, validation, classes


# ---- the network: as mtseg's TriplanarNet ------------------------------------------------


class Triplanar(nn.Module):
    def __init__(self, depth, kernels, fc_width, dropout, outputs):
        super().__init__()

        def branch():
            layers = []
            for i in range(depth):
                layers += [nn.Conv2d(1 if i == 0 else kernels, kernels, 3), nn.BatchNorm2d(kernels), nn.ELU()]
            return nn.Sequential(*layers)

        self.branches = nn.ModuleList([branch() for _ in range(3)])
        self.head = nn.Sequential(
            nn.Conv2d(3 * kernels, fc_width, 1), nn.ELU(), nn.Dropout(dropout),
            nn.Conv2d(fc_width, fc_width, 1), nn.ELU(), nn.Dropout(dropout),
            nn.Conv2d(fc_width, outputs, 1),
        )

    def forward(self, axial, coronal, sagittal):
        features = [b(x) for b, x in zip(self.branches, (axial, coronal, sagittal))]
        return self.head(torch.cat(features, 1))

    @torch.no_grad()
    def segment(self, case, radius):
        """Dense segmentation: every slice of each orientation through its branch, then the head."""
        v = torch.from_numpy(case.padded)
        nx, ny, nz = case.shape
        r = radius
        # Slices stacked as a batch; each branch returns (slices, kernels, a, b).
        axial = self.branches[0](v[:, :, r:r + nz].permute(2, 0, 1).unsqueeze(1).contiguous())
        coronal = self.branches[1](v[:, r:r + ny, :].permute(1, 0, 2).unsqueeze(1).contiguous())
        sagittal = self.branches[2](v[r:r + nx, :, :].unsqueeze(1).contiguous())
        features = torch.cat([
            axial.permute(1, 2, 3, 0),     # (k, x, y, z)
            coronal.permute(1, 2, 0, 3),   # (k, x, y, z)
            sagittal.permute(1, 0, 2, 3),  # (k, x, y, z)
        ], 0)
        logits = self.head(features.reshape(1, features.shape[0], nx, ny * nz))
        return logits.argmax(1).reshape(nx, ny, nz).numpy()


# ---- the paper's training: balanced independent voxels, three patches each --------------


def balanced_batch(rng, train, classes, per_task, radius):
    """per_task[t] voxels of task t, its classes (background included) in turn from a random one."""
    side = 2 * radius + 1
    patches = np.empty((3, sum(per_task), 1, side, side), np.float32)
    targets = np.empty(sum(per_task), np.int64)
    n = 0
    for task, n_classes in enumerate(classes):
        cases = [c for c in train if c.task == task]
        start = rng.integers(n_classes + 1)
        for s in range(per_task[task]):
            cls = (start + s) % (n_classes + 1)
            with_class = [c for c in cases if len(c.class_voxels[cls])] or cases
            case = with_class[rng.integers(len(with_class))]
            voxels = case.class_voxels[cls] if len(case.class_voxels[cls]) else case.class_voxels[0]
            x, y, z = np.unravel_index(voxels[rng.integers(len(voxels))], case.shape)
            p = case.padded  # voxel (x, y, z) sits at (x + r, y + r, z + r)
            patches[0, n, 0] = p[x:x + side, y:y + side, z + radius]
            patches[1, n, 0] = p[x:x + side, y + radius, z:z + side]
            patches[2, n, 0] = p[x + radius, y:y + side, z:z + side]
            targets[n] = case.labels[x, y, z]
            n += 1
    return [torch.from_numpy(p) for p in patches], torch.from_numpy(targets)


def dice(pred, truth, label):
    a, b = pred == label, truth == label
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * (a & b).sum() / total


def validate(net, validation, classes, radius):
    """mtseg's validation: per joint class, the mean Dice over its task's cases; then the mean."""
    offsets = np.cumsum([0] + classes)
    per_class = []
    net.eval()
    predictions = [(case, net.segment(case, radius)) for case in validation]
    net.train()
    for task, n_classes in enumerate(classes):
        for joint in range(offsets[task] + 1, offsets[task] + n_classes + 1):
            scores = [dice(p, c.labels, joint) for c, p in predictions if c.task == task]
            per_class.append(float(np.mean(scores)))
    return float(np.mean(per_class)), per_class


def train_torch(args, network, train, validation, classes):
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    radius = network["depth"]
    net = Triplanar(network["depth"], network["kernels"], network["fc_width"], network["dropout"], 1 + sum(classes))
    optimizer = torch.optim.Adam(net.parameters(), lr=args.torch_lr)
    # The mean over the batch: each task's share of the loss is its share of the voxels.
    loss_fn = nn.CrossEntropyLoss()
    rows, trained, iteration, next_eval = [], 0.0, 0, args.eval_every
    while trained < args.max_seconds:
        start = time.perf_counter()
        patches, targets = balanced_batch(rng, train, classes, args.torch_per_task, radius)
        loss = loss_fn(net(*patches).flatten(1), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        trained += time.perf_counter() - start
        iteration += 1
        if trained >= next_eval:
            next_eval += args.eval_every
            mean, _ = validate(net, validation, classes, radius)
            rows.append(("pytorch", iteration, trained, mean))
            print(f"  pytorch  {trained:7.1f} s  iteration {iteration:5d}  loss {loss.item():.3f}  mean Dice {mean:.3f}", flush=True)
            if first_holding(rows[-3:], args.target) is not None:
                break
    return rows


# ---- mtseg ---------------------------------------------------------------------------


def train_mtseg(args, datasets):
    out = args.out / "mtseg-model"
    if not args.skip_mtseg:
        subprocess.run([args.mtseg, "train", "--datasets", *map(str, datasets), "--config", str(args.config),
                        "--out", str(out), "--seed", str(args.seed)], check=True)
    rows, trained = [], 0.0
    with open(out / "log.csv") as f:
        for row in csv.DictReader(f):
            # The step time (sampling included) from the logged speed; validation excluded.
            trained += args.mtseg_cubes / float(row["samples_per_s"])
            if row["val_mean_dice"]:
                rows.append(("mtseg", int(row["iteration"]), trained, float(row["val_mean_dice"])))
    for _, it, t, d in rows:
        print(f"  mtseg    {t:7.1f} s  iteration {it:5d}  mean Dice {d:.3f}")
    return rows


def compare(ours, theirs, stopped, torch_seconds):
    """The two times as text, and the ratio; `stopped`: PyTorch stopped before this value."""
    if theirs is None and stopped:
        theirs_text, ratio = "(stopped before)", ""
    elif theirs is None:
        theirs_text = f"not in {torch_seconds:.0f} s"
        ratio = "" if ours is None else f"> {torch_seconds / ours:.1f}x"
    else:
        theirs_text = f"{theirs:.1f} s"
        ratio = "" if ours is None else f"{theirs / ours:.1f}x"
    return "not reached" if ours is None else f"{ours:.1f} s", theirs_text, ratio


def report(args, mtseg_rows, torch_rows):
    """Prints when each trainer first reached --target and each --report value: at a single
    validation, and held (two of three validations in a row)."""
    best = lambda rows: max((d for *_, d in rows), default=float("nan"))
    print(f"\nbest mean validation Dice: mtseg {best(mtseg_rows):.3f}, pytorch {best(torch_rows):.3f} "
          f"(within {args.max_seconds:.0f} s or until {args.target} held)")
    torch_seconds = torch_rows[-1][2] if torch_rows else float("nan")
    # PyTorch stops once it holds --target: nothing is known about higher values.
    stopped = first_holding(torch_rows, args.target) is not None
    print(f"{'':15}{'first validation at the value':<50}held: two of three validations")
    print((f"{'value':<15}" + f"{'mtseg':<12}{'pytorch':<18}{'speed-up':<20}" * 2).rstrip())
    for target in sorted({args.target, *args.report}):
        cells = []
        for when in (first_reaching, first_holding):
            cells += compare(when(mtseg_rows, target), when(torch_rows, target),
                             stopped and target > args.target, torch_seconds)
        print((f">= {target:<12}" + "".join(f"{c:<{w}}" for c, w in zip(cells, [12, 18, 20] * 2))).rstrip())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mtseg", required=True, help="the mtseg binary")
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--config", type=pathlib.Path, default=HERE / "time_to_accuracy.toml")
    parser.add_argument("--target", type=float, default=0.75, help="mean validation Dice to reach")
    parser.add_argument("--report", type=float, nargs="*", default=[0.75, 0.8, 0.85],
                        help="also print when each trainer first reached these mean Dice values")
    parser.add_argument("--size", type=int, default=64, help="phantom side in voxels")
    parser.add_argument("--cases", type=int, default=6, help="phantom cases per task")
    parser.add_argument("--samples-per-task", type=int, default=70, help="PyTorch voxels per task and batch (paper: 70)")
    parser.add_argument("--task-mix", choices=["equal", "config"], default="equal",
                        help="PyTorch's voxels per task: equal (the paper), or in the proportions of the "
                             "config's samples_by_task (mtseg's mix), the batch size unchanged")
    parser.add_argument("--torch-lr", type=float, default=1e-3)
    parser.add_argument("--max-seconds", type=float, default=900, help="PyTorch training time limit")
    parser.add_argument("--eval-every", type=float, default=15, help="PyTorch: seconds of training between validations")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-mtseg", action="store_true", help="reuse OUT/mtseg-model/log.csv")
    parser.add_argument("--torch-csv", type=pathlib.Path,
                        help="reuse PyTorch's curve from an earlier run's time_to_accuracy.csv (same phantoms, "
                             "seed and task mix) instead of training it again")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = tomllib.loads(args.config.read_text())
    network, training = config["network"], config["training"]
    phantoms = args.out / "phantoms"
    if not (phantoms / "splits.json").exists():
        subprocess.run([args.mtseg, "phantoms", "--out", str(phantoms), "--cases", str(args.cases),
                        "--size", str(args.size)], check=True)
    datasets = sorted(p for p in phantoms.iterdir() if p.is_dir())
    # Cubes per step, from the tasks' names (Dataset901_PhantomBrainMRI: PhantomBrainMRI).
    by_task = training.get("samples_by_task", {})
    cubes = [by_task.get(d.name.split("_", 1)[1], training["samples_per_task"]) for d in datasets]
    args.mtseg_cubes = sum(cubes)
    batch = args.samples_per_task * len(datasets)
    if args.task_mix == "config":
        args.torch_per_task = [round(batch * c / sum(cubes)) for c in cubes]
    else:
        args.torch_per_task = [args.samples_per_task] * len(datasets)

    print(f"mtseg: tile {training['tile']}, {args.mtseg_cubes} cubes per batch", flush=True)
    mtseg_rows = train_mtseg(args, datasets)
    if args.torch_csv:
        print(f"pytorch: the curve in {args.torch_csv}", flush=True)
        torch_rows = read_curves(args.torch_csv)["pytorch"]
    else:
        print(f"pytorch {torch.__version__}: the paper's sampling, {args.torch_per_task} voxels per task and "
              f"batch, Adam lr {args.torch_lr}", flush=True)
        train, validation, classes = load_tasks(phantoms, network["depth"])
        torch_rows = train_torch(args, network, train, validation, classes)

    with open(args.out / "time_to_accuracy.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trainer", "iteration", "training_seconds", "val_mean_dice"])
        w.writerows(mtseg_rows + torch_rows)
    report(args, mtseg_rows, torch_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
