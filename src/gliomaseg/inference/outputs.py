"""Output files of a prediction: label map, probability map, per-case JSON report, tumor volumes."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from gliomaseg.data.io import Volume, default_file_mode, save_volume
from gliomaseg.data.labels import REGIONS, region_masks_from_classes
from gliomaseg.data.preprocessing import CaseGeometry

LABEL_SUFFIX = ".nii.gz"
REPORT_SUFFIX = ".json"
PROBABILITIES_SUFFIX = "_probabilities.nii.gz"


def output_paths(output_dir: str | Path, case_id: str) -> dict[str, Path]:
    """Return the label map, report and probability map paths of a case in `output_dir`."""
    output_dir = Path(output_dir)
    return {
        "label_map": output_dir / f"{case_id}{LABEL_SUFFIX}",
        "report": output_dir / f"{case_id}{REPORT_SUFFIX}",
        "probabilities": output_dir / f"{case_id}{PROBABILITIES_SUFFIX}",
    }


def voxel_volume_mm3(affine: np.ndarray) -> float:
    """Return the volume of one voxel in mm3: the absolute determinant of the affine's 3x3 part."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))


def tumor_volumes_cm3(classes: np.ndarray, voxel_mm3: float) -> dict[str, float]:
    """Return the volume in cm3 of whole tumor, tumor core and enhancing tumor.

    Args:
        classes: model classes 0-3 on any grid of the case (the brain crop contains every tumor voxel).
        voxel_mm3: volume of one voxel in mm3.
    """
    masks = region_masks_from_classes(classes)
    return {region: round(int(masks[region].sum()) * voxel_mm3 / 1000.0, 4) for region in REGIONS}


def write_json_atomic(content: dict[str, Any], path: str | Path) -> Path:
    """Write `content` as indented JSON through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(temp_name, default_file_mode())
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(content, stream, indent=2)
            stream.write("\n")
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def save_probabilities(probabilities: np.ndarray, geometry: CaseGeometry, path: str | Path) -> Path:
    """Write class probabilities as a float32 4D NIfTI (X, Y, Z, 4) in the input's grid and header.

    Args:
        probabilities: float (4, d, h, w) on the cropped grid, classes in model order
            (background, necrotic/non-enhancing core, edema, enhancing tumor).
        geometry: the case's geometry; voxels outside the brain crop get background 1.

    NIfTI-1 has no float16 data type, so the file is float32. Gzip makes it small because
    every voxel outside the brain crop has the same values.
    """
    channels = [geometry.restore(probabilities[k], fill=1.0 if k == 0 else 0.0) for k in range(probabilities.shape[0])]
    stacked = np.stack(channels, axis=-1).astype(np.float32, copy=False)
    like: Volume = geometry.reference
    return save_volume(stacked, like, path, dtype=np.float32, overwrite=True)
