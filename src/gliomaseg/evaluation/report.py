"""Write an evaluation to an output folder: per-case CSV, summary JSON, Markdown report, figures.

Files written into the output folder:

- ``metrics_per_case.csv``: one row per method and case, with status, reason, schemas, spacing
  and, per region, Dice, HD95 (mm), sensitivity, specificity and both volumes (ml);
- ``summary.json``: per method, region and metric the mean, median, std, quartiles and n, plus
  the status counts and the BraTS empty-mask conventions used;
- ``report.md``: the Table I style Dice and HD95 tables and one table per method;
- ``boxplot_dice_<region>.png`` and ``boxplot_hd95_<region>.png``: a box per method;
- ``overlays/<method>/<case_id>.png``: slices through the tumor centre (unless disabled).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gliomaseg import __version__
from gliomaseg.data.cases import Case, CaseError, discover_cases
from gliomaseg.data.io import ImageError, Volume, load_volume
from gliomaseg.data.labels import REGIONS, LabelError, to_model_classes
from gliomaseg.evaluation.folders import STATUS_MISSING_REFERENCE, CaseResult
from gliomaseg.evaluation.metrics import HD95_ONE_EMPTY_MM, METRICS, VOLUMES
from gliomaseg.evaluation.pairing import ReferenceSet, infer_schema
from gliomaseg.evaluation.plots import plot_boxplots, plot_overlay
from gliomaseg.evaluation.summary import format_report, summarize

log = logging.getLogger(__name__)

OVERLAY_MODALITIES = (("flair", "FLAIR"), ("t1c", "T1c"))
CONVENTIONS = {
    "hd95_one_empty_mm": HD95_ONE_EMPTY_MM,
    "both_empty": {"dice": 1.0, "hd95": 0.0, "sensitivity": 1.0},
    "one_empty": {"dice": 0.0, "hd95": HD95_ONE_EMPTY_MM},
    "sensitivity_empty_reference_nonempty_prediction": 0.0,
    "specificity": "over every voxel of the volume",
    "hd95": "MONAI compute_hausdorff_distance, percentile 95, symmetric, surface voxels, voxel spacing in mm",
    "std": "sample standard deviation (ddof=1), null for fewer than two cases",
}


def csv_columns() -> list[str]:
    """Return the column names of metrics_per_case.csv."""
    base = ["method", "case_id", "status", "reason", "pred_path", "ref_path", "pred_schema", "ref_schema", "spacing_mm"]
    return base + [f"{metric}_{region}" for region in REGIONS for metric in (*METRICS, *VOLUMES)]


def write_results_csv(results: Sequence[CaseResult], path: str | Path) -> Path:
    """Write one CSV row per method and case; metric cells are empty for unscored cases."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=csv_columns())
        writer.writeheader()
        for result in results:
            row = {
                "method": result.method,
                "case_id": result.case_id,
                "status": result.status,
                "reason": result.reason,
                "pred_path": str(result.pred_path or ""),
                "ref_path": str(result.ref_path or ""),
                "pred_schema": result.pred_schema,
                "ref_schema": result.ref_schema,
                "spacing_mm": " ".join(f"{s:g}" for s in result.spacing),
            }
            for region, values in result.scores.items():
                for name, value in values.items():
                    row[f"{name}_{region}"] = repr(float(value))
            writer.writerow(row)
    return path


