"""Conversion of one patient's scans into a BraTS-format case.

Steps, as in the clinical pipeline of Wacker et al. ("Transfer Learning for Brain Tumor
Segmentation"), with SimpleITK in place of 3D Slicer and FSL:

1. load: DICOM series or NIfTI files to 3D images (slice geometry checked and corrected);
2. reorient: voxel axes permuted and flipped to BraTS's LPS order, without resampling;
3. skull-strip: brain masks applied where given (each modality's own mask on its grid);
4. register: every modality rigidly registered to the reference (default: finest voxel grid);
5. resample: all modalities, masks and the label map onto a 1 mm isotropic grid over the
   reference's extent (images with the chosen interpolation, masks and labels nearest);
6. write: BraTS-named NIfTI files and conversion.json.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm.auto import tqdm

from gliomaseg.clinical import manifest as manifest_module
from gliomaseg.clinical.errors import ConversionError
from gliomaseg.clinical.masks import apply_mask, binary_mask, onto_grid
from gliomaseg.clinical.naming import BRAIN_MASK_TAG, MODALITIES, NAMINGS, output_name
from gliomaseg.clinical.nifti import write_nifti
from gliomaseg.clinical.orientation import reorient_to_brats
from gliomaseg.clinical.registration import (
    INITIALIZATIONS, MAX_ROTATION_DEG, MAX_TRANSLATION_MM, MIN_RELATIVE_METRIC, RegistrationResult,
    flag_weak_metrics, register_rigid,
)
from gliomaseg.clinical.resampling import INTERPOLATORS, isotropic_grid, resample
from gliomaseg.clinical.sources import SeriesCatalog, load_source
from gliomaseg.output_folder import create_folder, removed_on_failure

log = logging.getLogger(__name__)

# Reference chosen among modalities with the same voxel volume, in this order (the volumetric
# T1c was the reference of the clinical pipeline this follows).
REFERENCE_PREFERENCE = ("t1c", "t1", "flair", "t2")
# Substitutes used by missing="substitute" where no substitution is given: T1c in place of T1.
DEFAULT_SUBSTITUTES = {"t1": "t1c"}
MISSING_POLICIES = ("fail", "substitute")
INTERMEDIATE_DIR = "intermediate"


@dataclass
class ConversionResult:
    """A converted case: its folder, written files and manifest."""

    output_dir: Path
    case_id: str
    files: dict[str, Path]  # modality, "seg" or "brainmask" -> written NIfTI file
    manifest_path: Path
    manifest: dict
    registrations: dict[str, RegistrationResult] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Scan:
    modality: str
    source: dict
    image: sitk.Image  # native grid, after reorientation
    mask: sitk.Image | None = None  # own brain mask on the image's grid
    mask_source: str | None = None
    converted: sitk.Image | None = None  # as loaded, before reorientation


class _Steps:
    def __init__(self) -> None:
        self.records: list[dict] = []
        self._count = 6

    @contextmanager
    def step(self, name: str):
        index = len(self.records) + 1
        log.info("step %d/%d %s: started", index, self._count, name)
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.records.append({"step": name, "seconds": round(seconds, 3)})
        log.info("step %d/%d %s: done in %.1f s", index, self._count, name, seconds)


def convert_case(
    sources: Mapping[str, str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    case_id: str | None = None,
    dicom_dir: str | os.PathLike | None = None,
    reference: str | None = None,
    brain_mask: str | os.PathLike | None = None,
    masks: Mapping[str, str | os.PathLike] | None = None,
    label: str | os.PathLike | None = None,
    label_on: str | None = None,
    interpolation: str = "nearest",
    spacing: float = 1.0,
    missing: str = "fail",
    substitutions: Mapping[str, str] | None = None,
    naming: str = "brats2017",
    register: bool = True,
    initialization: str = "scanner",
    keep_intermediate: bool = False,
    overwrite: bool = False,
    fill_missing_slices: bool = False,
) -> ConversionResult:
    """Convert one patient's scans into a BraTS-format case folder.

    Args:
        sources: modality ("t1", "t1c", "t2", "flair") -> NIfTI file, folder with one DICOM
            series, or series number/UID/description of `dicom_dir`.
        output_dir: the case folder to create; it must not exist or be empty unless `overwrite`.
            A failed conversion removes it again where this call created it, and leaves a
            folder that existed before as it is.
        case_id: file name prefix (default: the output folder's name).
        reference: modality to register to and whose extent the output covers (default:
            the one with the smallest voxel volume, ties broken in `REFERENCE_PREFERENCE` order).
        brain_mask: brain mask on the reference's grid (or in its physical space), applied to
            every modality after registration.
        masks: modality -> brain mask on that scan's grid, applied before registration and
            moved with that scan's registration.
        label: label map (for example a tumor annotation) drawn on `label_on`'s grid
            (default: the reference); moved with that scan's registration, nearest neighbour.
        interpolation: "nearest" (default), "linear" or "bspline" for images; masks and label
            maps always use nearest neighbour.
        spacing: output voxel size in mm (isotropic).
        missing: "fail" (a modality without a source raises) or "substitute" (use
            `substitutions`, then `DEFAULT_SUBSTITUTES`).
        substitutions: missing modality -> modality whose converted volume is written in its
            place, for example {"t1": "t1c"}; always honoured.
        naming: "brats2017" (<id>_t1, _t1ce, _t2, _flair, _seg) or "brats2023"
            (<id>-t1n, -t1c, -t2w, -t2f, -seg).
        register: False skips registration for scans that are already co-registered.
        initialization: "scanner" (identity) or "moments" for the rigid registration.
        keep_intermediate: also write each step's volumes under `output_dir`/intermediate.
        overwrite: allow writing into a non-empty output folder.
        fill_missing_slices: interpolate missing DICOM slices instead of raising.

    Returns:
        A `ConversionResult`; the folder is readable by `gliomaseg.data.cases.discover_cases`.

    Raises:
        ConversionError: invalid options, missing modalities under missing="fail", unreadable
            or uncorrectable inputs, or an output folder that is not empty.
        FileNotFoundError: a source, mask or label file does not exist.
    """
    masks = {m.lower(): v for m, v in (masks or {}).items()}
    sources = {m.lower(): v for m, v in sources.items() if v is not None}
    substitutions = _plan_substitutions(sources, missing, substitutions or {})
    _check_options(sources, masks, reference, label_on, interpolation, naming, initialization)
    output_dir = Path(output_dir)
    case_id = case_id or output_dir.resolve().name
    created = _prepare_output(output_dir, overwrite, [*sources.values(), *masks.values(), brain_mask, label, dicom_dir])
    # A failed conversion leaves no partial case behind in a folder it created.
    with removed_on_failure(created):
        steps = _Steps()
        warnings: list[str] = []

        with steps.step("load"):
            catalog = SeriesCatalog()
            scans = {}
            for modality, source in sources.items():
                image, description = load_source(source, dicom_dir, catalog, fill_missing_slices, role=f"{modality} scan")
                scans[modality] = _Scan(modality, description, image, converted=image)
            case_mask_image = _load_file(brain_mask, "brain mask") if brain_mask is not None else None
            mask_images = {m: _load_file(path, f"{m} brain mask") for m, path in masks.items()}
            label_image = _load_file(label, "label map") if label is not None else None

        with steps.step("reorient"):
            for scan in scans.values():
                scan.image = reorient_to_brats(scan.image)
            reference = reference or choose_reference({m: s.image for m, s in scans.items()})
            ref_scan = scans[reference]
            for modality, mask in mask_images.items():
                scans[modality].mask = binary_mask(onto_grid(reorient_to_brats(mask), scans[modality].image,
                                                             f"{masks[modality]} ({modality} brain mask)"))
                scans[modality].mask_source = str(Path(masks[modality]).resolve())
            case_mask = None
            if case_mask_image is not None:
                case_mask = binary_mask(onto_grid(reorient_to_brats(case_mask_image), ref_scan.image, f"{brain_mask}"))
            elif ref_scan.mask is not None:
                case_mask = ref_scan.mask
            label_on = label_on or reference
            if label_image is not None:
                label_image = onto_grid(reorient_to_brats(label_image), scans[label_on].image, f"{label} (label map)")
        log.info("reference modality: %s (%s)", reference, _grid_text(ref_scan.image))

        with steps.step("skull-strip"):
            stripped = {m: apply_mask(s.image, s.mask) if s.mask is not None else s.image for m, s in scans.items()}
            if case_mask is not None and ref_scan.mask is None:
                stripped[reference] = apply_mask(ref_scan.image, case_mask)
            if case_mask is None and not mask_images:
                warnings.append("no brain mask given: the case is not skull-stripped")
                log.warning("no brain mask given: the case is not skull-stripped")

        with steps.step("register"):
            transforms, registrations, registration_inputs = _register_all(
                scans, stripped, reference, register, initialization)
            for modality, result in registrations.items():
                for warning in result.warnings:
                    warnings.append(f"{modality} registration: {warning}")
                    log.warning("%s registration looks wrong: %s", modality, warning)

        with steps.step("resample"):
            grid = isotropic_grid(ref_scan.image, spacing)
            outputs = {}
            for modality, scan in scans.items():
                volume = resample(stripped[modality], grid, transforms[modality], interpolation)
                if scan.mask is not None:
                    volume = apply_mask(volume, resample(scan.mask, grid, transforms[modality], "nearest"))
                outputs[modality] = volume
            case_mask_out = resample(case_mask, grid, None, "nearest") if case_mask is not None else None
            if case_mask_out is not None:
                outputs = {m: apply_mask(v, case_mask_out) for m, v in outputs.items()}
            label_out = resample(label_image, grid, transforms[label_on], "nearest") if label_image is not None else None
            for target, origin in substitutions.items():
                outputs[target] = outputs[origin]
                log.info("%s: missing, written as a copy of %s", target, origin)
            log.info("output grid: %s", _grid_text(grid))

        with steps.step("write"):
            files = _write_case(output_dir, case_id, naming, outputs, label_out, case_mask_out)
            if keep_intermediate:
                _write_intermediate(output_dir / INTERMEDIATE_DIR, scans, stripped, transforms, ref_scan.image,
                                    interpolation, label_image, label_on)

        manifest = {
            "case_id": case_id,
            "created": manifest_module.now_iso(),
            "naming": naming,
            "files": {k: p.name for k, p in files.items()},
            "reference": reference,
            "reference_grid": manifest_module.describe_grid(ref_scan.image),
            "output_grid": manifest_module.describe_grid(outputs[reference]),
            "spacing_mm": spacing,
            "interpolation": {"images": interpolation, "masks_and_labels": "nearest"},
            "registration": {
                "performed": register,
                "method": "rigid Euler3D (6 degrees of freedom), Mattes mutual information, 3 resolution levels",
                "initialization": initialization,
                "inputs": registration_inputs,
                "plausibility_thresholds": {
                    "max_rotation_deg": MAX_ROTATION_DEG,
                    "max_translation_mm": MAX_TRANSLATION_MM,
                    "min_metric_fraction_of_median": MIN_RELATIVE_METRIC,
                },
            },
            "modalities": {m: _describe_scan(s, registrations.get(m), m == reference, case_mask is not None)
                           for m, s in scans.items()},
            "missing_policy": missing,
            "substitutions": dict(substitutions),
            "skull_stripped": all(s.mask is not None or case_mask is not None for s in scans.values()),
            "brain_mask": str(Path(brain_mask).resolve()) if brain_mask is not None else (
                ref_scan.mask_source if case_mask is not None else None),
            "label": None if label is None else {"source": str(Path(label).resolve()), "drawn_on": label_on,
                                                 "values": sorted(int(v) for v in np.unique(sitk.GetArrayViewFromImage(label_out)))},
            "intermediate": INTERMEDIATE_DIR if keep_intermediate else None,
            "warnings": warnings,
            "steps": steps.records,
            "total_seconds": round(sum(r["seconds"] for r in steps.records), 3),
            "software": manifest_module.software_versions(),
        }
        manifest_path = manifest_module.write_manifest(manifest, output_dir)
        log.info("case %s written to %s in %.1f s", case_id, output_dir, manifest["total_seconds"])
        return ConversionResult(output_dir, case_id, files, manifest_path, manifest, registrations, warnings)


def choose_reference(images: Mapping[str, sitk.Image]) -> str:
    """Return the modality with the smallest voxel volume; ties go by `REFERENCE_PREFERENCE`."""
    def key(modality: str) -> tuple[float, int]:
        volume = float(np.prod(images[modality].GetSpacing()))
        rank = REFERENCE_PREFERENCE.index(modality) if modality in REFERENCE_PREFERENCE else len(REFERENCE_PREFERENCE)
        return (round(volume, 6), rank)

    return min(images, key=key)


def _plan_substitutions(sources: Mapping, missing: str, requested: Mapping[str, str]) -> dict[str, str]:
    if missing not in MISSING_POLICIES:
        raise ConversionError(f"missing-modality policy {missing!r} is not one of {', '.join(MISSING_POLICIES)}.")
    plan = {}
    for target, origin in requested.items():
        target, origin = target.lower(), origin.lower()
        if target not in MODALITIES or origin not in MODALITIES:
            raise ConversionError(f"substitution {target}={origin}: both sides must be one of {', '.join(MODALITIES)}.")
        if target in sources:
            raise ConversionError(f"substitution {target}={origin}: a {target} scan is given, so it cannot be substituted.")
        if origin not in sources:
            raise ConversionError(f"substitution {target}={origin}: no {origin} scan is given to copy.")
        plan[target] = origin
    for modality in MODALITIES:
        if modality in sources or modality in plan:
            continue
        default = DEFAULT_SUBSTITUTES.get(modality)
        if missing == "substitute" and default in sources:
            plan[modality] = default
            continue
        raise ConversionError(
            f"no {modality} scan given; give --{modality} SRC, or write another modality in its place with "
            f"--substitute {modality}={default or 't1c'} (T1c was written in place of T1 where T1 was not acquired)."
        )
    return plan


def _check_options(sources, masks, reference, label_on, interpolation, naming, initialization) -> None:
    unknown = [m for m in [*sources, *masks] if m not in MODALITIES]
    if unknown:
        raise ConversionError(f"unknown modality {unknown[0]!r}; use one of {', '.join(MODALITIES)}.")
    for option, value in (("reference", reference), ("label_on", label_on)):
        if value is not None and value not in sources:
            raise ConversionError(f"{option} {value!r} has no scan; choose one of {', '.join(sources)}.")
    orphan = [m for m in masks if m not in sources]
    if orphan:
        raise ConversionError(f"a brain mask is given for {orphan[0]} but no {orphan[0]} scan is.")
    if interpolation not in INTERPOLATORS:
        raise ConversionError(f"interpolation {interpolation!r} is not one of {', '.join(INTERPOLATORS)}.")
    if naming not in NAMINGS:
        raise ConversionError(f"naming {naming!r} is not one of {', '.join(NAMINGS)}.")
    if initialization not in INITIALIZATIONS:
        raise ConversionError(f"initialization {initialization!r} is not one of {', '.join(INITIALIZATIONS)}.")


def _prepare_output(output_dir: Path, overwrite: bool, inputs) -> list[Path]:
    """Check the output folder, create it where missing and return the folders created."""
    resolved = output_dir.resolve()
    for item in inputs:
        if item is None or not Path(item).exists():
            continue
        path = Path(item).resolve()
        if path == resolved or resolved in path.parents:
            raise ConversionError(
                f"{output_dir}: contains the input {item}; choose an output folder that contains no input, "
                "so no input can be written over."
            )
    if output_dir.is_file():
        raise ConversionError(f"{output_dir}: is a file; give a folder for the converted case.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ConversionError(
            f"{output_dir}: folder is not empty; choose a new folder, or pass --overwrite to replace its case files."
        )
    return create_folder(output_dir)


def _load_file(path, role: str) -> sitk.Image:
    image, _ = load_source(path, role=role)
    return image


def _register_all(scans, stripped, reference, register: bool, initialization: str):
    transforms: dict[str, sitk.Transform] = {m: sitk.Euler3DTransform() for m in scans}
    registrations: dict[str, RegistrationResult] = {}
    inputs = {}
    ref_scan = scans[reference]
    moving = [m for m in scans if m != reference]
    if not register:
        return transforms, registrations, {m: "not registered" for m in moving}
    for modality in tqdm(moving, desc="rigid registration", unit="scan", disable=None):
        scan = scans[modality]
        # Skull-stripped images are registered only when both have their own mask: a stripped
        # reference against a skull-on scan misleads mutual information.
        both_stripped = scan.mask is not None and ref_scan.mask is not None
        fixed = stripped[reference] if both_stripped else ref_scan.image
        start = time.perf_counter()
        result = register_rigid(fixed, stripped[modality] if both_stripped else scan.image,
                                initialization=initialization)
        inputs[modality] = "skull-stripped" if both_stripped else "whole head"
        log.info("%s -> %s: rotation %.2f deg, translation %s mm, mutual information %.4f -> %.4f (%.1f s)",
                 modality, reference, result.rotation_angle_deg, "/".join(f"{t:.2f}" for t in result.translation_mm),
                 result.metric_before, result.metric_after, time.perf_counter() - start)
        registrations[modality] = result
        transforms[modality] = result.transform
    flag_weak_metrics(registrations)
    return transforms, registrations, inputs


def _write_case(output_dir: Path, case_id: str, naming: str, outputs, label_out, case_mask_out) -> dict[str, Path]:
    files = {}
    for modality in MODALITIES:
        files[modality] = write_nifti(outputs[modality], output_dir / output_name(case_id, modality, naming))
    if label_out is not None:
        values = sitk.GetArrayViewFromImage(label_out)
        dtype = np.uint8 if values.min() >= 0 and values.max() <= 255 else np.int16
        files["seg"] = write_nifti(label_out, output_dir / output_name(case_id, "seg", naming), dtype=dtype)
    if case_mask_out is not None:
        files[BRAIN_MASK_TAG] = write_nifti(case_mask_out, output_dir / output_name(case_id, BRAIN_MASK_TAG, naming),
                                            dtype=np.uint8)
    return files


def _write_intermediate(folder: Path, scans, stripped, transforms, reference_image, interpolation, label_image,
                        label_on) -> None:
    """Write each step's volumes: 1 converted, 2 reoriented, 3 skull-stripped, 4 registered (reference grid)."""
    for modality, scan in scans.items():
        write_nifti(scan.converted, folder / "1_converted" / f"{modality}.nii.gz")
        write_nifti(scan.image, folder / "2_reoriented" / f"{modality}.nii.gz")
        write_nifti(stripped[modality], folder / "3_skull_stripped" / f"{modality}.nii.gz")
        if scan.mask is not None:
            write_nifti(scan.mask, folder / "3_skull_stripped" / f"{modality}_mask.nii.gz")
        registered = resample(stripped[modality], reference_image, transforms[modality], interpolation)
        write_nifti(registered, folder / "4_registered" / f"{modality}.nii.gz")
    if label_image is not None:
        write_nifti(label_image, folder / "2_reoriented" / "label.nii.gz")
        write_nifti(resample(label_image, reference_image, transforms[label_on], "nearest"),
                    folder / "4_registered" / "label.nii.gz")


def _describe_scan(scan: _Scan, registration: RegistrationResult | None, is_reference: bool, has_case_mask: bool) -> dict:
    return {
        "source": scan.source,
        "converted_grid": manifest_module.describe_grid(scan.converted),
        "reoriented_grid": manifest_module.describe_grid(scan.image),
        "brain_mask": scan.mask_source,
        "skull_stripped": scan.mask is not None or has_case_mask,
        "role": "reference" if is_reference else "registered to reference",
        "registration": registration.to_dict() if registration is not None else None,
    }


def _grid_text(image: sitk.Image) -> str:
    size = "x".join(str(s) for s in image.GetSize())
    spacing = "x".join(f"{s:.3g}" for s in image.GetSpacing())
    return f"{size} voxels of {spacing} mm"
