"""Training runs end to end on tiny synthetic cases: files, reproducibility, resume, time budget, DDP."""

from __future__ import annotations

import shutil

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gliomaseg.cli import main
from gliomaseg.models import load_checkpoint
from gliomaseg.training import METRIC_COLUMNS, ConfigError, read_metrics, train
from gliomaseg.training.module import SegmentationModule

CSV_LEADING_COLUMNS = [
    "epoch",
    "step",
    "train_loss",
    "val_loss",
    "val_dice_whole_tumor",
    "val_dice_tumor_core",
    "val_dice_enhancing_tumor",
]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    from gliomaseg.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("tiny"), 4, shape=(40, 40, 20), seed=3)


def tiny_config(dataset: Path, **training) -> dict:
    """A run of 2 epochs of 2 batches of 4 patches of 1x32x32 with a small encoder."""
    return {
        "seed": 7,
        "data": {"dataset": str(dataset), "validation_fraction": 0.25},
        "model": {"name": "albunet2d", "params": {"encoder": "efficientnet-lite0", "encoder_weights": None, "num_filters": 4}},
        "patches": {"size": [1, 32, 32], "batch_size": 4},
        "training": {"epochs": 2, "batches_per_epoch": 2, "num_workers": 0, "progress_bar": False, "precision": "32-true", **training},
        "validation": {"patches": 4},
    }


@pytest.fixture(scope="module")
def reference_run(tiny_dataset, tmp_path_factory):
    return train(tiny_config(tiny_dataset), output_dir=tmp_path_factory.mktemp("runs") / "reference")


def test_run_writes_config_split_and_metrics(reference_run):
    run_dir = reference_run.run_dir
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    split = json.loads((run_dir / "split.json").read_text())
    with open(run_dir / "metrics.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert saved["training"]["epochs"] == 2
    assert len(split["train"]) == 3
    assert len(split["validation"]) == 1
    assert not set(split["train"]) & set(split["validation"])
    assert header[:7] == CSV_LEADING_COLUMNS
    assert header == list(METRIC_COLUMNS)


def test_run_metrics_have_epoch_zero_and_every_epoch(reference_run):
    epochs = [int(row["epoch"]) for row in reference_run.metrics]
    steps = [int(row["step"]) for row in reference_run.metrics]
    assert epochs == [0, 1, 2]
    assert steps == [0, 2, 4]
    assert reference_run.epochs_completed == 2


def test_run_metrics_values_in_range(reference_run):
    for row in reference_run.metrics[1:]:
        assert 0.0 <= row["train_loss"] <= 1.0
        assert 0.0 <= row["val_dice_whole_tumor"] <= 1.0
        assert 0.0 <= row["data_wait_fraction"] <= 1.0


def test_run_checkpoints_load_with_metadata(reference_run):
    model, metadata = load_checkpoint(reference_run.last_checkpoint)
    assert metadata["channels"] == ["flair", "t1c", "t2"]
    assert metadata["patch_size"] == [1, 32, 32]
    assert metadata["label_schema"] == "brats2017"
    assert metadata["normalization"] == "zscore_brain"
    assert metadata["training"]["seed"] == 7
    assert metadata["extra"]["epoch"] == 2
    assert reference_run.best_checkpoint is not None


def test_best_checkpoint_has_best_mean_dice(reference_run):
    _, metadata = load_checkpoint(reference_run.best_checkpoint)
    best = max(row["val_dice_mean"] for row in reference_run.metrics[1:])
    assert metadata["extra"]["val_dice_mean"] == pytest.approx(best, rel=1e-5)


def test_same_seed_gives_same_losses_with_workers(reference_run, tiny_dataset, tmp_path):
    # A worker process instead of none: the patch stream depends only on seed and index.
    again = train(tiny_config(tiny_dataset, num_workers=1), output_dir=tmp_path / "again")
    assert [row["train_loss"] for row in again.metrics[1:]] == [row["train_loss"] for row in reference_run.metrics[1:]]
    assert [row["val_loss"] for row in again.metrics] == [row["val_loss"] for row in reference_run.metrics]


def test_existing_run_folder_is_not_overwritten(reference_run, tiny_dataset):
    before = (reference_run.run_dir / "metrics.csv").read_text()
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny_config(tiny_dataset), output_dir=reference_run.run_dir)
    assert (reference_run.run_dir / "metrics.csv").read_text() == before


