"""Train one model with and without ImageNet encoder weights on real BraTS cases and compare.

Wacker et al. ("Transfer Learning for Brain Tumor Segmentation", Fig. 4) report that an
ImageNet-pretrained encoder makes training more stable. This script repeats that
comparison: the same model (AlbuNet2D or AlbuNet3D with the chosen encoder) is trained
with pretrained encoder weights ("pretrained") and from random weights ("scratch"), for
several seeds each. Every run uses the same patient-level split (written once to
split.json), the same configuration and the same budget of epochs x batches. Seed k of
both variants shares the patch sampling stream, the augmentation and the validation
patches, so each seed gives a paired comparison.

For every run the script records the validation Dice per region after each epoch, on
fixed, un-augmented patches of the validation cases (epoch 0 is before training). After
training it predicts the held-out cases (the validation cases of the split) with the
sliding window from the last checkpoint, and scores them with `evaluate_folders`. The last
checkpoint is used, not the best, because the best is chosen on patches of the same
cases. It writes:

    <records>/pretraining_<encoder>_<model>.md    settings, split, tables, budget, times
    <records>/pretraining_<encoder>_<model>.json  every number, per run and aggregated
    <records>/pretraining_<encoder>_<model>.png   validation Dice per region, mean +- std

Runs go to --work-dir (outside the repository); checkpoints stay there. A run whose
result.json exists with the same settings is not repeated, so running the same command
again continues an interrupted experiment.

The default budgets give six runs (three seeds, two variants) per model. On a 2-core CPU
shared with other jobs they take an estimated 20 to 80 min for 2D and about 60 min for 3D,
depending on the load (estimated from short runs).

Usage:
    .venv/bin/python benchmarks/pretraining_experiment.py --model albunet2d
    .venv/bin/python benchmarks/pretraining_experiment.py --model albunet3d
    .venv/bin/python benchmarks/pretraining_experiment.py --model albunet2d --epochs 50 --batches-per-epoch 100 --batch-size 64 --tumor-fraction 0
    .venv/bin/python benchmarks/pretraining_experiment.py --encoder resnet34 --encoder-weights /path/to/resnet34-b627a593.pth
    .venv/bin/python benchmarks/pretraining_experiment.py --model albunet2d --report-only
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "deepbrainseg_brats2018" / "brats"
RECORDS = REPO / "benchmarks" / "records"
DEFAULT_WORK_DIR = Path("/tmp/gliomaseg-pretraining")
VARIANTS = ("pretrained", "scratch")
REGIONS = ("whole_tumor", "tumor_core", "enhancing_tumor")
REGION_TITLES = {"whole_tumor": "whole tumor", "tumor_core": "tumor core", "enhancing_tumor": "enhancing tumor"}
CURVE_COLUMNS = {
    "whole_tumor": "val_dice_whole_tumor",
    "tumor_core": "val_dice_tumor_core",
    "enhancing_tumor": "val_dice_enhancing_tumor",
    "val_loss": "val_loss",
}
# Defaults per model, sized so that six runs fit in about an hour on a shared 2-core CPU (an
# estimate from short runs): budget, patch size (D, H, W), batch size and validation patches.
# Wacker et al. trained 50 epochs of 100 batches, on 1x128x128 patches in batches of 64 (2D)
# and 24x128x128 patches in batches of 24 (3D).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "albunet2d": {
        "epochs": 10, "batches_per_epoch": 20, "patch_size": [1, 128, 128], "batch_size": 8,
        "validation_patches": 48, "validation_batch_size": 16,
    },
    "albunet3d": {
        "epochs": 6, "batches_per_epoch": 5, "patch_size": [8, 128, 128], "batch_size": 2,
        "validation_patches": 12, "validation_batch_size": 4,
    },
}
RESULT_FILE = "result.json"

log = logging.getLogger("pretraining_experiment")


class SettingsMismatchError(ValueError):
    """The work folder contains a split or runs made with other settings than the current command's."""


def run_name(variant: str, seed: int) -> str:
    """Return the run folder name of one variant and seed, e.g. "pretrained-seed0"."""
    return f"{variant}-seed{seed}"


