"""`train`: one training run from a configuration to checkpoints, metrics and a run folder.

Run folder contents: `config.yaml` (the resolved configuration), `split.json` (the
patient-level split), `metrics.csv`, `last.safetensors`, `best.safetensors` and
`resume_state.pt` (see `training.recorder`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
from safetensors.torch import load_file

from gliomaseg.data.labels import get_schema
from gliomaseg.models import build_model, read_checkpoint_metadata
from gliomaseg.output_folder import create_folder, removed_on_failure
from gliomaseg.training.config import ConfigError, dump_config, resolve_config
from gliomaseg.training.datasets import (
    discover_training_cases,
    load_patch_cases,
    make_train_loader,
    make_validation_loader,
    read_split,
    split_cases,
)
from gliomaseg.training.module import SegmentationModule
from gliomaseg.training.recorder import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    METRICS_FILE,
    RESUME_STATE,
    RunRecorder,
    keep_metrics_until,
    load_resume_state,
    read_metrics,
)

log = logging.getLogger(__name__)

# Set by the process of global rank 0, inherited by the processes Lightning starts for
# distributed training, so they all use the same run folder.
RUN_DIR_ENVIRONMENT = "GLIOMASEG_RUN_DIR"
CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.json"


@dataclass
class RunResult:
    """Outcome of a training run.

    Attributes:
        run_dir: the run folder.
        last_checkpoint: checkpoint after the last finished epoch.
        best_checkpoint: checkpoint with the best mean validation Dice, or None without validation.
        metrics: rows of metrics.csv (epoch 0 is the validation before training).
        epochs_completed: epochs trained, counting those before a resume and an epoch that
            the time budget cut short.
        stopped_by_time: training stopped at training.max_minutes, possibly within an epoch.
        config: the resolved configuration.
    """

    run_dir: Path
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    metrics: list[dict[str, float]] = field(default_factory=list)
    epochs_completed: int = 0
    stopped_by_time: bool = False
    config: dict[str, Any] = field(default_factory=dict)


def _process_rank() -> int:
    """Global rank from the launcher's environment (0 when not launched for distributed training)."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if name in os.environ:
            return int(os.environ[name])
    return 0


def _resolve_accelerator(device: str) -> str:
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("training.device is cuda but no CUDA device is available; use training.device=cpu or auto")
        return "gpu"
    if device == "cpu":
        return "cpu"
    return "gpu" if torch.cuda.is_available() else "cpu"


def _resolve_precision(precision: str, accelerator: str) -> str:
    """`auto`: bf16-mixed on CPUs and on GPUs with bf16, 16-mixed on older GPUs."""
    if precision != "auto":
        return "32-true" if str(precision) == "32" else str(precision)
    if accelerator == "gpu" and not torch.cuda.is_bf16_supported():
        return "16-mixed"
    return "bf16-mixed"


def _prepare_run_dir(output_dir: str | Path | None, name: str, resume: bool, overwrite: bool, rank: int) -> tuple[Path, list[Path]]:
    """Return the run folder and the folders this call created (see `create_folder`)."""
    if rank != 0 and RUN_DIR_ENVIRONMENT in os.environ:
        return Path(os.environ[RUN_DIR_ENVIRONMENT]), []
    if output_dir is None:
        if resume:
            raise ConfigError("--resume needs the run folder of the interrupted run (--output RUN_DIR)")
        output_dir = Path("runs") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(output_dir).expanduser().resolve()
    if rank != 0:
        return run_dir, []
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"cannot resume: {run_dir / CONFIG_FILE} not found; give the folder of an earlier run")
    elif run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise ConfigError(f"run folder {run_dir} exists and is not empty; use --resume to continue it, --overwrite to replace it, or another --output")
        if not (run_dir / CONFIG_FILE).is_file():
            raise ConfigError(f"refusing to overwrite {run_dir}: it holds no {CONFIG_FILE}, so it does not look like a run folder")
        shutil.rmtree(run_dir)
        # The replaced folder existed before this run, so a failure does not remove it.
        run_dir.mkdir()
    created = create_folder(run_dir)
    os.environ[RUN_DIR_ENVIRONMENT] = str(run_dir)
    return run_dir, created