def write_summary_json(summary: dict, path: str | Path, reference: str = "") -> Path:
    """Write the summary (see summarize) with the conventions used and the gliomaseg version."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {"gliomaseg_version": __version__, "reference": reference, "conventions": CONVENTIONS, "methods": summary}
    path.write_text(json.dumps(content, indent=2) + "\n")
    return path


def check_output_folder(output: str | Path, inputs: Sequence[str | Path]) -> Path:
    """Return the output folder, rejecting one that is an input folder itself.

    Raises:
        ValueError: `output` is one of `inputs`.
    """
    output = Path(output)
    for folder in inputs:
        if output.resolve() == Path(folder).resolve():
            raise ValueError(
                f"output folder {output} is the input folder {folder}; choose another --output, "
                "for example a sub-folder 'evaluation'"
            )
    return output


def _image_cases(references: ReferenceSet, images: str | Path | None) -> dict[str, Case]:
    if images is not None:
        try:
            return {case.case_id: case for case in discover_cases(images)}
        except CaseError as error:
            log.warning("no images for overlays: %s", error)
            return {}
    return {cid: source.case for cid, source in references.labels.items() if source.case is not None}


def _load_classes(path: Path | None, schema_name: str) -> tuple[np.ndarray, Volume] | None:
    """Return (model-class array, Volume) of a label map, or None where it cannot be used."""
    if path is None:
        return None
    volume = load_volume(path, role="label map")
    schema = schema_name or infer_schema(volume.array)[0]
    return to_model_classes(volume.array, schema, path), volume


def write_overlay(result: CaseResult, case: Case | None, out_png: Path) -> Path | None:
    """Draw the overlay of one method-case result; return None (and log why) where it cannot."""
    try:
        prediction = _load_classes(result.pred_path, result.pred_schema)
        reference = _load_classes(result.ref_path if result.scored else None, result.ref_schema)
    except (ImageError, LabelError) as error:
        log.warning("%s, case %s: no overlay: %s", result.method, result.case_id, error)
        return None
    geometry = (reference or prediction)[1]

    images = {}
    if case is not None:
        for modality, title in OVERLAY_MODALITIES:
            source = case.images.get(modality)
            if source is None:
                continue
            try:
                volume = load_volume(source.path, channel=source.channel, role=f"{modality} image")
            except ImageError as error:
                log.warning("case %s: %s left out of the overlay: %s", result.case_id, modality, error)
                continue
            if volume.shape != geometry.shape:
                log.warning(
                    "case %s: %s image %s has shape %s, the label map %s; left out of the overlay",
                    result.case_id, modality, source, volume.shape, geometry.shape,
                )
                continue
            images[title] = volume.array
    return plot_overlay(
        out_png,
        geometry.affine,
        prediction=prediction[0] if prediction is not None else None,
        reference=reference[0] if reference is not None else None,
        images=images,
        title=f"{result.case_id} ({result.method})",
    )


def write_evaluation(
    results: Sequence[CaseResult],
    references: ReferenceSet,
    output: str | Path,
    *,
    overlays: bool = True,
    images: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Path | list[Path]]:
    """Write the CSV, JSON, Markdown, box plots and (optionally) overlays of an evaluation.

    Args:
        results: per-case results from evaluate_folders.
        references: the reference set from evaluate_folders (its cases give overlay images).
        output: output folder, created if needed; files of an earlier run are replaced.
        overlays: draw one overlay PNG per method and case with a prediction.
        images: a case or dataset folder with the FLAIR and T1c images for overlays, where the
            reference is a flat folder of label maps.
        progress: show a progress bar while drawing overlays.

    Returns:
        {"csv", "summary", "report": Path, "boxplots", "overlays": list of Paths}.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    written: dict[str, Path | list[Path]] = {
        "csv": write_results_csv(results, output / "metrics_per_case.csv"),
        "summary": write_summary_json(summary, output / "summary.json", str(references.root)),
    }
    report = output / "report.md"
    report.write_text(format_report(results, summary, str(references.root)))
    written["report"] = report
    written["boxplots"] = plot_boxplots(results, output, "dice") + plot_boxplots(results, output, "hd95")

    written["overlays"] = []
    if overlays:
        cases = _image_cases(references, images)
        drawable = [r for r in results if r.scored or (r.status == STATUS_MISSING_REFERENCE and r.pred_path)]
        for result in tqdm(drawable, desc="overlays", unit="case", disable=not progress):
            out_png = output / "overlays" / result.method / f"{result.case_id}.png"
            path = write_overlay(result, cases.get(result.case_id), out_png)
            if path is not None:
                written["overlays"].append(path)
    log.info("evaluation written to %s", output)
    return written