def write_split(data_dir: Path, validation_fraction: float, split_seed: int, path: Path) -> dict[str, list[str]]:
    """Split the dataset's cases into training and held-out cases once and write split.json.

    An existing split.json is kept when it names the same cases and settings, so an
    interrupted experiment continues with its split.

    Returns:
        {"train": [...], "validation": [...], "seed": split_seed}.

    Raises:
        SettingsMismatchError: an existing split.json was made from other cases or settings.
    """
    from gliomaseg.data.cases import discover_cases
    from gliomaseg.training.datasets import split_cases

    case_ids = sorted(case.case_id for case in discover_cases(data_dir) if case.label_path is not None)
    split = split_cases(case_ids, validation_fraction, split_seed).to_json()
    if path.is_file():
        existing = json.loads(path.read_text())
        if existing != split:
            raise SettingsMismatchError(
                f"{path} contains a split that differs from the split of the cases in {data_dir} with --validation-fraction "
                f"{validation_fraction} and --split-seed {split_seed}; use another --work-dir or delete {path.parent}"
            )
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(split, indent=2) + "\n")
    return split


def link_heldout_cases(data_dir: Path, case_ids: list[str], folder: Path) -> Path:
    """Make a dataset folder of symbolic links to the held-out case folders (no copies).

    Returns:
        The folder, which `predict_cases` and `evaluate_folders` read as a dataset.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for case_id in case_ids:
        link = folder / case_id
        if not link.exists():
            link.symlink_to((data_dir / case_id).resolve(), target_is_directory=True)
    return folder


def training_overrides(args: argparse.Namespace, variant: str, seed: int, split_file: Path) -> dict[str, Any]:
    """Return the dotted-key overrides of one run on top of the shipped `<model>_imagenet` config."""
    return {
        "seed": seed,
        "data.dataset": str(args.data),
        "data.split_file": str(split_file),
        "model.params.encoder": args.encoder,
        "model.params.encoder_weights": args.encoder_weights if variant == "pretrained" else "none",
        "patches.size": list(args.patch_size),
        "patches.batch_size": args.batch_size,
        "patches.tumor_fraction": args.tumor_fraction,
        "training.epochs": args.epochs,
        "training.batches_per_epoch": args.batches_per_epoch,
        "training.max_minutes": args.minutes,
        "training.precision": args.precision,
        "training.num_workers": args.num_workers,
        "training.progress_bar": False,
        "validation.patches": args.validation_patches,
        "validation.batch_size": args.validation_batch_size,
    }


def prediction_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Return the keyword settings of `predict_cases` for the held-out cases."""
    return {"step": args.predict_step, "depth_step": args.predict_depth_step, "precision": args.predict_precision, "device": "auto"}


