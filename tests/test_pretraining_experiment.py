"""Pieces of benchmarks/pretraining_experiment.py and benchmarks/encoders_speed.py, without training.

The whole experiment trains networks for minutes per run, so these tests check the parts
around training on hand-made run results: the split, the held-out dataset of links, the
overrides of both variants, the aggregation across seeds and the records.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO_ROOT / "benchmarks"


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def experiment():
    return _load_script("pretraining_experiment")


def _metrics(dice_by_epoch: list[float], steps_per_epoch: int = 10) -> list[dict]:
    rows = []
    for epoch, dice in enumerate(dice_by_epoch):
        rows.append({
            "epoch": float(epoch),
            "step": float(epoch * steps_per_epoch),
            "train_loss": None if epoch == 0 else 1.0 - dice,
            "val_loss": 1.0 - dice,
            "val_dice_whole_tumor": dice,
            "val_dice_tumor_core": dice / 2,
            "val_dice_enhancing_tumor": dice / 4,
        })
    return rows


def _result(variant: str, seed: int, heldout_dice: float, curve: list[float], overrides: dict | None = None) -> dict:
    regions = ("whole_tumor", "tumor_core", "enhancing_tumor")
    mean = {region: {"dice": heldout_dice, "hd95": 10.0} for region in regions}
    return {
        "variant": variant,
        "seed": seed,
        "overrides": overrides or {"seed": seed, "patches.batch_size": 8, "patches.size": [1, 128, 128], "model.params.encoder_weights": "none"},
        "prediction_settings": {"step": 32, "depth_step": 24, "precision": "bf16", "device": "auto"},
        "run_dir": f"/tmp/{variant}-{seed}/run",
        "epochs_completed": len(curve) - 1,
        "steps": (len(curve) - 1) * 10,
        "stopped_by_time": False,
        "training_seconds": 60.0,
        "prediction_seconds_per_case": {"Case_A": 12.0},
        "heldout": {"cases": {"Case_A": mean}, "mean": mean},
        "finished": "2026-01-01 00:00 UTC",
        "load_average": [3.0, 5.0],
        "metrics": _metrics(curve),
    }


def _arguments(experiment, tmp_path: Path, data: Path, *extra: str):
    return experiment.parse_arguments(["--data", str(data), "--work-dir", str(tmp_path / "work"), "--records", str(tmp_path / "records"), *extra])


def test_write_split_keeps_same_split(experiment, synthetic_dataset, tmp_path):
    path = tmp_path / "split.json"
    first = experiment.write_split(synthetic_dataset, 0.25, 1, path)
    second = experiment.write_split(synthetic_dataset, 0.25, 1, path)
    assert first == second
    assert len(first["validation"]) == 1
    assert sorted(first["train"] + first["validation"]) == sorted(p.name for p in synthetic_dataset.iterdir())


def test_write_split_rejects_other_seed(experiment, synthetic_dataset, tmp_path):
    from gliomaseg.training.datasets import split_cases

    path = tmp_path / "split.json"
    first = experiment.write_split(synthetic_dataset, 0.5, 1, path)
    case_ids = first["train"] + first["validation"]
    other_seed = next(seed for seed in range(2, 100) if split_cases(case_ids, 0.5, seed).validation != first["validation"])
    with pytest.raises(experiment.SettingsMismatchError, match="--split-seed"):
        experiment.write_split(synthetic_dataset, 0.5, other_seed, path)


def test_heldout_links_form_dataset(experiment, synthetic_dataset, tmp_path):
    from gliomaseg.data.cases import discover_cases

    case_ids = sorted(p.name for p in synthetic_dataset.iterdir())[:2]
    folder = experiment.link_heldout_cases(synthetic_dataset, case_ids, tmp_path / "heldout")
    assert [case.case_id for case in discover_cases(folder)] == case_ids
    assert all((folder / case_id).is_symlink() for case_id in case_ids)


def test_overrides_differ_only_in_weights(experiment, synthetic_dataset, tmp_path):
    args = _arguments(experiment, tmp_path, synthetic_dataset, "--model", "albunet3d", "--encoder-weights", "/weights/lite0.pth")
    split_file = tmp_path / "split.json"
    pretrained = experiment.training_overrides(args, "pretrained", 2, split_file)
    scratch = experiment.training_overrides(args, "scratch", 2, split_file)
    assert pretrained["model.params.encoder_weights"] == "/weights/lite0.pth"
    assert scratch["model.params.encoder_weights"] == "none"
    assert {k: v for k, v in pretrained.items() if k != "model.params.encoder_weights"} == {k: v for k, v in scratch.items() if k != "model.params.encoder_weights"}
    assert pretrained["patches.size"] == [8, 128, 128]
    assert pretrained["data.split_file"] == str(split_file)


def test_work_dir_inside_repository_rejected(experiment, tmp_path):
    with pytest.raises(SystemExit):
        experiment.parse_arguments(["--work-dir", str(REPO_ROOT / "runs")])


def test_curves_mean_and_std_per_epoch(experiment):
    results = [
        _result("pretrained", 0, 0.5, [0.1, 0.3, 0.5]),
        _result("pretrained", 1, 0.7, [0.1, 0.5, 0.7]),
        _result("scratch", 0, 0.2, [0.1, 0.2]),
    ]
    curves = experiment.aggregate_curves(results)
    whole_tumor = curves["pretrained"]["whole_tumor"]
    assert whole_tumor["step"] == [0, 10, 20]
    assert whole_tumor["mean"] == pytest.approx([0.1, 0.4, 0.6])
    assert whole_tumor["std"] == pytest.approx([0.0, math.sqrt(0.02), math.sqrt(0.02)])
    assert curves["pretrained"]["tumor_core"]["mean"] == pytest.approx([0.05, 0.2, 0.3])
    assert curves["scratch"]["whole_tumor"]["n"] == [1, 1]


def test_curves_skip_missing_cells(experiment):
    result = _result("scratch", 0, 0.2, [0.1, 0.2])
    result["metrics"][1]["val_dice_whole_tumor"] = None
    curves = experiment.aggregate_curves([result])
    assert curves["scratch"]["whole_tumor"]["epoch"] == [0]


def test_heldout_paired_difference(experiment):
    results = [
        _result("pretrained", 0, 0.6, [0.1]),
        _result("scratch", 0, 0.5, [0.1]),
        _result("pretrained", 1, 0.8, [0.1]),
        _result("scratch", 1, 0.5, [0.1]),
        _result("pretrained", 2, 0.9, [0.1]),
    ]
    heldout = experiment.aggregate_heldout(results)
    assert heldout["variants"]["pretrained"]["whole_tumor"]["mean"] == pytest.approx(2.3 / 3)
    assert heldout["variants"]["scratch"]["whole_tumor"]["std"] == pytest.approx(0.0)
    assert heldout["paired_seeds"] == [0, 1]
    assert heldout["difference"]["enhancing_tumor"]["values"] == pytest.approx([0.1, 0.3])


def test_report_only_writes_records(experiment, synthetic_dataset, tmp_path):
    args = _arguments(experiment, tmp_path, synthetic_dataset, "--seeds", "0", "1", "--epochs", "2", "--report-only")
    experiment_dir = tmp_path / "work" / "efficientnet-lite0_albunet2d"
    for seed, (pretrained, scratch) in enumerate([(0.6, 0.4), (0.7, 0.5)]):
        for variant, dice in (("pretrained", pretrained), ("scratch", scratch)):
            folder = experiment_dir / experiment.run_name(variant, seed)
            folder.mkdir(parents=True)
            overrides = experiment.training_overrides(args, variant, seed, experiment_dir / "split.json")
            (folder / experiment.RESULT_FILE).write_text(json.dumps(_result(variant, seed, dice, [0.1, 0.2, dice], overrides)))

    assert experiment.run_experiment(args) == 0

    stem = tmp_path / "records" / "pretraining_efficientnet-lite0_albunet2d"
    markdown = stem.with_suffix(".md").read_text()
    record = json.loads(stem.with_suffix(".json").read_text())
    assert stem.with_suffix(".png").stat().st_size > 0
    assert "| pretrained | 2 | 0.650 ± 0.071 (0.600–0.700)" in markdown
    assert "pretrained − scratch (paired, seeds [0, 1])" in markdown
    assert record["heldout"]["difference"]["whole_tumor"]["mean"] == pytest.approx(0.2)
    assert len(record["runs"]) == 4


def test_record_notes_shared_cpu(experiment, synthetic_dataset, tmp_path):
    args = _arguments(experiment, tmp_path, synthetic_dataset, "--seeds", "0")
    split = {"seed": 1, "train": ["Case_B"], "validation": ["Case_A"]}
    record = experiment.build_record(args, split, [_result("pretrained", 0, 0.5, [0.1, 0.5])])
    record["machine"]["cpus"] = 2
    record["machine"]["load_max"] = 5.0
    assert "NOTE: the CPU was shared" in experiment.render_markdown(record)
    record["machine"]["load_max"] = 1.0
    assert "NOTE: the CPU was shared" not in experiment.render_markdown(record)


def test_speed_record_lists_rows(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    speed = _load_script("encoders_speed")
    row = {
        "encoder": "efficientnet-lite0",
        "model": "albunet2d",
        "precision": "fp32",
        "case_id": "Case_A",
        "grid": [240, 240, 155],
        "cropped_shape_dhw": [140, 170, 140],
        "windows": 840,
        "timing_s": {"total": 100.0, "sliding_window": 95.0, "preprocess": 3.0},
        "peak_rss_gb": 1.2,
        "threads": 2,
        "load_average": [3.0, 4.0],
        "parameters": 6376804,
        "flops_per_window": 1.28e9,
        "step": 32,
        "depth_step": 24,
    }
    record = {"cpu": "CPU", "cpus": 2, "torch": "2", "first_date": "d1", "last_date": "d2", "rows": [row]}
    markdown = speed.render_markdown(record)
    assert "| efficientnet-lite0 | albunet2d | fp32 | 6,376,804 | 840 | 1075 | 100.0 | 95.0 | 3.0 | 1.20 |" in markdown
    assert "240x240x155 voxels" in markdown
