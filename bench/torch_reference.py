#!/usr/bin/env python3
"""The paper's triplanar network in PyTorch: the peer `mtseg bench` compares itself with.

Same network and the same three measurements as mtseg's bench (and as the reference in
../shared/bench/torch_reference.py, whose figures these agree with):

  train   samples/s of forward + backward + Adam on batches of 64 voxels, each with three
          1x51x51 patches: per orientation 25 x [3x3 valid conv 32, BatchNorm, ELU]; the 96
          features -> 1x1 conv 256, ELU, dropout 0.5 -> 1x1 256, ELU, dropout 0.5 -> 9 classes;
          cross-entropy; Adam, learning rate 1e-3.
  slice   seconds for one branch over a 306x306 input (a 256x256 slice padded by 25), eval mode.
  volume  seconds to segment a 64^3 volume densely: each branch over the 64 slices of its
          orientation, features joined per voxel, the head, argmax.
  sgemm   GFLOP/s of a 2048^3 float32 matrix product: the machine's peak, for reading the
          others as a share of it.

With --device cuda the same figures on the GPU (sgemm then 8192^3); --size sets the volume's
side (64 by default; `mtseg bench --device gpu` also times 256).

usage: torch_reference.py train|slice|volume|sgemm [--steps N] [--threads T] [--device D] [--size N]
Prints `RESULT <mode> key=value ...` as its last line. Needs `pip install torch`.
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn

DEPTH, KERNELS, WIDTH, CLASSES, BATCH, PATCH, PAD = 25, 32, 256, 9, 64, 51, 25


def make_branch():
    layers, channels = [], 1
    for _ in range(DEPTH):
        layers += [nn.Conv2d(channels, KERNELS, 3), nn.BatchNorm2d(KERNELS), nn.ELU()]
        channels = KERNELS
    return nn.Sequential(*layers)


class Triplanar(nn.Module):
    def __init__(self):
        super().__init__()
        self.branches = nn.ModuleList(make_branch() for _ in range(3))
        self.head = nn.Sequential(
            nn.Conv2d(3 * KERNELS, WIDTH, 1), nn.ELU(), nn.Dropout(0.5),
            nn.Conv2d(WIDTH, WIDTH, 1), nn.ELU(), nn.Dropout(0.5),
            nn.Conv2d(WIDTH, CLASSES, 1))

    def forward(self, axial, coronal, sagittal):
        features = [b(x) for b, x in zip(self.branches, (axial, coronal, sagittal))]
        return self.head(torch.cat(features, 1))


DEVICE = torch.device("cpu")


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


def train(steps):
    model = Triplanar().to(DEVICE).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    patches = [torch.randn(BATCH, 1, PATCH, PATCH, device=DEVICE) for _ in range(3)]
    targets = torch.randint(0, CLASSES, (BATCH,), device=DEVICE)
    losses = []

    def step():
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(model(*patches).reshape(BATCH, CLASSES), targets)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())

    seconds = median_time(step, 2, steps)
    assert losses[-1] < losses[0], "the loss did not fall"
    print(f"RESULT train samples_per_s={BATCH / seconds:.2f} step_s={seconds:.4f}")


@torch.no_grad()
def slice_(runs):
    branch = make_branch().to(DEVICE).eval()
    x = torch.randn(1, 1, 256 + 2 * PAD, 256 + 2 * PAD, device=DEVICE)
    seconds = median_time(lambda: branch(x).sum().item(), 1, runs)
    print(f"RESULT slice seconds={seconds:.4f}")


@torch.no_grad()
def volume(runs, n):
    model = Triplanar().to(DEVICE).eval()
    padded = nn.functional.pad(torch.randn(1, 1, n, n, n, device=DEVICE), (PAD,) * 6)[0, 0]  # z, y, x

    def segment():
        # Slices along z (axial), y (coronal), x (sagittal); each branch gives (n, C, n, n).
        axial = model.branches[0](padded[PAD:PAD + n].unsqueeze(1))                       # z,C,y,x
        coronal = model.branches[1](padded[:, PAD:PAD + n].permute(1, 0, 2).unsqueeze(1))  # y,C,z,x
        sagittal = model.branches[2](padded[:, :, PAD:PAD + n].permute(2, 0, 1).unsqueeze(1))  # x,C,z,y
        features = torch.cat([axial.permute(1, 0, 2, 3), coronal.permute(1, 2, 0, 3),
                              sagittal.permute(1, 2, 3, 0)], 0)                             # C,z,y,x
        return model.head(features.permute(1, 0, 2, 3)).argmax(1)

    seconds = median_time(segment, 1, runs)
    print(f"RESULT volume seconds={seconds:.3f}")


@torch.no_grad()
def sgemm(runs):
    n = 8192 if DEVICE.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=DEVICE), torch.randn(n, n, device=DEVICE)
    seconds = median_time(lambda: torch.mm(a, b), 1, max(runs, 5))
    print(f"RESULT sgemm gflops={2 * n ** 3 / seconds / 1e9:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["train", "slice", "volume", "sgemm"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--size", type=int, default=64, help="side of the volume (volume mode)")
    args = parser.parse_args()
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print("torch", torch.__version__, "threads", torch.get_num_threads(), "device", DEVICE, flush=True)
    if args.mode == "volume":
        volume(args.steps, args.size)
    else:
        {"train": train, "slice": slice_, "sgemm": sgemm}[args.mode](args.steps)