def _load_config(config: str | Path | Mapping[str, Any], overrides, run_dir: str | Path | None, resume: bool) -> tuple[dict[str, Any], str]:
    if resume and run_dir is not None and (Path(run_dir) / CONFIG_FILE).is_file():
        # A resumed run keeps its saved configuration; overrides still apply (e.g. more epochs).
        log.info("Resuming with the configuration saved in %s", Path(run_dir) / CONFIG_FILE)
        return resolve_config(Path(run_dir) / CONFIG_FILE, overrides)
    return resolve_config(config, overrides)


def _build_model(config: Mapping[str, Any], resume: bool = False) -> torch.nn.Module:
    params = dict(config["model"]["params"])
    params.setdefault("in_channels", len(config["data"]["channels"]))
    # A resumed run loads every weight from its last checkpoint, so the encoder's initial
    # weights are neither downloaded nor read.
    if resume or params.get("encoder_weights") is None:
        params["encoder_weights"] = "none"
    return build_model(config["model"]["name"], **params)


def _checkpoint_metadata(config: Mapping[str, Any], schema_name: str) -> dict[str, Any]:
    return {
        "channels": list(config["data"]["channels"]),
        "label_schema": schema_name,
        "patch_size": list(config["patches"]["size"]),
        "normalization": "zscore_brain",
        "training": json.loads(json.dumps(config)),
    }


