"""The conversion manifest (conversion.json): what was done to each scan, and with which software."""

from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import SimpleITK as sitk

from gliomaseg.clinical.orientation import orientation_code
from gliomaseg.data.io import default_file_mode

MANIFEST_NAME = "conversion.json"


def software_versions() -> dict[str, str]:
    """Return the versions of Python, gliomaseg and the packages that do the conversion."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("gliomaseg", "SimpleITK", "nibabel", "numpy", "scipy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    versions["ITK (in SimpleITK)"] = sitk.Version.ITKVersionString()
    return versions


def describe_grid(image: sitk.Image) -> dict:
    """Return size, spacing (mm), origin (LPS mm), direction and axis code of an image's grid."""
    return {
        "size": list(image.GetSize()),
        "spacing_mm": [round(s, 6) for s in image.GetSpacing()],
        "origin_lps_mm": [round(o, 4) for o in image.GetOrigin()],
        "direction": [round(d, 6) for d in image.GetDirection()],
        "orientation": orientation_code(image),
        "voxel_type": image.GetPixelIDTypeAsString(),
    }


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_manifest(manifest: dict, folder: Path) -> Path:
    """Write the manifest as indented JSON to `folder`/conversion.json, atomically."""
    path = folder / MANIFEST_NAME
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    os.chmod(temporary, default_file_mode())
    with os.fdopen(handle, "w") as stream:
        json.dump(manifest, stream, indent=2)
        stream.write("\n")
    os.replace(temporary, path)
    return path
