"""Prediction time of one whole case and parameter count for every encoder, AlbuNet2D and AlbuNet3D.

For each (encoder, model) the script segments one full BraTS case of 240x240x155 voxels
with `gliomaseg.inference.predict_case`. The default case is Brats18_2013_11_1, and a
synthetic case of that grid replaces it where it is absent. The time covers
preprocessing, the sliding window with the training patch size (1x128x128 for 2D,
24x128x128 for 3D), restoring the label map to the input grid and writing it. Each configuration runs in its own Python process, so the
peak resident set size is that run's own. Weights are random, because speed does not
depend on them.

Parameter counts and FLOPs per window come from `count_flops_and_parameters` of
benchmarks/models_forward.py, which records forward throughput of the same networks on
single patches. This script adds the measured time of a whole case.

Rows are kept per (encoder, model, precision) in the JSON record, so a run with a
subset of encoders updates those rows and keeps the others.

Usage:
    .venv/bin/python benchmarks/encoders_speed.py                        # all encoders, 2D and 3D, fp32
    .venv/bin/python benchmarks/encoders_speed.py --encoders efficientnet-lite0 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from models_forward import ENCODERS, MODELS, _cpu_name, count_flops_and_parameters

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "benchmarks" / "records"
DEFAULT_CASE = REPO.parent / "shared" / "data" / "deepbrainseg_brats2018" / "brats" / "Brats18_2013_11_1"
PATCH = {"albunet2d": (1, 128, 128), "albunet3d": (24, 128, 128)}
CASE_GRID = (240, 240, 155)


def run_worker(config: dict) -> dict:
    """Segment the case once with a randomly initialised model in this process; return the timings."""
    import nibabel as nib
    import torch

    from gliomaseg.data.cases import discover_cases
    from gliomaseg.inference import PredictionModel, predict_case
    from gliomaseg.models import build_model

    torch.manual_seed(0)
    network = build_model(config["model"], encoder=config["encoder"], encoder_weights="none").eval()
    model = PredictionModel(network, network.spatial_dims, ("flair", "t1c", "t2"), PATCH[config["model"]])
    case = discover_cases(config["case"])[0]
    grid = nib.load(str(case.images[model.channels[0]])).shape[:3]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as output:
        result = predict_case(
            model,
            case,
            output,
            device="cpu",
            precision=config["precision"],
            step=config["step"],
            depth_step=config["depth_step"],
            overwrite=True,
        )
        report = json.loads(result.report.read_text())
    return {
        **config,
        "case_id": report["case_id"],
        "grid": list(grid),
        "cropped_shape_dhw": report["cropped_shape_dhw"],
        "window": report["settings"]["window"],
        "windows": report["windows"],
        "timing_s": report["timing_s"],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,  # Linux reports KiB
        "threads": torch.get_num_threads(),
        "load_average": [load_before, os.getloadavg()[0]],
    }


def _run_in_subprocess(config: dict) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(config)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"configuration {config} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _row_key(row: dict) -> tuple[str, str, str]:
    return row["encoder"], row["model"], row["precision"]


def render_markdown(record: dict) -> str:
    """Return the Markdown record: one row per encoder, model and precision."""
    rows = sorted(record["rows"], key=lambda r: (r["model"], ENCODERS.index(r["encoder"]) if r["encoder"] in ENCODERS else 99, r["precision"]))
    loads = [load for r in rows for load in r["load_average"]]
    first = rows[0]
    lines = [
        "# Prediction time per case and parameters of every encoder",
        "",
        f"Measured by `benchmarks/encoders_speed.py` ({record['first_date']} to {record['last_date']}) on {record['cpu']} "
        f"({record['cpus']} logical CPUs, {first['threads']} torch threads), torch {record['torch']}, CPU only.",
        "",
        f"NOTE: the CPU was shared with other engineers' jobs while this ran (1-minute load average between "
        f"{min(loads):.1f} and {max(loads):.1f} at the starts and ends of the runs, on {record['cpus']} CPUs), so the "
        "times are noisy and slower than on an idle machine. Rows measured under different load compare only roughly.",
        "",
        f"Case: {first['case_id']} ({'x'.join(map(str, first['grid']))} voxels, cropped to the brain: "
        f"{'x'.join(map(str, first['cropped_shape_dhw']))} voxels D x H x W). `gliomaseg.inference.predict_case` with "
        f"random weights, sliding window with the training patch (1x128x128 for 2D, 24x128x128 for 3D), in-plane step "
        f"{first['step']}, depth step {first['depth_step']}, no test-time augmentation. Seconds per case include "
        "preprocessing, the sliding window, restoring to the input grid and writing the label map. "
        "GFLOPs per case: FLOPs of one window (a multiply-add counted as 2) times the windows.",
        "",
        "| encoder | model | precision | parameters | windows | GFLOPs/case | s/case | sliding window s | preprocess s | peak RSS GB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        timing = r["timing_s"]
        lines.append(
            f"| {r['encoder']} | {r['model']} | {r['precision']} | {r['parameters']:,} | {r['windows']} | "
            f"{r['flops_per_window'] * r['windows'] / 1e9:.0f} | {timing['total']:.1f} | {timing['sliding_window']:.1f} | "
            f"{timing['preprocess']:.1f} | {r['peak_rss_gb']:.2f} |"
        )
    lines += ["", "Forward throughput on single patches, FLOPs and memory per patch: see `models_forward.md`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--encoders", nargs="+", default=ENCODERS, help="encoders to measure")
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS, help="models to measure")
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE, help="a BraTS case folder (240x240x155 voxels)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="prediction precision")
    parser.add_argument("--step", type=int, default=32, help="in-plane sliding-window step in voxels")
    parser.add_argument("--depth-step", type=int, default=24, help="sliding-window step along D in voxels (3D)")
    parser.add_argument("--output", type=Path, default=RECORDS / "encoders_speed", help="record path without suffix (.md and .json are written)")
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0

    import torch

    case = args.case
    if not case.is_dir():
        from gliomaseg.data.synthetic import make_synthetic_case

        print(f"{case} not found; using a synthetic case of {'x'.join(map(str, CASE_GRID))} voxels", flush=True)
        case = make_synthetic_case(tempfile.mkdtemp(prefix="gliomaseg-speed-"), "Synthetic_240", shape=CASE_GRID)

    json_path = args.output.with_suffix(".json")
    record = json.loads(json_path.read_text()) if json_path.is_file() else {"rows": []}
    rows = {_row_key(r): r for r in record["rows"]}
    started = time.perf_counter()
    for encoder in args.encoders:
        for model in args.models:
            window = PATCH[model]
            flops, parameters = count_flops_and_parameters(model, encoder, window[0], window[1])
            config = {
                "encoder": encoder,
                "model": model,
                "precision": args.precision,
                "case": str(case),
                "step": args.step,
                "depth_step": args.depth_step,
            }
            row = _run_in_subprocess(config)
            row.update(parameters=parameters, flops_per_window=flops, date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
            rows[_row_key(row)] = row
            print(
                f"{encoder:>18} {model} {args.precision}: {row['timing_s']['total']:.1f} s/case, {parameters:,} parameters "
                f"({time.perf_counter() - started:.0f} s elapsed)",
                flush=True,
            )

    dates = sorted(r["date"] for r in rows.values())
    record = {
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "first_date": dates[0],
        "last_date": dates[-1],
        "rows": list(rows.values()),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(render_markdown(record))
    print(f"wrote {args.output.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
