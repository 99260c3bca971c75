"""Per-epoch bookkeeping of a run: metrics CSV, checkpoints, resume state, time budget.

Files in the run folder (written by the process of global rank 0):

- `metrics.csv`: one row per epoch (epoch 0 is the validation before training), columns
  `METRIC_COLUMNS`; an epoch cut short by the time budget gets a row too, with the steps
  it trained;
- `last.safetensors`, `best.safetensors`: model checkpoints (best by mean validation Dice);
- `resume_state.pt`: optimizer state, epoch, step, best score and RNG states, read back with
  `torch.load(weights_only=True)`, so resuming never unpickles arbitrary objects.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch

from gliomaseg.data.io import default_file_mode
from gliomaseg.models import save_checkpoint

log = logging.getLogger(__name__)

METRIC_COLUMNS = (
    "epoch",
    "step",
    "train_loss",
    "val_loss",
    "val_dice_whole_tumor",
    "val_dice_tumor_core",
    "val_dice_enhancing_tumor",
    "val_dice_mean",
    "data_wait_fraction",
    "data_wait_seconds_per_step",
    "step_seconds",
    "patches_per_second",
    "epoch_seconds",
    "elapsed_seconds",
)
LAST_CHECKPOINT = "last.safetensors"
BEST_CHECKPOINT = "best.safetensors"
RESUME_STATE = "resume_state.pt"
METRICS_FILE = "metrics.csv"


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Read a metrics.csv into a list of rows of floats (missing values are NaN)."""
    with open(path, newline="") as handle:
        return [{key: float(value) if value not in ("", None) else math.nan for key, value in row.items()} for row in csv.DictReader(handle)]


def keep_metrics_until(path: Path, epoch: int) -> None:
    """Drop the rows after `epoch` (written after the resume state of an interrupted run)."""
    if not path.is_file():
        return
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    retained = [row for row in rows if int(float(row["epoch"])) <= epoch]
    if len(retained) != len(rows):
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(retained)


