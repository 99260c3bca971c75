"""Time each conversion step for the skull-on TCGA-FG-6692 exam and check its alignment.

Runs `convert_case` on the four raw native scans (0.898 x 0.898 x 5.5 mm, four grids) with
the HD-BET brain masks, at 1 mm, and writes benchmarks/records/clinical_convert.{md,json}
with step times, registration results and brain-mask Dice against the T1c mask before and
after registration.

    .venv/bin/python benchmarks/clinical_convert.py [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from gliomaseg.clinical import convert_case, read_nifti, reorient_to_brats
from gliomaseg.clinical.masks import onto_grid

ROOT = Path(__file__).resolve().parents[1]
TCGA = ROOT / ".." / "shared" / "data" / "brats_toolkit" / "TCGA-FG-6692"
RECORDS = ROOT / "benchmarks" / "records"
TAGS = {"t1": "t1", "t1c": "t1c", "t2": "t2", "flair": "fla"}


def mask_dice(mask: sitk.Image, reference: sitk.Image, transform: sitk.Transform) -> float:
    moved = sitk.GetArrayFromImage(sitk.Resample(mask, reference, transform, sitk.sitkNearestNeighbor)) > 0
    fixed = sitk.GetArrayFromImage(reference) > 0
    return float(2 * np.count_nonzero(moved & fixed) / (np.count_nonzero(moved) + np.count_nonzero(fixed)))


def run_once(output: Path) -> dict:
    sources = {m: next((TCGA / "raw_native").glob(f"*_{t}.nii.gz")) for m, t in TAGS.items()}
    masks = {m: next((TCGA / "masks_hdbet_native-space").glob(f"*_{t}.nii.gz")) for m, t in TAGS.items()}
    start = time.perf_counter()
    result = convert_case(sources, output, masks=masks, case_id="TCGA-FG-6692")
    wall = time.perf_counter() - start

    images = {m: reorient_to_brats(read_nifti(p)) for m, p in sources.items()}
    native_masks = {m: onto_grid(reorient_to_brats(read_nifti(p)), images[m], str(p)) for m, p in masks.items()}
    alignment = {}
    for modality, registration in result.registrations.items():
        alignment[modality] = {
            "dice_before": mask_dice(native_masks[modality], native_masks["t1c"], sitk.Transform()),
            "dice_after": mask_dice(native_masks[modality], native_masks["t1c"], registration.transform),
            "mutual_information_before": registration.metric_before,
            "mutual_information_after": registration.metric_after,
            "rotation_angle_deg": registration.rotation_angle_deg,
            "translation_mm": list(registration.translation_mm),
            "iterations": registration.iterations,
        }
    return {"wall_seconds": wall, "steps": result.manifest["steps"], "alignment": alignment,
            "output_shape": result.manifest["output_grid"]["size"], "warnings": result.warnings}


def write_records(runs: list[dict]) -> None:
    record = {
        "script": "benchmarks/clinical_convert.py",
        "case": "brats_toolkit/TCGA-FG-6692 raw_native + masks_hdbet_native-space",
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "note": "CPU shared with other work while measured; times are noisy upper bounds"},
        "sitk_threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
        "runs": runs,
    }
    RECORDS.mkdir(parents=True, exist_ok=True)
    (RECORDS / "clinical_convert.json").write_text(json.dumps(record, indent=2) + "\n")

    lines = [
        "# Clinical conversion of TCGA-FG-6692 (raw skull-on scans, four grids, 5.5 mm slices)",
        "",
        f"Script: `benchmarks/clinical_convert.py`. Machine: {os.cpu_count()} CPU cores "
        f"({record['machine']['processor']}), SimpleITK threads {record['sitk_threads']}. "
        "The CPU was shared with other work while measured, so times are noisy upper bounds.",
        "",
        f"Output grid: {' x '.join(map(str, runs[0]['output_shape']))} voxels of 1 mm; reference T1c.",
        "",
        "| step | " + " | ".join(f"run {i + 1} (s)" for i in range(len(runs))) + " |",
        "|---|" + "---|" * len(runs),
    ]
    for index, step in enumerate(runs[0]["steps"]):
        lines.append(f"| {step['step']} | " + " | ".join(f"{r['steps'][index]['seconds']:.1f}" for r in runs) + " |")
    lines.append("| total (wall) | " + " | ".join(f"{r['wall_seconds']:.1f}" for r in runs) + " |")
    lines += [
        "",
        "Alignment to T1c (first run): brain-mask Dice on the T1c grid and Mattes mutual information "
        "(lower is better) between the skull-stripped images, before (scanner coordinates) and after registration.",
        "",
        "| modality | Dice before | Dice after | MI before | MI after | rotation (deg) | translation (mm) |",
        "|---|---|---|---|---|---|---|",
    ]
    for modality, a in runs[0]["alignment"].items():
        translation = ", ".join(f"{t:.1f}" for t in a["translation_mm"])
        lines.append(
            f"| {modality} | {a['dice_before']:.3f} | {a['dice_after']:.3f} | {a['mutual_information_before']:.3f} | "
            f"{a['mutual_information_after']:.3f} | {a['rotation_angle_deg']:.1f} | {translation} |"
        )
    lines += ["", "The masks of T1, T2 and FLAIR were produced by the data's source from the T1 mask with its own "
              "(ANTs) registration, so the Dice after registration also measures agreement with that registration.", ""]
    (RECORDS / "clinical_convert.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="number of conversions to time (default: 1)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not (TCGA / "raw_native").is_dir():
        raise SystemExit(f"{TCGA / 'raw_native'}: not found; the benchmark needs the TCGA-FG-6692 raw scans.")
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as folder:
            runs.append(run_once(Path(folder) / "TCGA-FG-6692"))
    write_records(runs)
    print((RECORDS / "clinical_convert.md").read_text())


if __name__ == "__main__":
    main()
