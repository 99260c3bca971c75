"""The whole path on synthetic cases: make a cohort, train, predict held-out cases, evaluate.

`run_demo` needs no network and no GPU. It writes one folder:

    <output>/data/train/      synthetic training cases (BraTS 2017 layout)
    <output>/data/test/       held-out synthetic cases with reference label maps
    <output>/run/             the training run (config.yaml, split.json, metrics.csv, checkpoints)
    <output>/predictions/     one label map and one JSON report per held-out case
    <output>/report/          report.md, metrics_per_case.csv, summary.json, box plots,
                              overlays/<case>.png and training_curve.png

The encoder starts from random weights because ImageNet weights need a download; pass a
local ResNet34 state dict with `encoder_weights` to start from ImageNet.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gliomaseg.data.labels import REGIONS

log = logging.getLogger(__name__)

# Grid of the synthetic cases in voxels (left-right, posterior-anterior, inferior-superior).
DEMO_SHAPE = (80, 80, 48)
# Patch size (D, H, W) and batch size per model; small enough for a few minutes on a CPU.
DEMO_PATCHES = {"albunet2d": ([1, 64, 64], 16), "albunet3d": ([8, 64, 64], 4)}


@dataclass
class DemoResult:
    """Outcome of the demo: folders written, mean Dice per region and stage times in seconds."""

    output: Path
    report: Path
    dice: dict[str, float]
    seconds: dict[str, float]


def demo_config(
    model: str,
    dataset: Path,
    minutes: float,
    seed: int,
    encoder_weights: str | None,
    epochs: int = 40,
    batches_per_epoch: int = 20,
) -> dict[str, Any]:
    """Return the training configuration of the demo for `model` ("albunet2d" or "albunet3d")."""
    if model not in DEMO_PATCHES:
        raise ValueError(f"unknown demo model {model!r}; choose albunet2d or albunet3d")
    patch_size, batch_size = DEMO_PATCHES[model]
    return {
        "seed": seed,
        "data": {"dataset": str(dataset), "validation_fraction": 0.25},
        "model": {"name": model, "params": {"encoder_weights": encoder_weights}},
        # Half of the patches are centred on tumor, so short runs on small cohorts see enough of it.
        "patches": {"size": patch_size, "batch_size": batch_size, "tumor_fraction": 0.5},
        # Soft Dice alone (the paper's loss) gives no reward for background, so short runs
        # mark large healthy areas as necrotic core. Cross-entropy, added as nnU-Net does,
        # penalises every wrong voxel.
        "loss": {"include_background": False, "cross_entropy_weight": 1.0},
        "training": {
            "epochs": epochs,
            "batches_per_epoch": batches_per_epoch,
            "max_minutes": minutes,
            "num_workers": 1,
        },
        "validation": {"patches": 16},
    }


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"{output} exists and is not empty; choose another --output or pass --overwrite")


def run_demo(
    output: str | Path = "gliomaseg-demo",
    model: str = "albunet2d",
    cases: int = 16,
    test_cases: int = 4,
    minutes: float = 6.0,
    seed: int = 0,
    encoder_weights: str | None = None,
    overwrite: bool = False,
    shape: tuple[int, int, int] = DEMO_SHAPE,
    epochs: int = 40,
    batches_per_epoch: int = 20,
) -> DemoResult:
    """Train on synthetic cases, segment held-out ones and write a report folder.

    Args:
        output: folder for everything the demo writes.
        model: "albunet2d" or "albunet3d".
        cases: synthetic training cases (a quarter of them validate during training).
        test_cases: held-out synthetic cases that are predicted and evaluated.
        minutes: training time budget.
        seed: seed of the cohort, the split, the sampling and the initialisation.
        encoder_weights: None (random), "imagenet" (needs a download), or a local ResNet34
            state-dict file.
        overwrite: reuse a non-empty output folder, replacing the demo's files in it.
        shape: grid of the synthetic cases in voxels.
        epochs, batches_per_epoch: training length; `minutes` stops it earlier.

    Returns:
        A DemoResult with the report path and the mean Dice per region on the held-out cases.
    """
    from gliomaseg.data.synthetic import make_synthetic_dataset
    from gliomaseg.evaluation import evaluate_folders, plot_training_curves, summarize, write_evaluation
    from gliomaseg.inference import predict_cases
    from gliomaseg.training import train

    if cases < 4:
        raise ValueError(f"the demo needs at least 4 training cases, got {cases}")
    if test_cases < 1:
        raise ValueError(f"the demo needs at least 1 held-out case, got {test_cases}")
    output = Path(output)
    _check_output(output, overwrite)
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    train_dir = make_synthetic_dataset(output / "data" / "train", cases, shape, seed=seed, prefix="Train")
    test_dir = make_synthetic_dataset(output / "data" / "test", test_cases, shape, seed=seed + 1, prefix="Test")
    seconds["make cohort"] = time.perf_counter() - start
    log.info("wrote %d training and %d held-out synthetic cases in %.1f s", cases, test_cases, seconds["make cohort"])

    start = time.perf_counter()
    config = demo_config(model, train_dir, minutes, seed, encoder_weights, epochs, batches_per_epoch)
    run = train(config, output_dir=output / "run", overwrite=overwrite)
    seconds["train"] = time.perf_counter() - start
    checkpoint = run.best_checkpoint or run.last_checkpoint
    log.info("trained %d epochs in %.0f s; using %s", run.epochs_completed, seconds["train"], checkpoint)

    start = time.perf_counter()
    predictions = output / "predictions"
    summary = predict_cases(checkpoint, test_dir, predictions, overwrite=True, step=16, depth_step=4)
    seconds["predict"] = time.perf_counter() - start
    if summary.failed:
        raise RuntimeError(f"prediction failed for {len(summary.failed)} held-out case(s); see the log above")

    start = time.perf_counter()
    report_dir = output / "report"
    method = "AlbuNet3D" if model == "albunet3d" else "AlbuNet2D"
    results, references = evaluate_folders({method: predictions}, test_dir)
    written = write_evaluation(results, references, report_dir, progress=False)
    plot_training_curves([run.run_dir], report_dir / "training_curve.png")
    seconds["evaluate"] = time.perf_counter() - start

    scores = summarize(results)
    dice = {region: float(scores[method]["regions"][region]["dice"]["mean"]) for region in REGIONS}
    return DemoResult(output, Path(written["report"]), dice, seconds)
