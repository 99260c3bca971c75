"""Training throughput on this CPU: AlbuNet2D and AlbuNet3D, float32 and bf16, with and without augmentation.

Preprocesses a few real BraTS 2018 cases once, then for each setting trains a few steps with
the real data loader (one worker process) and measures patches and slices per second and the
share of each step spent waiting for data. Batches are smaller than the paper's (which would
take minutes per step on a CPU); rates are per patch, so they scale. Writes
benchmarks/records/training_throughput.{md,csv}.

Usage: .venv/bin/python benchmarks/training_throughput.py [--steps 2] [--cases 4]
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import platform
import sys
import time
from pathlib import Path

import lightning as L
import torch

from gliomaseg.data.cases import discover_cases
from gliomaseg.models import build_model
from gliomaseg.training.config import resolve_config
from gliomaseg.training.datasets import load_patch_cases, make_train_loader
from gliomaseg.training.module import SegmentationModule

REPO = Path(__file__).resolve().parents[1]
DATASET = REPO.parent / "shared" / "data" / "deepbrainseg_brats2018" / "brats"
RECORDS = REPO / "benchmarks" / "records"
# (config, batch size): batches that take seconds, not minutes, per step on a 2-core CPU.
MODELS = (("albunet2d_scratch", 8), ("albunet3d_scratch", 1))


class StepTimer(L.Callback):
    """Time spent between steps (waiting for data) and inside steps, after `warmup` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.wait: list[float] = []
        self.compute: list[float] = []
        self._end = time.perf_counter()

    def on_train_epoch_start(self, trainer, module) -> None:
        self._end = time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_index) -> None:
        self._start = time.perf_counter()
        if batch_index >= self.warmup:
            self.wait.append(self._start - self._end)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        self._end = time.perf_counter()
        if batch_index >= self.warmup:
            self.compute.append(self._end - self._start)


def measure(cases, name: str, batch: int, precision: str, augmentation: bool, steps: int) -> dict:
    config, _ = resolve_config(
        name,
        [
            f"data.dataset={DATASET}",
            f"patches.batch_size={batch}",
            f"training.batches_per_epoch={steps + 1}",
            "training.num_workers=1",
            f"augmentation.enabled={str(augmentation).lower()}",
        ],
    )
    L.seed_everything(0, verbose=False)
    model = build_model(config["model"]["name"], encoder_weights="none")
    module = SegmentationModule(model, config)
    loader = make_train_loader(cases, config, 0, 1, 0, pin_memory=False)
    timer = StepTimer(warmup=1)
    trainer = L.Trainer(
        accelerator="cpu", precision=precision, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=False, use_distributed_sampler=False,
        limit_val_batches=0, callbacks=[timer],
    )
    trainer.fit(module, train_dataloaders=loader)
    step = (sum(timer.wait) + sum(timer.compute)) / len(timer.compute)
    depth = config["patches"]["size"][0]
    return {
        "model": config["model"]["name"],
        "patch": "x".join(str(s) for s in config["patches"]["size"]),
        "batch": batch,
        "precision": precision,
        "augmentation": augmentation,
        "steps_measured": len(timer.compute),
        "seconds_per_step": round(step, 3),
        "patches_per_second": round(batch / step, 3),
        "slices_per_second": round(batch * depth / step, 2),
        "data_wait_fraction": round(sum(timer.wait) / (sum(timer.wait) + sum(timer.compute)), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="measured steps per setting (after one warm-up step)")
    parser.add_argument("--cases", type=int, default=4, help="real cases to sample patches from")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not DATASET.is_dir():
        print(f"real data not available: {DATASET} is absent", file=sys.stderr)
        return 1

    config, _ = resolve_config("albunet2d_scratch", [f"data.dataset={DATASET}"])
    cases = load_patch_cases(discover_cases(DATASET)[: args.cases], config)
    rows = []
    start = time.perf_counter()
    for name, batch in MODELS:
        for precision in ("32-true", "bf16-mixed"):
            for augmentation in (False, True):
                row = measure(cases, name, batch, precision, augmentation, args.steps)
                print(row, flush=True)
                rows.append(row)
    _write_records(rows, args, time.perf_counter() - start)
    return 0


def _write_records(rows: list[dict], args: argparse.Namespace, wall: float) -> None:
    RECORDS.mkdir(parents=True, exist_ok=True)
    with open(RECORDS / "training_throughput.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = ["| model | patch | batch | precision | augmentation | s/step | patches/s | slices/s | data wait |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(
            f"| {r['model']} | {r['patch']} | {r['batch']} | {r['precision']} | {'on' if r['augmentation'] else 'off'} | "
            f"{r['seconds_per_step']} | {r['patches_per_second']} | {r['slices_per_second']} | {100 * r['data_wait_fraction']:.0f}% |"
        )
    load = os.getloadavg()
    text = f"""# Training throughput on CPU

Script: `benchmarks/training_throughput.py --steps {args.steps} --cases {args.cases}`. Patches
from {args.cases} real BraTS 2018 cases, preprocessed once; the shipped configurations'
augmentation (probabilities as in the configs), one DataLoader worker process, Lightning on
CPU, {args.steps} measured steps after one warm-up step per setting. Encoder ResNet34 from
random weights (speed does not depend on the weights).

Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (AVX-512 with
bf16), shared with up to seven other engineers' jobs while measuring (load average at the end
{load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}); numbers are noisy and lower than on an idle
machine. Total time {wall / 60:.1f} min.

"data wait" is the share of each step spent between two steps, when the training process waits
for the next batch from the worker. The worker shares the two cores with training, so on this
machine augmentation competes with the model for CPU time.

Each setting runs {args.steps} steps, so one busy moment of another job changes its rate; compare
settings only where they differ by more than the spread between repeated settings of this table.

{chr(10).join(table)}
"""
    (RECORDS / "training_throughput.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