def save_resume_state(path: Path, state: Mapping[str, Any]) -> None:
    """Write the resume state atomically (temporary file, then rename)."""
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(temp_name, default_file_mode())
    os.close(handle)
    try:
        torch.save(dict(state), temp_name)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def load_resume_state(path: Path) -> dict[str, Any]:
    """Read a resume state with `torch.load(weights_only=True)` (tensors and plain values only).

    Raises:
        FileNotFoundError: the run has no resume state.
        ValueError: the file is unreadable or contains other objects.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; the run has not finished an epoch, so there is nothing to resume (start it again with --overwrite in place of --resume)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise ValueError(f"cannot read the resume state {path}: {error}") from error


class RunRecorder(L.Callback):
    """Measure data waiting, write a metrics row and checkpoints after every epoch, stop at the time budget.

    The time budget is checked after every training batch, so training stops at most one
    batch after it runs out, also in the middle of an epoch. Lightning then validates once
    and ends the epoch, so the shortened epoch gets its metrics row and checkpoints.

    Args:
        run_dir: the run folder.
        checkpoint_metadata: metadata for gliomaseg.models.save_checkpoint (channels,
            label_schema, patch_size, normalization, training).
        epoch_offset: epochs finished before this process started (resume).
        step_offset: optimizer steps finished before this process started.
        best_score: best mean validation Dice so far (-inf for a new run).
        max_minutes: time budget of this process's training, or None.
        patches_per_step: global batch size, for the throughput column.
    """

    def __init__(
        self,
        run_dir: Path,
        checkpoint_metadata: Mapping[str, Any],
        epoch_offset: int = 0,
        step_offset: int = 0,
        best_score: float = -math.inf,
        best_epoch: int = 0,
        max_minutes: float | None = None,
        patches_per_step: int = 1,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.metadata = dict(checkpoint_metadata)
        self.epoch_offset = epoch_offset
        self.step_offset = step_offset
        self.best_score = best_score
        self.best_epoch = best_epoch
        self.max_minutes = max_minutes
        self.patches_per_step = patches_per_step
        self.stopped_by_time = False
        self.rows: list[dict[str, Any]] = []
        self._start = time.perf_counter()
        self._epoch_start = self._start
        self._last_batch_end = self._start
        self._wait = 0.0
        self._compute = 0.0
        self._steps = 0
        self._batch_start = self._start

    # --- timing ---------------------------------------------------------------------------

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.epoch_offset == 0 and module.validation_result is not None:
            self._write_row({"epoch": 0, "step": 0, **module.validation_result})

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._epoch_start = self._last_batch_end = time.perf_counter()
        self._wait = self._compute = 0.0
        self._steps = 0

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_index: int) -> None:
        self._batch_start = time.perf_counter()
        self._wait += self._batch_start - self._last_batch_end

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_index: int) -> None:
        self._last_batch_end = time.perf_counter()
        self._compute += self._last_batch_end - self._batch_start
        self._steps += 1
        self._check_time_budget(trainer, self.epoch_offset + trainer.current_epoch + 1)

    # --- end of epoch ---------------------------------------------------------------------

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        strategy = trainer.strategy
        totals = torch.tensor([module.train_loss_sum, module.train_steps, self._wait, self._compute], dtype=torch.float64, device=module.device)
        loss_sum, steps, wait, compute = strategy.reduce(totals, reduce_op="sum").tolist()
        epoch = self.epoch_offset + trainer.current_epoch + 1
        epoch_seconds = time.perf_counter() - self._epoch_start
        step_seconds = (wait + compute) / max(steps, 1.0)
        row = {
            "epoch": epoch,
            "step": self.step_offset + trainer.global_step,
            "train_loss": loss_sum / max(steps, 1.0),
            **(module.validation_result or {}),
            "data_wait_fraction": wait / max(wait + compute, 1e-12),
            "data_wait_seconds_per_step": wait / max(steps, 1.0),
            "step_seconds": step_seconds,
            "patches_per_second": self.patches_per_step / step_seconds if step_seconds else math.nan,
            "epoch_seconds": epoch_seconds,
        }
        log.info(
            "epoch %d: train loss %.4f, validation Dice WT %s TC %s ET %s, waiting for data %.0f%% of each step (%.3f s)",
            epoch,
            row["train_loss"],
            *(_format(row.get(f"val_dice_{r}")) for r in ("whole_tumor", "tumor_core", "enhancing_tumor")),
            100 * row["data_wait_fraction"],
            row["data_wait_seconds_per_step"],
        )
        if trainer.is_global_zero:
            self._save(module, row)
            self._write_row(row)

    def _save(self, module: L.LightningModule, row: dict[str, Any]) -> None:
        score = row.get("val_dice_mean")
        extra = {"epoch": row["epoch"], "global_step": row["step"], **{k: v for k, v in row.items() if k.startswith("val_")}}
        metadata = {**self.metadata, **extra}
        save_checkpoint(self.run_dir / LAST_CHECKPOINT, module.model, metadata)
        if score is not None and score > self.best_score:
            self.best_score, self.best_epoch = float(score), int(row["epoch"])
            save_checkpoint(self.run_dir / BEST_CHECKPOINT, module.model, metadata)
        optimizer = module.trainer.optimizers[0]
        state = {
            "epoch": int(row["epoch"]),
            "global_step": int(row["step"]),
            "best_score": float(self.best_score),
            "best_epoch": int(self.best_epoch),
            "optimizer": optimizer.state_dict(),
            "torch_rng_state": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda_rng_states"] = torch.cuda.get_rng_state_all()
        save_resume_state(self.run_dir / RESUME_STATE, state)

    def _write_row(self, row: Mapping[str, Any]) -> None:
        row = {**row, "elapsed_seconds": time.perf_counter() - self._start}
        path = self.run_dir / METRICS_FILE
        new = not path.is_file()
        with open(path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(METRIC_COLUMNS)
            writer.writerow([_format(row.get(column)) for column in METRIC_COLUMNS])
        self.rows.append(dict(row))

    def _check_time_budget(self, trainer: L.Trainer, epoch: int) -> None:
        if self.max_minutes is None or trainer.should_stop:
            return
        elapsed = time.perf_counter() - self._start
        # Rank 0 decides, so all processes of a distributed run stop after the same batch.
        stop = bool(trainer.strategy.broadcast(elapsed >= 60.0 * float(self.max_minutes), src=0))
        if stop:
            log.info(
                "Stopping after %.1f min, %d of %s batches into epoch %d: training.max_minutes=%s is reached",
                elapsed / 60, self._steps, trainer.num_training_batches, epoch, self.max_minutes,
            )
            self.stopped_by_time = True
            trainer.should_stop = True