def _read_result(path: Path, overrides: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    if result.get("overrides") != overrides or result.get("prediction_settings") != settings:
        raise SettingsMismatchError(
            f"{path} was written by a run with other settings; use another --work-dir, or delete "
            f"{path.parent} to train it again with the current settings"
        )
    return result


def score_predictions(prediction_dir: Path, heldout_dir: Path) -> dict[str, Any]:
    """Score predicted label maps against the held-out references.

    Returns:
        {"cases": {case_id: {region: {"dice": ..., "hd95": ...}}}, "mean": {region: {"dice": ..., "hd95": ...}}}
        with the mean over the scored cases.

    Raises:
        RuntimeError: a held-out case could not be scored (its status and reason are named).
    """
    from gliomaseg.evaluation import evaluate_folders

    results, _ = evaluate_folders(prediction_dir, heldout_dir, progress=False)
    unscored = [f"{r.case_id}: {r.status} ({r.reason})" for r in results if not r.scored]
    if unscored:
        raise RuntimeError(f"held-out cases in {prediction_dir} could not be scored: " + "; ".join(unscored))
    cases = {r.case_id: {region: {m: float(r.scores[region][m]) for m in ("dice", "hd95")} for region in REGIONS} for r in results}
    mean = {
        region: {m: float(statistics.fmean(case[region][m] for case in cases.values())) for m in ("dice", "hd95")}
        for region in REGIONS
    }
    return {"cases": cases, "mean": mean}


def run_one(args: argparse.Namespace, variant: str, seed: int, experiment_dir: Path, split_file: Path, heldout_dir: Path) -> dict[str, Any]:
    """Train one variant and seed, predict the held-out cases and score them.

    Returns:
        The run's result (also written to <run>/result.json): budget reached, times and
        held-out Dice per case and region.
    """
    from gliomaseg.inference import predict_cases
    from gliomaseg.training import train

    folder = experiment_dir / run_name(variant, seed)
    overrides = training_overrides(args, variant, seed, split_file)
    settings = prediction_settings(args)
    existing = _read_result(folder / RESULT_FILE, overrides, settings)
    if existing is not None:
        log.info("%s: finished earlier, reading %s", folder.name, folder / RESULT_FILE)
        return existing

    log.info("%s: training %s with %s encoder weights", folder.name, args.model, overrides["model.params.encoder_weights"])
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    run = train(f"{args.model}_imagenet", overrides, output_dir=folder / "run", overwrite=True)
    training_seconds = time.perf_counter() - started
    if run.last_checkpoint is None:
        raise RuntimeError(f"{run.run_dir}: training wrote no last checkpoint")

    log.info("%s: predicting %d held-out cases", folder.name, len(list(heldout_dir.iterdir())))
    prediction_dir = folder / "predictions"
    if prediction_dir.exists():
        shutil.rmtree(prediction_dir)
    started = time.perf_counter()
    summary = predict_cases(run.last_checkpoint, heldout_dir, prediction_dir, overwrite=True, progress=False, **settings)
    prediction_seconds = time.perf_counter() - started
    if summary.failed:
        raise RuntimeError(f"prediction failed in {prediction_dir}:\n{summary.format()}")

    # NaN cells (values a row does not log) become null, so the JSON stays standard.
    metrics = [{key: (None if value != value else value) for key, value in row.items()} for row in run.metrics]
    result = {
        "variant": variant,
        "seed": seed,
        "overrides": overrides,
        "prediction_settings": settings,
        "run_dir": str(run.run_dir),
        "epochs_completed": run.epochs_completed,
        "steps": int(metrics[-1]["step"]) if metrics else 0,
        "stopped_by_time": run.stopped_by_time,
        "training_seconds": training_seconds,
        "prediction_seconds_per_case": {r.case_id: r.seconds for r in summary.results},
        "heldout": score_predictions(prediction_dir, heldout_dir),
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": [load_start, os.getloadavg()[0]],
        "metrics": metrics,
    }
    (folder / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    dice = result["heldout"]["mean"]
    log.info(
        "%s: %d steps in %.1f min; held-out Dice WT %.3f TC %.3f ET %.3f",
        folder.name, result["steps"], training_seconds / 60,
        dice["whole_tumor"]["dice"], dice["tumor_core"]["dice"], dice["enhancing_tumor"]["dice"],
    )
    return result


def _spread(values: list[float]) -> dict[str, Any]:
    """Return mean, sample standard deviation (ddof 1; 0 for one value), min, max and the values."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": values,
    }


def aggregate_curves(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Average the validation curves of each variant over its seeds, epoch by epoch.

    Returns:
        {variant: {column key: {"epoch": [...], "step": [...], "mean": [...], "std": [...], "n": [...]}}}
        with column keys from CURVE_COLUMNS and the sample standard deviation (ddof 1).
        An epoch enters only with the runs that logged it.
    """
    curves: dict[str, dict[str, dict[str, list[float]]]] = {}
    for variant in VARIANTS:
        runs = [r for r in results if r["variant"] == variant]
        if not runs:
            continue
        curves[variant] = {}
        for key, column in CURVE_COLUMNS.items():
            by_epoch: dict[int, list[float]] = {}
            steps: dict[int, int] = {}
            for run in runs:
                for row in run["metrics"]:
                    value = row.get(column)
                    if value is None:
                        continue
                    epoch = int(row["epoch"])
                    by_epoch.setdefault(epoch, []).append(float(value))
                    steps[epoch] = int(row["step"])
            epochs = sorted(by_epoch)
            spreads = [_spread(by_epoch[e]) for e in epochs]
            curves[variant][key] = {
                "epoch": epochs,
                "step": [steps[e] for e in epochs],
                "mean": [s["mean"] for s in spreads],
                "std": [s["std"] for s in spreads],
                "n": [s["n"] for s in spreads],
            }
    return curves


def aggregate_heldout(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Summarise the held-out Dice per variant and region across seeds, and the paired difference.

    Returns:
        {"variants": {variant: {region: spread of the per-seed mean Dice}},
         "difference": {region: spread of pretrained minus scratch over seeds run by both}}.
    """
    by_variant = {
        variant: {region: _spread([r["heldout"]["mean"][region]["dice"] for r in results if r["variant"] == variant]) for region in REGIONS}
        for variant in VARIANTS
        if any(r["variant"] == variant for r in results)
    }
    dice = {(r["variant"], r["seed"]): r["heldout"]["mean"] for r in results}
    paired = sorted(seed for variant, seed in dice if variant == "pretrained" and ("scratch", seed) in dice)
    difference = {}
    if paired:
        difference = {
            region: _spread([dice["pretrained", s][region]["dice"] - dice["scratch", s][region]["dice"] for s in paired])
            for region in REGIONS
        }
    return {"variants": by_variant, "difference": difference, "paired_seeds": paired}


def plot_curves(curves: dict[str, Any], title: str, path: Path) -> Path:
    """Draw validation Dice per region and validation loss over training steps, mean +- std per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"pretrained": "tab:blue", "scratch": "tab:orange"}
    panels = [*REGIONS, "val_loss"]
    figure, axes_row = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), layout="constrained")
    for axes, key in zip(axes_row, panels):
        for variant, columns in curves.items():
            curve = columns[key]
            if not curve["step"]:
                continue
            mean, std = curve["mean"], curve["std"]
            n = max(curve["n"])
            axes.plot(curve["step"], mean, color=colours[variant], marker="o", markersize=3, label=f"{variant} (n={n})")
            axes.fill_between(
                curve["step"], [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                color=colours[variant], alpha=0.2, linewidth=0,
            )
        is_dice = key in REGIONS
        axes.set_title(f"Dice, {REGION_TITLES[key]}" if is_dice else "validation loss (soft Dice)")
        axes.set_xlabel("training step")
        axes.set_ylabel("validation Dice" if is_dice else "loss")
        if is_dice:
            axes.set_ylim(0, 1)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(f"{title}: mean ± std across seeds (validation patches)")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _format_spread(spread: dict[str, Any], digits: int = 3) -> str:
    return f"{spread['mean']:.{digits}f} ± {spread['std']:.{digits}f} ({spread['min']:.{digits}f}–{spread['max']:.{digits}f})"


def render_markdown(record: dict[str, Any]) -> str:
    """Return the Markdown record of an experiment from its JSON record."""
    settings, machine, budget = record["settings"], record["machine"], record["budget"]
    heldout, curves = record["heldout"], record["curves"]
    name = f"{settings['model']} with {settings['encoder']}"
    lines = [
        f"# Pretrained versus randomly initialised encoder: {name}",
        "",
        f"Run by `benchmarks/pretraining_experiment.py`, last run finished {machine['date']}, on {machine['cpu']} "
        f"({machine['cpus']} logical CPUs, torch {machine['torch']}, {machine['threads']} torch threads, device {machine['device']}).",
        "",
    ]
    load = (
        f"1-minute load average between {machine['load_min']:.1f} and {machine['load_max']:.1f} at the starts and ends "
        f"of runs, on {machine['cpus']} CPUs"
    )
    if machine["load_max"] > machine["cpus"]:
        lines += [
            f"NOTE: the CPU was shared with other jobs while this ran ({load}). Times are noisy and slower than on an "
            "idle machine. The budget is a number of steps, so the Dice values do not depend on the load unless a run "
            "was stopped by the time limit.",
            "",
        ]
    else:
        lines += [f"Machine load: {load}.", ""]
    lines += [
        "## Setup",
        "",
        f"- Data: {record['data']['cases']} labelled cases of `{record['data']['name']}`. One patient-level split for "
        f"every run (seed {record['split']['seed']}): {len(record['split']['train'])} training cases, "
        f"held-out cases: {len(record['split']['validation'])} ({', '.join(record['split']['validation'])}).",
        f"- Model: `{settings['model']}`, encoder `{settings['encoder']}`. Variants: **pretrained** (encoder weights "
        f"`{settings['encoder_weights']}`) and **scratch** (random initialisation). Seeds {settings['seeds']}; seed k of "
        "both variants shares the patch stream, the augmentation and the validation patches"
        + {True: ", and the initial decoder weights (checked)", False: ", but not the initial decoder weights (checked)", None: ""}[
            settings.get("decoder_start_shared")
        ]
        + ".",
        f"- Configuration: the shipped `{settings['model']}_imagenet` with these overrides: "
        f"`{' '.join(f'{k}={v}' for k, v in settings['common_overrides'].items())}`.",
        f"- Budget per run: {budget['steps']} steps ({budget['epochs']} epochs of {budget['batches_per_epoch']} batches) of "
        f"{budget['batch_size']} patches of {'x'.join(map(str, budget['patch_size']))} voxels"
        + (f", stopped earlier if a further epoch would pass {budget['minutes']} min" if budget["minutes"] else "")
        + f". Steps reached: {budget['steps_reached']}.",
        f"- Validation curve: Dice per region pooled over {settings['validation_patches']} fixed, un-augmented patches "
        "drawn uniformly from the brain of the held-out cases, after every epoch (step 0 is before training). The "
        "patches depend on the seed, so the spread across seeds includes the choice of patches.",
        f"- Held-out Dice: sliding-window prediction of the whole held-out cases from the last checkpoint "
        f"(settings {record['prediction_settings']}), scored with `gliomaseg.evaluation.evaluate_folders` "
        "(BraTS regions, Dice 1 where both masks are empty). Per run the mean over the held-out cases; across seeds "
        "mean ± sample standard deviation (min–max).",
        "",
    ]
    if budget["unequal"]:
        lines += [
            "NOTE: runs reached different numbers of steps (the time limit stopped some), so their budgets are not equal.",
            "",
        ]

    lines += ["## Held-out Dice (whole cases)", "", "| variant | seeds | whole tumor | tumor core | enhancing tumor |", "|---|---:|---|---|---|"]
    for variant, regions in heldout["variants"].items():
        lines.append(f"| {variant} | {regions['whole_tumor']['n']} | " + " | ".join(_format_spread(regions[r]) for r in REGIONS) + " |")
    if heldout["difference"]:
        lines.append(
            f"| pretrained − scratch (paired, seeds {heldout['paired_seeds']}) | {len(heldout['paired_seeds'])} | "
            + " | ".join(_format_spread(heldout["difference"][r]) for r in REGIONS) + " |"
        )
    lines += ["", "## Runs", "", "| run | steps | epochs | stopped by time | train min | predict s/case | Dice WT | Dice TC | Dice ET | HD95 WT mm |", "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for run in record["runs"]:
        mean = run["heldout"]["mean"]
        per_case = run["prediction_seconds_per_case"]
        lines.append(
            f"| {run_name(run['variant'], run['seed'])} | {run['steps']} | {run['epochs_completed']} | {'yes' if run['stopped_by_time'] else 'no'} | "
            f"{run['training_seconds'] / 60:.1f} | {statistics.fmean(per_case.values()):.0f} | {mean['whole_tumor']['dice']:.3f} | "
            f"{mean['tumor_core']['dice']:.3f} | {mean['enhancing_tumor']['dice']:.3f} | {mean['whole_tumor']['hd95']:.1f} |"
        )

    lines += ["", "## Validation Dice over training (mean ± std across seeds)", "", f"![curves]({record['figure']})", ""]
    header = "| step | " + " | ".join(f"{variant} {REGION_TITLES[r]}" for variant in curves for r in REGIONS) + " |"
    lines += [header, "|---:|" + "---|" * (len(curves) * len(REGIONS))]
    steps = sorted({s for columns in curves.values() for s in columns["whole_tumor"]["step"]})
    for step in steps:
        cells = []
        for columns in curves.values():
            for region in REGIONS:
                curve = columns[region]
                if step in curve["step"]:
                    i = curve["step"].index(step)
                    cells.append(f"{curve['mean'][i]:.3f} ± {curve['std'][i]:.3f}")
                else:
                    cells.append("-")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Time of the experiment: {record['compute_minutes']:.0f} min of training (with preprocessing and validation) "
        f"and held-out prediction over {len(record['runs'])} runs.",
        "",
    ]
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_record(args: argparse.Namespace, split: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Collect settings, machine, per-run results and aggregates into the JSON record."""
    import torch

    first = results[0]["overrides"]
    loads = [load for r in results for load in r["load_average"]]
    machine = {
        "date": max(r["finished"] for r in results),
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "load_min": min(loads),
        "load_max": max(loads),
    }
    compute_seconds = sum(r["training_seconds"] + sum(r["prediction_seconds_per_case"].values()) for r in results)
    per_run_keys = {"seed", "model.params.encoder_weights"}
    steps = sorted({r["steps"] for r in results})
    return {
        "settings": {
            "model": args.model,
            "encoder": args.encoder,
            "encoder_weights": args.encoder_weights,
            "seeds": sorted({r["seed"] for r in results}),
            "validation_patches": args.validation_patches,
            "common_overrides": {k: v for k, v in first.items() if k not in per_run_keys and not k.startswith("data.")},
        },
        "data": {"name": "/".join(args.data.parts[-2:]), "cases": len(split["train"]) + len(split["validation"])},
        "split": split,
        "budget": {
            "epochs": args.epochs,
            "batches_per_epoch": args.batches_per_epoch,
            "steps": args.epochs * args.batches_per_epoch,
            "batch_size": first["patches.batch_size"],
            "patch_size": first["patches.size"],
            "minutes": args.minutes,
            "steps_reached": ", ".join(map(str, steps)),
            "unequal": len(steps) > 1,
        },
        "prediction_settings": results[0]["prediction_settings"],
        "machine": machine,
        "compute_minutes": compute_seconds / 60,
        "figure": f"pretraining_{args.encoder}_{args.model}.png",
        "heldout": aggregate_heldout(results),
        "curves": aggregate_curves(results),
        "runs": results,
    }


def decoder_starts_shared(model: str, encoder: str, weights: str, seed: int = 0) -> bool:
    """Build both variants under one seed; return whether all weights outside the encoder are equal.

    Building the pretrained variant first makes unavailable weights fail before any training.

    Raises:
        gliomaseg.models.weights.WeightsUnavailableError, FileNotFoundError, ValueError: as build_model.
    """
    import lightning as L
    import torch

    from gliomaseg.models import build_model

    states = []
    for variant_weights in (weights, "none"):
        L.seed_everything(seed, verbose=False)
        network = build_model(model, encoder=encoder, encoder_weights=variant_weights)
        states.append({k: v for k, v in network.state_dict().items() if not k.startswith("encoder.")})
    return states[0].keys() == states[1].keys() and all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset folder of labelled BraTS cases")
    parser.add_argument("--model", choices=sorted(MODEL_DEFAULTS), default="albunet2d", help="network to train")
    parser.add_argument("--encoder", default="efficientnet-lite0", help="encoder name (see gliomaseg.models.list_encoders)")
    parser.add_argument("--encoder-weights", default="imagenet", help="weights of the pretrained variant: imagenet or a state-dict file")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds; each is run once per variant")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default 10 for 2D, 6 for 3D)")
    parser.add_argument("--batches-per-epoch", type=int, default=None, help="training steps per epoch (default 20 for 2D, 5 for 3D)")
    parser.add_argument("--batch-size", type=int, default=None, help="patches per step (default 8 for 2D, 2 for 3D)")
    parser.add_argument("--patch-size", type=int, nargs=3, default=None, metavar=("D", "H", "W"), help="patch size in voxels (default 1 128 128 for 2D, 8 128 128 for 3D)")
    parser.add_argument("--tumor-fraction", type=float, default=0.5, help="share of training patches centred on a tumor voxel (Wacker et al.: 0)")
    parser.add_argument("--minutes", type=float, default=None, help="optional time limit per run in minutes; runs stopped by it have unequal budgets")
    parser.add_argument("--precision", default="auto", help="training.precision (auto: bf16-mixed on CPU)")
    parser.add_argument("--num-workers", type=int, default=1, help="data-loading worker processes per run")
    parser.add_argument("--validation-patches", type=int, default=None, help="fixed validation patches per epoch (default 48 for 2D, 12 for 3D)")
    parser.add_argument("--validation-batch-size", type=int, default=None, help="patches per validation forward pass (default 16 for 2D, 4 for 3D)")
    parser.add_argument("--validation-fraction", type=float, default=0.2, help="share of cases held out")
    parser.add_argument("--split-seed", type=int, default=1, help="seed of the patient-level split")
    parser.add_argument("--predict-step", type=int, default=32, help="in-plane sliding-window step in voxels")
    parser.add_argument("--predict-depth-step", type=int, default=24, help="sliding-window step along D in voxels (3D)")
    parser.add_argument("--predict-precision", choices=["fp32", "bf16"], default="bf16", help="precision of held-out prediction")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="folder for run folders and predictions (outside the repository)")
    parser.add_argument("--records", type=Path, default=RECORDS, help="folder for the .md, .json and .png records")
    parser.add_argument("--report-only", action="store_true", help="write the records from finished runs in --work-dir without training")
    args = parser.parse_args(argv)

    if args.work_dir.resolve().is_relative_to(REPO):
        parser.error(f"--work-dir {args.work_dir} is inside the repository; choose a folder outside {REPO}")
    if not 0 < args.validation_fraction < 1:
        parser.error(f"--validation-fraction must be in (0, 1), got {args.validation_fraction}")
    args.data = args.data.resolve()
    for key, value in MODEL_DEFAULTS[args.model].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def run_experiment(args: argparse.Namespace) -> int:
    """Run or read every variant and seed, then write the records; return the exit status."""
    from gliomaseg.models.weights import WeightsUnavailableError

    shared_start = None
    if not args.report_only:
        try:
            shared_start = decoder_starts_shared(args.model, args.encoder, args.encoder_weights)
        except (WeightsUnavailableError, FileNotFoundError, ValueError) as error:
            print(
                f"pretrained weights of {args.encoder} are not available: {error}\n"
                "Pass a local weight file with --encoder-weights FILE.",
                file=sys.stderr,
            )
            return 2

    experiment_dir = args.work_dir / f"{args.encoder}_{args.model}"
    split_file = experiment_dir / "split.json"
    split = write_split(args.data, args.validation_fraction, args.split_seed, split_file)
    heldout_dir = link_heldout_cases(args.data, split["validation"], experiment_dir / "heldout")

    results = []
    # Seeds outermost, so that both variants of a seed run under similar machine load.
    for seed in args.seeds:
        for variant in VARIANTS:
            if args.report_only:
                result_path = experiment_dir / run_name(variant, seed) / RESULT_FILE
                if result_path.is_file():
                    results.append(json.loads(result_path.read_text()))
                continue
            results.append(run_one(args, variant, seed, experiment_dir, split_file, heldout_dir))
    if not results:
        print(f"no finished runs in {experiment_dir}; run the command without --report-only first", file=sys.stderr)
        return 1

    record = build_record(args, split, results)
    record["settings"]["decoder_start_shared"] = shared_start
    stem = args.records / f"pretraining_{args.encoder}_{args.model}"
    args.records.mkdir(parents=True, exist_ok=True)
    plot_curves(record["curves"], f"{args.model}, {args.encoder}", stem.with_suffix(".png"))
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    stem.with_suffix(".md").write_text(render_markdown(record))
    print(f"wrote {stem}.md, .json and .png")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.data.is_dir():
        print(f"dataset folder {args.data} not found; pass --data DATASET (a folder of labelled BraTS cases)", file=sys.stderr)
        return 1

    try:
        return run_experiment(args)
    except SettingsMismatchError as error:
        print(error, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
