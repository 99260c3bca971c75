"""Score folders of predicted label maps (one or several methods) against reference label maps.

Every case ends up as one CaseResult per method. A case that cannot be scored (a prediction
without a reference or the reverse, different shapes or affines, an unreadable file, label
values outside the schema) is kept with a status and a reason instead of stopping the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gliomaseg.data.io import ImageError, Volume, load_volume
from gliomaseg.data.labels import LabelError, LabelSchema
from gliomaseg.evaluation.metrics import evaluate_case
from gliomaseg.evaluation.pairing import LabelSource, ReferenceSet, find_predictions, find_references, infer_schema

log = logging.getLogger(__name__)

# Largest difference between the affines of a prediction and its reference, in mm
# (translation) or mm per voxel (rotation and scaling entries), that still counts as one grid.
AFFINE_TOLERANCE = 1e-3

STATUS_OK = "ok"
STATUS_SCORED_AS_EMPTY = "missing_prediction_scored_as_empty"
STATUS_MISSING_REFERENCE = "missing_reference"
STATUS_MISSING_PREDICTION = "missing_prediction"
STATUS_SHAPE_MISMATCH = "shape_mismatch"
STATUS_AFFINE_MISMATCH = "affine_mismatch"
STATUS_UNREADABLE = "unreadable"
STATUS_INVALID_LABELS = "invalid_labels"
# Statuses whose metrics exist and enter the summaries.
SCORED_STATUSES = (STATUS_OK, STATUS_SCORED_AS_EMPTY)


@dataclass
class CaseResult:
    """The outcome of one method on one case: metrics per region, or why there are none."""

    method: str
    case_id: str
    status: str
    reason: str = ""
    pred_path: Path | None = None
    ref_path: Path | None = None
    pred_schema: str = ""
    ref_schema: str = ""
    spacing: tuple[float, ...] = ()
    # {region: {metric: value}} as evaluate_case returns it; empty unless scored.
    scores: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def scored(self) -> bool:
        return self.status in SCORED_STATUSES


@dataclass
class _LoadedLabel:
    volume: Volume
    schema: LabelSchema
    schema_ambiguous: bool


def _load_label(source: LabelSource, role: str) -> _LoadedLabel:
    """Load a label map and settle its schema. Raises ImageError or LabelError."""
    volume = load_volume(source.path, role=f"{role} label map")
    array = volume.array
    if np.issubdtype(array.dtype, np.floating):
        if not np.array_equal(array, np.round(array)):
            raise LabelError(f"{source.path}: {role} label map contains non-integer values; expected integer labels. Save it with an integer data type")
        volume.array = array.astype(np.int16)
    if source.schema is not None:
        return _LoadedLabel(volume, source.schema, False)
    schema, ambiguous = infer_schema(volume.array)
    return _LoadedLabel(volume, schema, ambiguous)


def _geometry_problem(pred: Volume, ref: Volume, tolerance: float) -> tuple[str, str] | None:
    if pred.shape != ref.shape:
        return STATUS_SHAPE_MISMATCH, (
            f"prediction {pred.path} has shape {pred.shape} but reference {ref.path} has {ref.shape}; "
            "write the prediction in the reference's voxel grid"
        )
    difference = float(np.abs(pred.affine - ref.affine).max())
    if difference > tolerance:
        return STATUS_AFFINE_MISMATCH, (
            f"the affine of prediction {pred.path} differs from that of reference {ref.path} by up to "
            f"{difference:.4g} (tolerance {tolerance:g}); the two are not in one voxel grid"
        )
    return None


@dataclass
class _SchemaWarnings:
    """Log the ambiguous-schema warning once per method and side."""

    seen: set[tuple[str, str]] = field(default_factory=set)

    def note(self, method: str, side: str, path: Path, schema: LabelSchema) -> None:
        if (method, side) in self.seen:
            return
        self.seen.add((method, side))
        option = "--pred-schema" if side == "prediction" else "--ref-schema"
        log.warning(
            "%s: %s label map contains label 3 but no 4, so it is read as %s (3 enhancing tumor). If the %s files use "
            "MSD Task01 numbering (1 edema) or BRATS 2013, pass %s; the schema used is listed per case.",
            path, side, schema.name, side, option,
        )


def _score_pair(
    method: str,
    case_id: str,
    prediction: LabelSource | None,
    reference: _LoadedLabel | None,
    reference_source: LabelSource | None,
    reference_error: tuple[str, str] | None,
    missing_as_empty: bool,
    tolerance: float,
    warnings_log: _SchemaWarnings,
) -> CaseResult:
    result = CaseResult(
        method=method,
        case_id=case_id,
        status=STATUS_OK,
        pred_path=prediction.path if prediction is not None else None,
        ref_path=reference_source.path if reference_source is not None else None,
    )
    if reference_source is None:
        result.status, result.reason = STATUS_MISSING_REFERENCE, f"no reference label map for case {case_id}"
        return result
    if reference_error is not None:
        result.status, result.reason = reference_error
        return result
    assert reference is not None
    result.ref_schema = reference.schema.name
    result.spacing = reference.volume.spacing

    if prediction is None:
        if not missing_as_empty:
            result.status, result.reason = STATUS_MISSING_PREDICTION, f"no predicted label map for case {case_id}"
            return result
        pred_array = np.zeros(reference.volume.shape, dtype=np.uint8)
        pred_schema = reference.schema
        result.status, result.reason = STATUS_SCORED_AS_EMPTY, "no predicted label map; scored as an empty prediction"
    else:
        try:
            loaded = _load_label(prediction, "predicted")
        except (ImageError, LabelError) as error:
            status = STATUS_INVALID_LABELS if isinstance(error, LabelError) else STATUS_UNREADABLE
            result.status, result.reason = status, str(error)
            return result
        if loaded.schema_ambiguous:
            warnings_log.note(method, "prediction", prediction.path, loaded.schema)
        problem = _geometry_problem(loaded.volume, reference.volume, tolerance)
        if problem is not None:
            result.status, result.reason = problem
            return result
        pred_array, pred_schema = loaded.volume.array, loaded.schema
    result.pred_schema = pred_schema.name

    try:
        result.scores = evaluate_case(
            pred_array,
            reference.volume.array,
            reference.volume.spacing,
            pred_schema=pred_schema,
            ref_schema=reference.schema,
        )
    except LabelError as error:
        result.status, result.reason = STATUS_INVALID_LABELS, str(error)
    return result


def evaluate_folders(
    predictions: str | Path | Mapping[str, str | Path],
    reference: str | Path,
    *,
    pred_schema: str | LabelSchema | None = None,
    ref_schema: str | LabelSchema | None = None,
    missing_as_empty: bool = False,
    affine_tolerance: float = AFFINE_TOLERANCE,
    progress: bool = True,
) -> tuple[list[CaseResult], ReferenceSet]:
    """Score one or several prediction folders against a reference folder.

    Args:
        predictions: a prediction folder, or {method name: prediction folder} for several
            methods. A single folder is named after the folder.
        reference: a dataset of cases with label maps, or a flat folder of label maps (see
            gliomaseg.evaluation.pairing).
        pred_schema: label schema of every prediction; None infers it per file from its values.
        ref_schema: label schema of the references; None takes the dataset layout's schema, or
            infers it per file for a flat folder.
        missing_as_empty: score a reference without prediction as an empty prediction (the
            BraTS challenge rule: Dice 0 and HD95 `HD95_ONE_EMPTY_MM` for a non-empty region)
            instead of leaving it out of the summaries.
        affine_tolerance: largest absolute difference between affine entries (mm) accepted
            between a prediction and its reference.
        progress: show a progress bar.

    Returns:
        (one CaseResult per method and case id, sorted by method order then case id; the
        reference set that was read).

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: a folder contains no label map, or two of its files map to one case id.
    """
    if isinstance(predictions, (str, Path)):
        predictions = {Path(predictions).name: predictions}
    if not predictions:
        raise ValueError("no prediction folder given")
    references = find_references(reference, ref_schema)
    method_sources = {name: find_predictions(folder, pred_schema) for name, folder in predictions.items()}
    case_ids = sorted(set(references.labels).union(*(set(s) for s in method_sources.values())))
    log.info(
        "evaluating %d method(s) on %d case id(s) against %s (%s, %d reference label maps)",
        len(method_sources), len(case_ids), references.root, references.kind, len(references.labels),
    )

    started = time.perf_counter()
    warnings_log = _SchemaWarnings()
    results: dict[str, list[CaseResult]] = {name: [] for name in method_sources}
    for case_id in tqdm(case_ids, desc="evaluate", unit="case", disable=not progress):
        reference_source = references.labels.get(case_id)
        loaded_reference, reference_error = None, None
        if reference_source is not None:
            try:
                loaded_reference = _load_label(reference_source, "reference")
            except (ImageError, LabelError) as error:
                status = STATUS_INVALID_LABELS if isinstance(error, LabelError) else STATUS_UNREADABLE
                reference_error = (status, f"reference: {error}")
            if loaded_reference is not None and loaded_reference.schema_ambiguous:
                warnings_log.note("reference", "reference", reference_source.path, loaded_reference.schema)

        for name, sources in method_sources.items():
            if reference_source is None and case_id not in sources:
                continue  # a case id that only another method predicted
            result = _score_pair(
                name, case_id, sources.get(case_id), loaded_reference, reference_source, reference_error,
                missing_as_empty, affine_tolerance, warnings_log,
            )
            if not result.scored:
                log.warning("%s, case %s: %s: %s", name, case_id, result.status, result.reason)
            results[name].append(result)

    ordered = [result for name in method_sources for result in results[name]]
    scored = sum(result.scored for result in ordered)
    log.info("scored %d of %d method-case pairs in %.1f s", scored, len(ordered), time.perf_counter() - started)
    return ordered, references

