"""Overlap and distance metrics of a predicted label map against a reference, per region.

Metrics per region (whole tumor, tumor core, enhancing tumor), with P the predicted mask,
R the reference mask and N the number of voxels in the volume:

- Dice = 2 |P and R| / (|P| + |R|);
- HD95: the 95th-percentile Hausdorff distance in mm between the surfaces of P and R. It is
  computed by MONAI's ``compute_hausdorff_distance`` (percentile 95, symmetric, Euclidean,
  voxel spacing applied): the larger of the two directed 95th percentiles of the distances
  from each surface voxel of one mask to the nearest surface voxel of the other;
- sensitivity = |P and R| / |R| (true positive rate);
- specificity = |not P and not R| / |not R| (true negative rate over every voxel of the volume,
  as the BraTS evaluation computes it, so it is close to 1 for any sensible prediction).

Empty masks follow the BraTS conventions and every metric is a finite number:

| reference | prediction | Dice | HD95 | sensitivity | specificity |
|---|---|---|---|---|---|
| empty | empty | 1 | 0 | 1 | computed (1) |
| empty | not empty | 0 | `HD95_ONE_EMPTY_MM` | 0 | computed |
| not empty | empty | 0 | `HD95_ONE_EMPTY_MM` | computed (0) | computed |

Sensitivity with an empty reference has no true positives to find, so it mirrors Dice: 1 when
the prediction is empty too, 0 when the prediction marks a region that is not there.
Specificity with a reference that covers every voxel (no negatives) is 1 when the prediction
also covers every voxel and 0 otherwise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

from gliomaseg.data.labels import REGIONS, LabelSchema, region_masks_from_classes, to_model_classes

# HD95 where exactly one of prediction and reference is empty: the diagonal of the BraTS
# grid of 240 x 240 x 155 voxels of 1 mm, sqrt(240^2 + 240^2 + 155^2) = 373.13 mm, the
# largest distance two voxels of a BraTS volume can have.
HD95_ONE_EMPTY_MM = 373.13

METRICS = ("dice", "hd95", "sensitivity", "specificity")
# Per-region values evaluate_case reports besides the metrics: region volumes in millilitres.
VOLUMES = ("volume_pred_ml", "volume_ref_ml")


def _check_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction mask has shape {pred.shape} but the reference mask has {ref.shape}")
    return pred, ref


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing {spacing} must give one positive voxel size in mm per array axis ({ndim})")
    return spacing


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Return the Dice coefficient of two boolean masks of one shape; 1.0 when both are empty."""
    pred, ref = _check_pair(pred, ref)
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def sensitivity(pred: np.ndarray, ref: np.ndarray) -> float:
    """Return |pred and ref| / |ref|; with an empty reference 1.0 if pred is empty, else 0.0."""
    pred, ref = _check_pair(pred, ref)
    positives = int(ref.sum())
    if positives == 0:
        return 1.0 if not pred.any() else 0.0
    return int(np.logical_and(pred, ref).sum()) / positives


def specificity(pred: np.ndarray, ref: np.ndarray) -> float:
    """Return |not pred and not ref| / |not ref| over all voxels; see the module notes for no negatives."""
    pred, ref = _check_pair(pred, ref)
    negatives = int(ref.size - ref.sum())
    if negatives == 0:
        return 1.0 if pred.all() else 0.0
    return int(np.logical_and(~pred, ~ref).sum()) / negatives


