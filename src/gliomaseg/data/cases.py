"""Case discovery: find the modality files and label map of each case in a folder.

Layouts read:

- ``brats2017``: BraTS 2017-2021, ``<id>_t1``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg`` (.nii or .nii.gz);
- ``brats2023``: BraTS 2023+, ``<id>-t1n``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg``;
- ``brats_toolkit``: BraTS Toolkit output, ``<id>_t1``, ``_t1c``, ``_t2``, ``_fla``, each optionally
  followed by ``_bet``;
- ``msd``: Medical Segmentation Decathlon Task01, ``dataset.json`` with ``imagesTr/`` (4D images,
  channel order from the ``modality`` entry) and ``labelsTr/``;
- ``manifest``: a ``case.json`` or ``case.yaml`` that maps each modality to a file.

A dataset folder is a folder whose sub-folders are cases (or an MSD task folder). Modalities
have the canonical names ``t1``, ``t1c``, ``t2`` and ``flair``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from gliomaseg.data.io import Volume, is_nifti, load_volume, strip_nifti_suffix
from gliomaseg.data.labels import LabelSchema, get_schema

MODALITIES = ("t1", "t1c", "t2", "flair")
MANIFEST_NAMES = ("case.json", "case.yaml", "case.yml")

# Layout name -> (separator, {file tag: modality or "seg"}, default label schema).
_LAYOUTS: dict[str, tuple[str, dict[str, str], str]] = {
    "brats2017": ("_", {"t1": "t1", "t1ce": "t1c", "t2": "t2", "flair": "flair", "seg": "seg"}, "brats2017"),
    "brats2023": ("-", {"t1n": "t1", "t1c": "t1c", "t2w": "t2", "t2f": "flair", "seg": "seg"}, "brats2023"),
    "brats_toolkit": ("_", {"t1": "t1", "t1c": "t1c", "t2": "t2", "fla": "flair"}, "brats2017"),
}
# MSD dataset.json modality names -> canonical modality.
_MSD_MODALITY_NAMES = {"flair": "flair", "t1w": "t1", "t1": "t1", "t1gd": "t1c", "t1c": "t1c", "t2w": "t2", "t2": "t2"}


class CaseError(ValueError):
    """A folder or manifest does not describe a readable case or dataset."""


@dataclass(frozen=True)
class ImageSource:
    """Location of one modality's voxels: a file, and a channel index for 4D files."""

    path: Path
    channel: int | None = None

    def __str__(self) -> str:
        return str(self.path) if self.channel is None else f"{self.path}[channel {self.channel}]"


@dataclass
class Case:
    """One patient exam: co-registered modality files and an optional reference label map."""

    case_id: str
    images: dict[str, ImageSource]
    label: ImageSource | None
    schema: LabelSchema
    layout: str
    root: Path
    # Modalities whose file the layout expects but that are absent, with the expected name.
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def label_path(self) -> Path | None:
        return self.label.path if self.label is not None else None

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m in self.images)


def _split_name(name: str) -> tuple[str, str, str, bool] | None:
    """Split ``<id><sep><tag>[_bet].nii[.gz]`` into (id, separator, tag, has _bet)."""
    stem = strip_nifti_suffix(name)
    if stem == name:
        return None
    bet = stem.lower().endswith("_bet")
    if bet:
        stem = stem[: -len("_bet")]
    match = re.match(r"^(?P<id>.+)(?P<sep>[_-])(?P<tag>[A-Za-z0-9]+)$", stem)
    if not match:
        return None
    return match["id"], match["sep"], match["tag"].lower(), bet


def _match_layout(files: list[Path]) -> tuple[str, str, dict[str, Path]] | None:
    """Return (layout, case id, {modality or 'seg': path}) for the best-matching layout."""
    best: tuple[int, str, str, dict[str, Path]] | None = None
    for layout, (separator, tags, _) in _LAYOUTS.items():
        groups: dict[str, dict[str, Path]] = {}
        for path in files:
            parts = _split_name(path.name)
            if parts is None:
                continue
            case_id, sep, tag, bet = parts
            if sep != separator or tag not in tags or (bet and layout != "brats_toolkit"):
                continue
            groups.setdefault(case_id, {})[tags[tag]] = path
        for case_id, found in groups.items():
            score = sum(1 for key in found if key != "seg")
            if score and (best is None or score > best[0]):
                best = (score, layout, case_id, found)
    if best is None:
        return None
    return best[1], best[2], best[3]


def _expected_name(layout: str, case_id: str, modality: str) -> str:
    separator, tags, _ = _LAYOUTS[layout]
    tag = next(t for t, m in tags.items() if m == modality)
    return f"{case_id}{separator}{tag}.nii.gz"


