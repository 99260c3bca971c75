"""Time the evaluation metrics on real 240 x 240 x 155 label maps and write a record.

Measures:
1. evaluate_case (Dice, HD95, sensitivity, specificity for three regions) on every pair of the
   BraTS 2020 algorithm outputs under brainlesion_tutorials (two patients);
2. the same with a far-away false positive, so the box around both masks spans the volume;
3. evaluate_folders end to end (reading .nii.gz files included) on the 14 BraTS 2018 cases,
   with each reference dilated by one voxel as the prediction.

Usage: .venv/bin/python benchmarks/evaluation_speed.py [--record benchmarks/records/evaluation.md]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import binary_dilation

from gliomaseg.evaluation import evaluate_case, evaluate_folders

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TUTORIALS = DATA / "brainlesion_tutorials"
BRATS2018 = DATA / "deepbrainseg_brats2018" / "brats"


def _time(function, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def _algorithm_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    pairs = []
    for patient in sorted(TUTORIALS.glob("*_brats_space")):
        files = sorted((patient / "segmentation").glob("*.nii.gz"))
        arrays = {f.name.split(".")[0]: np.asarray(nib.load(str(f)).dataobj) for f in files}
        for a, b in itertools.combinations(sorted(arrays), 2):
            pairs.append((f"{patient.name}: {a} vs {b}", arrays[a], arrays[b]))
    return pairs


def _folder_benchmark(workdir: Path) -> tuple[int, float] | None:
    cases = sorted(p for p in BRATS2018.glob("Brats18_*") if p.is_dir())
    if not cases:
        return None
    predictions = workdir / "pred"
    predictions.mkdir()
    for case in cases:
        image = nib.load(str(case / f"{case.name}_seg.nii.gz"))
        labels = np.asarray(image.dataobj).astype(np.uint8)
        grown = labels.copy()
        edema_ring = binary_dilation(labels > 0) & (labels == 0)
        grown[edema_ring] = 2
        nib.save(nib.Nifti1Image(grown, image.affine, image.header), str(predictions / f"{case.name}.nii.gz"))
    start = time.perf_counter()
    results, _ = evaluate_folders(predictions, BRATS2018, progress=False)
    elapsed = time.perf_counter() - start
    return sum(r.scored for r in results), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", default=str(Path(__file__).parent / "records" / "evaluation.md"))
    args = parser.parse_args()

    load_before = os.getloadavg()
    pairs = _algorithm_pairs()
    lines = [
        "# Evaluation speed",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, shared with other "
        f"users while measured (load average {load_before[0]:.1f} at the start), so times are noisy upper bounds.",
        "Script: `benchmarks/evaluation_speed.py`. Times are the best of 3 runs for single cases.",
        "",
    ]

    if pairs:
        times = [_time(lambda p=p, r=r: evaluate_case(p, r), repeats=3) for _, p, r in pairs]
        lines += [
            "## evaluate_case on real 240 x 240 x 155 label maps",
            "",
            f"{len(pairs)} pairs of BraTS 2020 algorithm outputs (two patients), Dice, HD95, sensitivity and "
            "specificity for three regions each, label maps already in memory:",
            "",
            "| statistic | seconds per case |",
            "|---|---|",
            f"| median | {statistics.median(times):.3f} |",
            f"| max | {max(times):.3f} |",
            "",
        ]
        _, pred, ref = pairs[0]
        scattered = pred.copy()
        scattered[2, 2, 2] = 2
        scattered[-3, -3, -3] = 2
        wide = _time(lambda: evaluate_case(scattered, ref), repeats=3)
        lines += [
            "Worst case for the bounding-box crop: the same first pair with two false-positive voxels in "
            f"opposite corners of the volume, so HD95 works on the whole grid: {wide:.3f} s.",
            "",
        ]
    else:
        lines += [f"No algorithm outputs under {TUTORIALS}; evaluate_case not measured.", ""]

    with tempfile.TemporaryDirectory() as workdir:
        folder = _folder_benchmark(Path(workdir))
    if folder is not None:
        scored, elapsed = folder
        lines += [
            "## evaluate_folders end to end",
            "",
            f"{scored} BraTS 2018 cases (reference = ground truth, prediction = ground truth grown by one "
            f"voxel of edema), reading both .nii.gz files per case: {elapsed:.1f} s in total, "
            f"{elapsed / max(scored, 1):.2f} s per case.",
            "",
        ]
    else:
        lines += [f"No BraTS 2018 cases under {BRATS2018}; evaluate_folders not measured.", ""]

    record = Path(args.record)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