def _bounding_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Return slices of the box around the True voxels of `mask`, grown by `margin`; None if empty."""
    box = []
    for axis in range(mask.ndim):
        other_axes = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other_axes))
        if present.size == 0:
            return None
        start = max(int(present[0]) - margin, 0)
        stop = min(int(present[-1]) + 1 + margin, mask.shape[axis])
        box.append(slice(start, stop))
    return tuple(box)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """Return the 95th-percentile Hausdorff distance between two boolean masks, in mm.

    Args:
        pred, ref: boolean masks of one shape (2D or 3D).
        spacing: voxel size in mm along each array axis.

    Returns:
        HD95 in mm; 0.0 when both masks are empty and `HD95_ONE_EMPTY_MM` when exactly one is.

    Raises:
        ValueError: the shapes differ or the spacing does not fit the masks.
    """
    pred, ref = _check_pair(pred, ref)
    spacing = _check_spacing(spacing, pred.ndim)
    pred_empty, ref_empty = not pred.any(), not ref.any()
    if pred_empty and ref_empty:
        return 0.0
    if pred_empty or ref_empty:
        return HD95_ONE_EMPTY_MM

    # Distances only involve voxels of the two masks, so the box around both (with one voxel
    # of background around it, which the surface extraction needs) gives the same result.
    box = _bounding_box(pred | ref, margin=1)
    pred_tensor = torch.from_numpy(np.ascontiguousarray(pred[box]))[None, None]
    ref_tensor = torch.from_numpy(np.ascontiguousarray(ref[box]))[None, None]
    with warnings.catch_warnings():
        # MONAI 1.5-1.6 warns about one of its own deprecated arguments on every call.
        warnings.simplefilter("ignore", FutureWarning)
        distance = compute_hausdorff_distance(pred_tensor, ref_tensor, percentile=95, spacing=spacing)
    return float(distance.item())


def score_masks(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict[str, float]:
    """Return Dice, HD95 (mm), sensitivity, specificity and both volumes (ml) for two boolean masks."""
    pred, ref = _check_pair(pred, ref)
    spacing = _check_spacing(spacing, pred.ndim)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {
        "dice": dice(pred, ref),
        "hd95": hd95(pred, ref, spacing),
        "sensitivity": sensitivity(pred, ref),
        "specificity": specificity(pred, ref),
        "volume_pred_ml": int(pred.sum()) * voxel_ml,
        "volume_ref_ml": int(ref.sum()) * voxel_ml,
    }


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    pred_schema: str | LabelSchema = "brats2017",
    ref_schema: str | LabelSchema = "brats2017",
) -> dict[str, dict[str, float]]:
    """Score a predicted label map against a reference label map, region by region.

    Each label map is read in its own schema, so a BraTS 2020 prediction (enhancing tumor 4)
    and a BraTS 2023 reference (enhancing tumor 3) are compared correctly.

    Args:
        pred: predicted label map (integer values of `pred_schema`), shape (X, Y, Z).
        ref: reference label map of the same shape, in `ref_schema`.
        spacing: voxel size in mm along the three array axes.
        pred_schema, ref_schema: label schemas (names such as "brats2020" or LabelSchema).

    Returns:
        {region: {"dice", "hd95" (mm), "sensitivity", "specificity", "volume_pred_ml",
        "volume_ref_ml"}} for the regions whole_tumor, tumor_core and enhancing_tumor.

    Raises:
        ValueError: the shapes differ or the spacing is invalid.
        LabelError: a label map contains a value that its schema does not define.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction has shape {pred.shape} but the reference has {ref.shape}")
    spacing = _check_spacing(spacing, pred.ndim)

    # Every label value other than background lies in the box around the non-zero voxels of
    # both maps, so converting (and checking) the labels inside the box covers all of them.
    # Outside the box both sides are background: those voxels only add true negatives, which
    # are counted here to keep specificity over the whole volume.
    box = _bounding_box((pred != 0) | (ref != 0), margin=1)
    if box is None:
        box = tuple(slice(0, 1) for _ in pred.shape)
    outside_voxels = pred.size - int(np.prod([s.stop - s.start for s in box]))
    pred_regions = region_masks_from_classes(to_model_classes(pred[box], pred_schema))
    ref_regions = region_masks_from_classes(to_model_classes(ref[box], ref_schema))

    scores: dict[str, dict[str, float]] = {}
    for region in REGIONS:
        region_pred, region_ref = pred_regions[region], ref_regions[region]
        region_scores = score_masks(region_pred, region_ref, spacing)
        negatives = int(region_ref.size - region_ref.sum()) + outside_voxels
        true_negatives = int(np.logical_and(~region_pred, ~region_ref).sum()) + outside_voxels
        if negatives > 0:
            region_scores["specificity"] = true_negatives / negatives
        scores[region] = region_scores
    return scores