def _resolve_schema(schema: str | LabelSchema | None, default: str) -> LabelSchema:
    return get_schema(schema if schema is not None else default)


def read_manifest(path: str | Path, schema: str | LabelSchema | None = None) -> Case:
    """Read a case manifest (JSON or YAML).

    The manifest contains ``images`` (modality -> file, relative to the manifest's folder),
    optionally ``case_id``, ``label`` and ``label_schema``. Example::

        case_id: patient01
        images: {t1c: T1C_3D.nii.gz, t2: t2_tse.nii.gz, flair: flair.nii.gz}
        label: tumor_core.nii.gz
        label_schema: brats2017

    Raises:
        CaseError: the manifest cannot be parsed, or names an unknown modality.
    """
    path = Path(path)
    try:
        text = path.read_text()
        content = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as error:
        raise CaseError(f"{path}: cannot read the case manifest ({error})") from error
    if not isinstance(content, dict) or not isinstance(content.get("images"), dict):
        raise CaseError(f"{path}: a case manifest needs an 'images' mapping of modality to file, e.g. images: {{t1c: t1c.nii.gz}}")

    images: dict[str, ImageSource] = {}
    for modality, entry in content["images"].items():
        modality = str(modality).lower()
        if modality not in MODALITIES:
            raise CaseError(f"{path}: unknown modality {modality!r}; use one of {', '.join(MODALITIES)}")
        channel = None
        if isinstance(entry, dict):
            channel = entry.get("channel")
            entry = entry.get("file")
        images[modality] = ImageSource((path.parent / str(entry)).resolve(), channel)

    label = content.get("label")
    label_source = ImageSource((path.parent / str(label)).resolve()) if label else None
    return Case(
        case_id=str(content.get("case_id") or path.parent.name),
        images=images,
        label=label_source,
        schema=_resolve_schema(schema or content.get("label_schema"), "brats2017"),
        layout="manifest",
        root=path.parent,
    )


def _case_from_folder(folder: Path, schema: str | LabelSchema | None) -> Case | None:
    for name in MANIFEST_NAMES:
        if (folder / name).is_file():
            return read_manifest(folder / name, schema)
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p))
    match = _match_layout(files)
    if match is None:
        return None
    layout, case_id, found = match
    _, _, default_schema = _LAYOUTS[layout]
    images = {m: ImageSource(p) for m, p in found.items() if m != "seg"}
    missing = {
        m: _expected_name(layout, case_id, m)
        for m in MODALITIES
        if m not in images and any(v == m for v in _LAYOUTS[layout][1].values())
    }
    return Case(
        case_id=case_id,
        images=images,
        label=ImageSource(found["seg"]) if "seg" in found else None,
        schema=_resolve_schema(schema, default_schema),
        layout=layout,
        root=folder,
        missing=missing,
    )


