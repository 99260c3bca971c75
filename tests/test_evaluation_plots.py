"""Figures: valid PNGs with content, overlay orientation, training curves from CSV logs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from gliomaseg.evaluation import CaseResult, plot_boxplots, plot_overlay, plot_training_curves, read_training_log
from gliomaseg.evaluation.plots import _slices, _to_ras

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png_with_content(path: Path) -> np.ndarray:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = imread(str(path))
    assert pixels.shape[0] > 100
    assert pixels.shape[1] > 100
    # A blank canvas has one colour; a drawn figure has many.
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20
    return pixels


def _label_volume() -> np.ndarray:
    classes = np.zeros((40, 36, 24), dtype=np.uint8)
    classes[10:24, 12:26, 6:16] = 2
    classes[13:21, 15:23, 8:14] = 3
    classes[15:19, 17:21, 9:12] = 1
    return classes


def test_overlay_png_has_content(tmp_path):
    classes = _label_volume()
    rng = np.random.default_rng(0)
    flair = rng.normal(100, 10, classes.shape) + 50 * (classes > 0)
    t1c = rng.normal(80, 10, classes.shape) + 80 * (classes == 3)
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])
    out = plot_overlay(
        tmp_path / "case.png", affine, prediction=classes, reference=classes, images={"FLAIR": flair, "T1c": t1c}
    )
    pixels = _assert_png_with_content(out)
    # Red (core), green (edema) and yellow (enhancing) are all drawn.
    rgb = pixels[..., :3]
    assert np.any((rgb[..., 0] > 0.6) & (rgb[..., 1] < 0.35))
    assert np.any((rgb[..., 1] > 0.5) & (rgb[..., 0] < 0.35))
    assert np.any((rgb[..., 0] > 0.6) & (rgb[..., 1] > 0.6) & (rgb[..., 2] < 0.35))


def test_overlay_without_images_or_reference(tmp_path):
    out = plot_overlay(tmp_path / "pred_only.png", np.eye(4), prediction=_label_volume())
    _assert_png_with_content(out)


def test_overlay_rejects_shape_mismatch(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        plot_overlay(tmp_path / "x.png", np.eye(4), prediction=_label_volume(), images={"FLAIR": np.zeros((3, 3, 3))})


def test_overlay_views_radiological_orientation():
    # LPS voxel order: array axis 0 runs to the patient's left, axis 1 to posterior.
    volume = np.zeros((10, 12, 8))
    volume[0, 0, 4] = 1.0  # the voxel farthest right and farthest anterior in slice 4
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    oriented, spacing = _to_ras(volume, affine)
    axial, _ = _slices(oriented, (5, 6, 4), spacing)[0]
    row, column = np.argwhere(axial == 1.0)[0]
    assert row == 0  # anterior at the top
    assert column == 0  # patient's right on the image's left


def test_overlay_views_aspect_follows_spacing():
    affine = np.diag([0.5, 0.5, 3.0, 1.0])
    oriented, spacing = _to_ras(np.zeros((8, 8, 4)), affine)
    (_, axial_aspect), (_, coronal_aspect), (_, sagittal_aspect) = _slices(oriented, (4, 4, 2), spacing)
    assert axial_aspect == pytest.approx(1.0)
    assert coronal_aspect == pytest.approx(6.0)
    assert sagittal_aspect == pytest.approx(6.0)


def test_boxplots_one_file_per_region(tmp_path):
    results = []
    for method, base in (("3D", 0.8), ("2D", 0.6)):
        for index in range(5):
            value = base + 0.02 * index
            metrics = {"dice": value, "hd95": 5.0 - value, "sensitivity": value, "specificity": 1.0}
            scores = {r: dict(metrics) for r in ("whole_tumor", "tumor_core", "enhancing_tumor")}
            results.append(CaseResult(method=method, case_id=f"c{index}", status="ok", scores=scores))
    paths = plot_boxplots(results, tmp_path, "dice")
    assert [p.name for p in paths] == [
        "boxplot_dice_whole_tumor.png",
        "boxplot_dice_tumor_core.png",
        "boxplot_dice_enhancing_tumor.png",
    ]
    for path in paths:
        _assert_png_with_content(path)


COLUMNS = ["epoch", "step", "train_loss", "val_loss", "val_dice_whole_tumor", "val_dice_tumor_core", "val_dice_enhancing_tumor"]


def _write_log(path: Path, epochs: int, offset: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        step = 0
        for epoch in range(epochs):
            for loss in (1.0 - 0.1 * epoch, 0.9 - 0.1 * epoch):
                writer.writerow([epoch, step, loss + offset, "", "", "", ""])
                step += 1
            dice_value = min(0.2 + 0.1 * epoch + offset, 1.0)
            writer.writerow([epoch, step, "", 0.8 - 0.05 * epoch, dice_value, dice_value - 0.1, dice_value - 0.2])
    return path


def test_read_training_log_per_epoch(tmp_path):
    curves = read_training_log(_write_log(tmp_path / "run" / "metrics.csv", 3, 0.0))
    assert curves["train_loss"][1] == pytest.approx(0.85)
    assert curves["val_dice_whole_tumor"][2] == pytest.approx(0.4)
    assert sorted(curves["val_loss"]) == [0, 1, 2]


def test_read_training_log_finds_csv_in_run_folder(tmp_path):
    _write_log(tmp_path / "run" / "logs" / "version_0" / "metrics.csv", 2, 0.0)
    curves = read_training_log(tmp_path / "run")
    assert sorted(curves["val_dice_tumor_core"]) == [0, 1]


def test_read_training_log_rejects_other_columns(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,accuracy\n0,0.5\n")
    with pytest.raises(ValueError, match="val_dice_whole_tumor"):
        read_training_log(path)


def test_training_curves_several_runs(tmp_path):
    runs = [_write_log(tmp_path / f"run{i}" / "metrics.csv", 4, 0.05 * i) for i in range(3)]
    out = plot_training_curves(runs, tmp_path / "curves.png")
    _assert_png_with_content(out)


def test_training_curves_cli(tmp_path):
    from gliomaseg.cli import main

    run = _write_log(tmp_path / "run" / "metrics.csv", 3, 0.0).parent
    code = main(["evaluate", "--curves", str(run), "--output", str(tmp_path / "out")])
    assert code == 0
    _assert_png_with_content(tmp_path / "out" / "training_curves.png")