def test_finished_run_resume_does_nothing(reference_run, tiny_dataset):
    result = train(tiny_config(tiny_dataset), output_dir=reference_run.run_dir, resume=True)
    assert result.epochs_completed == 2
    assert len(result.metrics) == 3


def test_resume_after_kill_continues_like_uninterrupted_run(reference_run, tiny_dataset, tmp_path):
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(tiny_dataset)))
    run_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "gliomaseg.cli", "train", str(config_path), "--output", str(run_dir)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "resume_state.pt").exists():
            assert process.poll() is None, "the training process ended before its first epoch finished"
            assert time.monotonic() < deadline, "no epoch finished within 120 s"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    interrupted = read_metrics(run_dir / "metrics.csv")

    resumed = train(str(config_path), output_dir=run_dir, resume=True)
    assert int(interrupted[-1]["epoch"]) < 2
    assert [int(row["epoch"]) for row in resumed.metrics] == [0, 1, 2]
    assert [int(row["step"]) for row in resumed.metrics] == [0, 2, 4]
    assert [row["train_loss"] for row in resumed.metrics[1:]] == pytest.approx([row["train_loss"] for row in reference_run.metrics[1:]], rel=1e-5)


def test_resume_without_finished_epoch_explains(tiny_dataset, tmp_path):
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(tiny_config(tiny_dataset)))
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(tiny_config(tiny_dataset), output_dir=run_dir, resume=True)


def test_time_budget_stops_after_first_epoch(tiny_dataset, tmp_path):
    result = train(tiny_config(tiny_dataset, max_minutes=0.001, batches_per_epoch=1), output_dir=tmp_path / "budget")
    assert result.stopped_by_time
    assert result.epochs_completed == 1
    assert result.last_checkpoint is not None


def test_spent_budget_stops_after_one_step(tiny_dataset, tmp_path):
    # The budget runs out during the validation before training, so one step is all that runs.
    config = tiny_config(tiny_dataset, max_minutes=1e-6, batches_per_epoch=3)
    run_dir = tmp_path / "budget"
    result = train(config, output_dir=run_dir)
    assert result.stopped_by_time
    assert [int(row["epoch"]) for row in result.metrics] == [0, 1]
    assert result.epochs_completed == 1
    assert int(result.metrics[-1]["step"]) == 1
    assert not math.isnan(result.metrics[-1]["val_dice_mean"])
    assert result.best_checkpoint == run_dir / "best.safetensors"
    assert result.last_checkpoint == run_dir / "last.safetensors"
    _, metadata = load_checkpoint(result.best_checkpoint)
    assert metadata["extra"]["global_step"] == 1

    resumed = train(config, overrides={"training.max_minutes": None}, output_dir=run_dir, resume=True)
    assert [int(row["epoch"]) for row in resumed.metrics] == [0, 1, 2]
    assert int(resumed.metrics[-1]["step"]) == 4


def test_time_budget_stops_inside_epoch(tiny_dataset, tmp_path):
    batches = 1000
    result = train(tiny_config(tiny_dataset, max_minutes=0.02, batches_per_epoch=batches, epochs=1), output_dir=tmp_path / "budget")
    steps = int(result.metrics[-1]["step"])
    assert result.stopped_by_time
    assert [int(row["epoch"]) for row in result.metrics] == [0, 1]
    assert 1 <= steps < batches
    assert (result.run_dir / "best.safetensors").is_file()


def test_3d_model_trains_one_epoch(tiny_dataset, tmp_path):
    config = tiny_config(tiny_dataset, epochs=1, batches_per_epoch=1)
    config["model"]["name"] = "albunet3d"
    config["patches"] = {"size": [4, 32, 32], "batch_size": 2}
    config["validation"] = {"patches": 2}
    result = train(config, output_dir=tmp_path / "three_d")
    _, metadata = load_checkpoint(result.last_checkpoint)
    assert metadata["patch_size"] == [4, 32, 32]
    assert result.metrics[-1]["epoch"] == 1


