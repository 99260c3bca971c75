"""Time `predict_case` on one full-size BraTS case for AlbuNet2D and AlbuNet3D.

Each (model, configuration) runs in its own Python process, so the peak resident set size
(ru_maxrss) is that run's peak memory, numpy and torch together. Weights are random
(speed does not depend on training) unless --checkpoint is given; with a checkpoint and
cases with reference label maps, the script also reports Dice per region of every
configuration and its difference to the "paper" configuration (the window steps of Wacker et al.).

The FLOP count of a case is counted with torch.utils.flop_counter on one window and
multiplied by the number of windows; the machine's convolution rate is measured with a
large 3x3 convolution. The ratio measured time / (FLOPs / rate) says how far prediction is
from running every FLOP at the rate of a large convolution (1.0 = as fast).

Usage:
    .venv/bin/python benchmarks/inference_speed.py                    # both models, all configurations
    .venv/bin/python benchmarks/inference_speed.py --models albunet3d --configs paper fast
    .venv/bin/python benchmarks/inference_speed.py --checkpoint ckpt.safetensors --cases DATASET
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CASE = REPO.parent / "shared" / "data" / "deepbrainseg_brats2018" / "brats" / "Brats18_2013_11_1"
RECORDS = REPO / "benchmarks" / "records"
PATCH = {"albunet2d": (1, 128, 128), "albunet3d": (24, 128, 128)}

# Prediction settings per configuration. "paper" follows Wacker et al. (steps 32 in-plane,
# 24 in depth, fp32); the others trade overlap and precision for speed.
CONFIGS: dict[str, dict] = {
    "paper": {"step": 32, "depth_step": 24, "precision": "fp32", "channels_last": False},
    "paper_bf16": {"step": 32, "depth_step": 24, "precision": "bf16", "channels_last": True},
    "fast": {"step": 128, "depth_step": 24, "precision": "bf16", "channels_last": True},
    "fastest": {"step": 128, "depth_step": 24, "precision": "bf16", "channels_last": True, "window": (24, 999, 999)},
    "paper_compiled": {"step": 32, "depth_step": 24, "precision": "bf16", "channels_last": True, "compile": True},
    "fast_compiled": {"step": 128, "depth_step": 24, "precision": "bf16", "channels_last": True, "compile": True},
}
# Configurations run by default. The compiled ones are opt-in (--configs), because each spends 19 to 27 s compiling.
DEFAULT_CONFIGS = ["paper", "paper_bf16", "fast", "fastest"]


def measure_conv_rate(precision: str, seconds: float = 3.0) -> float:
    """Return the FLOP/s of a 3x3 convolution (128 -> 128 channels, 8 x 64 x 64) in `precision`."""
    conv = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False).eval().to(memory_format=torch.channels_last)
    x = torch.randn(8, 128, 64, 64).contiguous(memory_format=torch.channels_last)
    flops = 2 * 8 * 128 * 64 * 64 * 128 * 9
    context = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), context:
        conv(x)
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            conv(x)
            runs += 1
        elapsed = time.perf_counter() - start
    return flops * runs / elapsed


def window_flops(network: torch.nn.Module, spatial_dims: int, window: tuple[int, int, int]) -> float:
    """Return the forward FLOPs of one window, counted on one slice and scaled by the depth."""
    from torch.utils.flop_counter import FlopCounterMode

    if spatial_dims == 2:
        probe = torch.zeros(1, 3, *window[1:])
    else:
        probe = torch.zeros(1, 3, 1, *window[1:])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(probe)
    return float(counter.get_total_flops()) * window[0]


def dice_per_region(prediction: np.ndarray, reference: np.ndarray, schema: str) -> dict[str, float]:
    from gliomaseg.data.labels import region_masks

    predicted = region_masks(prediction, schema)
    expected = region_masks(reference, schema)
    scores = {}
    for region in predicted:
        both = predicted[region].sum() + expected[region].sum()
        scores[region] = 1.0 if both == 0 else float(2 * (predicted[region] & expected[region]).sum() / both)
    return scores


def run_single(args: argparse.Namespace) -> dict:
    """Run one (model, configuration) over the cases in this process; return its measurements."""
    import nibabel as nib

    from gliomaseg.data.cases import discover_cases
    from gliomaseg.inference import PredictionModel, load_prediction_model, predict_case
    from gliomaseg.models import build_model

    config = dict(CONFIGS[args.single_config])
    window = config.pop("window", None)
    if args.checkpoint:
        model = load_prediction_model(args.checkpoint)
    else:
        network = build_model(args.single_model, encoder_weights="none").eval()
        model = PredictionModel(network, network.spatial_dims, ("flair", "t1c", "t2"), PATCH[args.single_model])
    if window is not None and model.spatial_dims == 2:
        window = (1, *window[1:])

    cases = discover_cases(args.cases)
    rows = []
    warmup_seconds = None
    with tempfile.TemporaryDirectory() as output:
        def predict(case):
            return predict_case(
                model,
                case,
                output,
                device="cpu",
                batch_windows=args.batch_windows,
                max_memory_gb=args.max_memory_gb,
                window=window,
                overwrite=True,
                **config,
            )

        if config.get("compile"):
            # The first case compiles the network, so only the cases after it are timed.
            start = time.perf_counter()
            predict(cases[0])
            warmup_seconds = time.perf_counter() - start
        for case in cases:
            result = predict(case)
            report = json.loads(result.report.read_text())
            row = {"case_id": case.case_id, "timing_s": report["timing_s"], "windows": report["windows"], "window": report["settings"]["window"]}
            if case.label is not None and args.checkpoint:
                prediction = np.asarray(nib.load(str(result.label_map)).dataobj)
                reference = np.asarray(nib.load(str(case.label.path)).dataobj)
                row["dice"] = dice_per_region(prediction, reference, case.schema)
            rows.append(row)
            window_used = tuple(report["settings"]["window"])

    flops = window_flops(model.network, model.spatial_dims, window_used) * rows[0]["windows"]
    return {
        "model": model.summary()["model"],
        "config": args.single_config,
        "settings": CONFIGS[args.single_config],
        "cases": rows,
        "seconds_per_case": float(np.mean([r["timing_s"]["total"] for r in rows])),
        "first_case_seconds_with_compilation": warmup_seconds,
        "sliding_window_seconds": float(np.mean([r["timing_s"]["sliding_window"] for r in rows])),
        "flops_per_case": flops,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "threads": torch.get_num_threads(),
    }


def render_markdown(record: dict) -> str:
    lines = [
        "# Inference speed",
        "",
        f"Measured {record['date']} with `benchmarks/inference_speed.py` on {record['machine']}, "
        f"{record['threads']} torch threads, CPU only (no GPU on this machine).",
        f"Case: {record['case']} (cropped to the brain: {record['cropped_shape']} voxels D x H x W).",
        "Weights: " + ("checkpoint " + record["checkpoint"] if record["checkpoint"] else "random (speed does not depend on training)") + ".",
        *(["", record["note"], ""] if record.get("note") else [""]),
        f"1-minute load average {record['load_before']} before and {record['load_after']} after the runs "
        "(this benchmark keeps about 2 threads busy; more means other work shared the CPU and times are pessimistic).",
        "",
        f"Measured 3x3 convolution rate: {record['conv_gflops']['fp32']:.1f} GFLOP/s fp32, "
        f"{record['conv_gflops']['bf16']:.1f} GFLOP/s bf16 (channels-last, 8x128x64x64).",
        "",
        "The ratio columns divide the sliding-window time by FLOPs / conv rate, with the bf16 rate and with the "
        "rate of the run's own precision.",
        "",
        "FLOP bound: the seconds a case would take if every FLOP ran at the measured bf16 convolution rate.",
        "",
        "Compiled configurations (`compile`) are timed after a first case that compiles the network; the last "
        "column gives that first case's time.",
        "",
        "| model | config | window | windows | s/case | sliding window s | TFLOP/case | FLOP bound s | ratio (bf16 rate) | ratio (own precision) | peak RSS GB | first case with compilation s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in record["runs"]:
        bf16_ideal = run["flops_per_case"] / (record["conv_gflops"]["bf16"] * 1e9)
        own_ideal = run["flops_per_case"] / (record["conv_gflops"][run["settings"]["precision"]] * 1e9)
        compiled = run.get("first_case_seconds_with_compilation")
        first = "-" if compiled is None else f"{compiled:.1f}"
        lines.append(
            f"| {run['model']} | {run['config']} | {'x'.join(map(str, run['cases'][0]['window']))} | {run['cases'][0]['windows']} "
            f"| {run['seconds_per_case']:.1f} | {run['sliding_window_seconds']:.1f} | {run['flops_per_case'] / 1e12:.2f} "
            f"| {bf16_ideal:.1f} | {run['sliding_window_seconds'] / bf16_ideal:.2f} | {run['sliding_window_seconds'] / own_ideal:.2f} "
            f"| {run['peak_rss_gb']:.2f} | {first} |"
        )
    lines += ["", "Configurations:", ""]
    for name, settings in CONFIGS.items():
        lines.append(f"- `{name}`: {settings}")
    lines += [
        "",
        "`fastest` runs windows larger than the training patch (whole slices). Whether a network trained on "
        "128x128 patches keeps its Dice there is checked only by the Dice comparison below.",
    ]
    lines += ["", "## Targets", ""]
    lines += record["targets"]
    lines += ["", "## Dice of fast configurations", "", record["dice_note"], ""]
    return "\n".join(lines)


def dice_differences(runs: list[dict]) -> dict[tuple[str, str], dict[str, float]]:
    """Return, per (model, config) with Dice, the largest per-case and mean-Dice differences to "paper"."""
    paper = {(r["model"], c["case_id"]): c.get("dice") for r in runs if r["config"] == "paper" for c in r["cases"]}
    result = {}
    for run in runs:
        pairs = [(c["dice"], paper.get((run["model"], c["case_id"]))) for c in run["cases"] if c.get("dice")]
        pairs = [(d, ref) for d, ref in pairs if ref]
        if not pairs:
            continue
        regions = list(pairs[0][0])
        result[(run["model"], run["config"])] = {
            "max_case": max(abs(d[k] - ref[k]) for d, ref in pairs for k in regions),
            "max_mean": max(abs(float(np.mean([d[k] - ref[k] for d, ref in pairs]))) for k in regions),
        }
    return result


def check_targets(runs: list[dict], bf16_gflops: float) -> list[str]:
    by_key = {(r["model"], r["config"]): r for r in runs}
    differences = dice_differences(runs)
    lines = []
    for config in ("paper", "paper_bf16", "paper_compiled"):
        run = by_key.get(("albunet3d", config))
        if run:
            met = "met" if run["seconds_per_case"] <= 15 else "NOT met"
            bound = run["flops_per_case"] / (bf16_gflops * 1e9)
            lines.append(
                f"- AlbuNet3D, paper windows ({config}), <= 15 s per case: {run['seconds_per_case']:.1f} s, {met}. "
                f"At the bf16 convolution rate its {run['flops_per_case'] / 1e12:.2f} TFLOP take {bound:.1f} s."
            )
    for run in sorted((r for r in runs if r["model"] == "albunet3d" and r["config"] != "paper"), key=lambda r: r["seconds_per_case"]):
        met = "met" if run["seconds_per_case"] <= 5 else "NOT met"
        difference = differences.get(("albunet3d", run["config"]))
        if difference is None:
            dice = "Dice not compared in this record"
        else:
            within = "within" if difference["max_case"] <= 0.005 else "NOT within"
            dice = (
                f"Dice {within} 0.005 of paper (largest per-case difference {difference['max_case']:.4f}, "
                f"largest difference of mean Dice {difference['max_mean']:.4f})"
            )
        lines.append(f"- AlbuNet3D, {run['config']}, <= 5 s per case: {run['seconds_per_case']:.1f} s, {met}; {dice}.")
    peak = max(r["peak_rss_gb"] for r in runs)
    lines.append(f"- Peak memory < 3 GB in every run: max {peak:.2f} GB, {'met' if peak < 3 else 'NOT met'}.")
    return lines


def dice_note(runs: list[dict], checkpoint: str | None) -> str:
    if not checkpoint:
        return (
            "Not compared: this run used random weights. With --checkpoint CKPT --cases DATASET the script "
            "scores every configuration against the cases' label maps and against the paper configuration."
        )
    lines = ["| model | config | case | WT | TC | ET | max difference to paper |", "|---|---|---|---|---|---|---|"]
    paper = {(r["model"], c["case_id"]): c.get("dice") for r in runs if r["config"] == "paper" for c in r["cases"]}
    for run in runs:
        for case in run["cases"]:
            dice = case.get("dice")
            if dice is None:
                continue
            reference = paper.get((run["model"], case["case_id"]))
            difference = max(abs(dice[k] - reference[k]) for k in dice) if reference else float("nan")
            lines.append(
                f"| {run['model']} | {run['config']} | {case['case_id']} | {dice['whole_tumor']:.4f} "
                f"| {dice['tumor_core']:.4f} | {dice['enhancing_tumor']:.4f} | {difference:.4f} |"
            )
    lines += ["", "| model | config | mean WT | mean TC | mean ET | largest difference of mean Dice to paper |", "|---|---|---|---|---|---|"]
    differences = dice_differences(runs)
    for run in runs:
        scored = [c["dice"] for c in run["cases"] if c.get("dice")]
        if not scored:
            continue
        means = {k: float(np.mean([d[k] for d in scored])) for k in scored[0]}
        difference = differences.get((run["model"], run["config"]), {}).get("max_mean", float("nan"))
        lines.append(
            f"| {run['model']} | {run['config']} | {means['whole_tumor']:.4f} | {means['tumor_core']:.4f} "
            f"| {means['enhancing_tumor']:.4f} | {difference:.4f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=str(DEFAULT_CASE), help="case or dataset folder (default: one BraTS 2018 case)")
    parser.add_argument("--models", nargs="+", default=["albunet3d", "albunet2d"], choices=sorted(PATCH))
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=list(CONFIGS))
    parser.add_argument("--checkpoint", default=None, help="trained checkpoint; enables the Dice comparison")
    parser.add_argument("--batch-windows", type=int, default=None)
    parser.add_argument("--max-memory-gb", type=float, default=2.0)
    parser.add_argument("--output", default=str(RECORDS / "inference_speed"), help="record path without suffix")
    parser.add_argument("--render", action="store_true", help="rewrite the Markdown record from the JSON record only")
    parser.add_argument("--note", default=None, help="a sentence about the run (for example where the checkpoint came from)")
    parser.add_argument("--single-model", help=argparse.SUPPRESS)
    parser.add_argument("--single-config", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.single_model:
        print("RESULT " + json.dumps(run_single(args)))
        return 0
    output = Path(args.output)
    if args.render:
        record = json.loads(output.with_suffix(".json").read_text())
        if args.note:
            record["note"] = args.note
        record["targets"] = check_targets(record["runs"], record["conv_gflops"]["bf16"])
        record["dice_note"] = dice_note(record["runs"], record["checkpoint"])
        output.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        output.with_suffix(".md").write_text(render_markdown(record))
        return 0

    cases_path = Path(args.cases)
    if not cases_path.exists():
        from gliomaseg.data.synthetic import make_synthetic_case

        print(f"{cases_path} is absent; using a synthetic 240x240x155 case")
        cases_path = make_synthetic_case(tempfile.mkdtemp(), "Synthetic_240", shape=(240, 240, 155))
        args.cases = str(cases_path)

    from gliomaseg.data.cases import discover_cases
    from gliomaseg.data.preprocessing import preprocess_case

    first = discover_cases(cases_path)[0]
    cropped = preprocess_case(first, with_label=False).image.shape[1:]
    load_before = os.getloadavg()[0]
    rates = {p: measure_conv_rate(p) / 1e9 for p in ("fp32", "bf16")}
    print(f"conv rate GFLOP/s: {rates}")

    runs = []
    models = [None] if args.checkpoint else args.models
    for model in models:
        for config in args.configs:
            command = [sys.executable, __file__, "--cases", args.cases, "--single-config", config, "--max-memory-gb", str(args.max_memory_gb)]
            command += ["--single-model", model or "checkpoint"]
            if args.checkpoint:
                command += ["--checkpoint", args.checkpoint]
            if args.batch_windows:
                command += ["--batch-windows", str(args.batch_windows)]
            print("running", model or args.checkpoint, config, flush=True)
            completed = subprocess.run(command, capture_output=True, text=True, check=False)
            result_lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
            if completed.returncode != 0 or not result_lines:
                print(completed.stderr[-3000:], file=sys.stderr)
                return 1
            run = json.loads(result_lines[-1][len("RESULT ") :])
            print(f"  {run['seconds_per_case']:.1f} s/case, peak {run['peak_rss_gb']:.2f} GB", flush=True)
            runs.append(run)

    record = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "threads": torch.get_num_threads(),
        "case": first.case_id,
        "cropped_shape": "x".join(map(str, cropped)),
        "checkpoint": args.checkpoint,
        "conv_gflops": rates,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "runs": runs,
        "note": args.note,
    }
    record["targets"] = check_targets(runs, rates["bf16"])
    record["dice_note"] = dice_note(runs, args.checkpoint)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    output.with_suffix(".md").write_text(render_markdown(record))
    print(f"wrote {output.with_suffix('.md')} and {output.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
