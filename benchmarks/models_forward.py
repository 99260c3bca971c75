"""Forward-pass speed, peak memory, FLOPs and parameters of AlbuNet2D/3D for every encoder.

For each (encoder, model, precision) the script runs the network in eval mode without
gradients on random input: AlbuNet2D on a batch of 1x128x128 slices, AlbuNet3D on one
24x128x128 patch (both 24 slices per forward pass by default). Each configuration runs
in its own Python process, so the peak resident set size (ru_maxrss) is that run's
peak; the record gives it and its increase during the first full-size forward pass
(activations), which follows a one-slice pass and is not timed.
FLOPs per patch are counted by torch.utils.flop_counter.FlopCounterMode on a copy of
the model on the meta device (shapes only, no computation; a multiply-add counts as
2 FLOPs). Weights are random; speed does not depend on them. By default bf16 is
measured for ResNet34 only, to keep the run within minutes on a 2-core CPU.

The per-case time is an estimate: windows of a sliding window over an example cropped
case (default 140x170x140 voxels, D x H x W) with in-plane step 32 and depth step 24
(3D) or 1 (2D), times the measured time per window. Stitching and preprocessing are
not included; benchmarks/inference_speed.py measures whole cases.

Usage:
    .venv/bin/python benchmarks/models_forward.py            # all encoders; bf16 for resnet34
    .venv/bin/python benchmarks/models_forward.py --encoders resnet34 --bf16-encoders resnet34
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "benchmarks" / "records"
ENCODERS = ["resnet34", "resnet18", "resnet50", "efficientnet-lite0"]
MODELS = ["albunet2d", "albunet3d"]
PRECISIONS = ["fp32", "bf16"]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_worker(config: dict) -> dict:
    """Measure one configuration in this process and return the results."""
    import torch

    from gliomaseg.models import build_model

    torch.manual_seed(0)
    model = build_model(config["model"], encoder=config["encoder"], encoder_weights="none").eval()
    depth = config["depth"]
    if config["model"] == "albunet2d":
        batch = torch.randn(config["slices"], 3, config["size"], config["size"])
        warm_up = batch[:1]
        slices_per_forward = config["slices"]
    else:
        batch = torch.randn(1, 3, depth, config["size"], config["size"])
        warm_up = batch[:, :, :1]
        slices_per_forward = depth
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=config["precision"] == "bf16")

    times: list[float] = []
    with torch.inference_mode(), autocast:
        model(warm_up)  # the first call initialises oneDNN and the thread pool
        rss_before = _peak_rss_mb()
        model(batch)  # the first full-size pass allocates activations and creates oneDNN primitives
        rss_after = _peak_rss_mb()
        started = time.perf_counter()
        while len(times) < config["repeats"] and (not times or time.perf_counter() - started < config["max_seconds"]):
            tic = time.perf_counter()
            model(batch)
            times.append(time.perf_counter() - tic)

    median = statistics.median(times)
    return {
        **config,
        "slices_per_forward": slices_per_forward,
        "seconds_per_forward": times,
        "median_seconds": median,
        "slices_per_second": slices_per_forward / median,
        "peak_rss_mb": rss_after,
        "forward_rss_increase_mb": rss_after - rss_before,
        "threads": torch.get_num_threads(),
    }


def count_flops_and_parameters(model_name: str, encoder: str, depth: int, size: int) -> tuple[int, int]:
    """Return (FLOPs per patch, parameters) of a model built on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from gliomaseg.models import build_model, count_parameters

    with torch.device("meta"):
        model = build_model(model_name, encoder=encoder, encoder_weights="none").eval()
        shape = (1, 3, size, size) if model_name == "albunet2d" else (1, 3, depth, size, size)
        patch = torch.empty(shape)
    with FlopCounterMode(display=False) as counter:
        model(patch)
    return counter.get_total_flops(), count_parameters(model)


def _windows_per_case(model: str, case_shape: list[int], depth: int, size: int) -> int:
    from gliomaseg.inference.sliding_window import count_windows

    window_depth = 1 if model == "albunet2d" else depth
    return count_windows(case_shape, (window_depth, size, size), (window_depth, 32, 32))


