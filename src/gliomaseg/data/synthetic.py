"""Synthetic BraTS-like cases for tests and the demo.

Each case is a head-sized ellipsoid "brain" with white matter, grey matter and ventricles,
and one glioma: edema around a tumor core whose enhancing rim surrounds a necrotic centre.
The four modalities get the tissue contrasts that make these regions visible in real MRI
(edema bright in FLAIR and T2, enhancing rim bright in T1c, necrosis dark in T1c and bright
in T2), plus a smooth bias field, noise and a case-specific intensity scale. The shapes are
random but smooth, so a network must learn the contrasts, not a template.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from gliomaseg.data.labels import BACKGROUND, CORE, EDEMA, ENHANCING, from_model_classes, get_schema

# Mean intensity per tissue: background, WM, GM, CSF, edema, enhancing, necrosis.
_TISSUES = ("background", "wm", "gm", "csf", "edema", "enhancing", "necrosis")
_CONTRAST = {
    "t1": (0.0, 0.80, 0.60, 0.20, 0.50, 0.62, 0.30),
    "t1c": (0.0, 0.80, 0.60, 0.20, 0.52, 1.40, 0.25),
    "t2": (0.0, 0.40, 0.60, 1.20, 1.05, 0.80, 1.30),
    "flair": (0.0, 0.50, 0.62, 0.10, 1.30, 0.95, 0.60),
}
_FILE_TAGS = {
    "brats2017": ("_", {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}),
    "brats2023": ("-", {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}),
}
# Channel order of MSD Task01 4D images, as in its dataset.json.
_MSD_ORDER = ("flair", "t1", "t1c", "t2")
_MSD_NAMES = {"flair": "FLAIR", "t1": "T1w", "t1c": "t1gd", "t2": "T2w"}
LAYOUTS = ("brats2017", "brats2023", "msd", "manifest")


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return noise / (np.abs(noise).max() + 1e-8)


def _ellipsoid(grid: list[np.ndarray], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii))


def synthesize_arrays(
    shape: tuple[int, int, int] = (64, 64, 40),
    seed: int = 0,
    with_tumor: bool = True,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Make the modality arrays and model-class label map of one case in RAS voxel order.

    Returns:
        ({modality: int16 (X, Y, Z)}, uint8 model classes (X, Y, Z)).
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    grid = [g.astype(np.float32) for g in np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")]
    size = np.asarray(shape, dtype=np.float32)
    centre = size / 2 + rng.uniform(-0.03, 0.03, 3) * size
    wobble = 0.06 * _smooth_noise(rng, shape, sigma=max(shape) / 8)

    brain_radii = size * rng.uniform(0.38, 0.44, 3)
    brain = _ellipsoid(grid, centre, brain_radii) + wobble < 1
    white = _ellipsoid(grid, centre, brain_radii * 0.68) + 2 * wobble < 1
    ventricle_offset = np.array([0.09, 0.0, 0.0]) * size
    ventricles = np.zeros(shape, dtype=bool)
    for sign in (-1, 1):
        ventricles |= _ellipsoid(grid, centre + sign * ventricle_offset, size * np.array([0.05, 0.14, 0.07])) < 1

    tissue = np.zeros(shape, dtype=np.uint8)
    tissue[brain] = 2
    tissue[brain & white] = 1
    tissue[brain & ventricles] = 3

    classes = np.zeros(shape, dtype=np.uint8)
    if with_tumor:
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        tumor_centre = centre + direction * brain_radii * rng.uniform(0.15, 0.4)
        radius = float(min(size) * rng.uniform(0.2, 0.28))
        shape_noise = 0.15 * _smooth_noise(rng, shape, sigma=radius / 2)
        distance = np.sqrt(_ellipsoid(grid, tumor_centre, np.full(3, radius) * rng.uniform(0.8, 1.2, 3))) + shape_noise
        core_fraction = rng.uniform(0.55, 0.75)
        edema = (distance < 1) & brain
        core = (distance < core_fraction) & brain
        necrosis = (distance < core_fraction * rng.uniform(0.4, 0.65)) & brain
        classes[edema] = EDEMA
        classes[core] = ENHANCING
        classes[necrosis] = CORE
        tissue[edema] = 4
        tissue[core] = 5
        tissue[necrosis] = 6

    bias = 1 + 0.15 * _smooth_noise(rng, shape, sigma=max(shape) / 4)
    images = {}
    for modality, means in _CONTRAST.items():
        base = np.asarray(means, dtype=np.float32)[tissue]
        texture = 0.05 * rng.standard_normal(shape).astype(np.float32)
        scale = rng.uniform(400, 1500)
        image = (base * bias + texture) * brain * scale
        images[modality] = np.clip(image, 0, 32767).astype(np.int16)
    assert not np.any(classes[~brain] != BACKGROUND)
    return images, classes


def _oriented(array: np.ndarray, spacing: tuple[float, float, float], orientation: str) -> nib.Nifti1Image:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.asarray(array.shape[:3]) - 1) / 2 * np.asarray(spacing)
    image = nib.Nifti1Image(array, affine)
    target = nib.orientations.axcodes2ornt(tuple(orientation.upper()))
    image = image.as_reoriented(nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), target))
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    return image


def make_synthetic_case(
    out_dir: str | Path,
    case_id: str,
    shape: tuple[int, int, int] = (64, 64, 40),
    schema: str = "brats2017",
    layout: str = "brats2017",
    orientation: str = "LPS",
    seed: int = 0,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    with_label: bool = True,
    with_tumor: bool = True,
    modalities: tuple[str, ...] = ("t1", "t1c", "t2", "flair"),
) -> Path:
    """Write one synthetic case folder `out_dir/case_id` and return its path.

    Args:
        shape: grid size in RAS order (left-right, posterior-anterior, inferior-superior).
        schema: label schema of the written label map.
        layout: "brats2017", "brats2023" or "manifest" (MSD needs a dataset: see
            make_synthetic_dataset).
        orientation: axis codes of the stored arrays, for example "LPS" (BraTS), "RAS", or
            "LSA" for a coronal acquisition.
        with_tumor: False writes a tumor-free case.
    """
    if layout not in ("brats2017", "brats2023", "manifest"):
        raise ValueError(f"unknown layout {layout!r} for a single case; use brats2017, brats2023 or manifest")
    images, classes = synthesize_arrays(shape, seed, with_tumor)
    labels = from_model_classes(classes, get_schema(schema))
    folder = Path(out_dir) / case_id
    folder.mkdir(parents=True, exist_ok=True)

    if layout == "manifest":
        entries = {m: f"{m.upper()}_scan.nii.gz" for m in modalities}
        label_name = "tumor_labels.nii.gz"
        manifest = {"case_id": case_id, "images": entries, "label_schema": schema}
        if with_label:
            manifest["label"] = label_name
        (folder / "case.json").write_text(json.dumps(manifest, indent=2))
        paths = {m: folder / name for m, name in entries.items()} | {"seg": folder / label_name}
    else:
        separator, tags = _FILE_TAGS[layout]
        paths = {key: folder / f"{case_id}{separator}{tag}.nii.gz" for key, tag in tags.items()}

    for modality in modalities:
        nib.save(_oriented(images[modality], spacing, orientation), paths[modality])
    if with_label:
        nib.save(_oriented(labels, spacing, orientation), paths["seg"])
    return folder


def make_synthetic_dataset(
    out_dir: str | Path,
    n_cases: int,
    shape: tuple[int, int, int] = (64, 64, 40),
    schema: str | None = None,
    layout: str = "brats2017",
    orientation: str = "LPS",
    seed: int = 0,
    prefix: str = "Synth",
    **case_options,
) -> Path:
    """Write `n_cases` synthetic cases under `out_dir` and return `out_dir`.

    For layout "msd" the folder is an MSD Task01 dataset (dataset.json, 4D imagesTr, labelsTr)
    with the MSD label schema; otherwise each case gets its own folder. The schema defaults to
    the layout's own (brats2017, brats2023, msd).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if layout != "msd":
        for index in range(n_cases):
            make_synthetic_case(
                out_dir,
                f"{prefix}_{index:03d}",
                shape,
                schema or ("brats2023" if layout == "brats2023" else "brats2017"),
                layout,
                orientation,
                seed=seed * 1000 + index,
                **case_options,
            )
        return out_dir

    (out_dir / "imagesTr").mkdir(exist_ok=True)
    (out_dir / "labelsTr").mkdir(exist_ok=True)
    spacing = case_options.get("spacing", (1.0, 1.0, 1.0))
    for index in range(n_cases):
        name = f"BRATS_{index + 1:03d}.nii.gz"
        images, classes = synthesize_arrays(shape, seed * 1000 + index)
        stacked = np.stack([images[m] for m in _MSD_ORDER], axis=-1)
        nib.save(_oriented(stacked, spacing, orientation), out_dir / "imagesTr" / name)
        labels = from_model_classes(classes, get_schema(schema or "msd"))
        nib.save(_oriented(labels, spacing, orientation), out_dir / "labelsTr" / name)
    description = {
        "name": "BRATS",
        "modality": {str(i): _MSD_NAMES[m] for i, m in enumerate(_MSD_ORDER)},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": n_cases,
    }
    (out_dir / "dataset.json").write_text(json.dumps(description, indent=2))
    return out_dir
