"""Find predicted and reference label maps and pair them by case id.

A prediction folder contains one label map per case, ``<case_id>.nii.gz``, as ``gliomaseg
predict`` writes it. Its ``<case_id>.json`` reports and ``<case_id>_probabilities.nii.gz``
maps are ignored. A reference is either a dataset of cases that
``gliomaseg.data.cases.discover_cases`` reads (BraTS 2017-2021, BraTS 2023+, MSD Task01 or
manifests), or a flat folder of label maps named ``<case_id>.nii.gz``, ``<case_id>_seg.nii.gz``
or ``<case_id>-seg.nii.gz``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gliomaseg.data.cases import Case, CaseError, discover_cases
from gliomaseg.data.io import is_nifti, strip_nifti_suffix
from gliomaseg.data.labels import LabelSchema, get_schema

log = logging.getLogger(__name__)

_SEG_SUFFIXES = ("_seg", "-seg")
# Probability maps that gliomaseg predict writes next to the label maps; they are not label maps.
_PROBABILITY_SUFFIXES = ("_probabilities.nii.gz", "_probabilities.nii")


@dataclass
class LabelSource:
    """A label map file of one case, with its schema where the source states it."""

    case_id: str
    path: Path
    schema: LabelSchema | None = None
    # The case a reference label map belongs to (its images are used for overlays).
    case: Case | None = None


@dataclass
class CasePair:
    """The prediction and the reference of one case id; either side may be missing."""

    case_id: str
    prediction: LabelSource | None
    reference: LabelSource | None


@dataclass
class ReferenceSet:
    """The reference label maps of a folder, and which kind of folder it is."""

    root: Path
    kind: str  # "dataset" (cases found by discover_cases) or "flat" (a folder of label maps)
    labels: dict[str, LabelSource]
    # Cases without a label map, by case id (a dataset of cases only).
    unlabeled: list[str] = field(default_factory=list)


def _case_id_from_name(name: str) -> str:
    stem = strip_nifti_suffix(name)
    for suffix in _SEG_SUFFIXES:
        if stem.lower().endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _label_files(folder: Path, schema: LabelSchema | None, role: str) -> dict[str, LabelSource]:
    sources: dict[str, LabelSource] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or not is_nifti(path) or path.name.startswith("."):
            continue
        if path.name.lower().endswith(_PROBABILITY_SUFFIXES):
            continue
        case_id = _case_id_from_name(path.name)
        if case_id in sources:
            raise ValueError(
                f"{folder}: two {role} files for case {case_id!r}: {sources[case_id].path.name} and {path.name}. "
                "Keep one label map per case."
            )
        sources[case_id] = LabelSource(case_id, path, schema)
    return sources


def find_predictions(folder: str | Path, schema: str | LabelSchema | None = None) -> dict[str, LabelSource]:
    """Return the predicted label maps of a folder, by case id.

    Args:
        folder: a folder of ``<case_id>.nii.gz`` label maps (``_seg``/``-seg`` suffixes are
            removed from the case id).
        schema: the predictions' label schema; None to infer it per file from its values.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: the folder contains no label map, or two files map to one case id.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: prediction folder not found")
    sources = _label_files(folder, get_schema(schema) if schema is not None else None, "prediction")
    if not sources:
        raise ValueError(f"{folder}: no label map (.nii or .nii.gz) found; expected <case_id>.nii.gz per case")
    return sources


def find_references(folder: str | Path, schema: str | LabelSchema | None = None) -> ReferenceSet:
    """Return the reference label maps under `folder`, by case id.

    A folder that ``discover_cases`` reads as a case or a dataset of cases gives each case's
    label map with the case's schema (the layout's schema, or `schema` where given). Any other
    folder is read as a flat folder of label maps.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: no reference label map was found.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: reference folder not found")
    given = get_schema(schema) if schema is not None else None

    try:
        cases = discover_cases(folder, schema=given)
    except CaseError:
        cases = []
    if cases:
        labels = {
            case.case_id: LabelSource(case.case_id, case.label_path, case.schema, case)
            for case in cases
            if case.label_path is not None
        }
        unlabeled = [case.case_id for case in cases if case.label_path is None]
        if not labels:
            raise ValueError(
                f"{folder}: {len(cases)} case(s) found but none has a reference label map "
                "(for example <id>_seg.nii.gz); nothing to evaluate against."
            )
        return ReferenceSet(folder, "dataset", labels, unlabeled)

    if not folder.is_dir():
        raise ValueError(f"{folder}: expected a folder of reference label maps or a dataset of cases")
    labels = _label_files(folder, given, "reference")
    if not labels:
        raise ValueError(
            f"{folder}: no reference found: neither cases in a known layout nor label maps named "
            "<case_id>.nii.gz, <case_id>_seg.nii.gz or <case_id>-seg.nii.gz."
        )
    return ReferenceSet(folder, "flat", labels)


def pair_cases(predictions: dict[str, LabelSource], references: dict[str, LabelSource]) -> list[CasePair]:
    """Pair predictions and references by case id, sorted by case id; unmatched sides are None."""
    case_ids = sorted(set(predictions) | set(references))
    return [CasePair(case_id, predictions.get(case_id), references.get(case_id)) for case_id in case_ids]


def infer_schema(label_map: np.ndarray) -> tuple[LabelSchema, bool]:
    """Choose a label schema from the values of a label map that comes without one.

    Values {0, 1, 2, 4} give BraTS 2017-2021, values with both 3 and 4 give BRATS 2013/2015,
    and values up to 2 read the same in BraTS 2017-2021 and 2023 (1 core, 2 edema). A 3
    without a 4 fits BraTS 2023 (3 enhancing) but also MSD Task01 (3 enhancing, 1 edema), so
    BraTS 2023 is chosen and the second return value is True: the caller warns and the user
    can name the schema.

    Returns:
        (schema, ambiguous).
    """
    label_map = np.asarray(label_map)
    values = set(np.unique(label_map[label_map != 0]).tolist())
    if 4 in values:
        return get_schema("brats2013" if 3 in values else "brats2017"), False
    if 3 in values:
        return get_schema("brats2023"), True
    return get_schema("brats2017"), False
