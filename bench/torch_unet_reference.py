#!/usr/bin/env python3
"""The built-in model's 2.5-D U-Net in PyTorch: the peer `mtseg bench --network unet` compares
itself with (the same definitions as ../shared/bench/torch_unet_reference.py).

The network of models/unet.toml: three input slices; four levels of two 3x3 convolutions
(padding 1) with batch norm and ReLU, width 20 doubling per level; 2x2 max pooling down, 2x2
transposed convolutions up, the up-sampled features joined before the skip; 1x1 heads of 9
class logits and 3 task logits.

  train   crops/s of forward + backward + Adam (learning rate 2e-3) on batches of 18 random
          crops of 96x96: cross-entropy of the class logits plus the task logits' mean over the
          crop.
  volume  seconds to run every slice of the three orientations of a 120x120x90 grid (a 2 mm
          head), each slice padded to a multiple of 8, 16 slices per call, eval mode, frozen
          TorchScript.

usage: torch_unet_reference.py train|volume [--steps N] [--threads T] [--device D] [--width W]
Prints `RESULT <mode> key=value ...` as its last line. Needs `pip install torch`.
"""

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CLASSES, TASKS, LEVELS, BATCH, CROP = 9, 3, 4, 18, 96
DEVICE = torch.device("cpu")


def block(inputs, outputs):
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.ReLU(inplace=True),
        nn.Conv2d(outputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.ReLU(inplace=True))


class UNet(nn.Module):
    def __init__(self, width):
        super().__init__()
        widths = [width << level for level in range(LEVELS)]
        self.encoder = nn.ModuleList(
            block(3 if level == 0 else widths[level - 1], widths[level]) for level in range(LEVELS))
        deeper = list(reversed(range(LEVELS - 1)))
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2) for level in deeper)
        self.decoder = nn.ModuleList(block(2 * widths[level], widths[level]) for level in deeper)
        self.classes = nn.Conv2d(width, CLASSES, 1)
        self.tasks = nn.Conv2d(width, TASKS, 1)

    def forward(self, x):
        skips = []
        for level, encode in enumerate(self.encoder):
            if level > 0:
                x = F.max_pool2d(x, 2)
            x = encode(x)
            skips.append(x)
        skips.pop()
        for up, decode in zip(self.up, self.decoder):
            x = decode(torch.cat([up(x), skips.pop()], 1))
        return self.classes(x), self.tasks(x)


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, warmup, runs):
    times = []
    for i in range(warmup + runs):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def train(steps, width):
    model = UNet(width).to(DEVICE).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    x = torch.randn(BATCH, 3, CROP, CROP, device=DEVICE)
    targets = torch.randint(0, CLASSES, (BATCH, CROP, CROP), device=DEVICE)
    tasks = torch.zeros(BATCH, dtype=torch.long, device=DEVICE)

    def step():
        optimiser.zero_grad(set_to_none=True)
        logits, task_logits = model(x)
        loss = F.cross_entropy(logits, targets) + F.cross_entropy(task_logits.mean((2, 3)), tasks)
        loss.backward()
        optimiser.step()

    seconds = median_time(step, 1, steps)
    print(f"RESULT train samples_per_s={BATCH / seconds:.2f} step_s={seconds:.4f}")


@torch.no_grad()
def volume(steps, width):
    model = torch.jit.freeze(torch.jit.script(UNet(width).to(DEVICE).eval()))
    nx, ny, nz = 120, 120, 90
    padded = lambda n: (n + 7) // 8 * 8
    # (slices, height, width) of each orientation's calls.
    orientations = [(nz, padded(nx), padded(ny)), (ny, padded(nx), padded(nz)), (nx, padded(ny), padded(nz))]

    def run():
        for count, h, w in orientations:
            for first in range(0, count, 16):
                model(torch.randn(min(16, count - first), 3, h, w, device=DEVICE))

    seconds = median_time(run, 1, steps)
    print(f"RESULT volume seconds={seconds:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["train", "volume"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--width", type=int, default=20)
    args = parser.parse_args()
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print("torch", torch.__version__, "threads", torch.get_num_threads(), "device", DEVICE, flush=True)
    {"train": train, "volume": volume}[args.mode](args.steps, args.width)
