"""Figures: box plots per region and method, overlays of label maps on MRI, training curves.

Figures are drawn on matplotlib's Agg canvas without pyplot, so no display is needed and
the global backend stays untouched.

Label colours follow the BraTS papers (Bakas et al. 2018): necrotic/non-enhancing core red,
edema green, enhancing tumor yellow, drawn at 50 % opacity over the grey-scale image.

Overlays are shown in radiological convention: the patient's right on the left of axial and
coronal views, anterior on the left of sagittal views, superior and anterior at the top.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from gliomaseg.data.labels import REGIONS
from gliomaseg.evaluation.folders import CaseResult
from gliomaseg.evaluation.summary import METRIC_TITLES, REGION_TITLES, methods_of

log = logging.getLogger(__name__)

# RGBA per model class: background transparent, core red, edema green, enhancing yellow.
LABEL_COLOURS = (
    (0.0, 0.0, 0.0, 0.0),
    (0.90, 0.10, 0.10, 0.5),
    (0.10, 0.80, 0.10, 0.5),
    (1.00, 0.90, 0.00, 0.5),
)
LABEL_NAMES = ("necrotic/non-enhancing core", "edema", "enhancing tumor")
TRAINING_DICE_COLUMNS = {
    "whole_tumor": "val_dice_whole_tumor",
    "tumor_core": "val_dice_tumor_core",
    "enhancing_tumor": "val_dice_enhancing_tumor",
}


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=figure.dpi)
    return path


# --- box plots ---------------------------------------------------------------------------


def plot_boxplots(results: Sequence[CaseResult], output_dir: str | Path, metric: str = "dice") -> list[Path]:
    """Draw one box plot per region with one box per method, each case as a dot.

    Args:
        results: per-case results of one or several methods; unscored cases are left out.
        output_dir: folder for ``boxplot_<metric>_<region>.png``.
        metric: "dice", "hd95", "sensitivity" or "specificity".

    Returns:
        The written PNG paths, in region order.
    """
    output_dir = Path(output_dir)
    methods = methods_of(results)
    paths = []
    for region in REGIONS:
        values = [[r.scores[region][metric] for r in results if r.method == m and r.scored] for m in methods]
        figure = Figure(figsize=(max(3.5, 1.2 * len(methods) + 1.5), 4.0), dpi=100, layout="constrained")
        axes = figure.add_subplot()
        positions = np.arange(1, len(methods) + 1)
        drawn = [(p, v) for p, v in zip(positions, values) if v]
        if drawn:
            axes.boxplot([v for _, v in drawn], positions=[p for p, _ in drawn], widths=0.5, showfliers=False)
        rng = np.random.default_rng(0)
        for position, method_values in drawn:
            jitter = rng.uniform(-0.12, 0.12, size=len(method_values))
            axes.scatter(position + jitter, method_values, s=10, alpha=0.6, color="tab:blue", zorder=3)
        axes.set_xticks(positions, [f"{m}\n(n={len(v)})" for m, v in zip(methods, values)])
        axes.set_xlim(0.5, len(methods) + 0.5)
        axes.set_ylabel(METRIC_TITLES[metric])
        if metric != "hd95":
            axes.set_ylim(-0.02, 1.02)
        axes.set_title(f"{METRIC_TITLES[metric]}, {REGION_TITLES[region].lower()}")
        axes.grid(axis="y", alpha=0.3)
        paths.append(_save(figure, output_dir / f"boxplot_{metric}_{region}.png"))
    return paths


# --- overlays ----------------------------------------------------------------------------


def _to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder `array` to the RAS-closest axis order; return it and the voxel sizes in mm."""
    orientation = nib.orientations.io_orientation(affine)
    reoriented = nib.orientations.apply_orientation(array, orientation)
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    spacing = np.empty(3)
    for axis, (target, _) in enumerate(orientation):
        spacing[int(target)] = zooms[axis]
    return reoriented, spacing