def train(
    config: str | Path | Mapping[str, Any],
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    output_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> RunResult:
    """Train a model as a configuration specifies and write a run folder.

    A run that fails before its first epoch finishes removes the run folder where this call
    created it. A run folder that existed before, or that contains a finished epoch, is kept.

    Args:
        config: a configuration dict, a YAML file, or the name of a shipped configuration
            (e.g. "albunet2d_imagenet"); missing keys take their defaults.
        overrides: `key=value` strings or a dict of dotted keys, applied last.
        output_dir: the run folder; default runs/<config name>-<date-time>.
        resume: continue the interrupted run in `output_dir` from its last finished epoch,
            with its saved configuration, split, optimizer state and sample stream.
        overwrite: replace an existing run folder (only one holding a config.yaml).

    Returns:
        A RunResult with the run folder, checkpoints and metrics.

    Raises:
        ConfigError: invalid configuration, or a run folder that exists without resume/overwrite.
        FileNotFoundError: dataset or resume files missing.
        ValueError: unusable cases (see gliomaseg.data).
        gliomaseg.models.weights.WeightsUnavailableError: ImageNet weights cannot be
            downloaded; the message says how to pass a local file.
    """
    rank = _process_rank()
    resolved, name = _load_config(config, overrides, output_dir, resume)
    # The network is built first, so a failed weight download leaves no half-made run folder.
    L.seed_everything(int(resolved["seed"]), workers=False, verbose=False)
    model = _build_model(resolved, resume=resume)
    # The dataset is read before an existing run folder is replaced, so a wrong dataset path
    # leaves the earlier run as it was.
    cases = None if resume else discover_training_cases(resolved)
    run_dir, created = _prepare_run_dir(output_dir, name, resume, overwrite, rank)
    # A run that finished an epoch keeps its folder, because --resume continues from its last
    # checkpoint and resume state.
    with removed_on_failure(created, keep=(run_dir / RESUME_STATE).is_file):
        return _fit(run_dir, resolved, model, resume, rank, cases)


def _fit(
    run_dir: Path, resolved: dict[str, Any], model: torch.nn.Module, resume: bool, rank: int, cases: list | None = None
) -> RunResult:
    """Train in the prepared run folder: the steps of `train` after the folder exists."""
    training = resolved["training"]

    resume_state = None
    if resume:
        resume_state = load_resume_state(run_dir / RESUME_STATE)
        checkpoint_epoch = read_checkpoint_metadata(run_dir / LAST_CHECKPOINT).get("extra", {}).get("epoch")
        if checkpoint_epoch != resume_state["epoch"]:
            raise ValueError(f"{run_dir}: the last checkpoint is from epoch {checkpoint_epoch} but the resume state from epoch {resume_state['epoch']}; the run was interrupted while saving and cannot be resumed exactly")
    epoch_offset = int(resume_state["epoch"]) if resume_state else 0
    remaining = int(training["epochs"]) - epoch_offset
    if remaining <= 0:
        log.info("Run %s has finished all %d epochs; nothing to do", run_dir, training["epochs"])
        return _result(run_dir, resolved, epoch_offset, False)

    if cases is None:
        cases = discover_training_cases(resolved)
    by_id = {case.case_id: case for case in cases}
    split_source = run_dir / SPLIT_FILE if resume else resolved["data"]["split_file"]
    if split_source:
        split = read_split(split_source, list(by_id))
    else:
        split = split_cases(list(by_id), float(resolved["data"]["validation_fraction"]), int(resolved["seed"]))
    schema_name = get_schema(resolved["data"]["label_schema"]).name if resolved["data"]["label_schema"] else cases[0].schema.name
    if rank == 0 and not resume:
        dump_config(resolved, run_dir / CONFIG_FILE)
        (run_dir / SPLIT_FILE).write_text(json.dumps(split.to_json(), indent=2))
    log.info("Run folder %s: %d training and %d validation cases", run_dir, len(split.train), len(split.validation))

    optimizer_state = None
    if resume_state is not None:
        model.load_state_dict(load_file(run_dir / LAST_CHECKPOINT), strict=True)
        optimizer_state = resume_state["optimizer"]
        torch.set_rng_state(resume_state["torch_rng_state"])
        if "cuda_rng_states" in resume_state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(resume_state["cuda_rng_states"])

    accelerator = _resolve_accelerator(training["device"])
    precision = _resolve_precision(training["precision"], accelerator)
    channels_last = accelerator == "gpu" if training["channels_last"] == "auto" else bool(training["channels_last"])
    module = SegmentationModule(model, resolved, channels_last=channels_last, optimizer_state=optimizer_state)

    train_cases = load_patch_cases([by_id[i] for i in split.train], resolved, "preprocessing training cases")
    validation_cases = load_patch_cases([by_id[i] for i in split.validation], resolved, "preprocessing validation cases")
    world_size = int(training["devices"]) * int(training["num_nodes"])
    pin_memory = accelerator == "gpu"
    train_loader = make_train_loader(train_cases, resolved, rank, world_size, epoch_offset, pin_memory)
    validation_loader = make_validation_loader(validation_cases, resolved, rank, world_size, pin_memory) if validation_cases else None

    recorder = RunRecorder(
        run_dir,
        _checkpoint_metadata(resolved, schema_name),
        epoch_offset=epoch_offset,
        step_offset=int(resume_state["global_step"]) if resume_state else 0,
        best_score=float(resume_state["best_score"]) if resume_state else -math.inf,
        best_epoch=int(resume_state["best_epoch"]) if resume_state else 0,
        max_minutes=training["max_minutes"],
        patches_per_step=int(resolved["patches"]["batch_size"]),
    )
    if resume:
        keep_metrics_until(run_dir / METRICS_FILE, epoch_offset)

    trainer = L.Trainer(
        accelerator=accelerator,
        devices=int(training["devices"]),
        num_nodes=int(training["num_nodes"]),
        strategy=training["strategy"],
        precision=precision,
        max_epochs=remaining,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=bool(training["progress_bar"]),
        use_distributed_sampler=False,
        num_sanity_val_steps=-1 if validation_loader is not None and not resume else 0,
        limit_val_batches=1.0 if validation_loader is not None else 0,
        deterministic=bool(training["deterministic"]),
        callbacks=[recorder],
        default_root_dir=run_dir,
    )
    log.info(
        "Training %s for %d epochs of %d batches (%s, precision %s, %d process(es), channels-last %s)",
        resolved["model"]["name"], remaining, training["batches_per_epoch"], accelerator, precision, world_size, channels_last,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        # The loaders are deliberately sized: one worker set per process, indices from EpochSampler.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*Consider setting `persistent_workers=True`.*")
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=validation_loader)
    log.info("Training finished in %.1f min; run folder %s", (time.perf_counter() - start) / 60, run_dir)
    completed = epoch_offset + trainer.current_epoch
    return _result(run_dir, resolved, completed, recorder.stopped_by_time)


def _result(run_dir: Path, config: dict[str, Any], epochs: int, stopped_by_time: bool) -> RunResult:
    metrics_path = run_dir / METRICS_FILE
    last, best = run_dir / LAST_CHECKPOINT, run_dir / BEST_CHECKPOINT
    return RunResult(
        run_dir=run_dir,
        last_checkpoint=last if last.is_file() else None,
        best_checkpoint=best if best.is_file() else None,
        metrics=read_metrics(metrics_path) if metrics_path.is_file() else [],
        epochs_completed=epochs,
        stopped_by_time=stopped_by_time,
        config=config,
    )