def _msd_cases(folder: Path, schema: str | LabelSchema | None) -> list[Case]:
    dataset_json = folder / "dataset.json"
    try:
        description = json.loads(dataset_json.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CaseError(f"{dataset_json}: cannot read the MSD dataset description ({error})") from error
    modality_names = description.get("modality") or description.get("channel_names") or {}
    channels: dict[str, int] = {}
    for index, name in modality_names.items():
        key = str(name).strip().lower().replace("-", "").replace(" ", "")
        if key not in _MSD_MODALITY_NAMES:
            raise CaseError(f"{dataset_json}: unknown modality name {name!r} for channel {index}")
        channels[_MSD_MODALITY_NAMES[key]] = int(index)
    if not channels:
        raise CaseError(f"{dataset_json}: no 'modality' entry giving the channel order of the 4D images")

    cases = []
    for images_dir, labels_dir in (("imagesTr", "labelsTr"), ("imagesTs", None)):
        for image in sorted((folder / images_dir).glob("*.nii*")):
            if image.name.startswith("._"):
                continue
            label = folder / labels_dir / image.name if labels_dir else None
            cases.append(
                Case(
                    case_id=image.name.split(".nii")[0],
                    images={m: ImageSource(image, c) for m, c in channels.items()},
                    label=ImageSource(label) if label is not None and label.is_file() else None,
                    schema=_resolve_schema(schema, "msd"),
                    layout="msd",
                    root=folder,
                )
            )
    return cases


def _cases_in_subfolders(folder: Path, schema: str | LabelSchema | None, levels: int) -> list[Case]:
    """Collect cases in the sub-folders of `folder`, descending into non-case folders."""
    cases = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        case = _case_from_folder(sub, schema)
        if case is not None:
            cases.append(case)
        elif levels > 1:
            cases.extend(_cases_in_subfolders(sub, schema, levels - 1))
    return cases


def discover_cases(path: str | Path, schema: str | LabelSchema | None = None) -> list[Case]:
    """Find the cases under `path`.

    Args:
        path: a case folder, a dataset folder whose sub-folders are cases (or hold cases one
            level down, as BraTS 2018's HGG/ and LGG/), an MSD task folder (with
            dataset.json), or a case manifest file.
        schema: label schema to use instead of the one inferred from the layout.

    Returns:
        Cases sorted by case id.

    Raises:
        CaseError: the path does not exist or contains no case in a known layout.
    """
    path = Path(path)
    if not path.exists():
        raise CaseError(f"{path}: no such file or folder")
    if path.is_file():
        if path.name.lower().endswith((".json", ".yaml", ".yml")):
            return [read_manifest(path, schema)]
        raise CaseError(f"{path}: expected a case folder, a dataset folder or a case manifest (.json/.yaml)")

    if (path / "dataset.json").is_file() and (path / "imagesTr").is_dir():
        cases = _msd_cases(path, schema)
    else:
        single = _case_from_folder(path, schema)
        if single is not None:
            cases = [single]
        else:
            cases = _cases_in_subfolders(path, schema, levels=2)
    if not cases:
        contents = "it is empty" if not any(path.iterdir()) else "no file matches a known layout"
        raise CaseError(
            f"{path}: no case found ({contents}). Expected BraTS files such as <id>_flair.nii.gz or "
            "<id>-t2f.nii.gz, an MSD folder with dataset.json, or a case.json/case.yaml manifest."
        )
    return sorted(cases, key=lambda c: c.case_id)


# Maximum difference between the affines of a case's modalities, in mm (translation) or
# mm per voxel (rotation and scaling entries), before they count as different grids.
AFFINE_TOLERANCE = 1e-3


def load_case_volumes(
    case: Case,
    modalities: tuple[str, ...] | list[str] | None = None,
    *,
    substitute: dict[str, str] | None = None,
    with_label: bool = True,
) -> tuple[dict[str, Volume], Volume | None]:
    """Load the modality volumes (and the label map) of a case and check their geometry.

    Args:
        case: a discovered case.
        modalities: the modalities to load; default all modalities of the case.
        substitute: missing-modality policy, target -> source (``{"t1": "t1c"}`` loads T1c
            where T1 is missing). Without it a missing modality raises CaseError.
        with_label: also load the reference label map, where the case has one.

    Returns:
        ({modality: Volume}, label Volume or None). Label values are not checked here.

    Raises:
        CaseError: a modality is missing, or the volumes' shapes or affines disagree.
        ImageError: a file cannot be used (see gliomaseg.data.io.load_volume).
    """
    substitute = dict(substitute or {})
    wanted = tuple(modalities) if modalities is not None else case.modalities
    volumes: dict[str, Volume] = {}
    for modality in wanted:
        source_modality = modality
        if modality not in case.images and modality in substitute:
            source_modality = substitute[modality]
        if source_modality not in case.images:
            expected = case.missing.get(modality, f"a {modality} image")
            hint = f" or choose a substitute (for example --substitute {modality}=t1c)" if modality == "t1" else ""
            raise CaseError(
                f"case {case.case_id} ({case.root}): modality {modality} is missing (expected {expected}). "
                f"Add the file{hint}."
            )
        source = case.images[source_modality]
        volumes[modality] = load_volume(
            source.path, channel=source.channel, require_nonzero=True, role=f"{source_modality} image"
        )

    label = None
    if with_label and case.label is not None:
        label = load_volume(case.label.path, channel=case.label.channel, role="label map")

    reference_name, reference = next(iter(volumes.items()))
    others = [(f"{m} image", v) for m, v in volumes.items()] + ([("label map", label)] if label is not None else [])
    for name, volume in others:
        if volume.shape != reference.shape:
            raise CaseError(
                f"case {case.case_id}: {name} {volume.path} has shape {volume.shape} but the {reference_name} "
                f"image {reference.path} has {reference.shape}. Co-register and resample the modalities to one "
                "grid first (gliomaseg convert does this)."
            )
        difference = float(np.abs(volume.affine - reference.affine).max())
        if difference > AFFINE_TOLERANCE:
            raise CaseError(
                f"case {case.case_id}: the affine of {name} {volume.path} differs from that of the "
                f"{reference_name} image by up to {difference:.4g} mm. The volumes are not on one grid; "
                "co-register and resample them first (gliomaseg convert does this)."
            )
    return volumes, label
