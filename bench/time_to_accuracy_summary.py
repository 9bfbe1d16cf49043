#!/usr/bin/env python3
"""Time to accuracy over several runs of time_to_accuracy.py (one per seed, say).

For each run's time_to_accuracy.csv: the training seconds at which mtseg and PyTorch first
reach --target mean validation Dice and first hold it (two of three validations in a row),
and the ratios; then, over the runs, each ratio's range, median and totals (the sum of
PyTorch's seconds over the sum of mtseg's) and in how many runs it is at least --goal.
A run where PyTorch never got there counts with the seconds it trained, as a lower bound
(marked >); one where mtseg never got there is left out of that ratio's summary.
Needs only Python 3 (no torch):

    python3 bench/time_to_accuracy_summary.py --target 0.80 /tmp/tta/s*/time_to_accuracy.csv
"""

import argparse
import csv
import pathlib
import statistics
import sys


def read_curves(path):
    """The (trainer, iteration, training seconds, mean Dice) rows of one run's CSV, by trainer."""
    curves = {"mtseg": [], "pytorch": []}
    with open(path) as f:
        for r in csv.DictReader(f):
            curves.setdefault(r["trainer"], []).append(
                (r["trainer"], int(r["iteration"]), float(r["training_seconds"]), float(r["val_mean_dice"])))
    return curves


def first_reaching(rows, target):
    """Training time of the first validation at or above `target`."""
    return next((t for _, _, t, d in rows if d >= target), None)


def first_holding(rows, target):
    """Training time of the first validation at which two of the last three reach `target`:
    the curves are noisy (one validation case per task), and one lucky validation does not
    count."""
    held = lambda k: sorted(row[3] for row in rows[k - 2:k + 1])[1] >= target
    return next((rows[k][2] for k in range(2, len(rows)) if held(k)), None)


def crossing(curves, when, target):
    """(mtseg seconds, PyTorch seconds, PyTorch's is a lower bound) for one measure."""
    ours, theirs = when(curves["mtseg"], target), when(curves["pytorch"], target)
    if theirs is None and curves["pytorch"]:
        return ours, curves["pytorch"][-1][2], True
    return ours, theirs, False


def summarise(name, runs, goal):
    """One line over the runs' (mtseg, PyTorch, lower bound) crossings of one measure."""
    counted = [(m, p) for m, p, _ in runs if m is not None and p is not None]
    if not counted:
        return f"{name}: no run where both got there"
    bounds = sum(bound for m, _, bound in runs if m is not None)
    bounds_text = f" ({bounds} of them lower bounds: PyTorch did not get there)" if bounds else ""
    ratios = [p / m for m, p in counted]
    total = sum(p for _, p in counted) / sum(m for m, _ in counted)
    return (f"{name}: {min(ratios):.1f}x to {max(ratios):.1f}x, median {statistics.median(ratios):.1f}x, "
            f"totals {total:.1f}x ({sum(p for _, p in counted):.1f} s against {sum(m for m, _ in counted):.1f} s), "
            f"at least {goal:g}x in {sum(r >= goal for r in ratios)} of {len(counted)} runs{bounds_text}")


def cell(ours, theirs, lower_bound):
    if ours is None:
        return "mtseg not there"
    bound = ">" if lower_bound else ""
    return f"{ours:.1f} / {bound}{theirs:.1f} s: {bound}{theirs / ours:.1f}x"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csvs", type=pathlib.Path, nargs="+", help="time_to_accuracy.csv of each run")
    parser.add_argument("--target", type=float, default=0.8, help="mean validation Dice")
    parser.add_argument("--goal", type=float, default=10.0, help="the speed-up to count runs against")
    args = parser.parse_args()

    curves = {}
    for path in args.csvs:
        try:
            curves[path] = read_curves(path)
        except KeyError as e:
            sys.exit(f"error: {path} has no column {e} (not a time_to_accuracy.csv?)")
        except (OSError, ValueError) as e:
            sys.exit(f"error: cannot read {path}: {e}")
    first = [crossing(c, first_reaching, args.target) for c in curves.values()]
    held = [crossing(c, first_holding, args.target) for c in curves.values()]
    print(f"{'run':<40}{'first: mtseg / pytorch':<34}held: mtseg / pytorch")
    for path, f, h in zip(curves, first, held):
        print(f"{path.parent.name:<40}{cell(*f):<34}{cell(*h)}")
    print()
    print(summarise("first", first, args.goal))
    print(summarise("held", held, args.goal))
    return 0


if __name__ == "__main__":
    sys.exit(main())