def test_cli_train_reports_missing_dataset(tmp_path, capsys):
    status = main(["train", "albunet2d_scratch", "--set", f"data.dataset={tmp_path / 'absent'}", "--output", str(tmp_path / "run")])
    assert status == 2
    assert "data.dataset" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_failed_run_removes_folders_it_created(tmp_path):
    empty_dataset = tmp_path / "no_cases"
    empty_dataset.mkdir()
    with pytest.raises(ValueError, match="no case found"):
        train(tiny_config(empty_dataset), output_dir=tmp_path / "runs" / "first")
    assert not (tmp_path / "runs" / "first").exists()
    assert not (tmp_path / "runs").exists()


def test_failed_run_keeps_existing_folder(tmp_path):
    empty_dataset = tmp_path / "no_cases"
    empty_dataset.mkdir()
    run_dir = tmp_path / "made_by_user"
    run_dir.mkdir()
    with pytest.raises(ValueError, match="no case found"):
        train(tiny_config(empty_dataset), output_dir=run_dir)
    assert run_dir.is_dir()


def test_overwrite_with_empty_dataset_keeps_earlier_run(reference_run, tmp_path):
    earlier = tmp_path / "earlier"
    shutil.copytree(reference_run.run_dir, earlier)
    empty_dataset = tmp_path / "no_cases"
    empty_dataset.mkdir()

    with pytest.raises(ValueError, match="no case found"):
        train(tiny_config(empty_dataset), output_dir=earlier, overwrite=True)

    assert sorted(p.name for p in earlier.iterdir()) == sorted(p.name for p in reference_run.run_dir.iterdir())


def test_failure_in_first_epoch_removes_run_folder(tiny_dataset, tmp_path, monkeypatch):
    def failing_step(self, batch, batch_index):
        raise RuntimeError("step failed")

    monkeypatch.setattr(SegmentationModule, "training_step", failing_step)
    with pytest.raises(RuntimeError, match="step failed"):
        train(tiny_config(tiny_dataset), output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_failure_after_first_epoch_keeps_resume_files(tiny_dataset, tmp_path, monkeypatch):
    original_step = SegmentationModule.training_step

    def step_failing_in_second_epoch(self, batch, batch_index):
        if self.current_epoch >= 1:
            raise RuntimeError("step failed")
        return original_step(self, batch, batch_index)

    monkeypatch.setattr(SegmentationModule, "training_step", step_failing_in_second_epoch)
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="step failed"):
        train(tiny_config(tiny_dataset), output_dir=run_dir)
    assert (run_dir / "resume_state.pt").is_file()
    assert (run_dir / "last.safetensors").is_file()

    monkeypatch.setattr(SegmentationModule, "training_step", original_step)
    resumed = train(tiny_config(tiny_dataset), output_dir=run_dir, resume=True)
    assert [int(row["epoch"]) for row in resumed.metrics] == [0, 1, 2]


def test_cli_train_rejects_unknown_key(tmp_path, capsys):
    status = main(["train", "albunet2d_scratch", "--set", "training.epohcs=2", "--output", str(tmp_path / "run")])
    assert status == 2
    assert "training.epohcs" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_cpu_processes_train(tiny_dataset, tmp_path):
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(tiny_dataset, epochs=1, strategy="ddp", devices=2, device="cpu")))
    run_dir = tmp_path / "ddp"
    environment = {key: value for key, value in os.environ.items() if key not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GLIOMASEG_RUN_DIR")}
    completed = subprocess.run(
        [sys.executable, "-m", "gliomaseg.cli", "train", str(config_path), "--output", str(run_dir)],
        capture_output=True, text=True, timeout=170, env=environment,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    metrics = read_metrics(run_dir / "metrics.csv")
    assert [int(row["epoch"]) for row in metrics] == [0, 1]
    assert "world_size=2" in completed.stderr or "2 process(es)" in completed.stderr
    assert (run_dir / "last.safetensors").is_file()
