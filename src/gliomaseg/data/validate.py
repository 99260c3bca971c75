"""Validation of cases before training or prediction: one report per case, one row per case."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gliomaseg.data.cases import MODALITIES, Case, CaseError, discover_cases, load_case_volumes
from gliomaseg.data.io import ImageError
from gliomaseg.data.labels import LabelError, LabelSchema, check_label_values

log = logging.getLogger(__name__)

# Largest plausible volume of a skull-stripped adult brain, in cm3; adult brains measure about
# 1000-1700 cm3, and a head with skull and scalp about twice that.
MAX_BRAIN_VOLUME_CM3 = 2500.0


@dataclass
class CaseReport:
    """Findings of `validate_case` for one case; `problems` is empty for a usable case."""

    case_id: str
    path: Path
    layout: str
    schema: str
    modalities: tuple[str, ...] = ()
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    orientation: str | None = None
    label_values: tuple[int, ...] | None = None
    brain_voxels: int | None = None
    problems: list[str] = field(default_factory=list)
    # Findings that do not make the case unusable, such as a scan that looks skull-on.
    warnings: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.problems


def validate_case(case: Case) -> CaseReport:
    """Load every file of a case and report its geometry, labels and problems.

    Problems found: a missing modality, files that cannot be read (not NIfTI, truncated, 4D,
    NaN or infinite voxels, all zero), shapes or affines that disagree, and label values
    outside the case's schema. Nothing raises for a bad case; the problems are listed.
    """
    report = CaseReport(case.case_id, case.root, case.layout, case.schema.name, case.modalities)
    for modality, expected in case.missing.items():
        report.problems.append(f"missing {modality} (expected {expected})")

    try:
        volumes, label = load_case_volumes(case)
    except (CaseError, ImageError) as error:
        report.problems.append(str(error))
        return report

    first = next(iter(volumes.values()))
    report.shape = first.shape
    report.spacing = tuple(round(s, 3) for s in first.spacing)
    report.orientation = first.orientation
    brain = np.zeros(first.shape, dtype=bool)
    for volume in volumes.values():
        brain |= volume.array != 0
    report.brain_voxels = int(brain.sum())
    brain_cm3 = report.brain_voxels * float(np.prod(first.spacing)) / 1000
    if brain_cm3 > MAX_BRAIN_VOLUME_CM3:
        report.warnings.append(
            f"the non-zero region measures {brain_cm3:.0f} cm3, more than a skull-stripped brain (at most about "
            f"{MAX_BRAIN_VOLUME_CM3:.0f} cm3); the scans look skull-on, so apply a brain mask first "
            "(gliomaseg convert --brain-mask)"
        )

    if label is not None:
        values = np.unique(np.asarray(label.array))
        report.label_values = tuple(int(v) for v in values)
        if not np.all(np.equal(np.mod(values, 1), 0)):
            report.problems.append(f"{label.path}: label map holds non-integer values")
        else:
            try:
                check_label_values(values.astype(np.int64), case.schema, label.path)
            except LabelError as error:
                report.problems.append(str(error))
    return report


def validate_path(path: str | Path, schema: str | LabelSchema | None = None) -> list[CaseReport]:
    """Validate every case under `path` (a case folder, a dataset folder or a manifest).

    Raises:
        CaseError: the path contains no case at all.
    """
    cases = discover_cases(path, schema)
    reports = []
    for case in cases:
        report = validate_case(case)
        if not report.usable:
            log.warning("case %s has %d problem(s)", case.case_id, len(report.problems))
        reports.append(report)
    return reports


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value) if value and not isinstance(value[0], str) else ",".join(value)
    return str(value)


def format_report(reports: list[CaseReport]) -> str:
    """Render reports as a plain-text table followed by the problems of each case."""
    header = ("case", "layout", "schema", "modalities", "shape", "spacing (mm)", "orient", "labels", "brain voxels", "status")
    rows = []
    for r in reports:
        labels = "none" if r.label_values is None else ",".join(str(v) for v in r.label_values)
        modalities = ",".join(m for m in MODALITIES if m in r.modalities)
        rows.append(
            (
                r.case_id,
                r.layout,
                r.schema,
                modalities,
                _fmt(r.shape),
                _fmt(r.spacing),
                _fmt(r.orientation),
                labels,
                _fmt(r.brain_voxels),
                "ok" if r.usable else f"{len(r.problems)} problem(s)",
            )
        )
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in reports:
        for problem in r.problems:
            lines.append(f"{r.case_id}: {problem}")
        for warning in r.warnings:
            lines.append(f"{r.case_id}: warning: {warning}")
    usable = sum(r.usable for r in reports)
    lines.append(f"{usable} of {len(reports)} case(s) usable")
    return "\n".join(lines)