def _centre(*class_maps: np.ndarray | None) -> tuple[int, int, int]:
    """Return the rounded centroid of the first non-empty tumor mask, else the volume centre."""
    shape = next(m.shape for m in class_maps if m is not None)
    for classes in class_maps:
        if classes is not None and classes.any():
            coordinates = np.argwhere(classes > 0)
            return tuple(int(round(c)) for c in coordinates.mean(axis=0))
    return tuple(s // 2 for s in shape)


def _slices(volume: np.ndarray, centre: tuple[int, int, int], spacing: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """Return (2D image with rows top to bottom, pixel aspect) for axial, coronal, sagittal views."""
    x, y, z = centre
    axial = volume[::-1, :, z].T[::-1]  # rows anterior -> posterior, columns right -> left
    coronal = volume[::-1, y, :].T[::-1]  # rows superior -> inferior, columns right -> left
    sagittal = volume[x, ::-1, :].T[::-1]  # rows superior -> inferior, columns anterior -> posterior
    return [
        (axial, spacing[1] / spacing[0]),
        (coronal, spacing[2] / spacing[0]),
        (sagittal, spacing[2] / spacing[1]),
    ]


def _window(image: np.ndarray) -> tuple[float, float]:
    foreground = image[image != 0]
    if foreground.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(foreground, (0.5, 99.5))
    return float(low), float(max(high, low + 1e-6))


def plot_overlay(
    out_png: str | Path,
    affine: np.ndarray,
    *,
    prediction: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    images: Mapping[str, np.ndarray] | None = None,
    title: str = "",
) -> Path:
    """Draw axial, coronal and sagittal slices through the tumor centre with the label maps in colour.

    Rows are the three views. For each underlay image (for example FLAIR and T1c) there is a
    column with the prediction and, next to it, a column with the reference. The slices
    pass through the centroid of the reference's whole tumor, or the prediction's where the
    reference is absent or empty.

    Args:
        out_png: output PNG path.
        affine: voxel-to-mm affine shared by all arrays (used to orient the views).
        prediction, reference: model-class maps (0-3) in file voxel order; at least one.
        images: {title: intensity volume of the same shape}, for example {"FLAIR": ..., "T1c": ...};
            without images the label maps are drawn on black.
        title: figure title, for example the case id.

    Returns:
        out_png as a Path.

    Raises:
        ValueError: neither label map is given, or the arrays' shapes differ.
    """
    label_maps = {"prediction": prediction, "reference": reference}
    label_maps = {name: m for name, m in label_maps.items() if m is not None}
    if not label_maps:
        raise ValueError("plot_overlay needs a prediction, a reference or both")
    images = dict(images or {})
    shapes = {np.shape(a) for a in [*label_maps.values(), *images.values()]}
    if len(shapes) != 1:
        raise ValueError(f"label maps and images must share one shape, found {sorted(shapes)}")
    if not images:
        images = {"no image": np.zeros(next(iter(shapes)), dtype=np.float32)}

    oriented_labels = {name: _to_ras(np.asarray(m), affine)[0] for name, m in label_maps.items()}
    oriented_images = {}
    spacing = None
    for name, image in images.items():
        oriented_images[name], spacing = _to_ras(np.asarray(image, dtype=np.float32), affine)
    centre = _centre(oriented_labels.get("reference"), oriented_labels.get("prediction"))
    colours = ListedColormap(LABEL_COLOURS)

    columns = [(image_name, label_name) for image_name in oriented_images for label_name in oriented_labels]
    # Each row is as tall as its view's physical height relative to its width.
    extent = np.asarray(next(iter(oriented_images.values())).shape) * spacing
    row_ratios = [extent[1] / extent[0], extent[2] / extent[0], extent[2] / extent[1]]
    panel_width = 2.6
    figure_size = (panel_width * len(columns), panel_width * sum(row_ratios) + 1.0)
    figure = Figure(figsize=figure_size, dpi=100, layout="constrained")
    grid = figure.subplots(3, len(columns), squeeze=False, gridspec_kw={"height_ratios": row_ratios})
    for column, (image_name, label_name) in enumerate(columns):
        low, high = _window(oriented_images[image_name])
        image_views = _slices(oriented_images[image_name], centre, spacing)
        label_views = _slices(oriented_labels[label_name], centre, spacing)
        for row, ((image_slice, aspect), (label_slice, _)) in enumerate(zip(image_views, label_views)):
            axes = grid[row, column]
            axes.imshow(image_slice, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
            axes.imshow(label_slice, cmap=colours, vmin=0, vmax=3, aspect=aspect, interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            if row == 0:
                axes.set_title(f"{image_name} + {label_name}", fontsize=9)
            if column == 0:
                axes.set_ylabel(("axial", "coronal", "sagittal")[row], fontsize=9)
    legend = [Patch(color=LABEL_COLOURS[c][:3], label=LABEL_NAMES[c - 1]) for c in (1, 2, 3)]
    figure.legend(handles=legend, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, Path(out_png))


# --- training curves ---------------------------------------------------------------------


def _find_metrics_csv(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: training run folder or metrics.csv not found")
    if (path / "metrics.csv").is_file():
        return path / "metrics.csv"
    found = sorted(path.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"{path}: no metrics.csv in this training run folder")
    if len(found) > 1:
        log.info("%s: %d metrics.csv files; using the newest, %s", path, len(found), found[-1])
    return found[-1]


def _float_or_none(text: str | None) -> float | None:
    if text is None or not text.strip():
        return None
    value = float(text)
    return None if math.isnan(value) else value


def read_training_log(path: str | Path) -> dict[str, dict[int, float]]:
    """Read a training run's metrics.csv into {column: {epoch: value}}.

    The CSV has the columns ``epoch, step, train_loss, val_loss, val_dice_whole_tumor,
    val_dice_tumor_core, val_dice_enhancing_tumor``; rows may log only some of them (empty
    cells). Per epoch, train_loss is the mean of its logged values and every other column
    takes the last value logged in that epoch.

    Args:
        path: a metrics.csv file or a run folder containing one (searched recursively).

    Raises:
        FileNotFoundError: no metrics.csv was found.
        ValueError: the file lacks the epoch column or every validation Dice column.
    """
    csv_path = _find_metrics_csv(Path(path))
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        rows = list(reader)
    wanted = ("train_loss", "val_loss", *TRAINING_DICE_COLUMNS.values())
    if "epoch" not in columns or not any(c in columns for c in TRAINING_DICE_COLUMNS.values()):
        raise ValueError(
            f"{csv_path}: expected the columns epoch, {', '.join(wanted)}; found {', '.join(columns) or 'none'}"
        )

    sums: dict[int, list[float]] = {}
    curves: dict[str, dict[int, float]] = {c: {} for c in wanted}
    for line, row in enumerate(rows, start=2):
        try:
            epoch = int(float(row["epoch"]))
            values = {c: _float_or_none(row.get(c)) for c in wanted}
        except ValueError as error:
            raise ValueError(f"{csv_path}, line {line}: not a number ({error})") from error
        for column, value in values.items():
            if value is None:
                continue
            if column == "train_loss":
                sums.setdefault(epoch, []).append(value)
            else:
                curves[column][epoch] = value
    curves["train_loss"] = {epoch: float(np.mean(v)) for epoch, v in sums.items()}
    return curves


def _mean_and_band(runs: list[dict[int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    epochs = sorted(set().union(*runs))
    means, stds = [], []
    for epoch in epochs:
        values = [run[epoch] for run in runs if epoch in run]
        means.append(np.mean(values))
        stds.append(np.std(values))
    return np.asarray(epochs), np.asarray(means), np.asarray(stds)


def plot_training_curves(csv_paths: Sequence[str | Path], out_png: str | Path) -> Path:
    """Plot losses and validation Dice per region over epochs for one or several training runs.

    With several runs each curve is the mean across the runs that logged that epoch, with a
    band of plus and minus one standard deviation (population, ddof=0).

    Args:
        csv_paths: metrics.csv files or training run folders (see read_training_log).
        out_png: output PNG path.

    Returns:
        out_png as a Path.

    Raises:
        ValueError: no path is given, or a file lacks the expected columns.
        FileNotFoundError: a run has no metrics.csv.
    """
    if not csv_paths:
        raise ValueError("plot_training_curves needs at least one metrics.csv or run folder")
    logs = [read_training_log(p) for p in csv_paths]
    band_note = f"mean ± std over {len(logs)} runs" if len(logs) > 1 else "one run"

    figure = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    loss_axes, dice_axes = figure.subplots(1, 2)
    series = [
        (loss_axes, "train_loss", "training loss", "tab:gray"),
        (loss_axes, "val_loss", "validation loss", "tab:purple"),
        (dice_axes, TRAINING_DICE_COLUMNS["whole_tumor"], REGION_TITLES["whole_tumor"], "tab:green"),
        (dice_axes, TRAINING_DICE_COLUMNS["tumor_core"], REGION_TITLES["tumor_core"], "tab:red"),
        (dice_axes, TRAINING_DICE_COLUMNS["enhancing_tumor"], REGION_TITLES["enhancing_tumor"], "goldenrod"),
    ]
    for axes, column, label, colour in series:
        runs = [log_[column] for log_ in logs if log_[column]]
        if not runs:
            continue
        epochs, mean, std = _mean_and_band(runs)
        axes.plot(epochs, mean, color=colour, label=label, marker="o" if len(epochs) < 20 else None, markersize=3)
        if len(runs) > 1:
            axes.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("loss")
    loss_axes.set_title(f"Loss ({band_note})")
    dice_axes.set_xlabel("epoch")
    dice_axes.set_ylabel("validation Dice")
    dice_axes.set_ylim(0, 1)
    dice_axes.set_title(f"Validation Dice per region ({band_note})")
    for axes in (loss_axes, dice_axes):
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8)
    return _save(figure, Path(out_png))