def _run_in_subprocess(config: dict) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(config)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"Configuration {config} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _markdown(results: list[dict], machine: dict, case_shape: list[int]) -> str:
    first = results[0]
    size = first["size"]
    lines = [
        "# AlbuNet2D / AlbuNet3D forward pass on CPU",
        "",
        f"Measured {machine['date']} by `benchmarks/models_forward.py` on {machine['cpu']} "
        f"({machine['cpus']} logical CPUs, {machine['threads']} torch threads), torch {machine['torch']}.",
        "",
        f"NOTE: the CPU was shared with other jobs while this ran (1-minute load average "
        f"{machine['load_before']:.1f} before, {machine['load_after']:.1f} after, on {machine['cpus']} CPUs), "
        "so times are noisy and slower than on an idle machine; compare rows of one run with each other.",
        "",
        "Random weights, eval mode, `torch.inference_mode`; bf16 is `torch.autocast('cpu', torch.bfloat16)`. "
        f"AlbuNet2D forwards a batch of {first['slices']} slices of 1x{size}x{size}, AlbuNet3D one "
        f"{first['depth']}x{size}x{size} patch (all four depth layers on). "
        f"GFLOPs are per patch (one slice for 2D, {first['depth']} slices for 3D), "
        "a multiply-add counted as 2 FLOPs. Peak RSS is the whole process's maximum resident memory; "
        "'forward +MB' is its growth during the first full-size forward pass (not timed).",
        "",
        f"Per-case seconds are an estimate: sliding-window windows over an example cropped case of "
        f"{'x'.join(map(str, case_shape))} voxels (D x H x W; in-plane step 32, depth step {first['depth']} in 3D, 1 in 2D) "
        "times the measured time per window, without stitching or preprocessing.",
        "",
        "| encoder | model | precision | parameters | GFLOPs/patch | slices/s | ms/forward (median of n) | n | "
        "peak RSS MB | forward +MB | windows/case | s/case (est.) | achieved GFLOP/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        per_slice_flops = r["flops_per_patch"] / (1 if r["model"] == "albunet2d" else r["depth"])
        achieved = per_slice_flops * r["slices_per_second"] / 1e9
        lines.append(
            f"| {r['encoder']} | {r['model']} | {r['precision']} | {r['parameters']:,} | "
            f"{r['flops_per_patch'] / 1e9:.2f} | {r['slices_per_second']:.1f} | {r['median_seconds'] * 1000:.0f} | {len(r['seconds_per_forward'])} | "
            f"{r['peak_rss_mb']:.0f} | {r['forward_rss_increase_mb']:.0f} | {r['windows_per_case']} | "
            f"{r['seconds_per_case_estimate']:.0f} | {achieved:.0f} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--encoders", nargs="+", default=ENCODERS, help="encoders to measure")
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS, help="models to measure")
    parser.add_argument("--bf16-encoders", nargs="*", default=["resnet34"], help="encoders also measured under bf16 autocast")
    parser.add_argument("--size", type=int, default=128, help="in-plane patch size H = W in voxels")
    parser.add_argument("--depth", type=int, default=24, help="AlbuNet3D patch depth in slices")
    parser.add_argument("--slices", type=int, default=24, help="AlbuNet2D batch size in slices")
    parser.add_argument("--repeats", type=int, default=3, help="max timed forward passes per configuration")
    parser.add_argument("--max-seconds", type=float, default=5.0, help="start no further timed pass after this many seconds")
    parser.add_argument("--case-shape", type=int, nargs=3, default=[140, 170, 140], help="example cropped case D H W for the per-case estimate")
    parser.add_argument("--output", type=Path, default=RECORDS / "models_forward", help="record path without suffix (.md and .json are written)")
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return

    import torch

    machine = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_before": os.getloadavg()[0],
    }
    results = []
    started = time.perf_counter()
    for encoder in args.encoders:
        for model in args.models:
            flops, parameters = count_flops_and_parameters(model, encoder, args.depth, args.size)
            precisions = PRECISIONS if encoder in args.bf16_encoders else ["fp32"]
            for precision in precisions:
                config = {
                    "encoder": encoder,
                    "model": model,
                    "precision": precision,
                    "size": args.size,
                    "depth": args.depth,
                    "slices": args.slices,
                    "repeats": args.repeats,
                    "max_seconds": args.max_seconds,
                }
                result = _run_in_subprocess(config)
                result["flops_per_patch"] = flops
                result["parameters"] = parameters
                windows = _windows_per_case(model, args.case_shape, args.depth, args.size)
                seconds_per_window = result["median_seconds"] / (result["slices_per_forward"] if model == "albunet2d" else 1)
                result["windows_per_case"] = windows
                result["seconds_per_case_estimate"] = windows * seconds_per_window
                results.append(result)
                print(
                    f"{encoder:>18} {model} {precision}: {result['slices_per_second']:.1f} slices/s, "
                    f"{result['flops_per_patch'] / 1e9:.2f} GFLOPs/patch, peak {result['peak_rss_mb']:.0f} MB "
                    f"({time.perf_counter() - started:.0f} s elapsed)",
                    flush=True,
                )
    machine["load_after"] = os.getloadavg()[0]

    args.output.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine, "case_shape": args.case_shape, "results": results}
    args.output.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(_markdown(results, machine, args.case_shape))
    print(f"Wrote {args.output.with_suffix('.md')} and .json")


if __name__ == "__main__":
    main()
