"""nnU-Net v2's default trainer with its schedule fitted to a wall-clock budget.

Everything is nnU-Net's default (network, loss, augmentation, SGD with poly learning rate)
except the length: MTSEG_BENCH_EPOCHS epochs of MTSEG_BENCH_ITERATIONS iterations (validation
iterations in nnU-Net's proportion, one fifth), so that the learning rate reaches zero at the
end of the budget instead of 1000 epochs in. After every epoch the weights are saved as
snapshot_NNNN.pth and the wall time since training started (augmentation workers started,
validation and logging included, snapshot writing excluded) is appended to snapshots.csv.

bench/nnunet_time_to_accuracy.py copies this file into nnunetv2's trainer folder, where
nnUNetv2_train finds trainers by class name.
"""

import os
from time import time

import torch
from batchgenerators.utilities.file_and_folder_operations import join

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_MtsegBudget(nnUNetTrainer):
    # nnU-Net reads the signature to re-create the trainer, so it is spelled out.
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ["MTSEG_BENCH_EPOCHS"])
        self.num_iterations_per_epoch = int(os.environ.get("MTSEG_BENCH_ITERATIONS", "250"))
        self.num_val_iterations_per_epoch = max(1, self.num_iterations_per_epoch // 5)
        self.bench_started = None
        self.bench_paused = 0.0

    def on_train_start(self):
        self.bench_started = time()
        super().on_train_start()

    def on_epoch_end(self):
        super().on_epoch_end()
        seconds = time() - self.bench_started - self.bench_paused
        pause = time()
        self.save_checkpoint(join(self.output_folder, f"snapshot_{self.current_epoch:04d}.pth"))
        with open(join(self.output_folder, "snapshots.csv"), "a") as f:
            f.write(f"{self.current_epoch},{self.current_epoch * self.num_iterations_per_epoch},{seconds:.2f}\n")
        self.bench_paused += time() - pause
