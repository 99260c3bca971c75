"""Train AlbuNet2D and AlbuNet3D on real BraTS-layout cases, segment every real case, evaluate.

Steps:

1. Split the labelled cases of DATA by patient. 20 % are held out for testing, so they are
   never trained on and never choose a checkpoint. Of the rest, 20 % validate during training.
2. Train AlbuNet2D and AlbuNet3D with the paper's settings (1x128x128 patches in batches of
   64, and 24x128x128 patches in batches of 24; Adam, learning rate 1e-3; soft Dice loss)
   for as many iterations as --minutes-per-model allows. Epochs are short
   (--batches-per-epoch) so that the time budget stops training close to its limit; the
   first epoch always completes, even where it takes longer than the budget.
3. Predict the held-out cases, the cases of every --predict folder (by default the
   unlabelled BraTS-layout cases next to DATA under ../shared/data), a case converted by
   `gliomaseg convert` (--converted) and the cases of --extra-eval.
4. Evaluate the held-out cases and --extra-eval against their label maps. For the two
   BraTS Toolkit cases in BraTS space, also score agreement with the Toolkit's majority-vote
   fusion of five BraTS 2020 algorithms (not a ground truth).
5. Draw overlays and write benchmarks/records/<record>.md and .json, with a few PNGs.

Checkpoints, predictions and overlays stay in --work-dir, outside the repository.
The encoder starts from random weights unless --encoder-weights names a local ResNet34 state
dict (ImageNet weights need a download).

Usage:
    .venv/bin/python benchmarks/realdata_run.py [DATA] [--minutes-per-model 60] [--work-dir DIR]
        [--encoder-weights FILE] [--converted CASE_DIR] [--extra-eval DIR] [--predict DIR ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEFAULT_DATA = SHARED_DATA / "deepbrainseg_brats2018" / "brats"
DEFAULT_PREDICT = [
    SHARED_DATA / "brainlesion_tutorials" / "BraTS-GLI-00001-000",
    SHARED_DATA / "brainlesion_tutorials" / "TCGA-DU-7294_brats_space" / "raw_bet",
    SHARED_DATA / "brainlesion_tutorials" / "OtherEXampleFromTCIA_brats_space" / "raw_bet",
]
RECORDS = REPO / "benchmarks" / "records"
MODELS = {"albunet2d": "AlbuNet2D", "albunet3d": "AlbuNet3D"}
# Largest total size of the PNGs copied next to the record.
RECORD_PNG_BYTES = 500_000

log = logging.getLogger("realdata_run")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=str(DEFAULT_DATA), help="folder of labelled BraTS-layout cases (default: %(default)s)")
    parser.add_argument("--minutes-per-model", type=float, default=60.0, help="training time budget per model in minutes (default: %(default)s)")
    parser.add_argument("--models", default="albunet2d,albunet3d", help="comma-separated models to train (default: %(default)s)")
    parser.add_argument("--work-dir", default="/tmp/gliomaseg-realdata", help="folder for runs, predictions and overlays (default: %(default)s)")
    parser.add_argument("--encoder-weights", default=None, metavar="FILE", help="local ResNet34 ImageNet state dict; default: random initialisation")
    parser.add_argument("--predict", action="append", default=None, metavar="DIR",
                        help="a case or dataset folder to segment (repeatable; default: the unlabelled BraTS-layout cases under ../shared/data)")
    parser.add_argument("--converted", default=None, metavar="CASE_DIR", help="a case folder written by gliomaseg convert (for example TCGA-FG-6692) to segment")
    parser.add_argument("--extra-eval", default=None, metavar="DIR", help="a folder of labelled cases to segment and evaluate as well")
    parser.add_argument("--max-cases", type=int, default=None, help="use only the first N labelled cases, by case id (for a quick check)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of labelled cases held out for testing (default: %(default)s)")
    parser.add_argument("--batches-per-epoch", type=int, default=5, help="training batches between validations (default: %(default)s)")
    parser.add_argument("--validation-patches", type=int, default=16, help="fixed validation patches per epoch (default: %(default)s)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16", help="prediction precision (default: %(default)s)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="training configuration override passed to gliomaseg train, e.g. loss.cross_entropy_weight=1 (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the split, sampling and initialisation (default: %(default)s)")
    parser.add_argument("--record", default="realdata_run", help="record name in benchmarks/records/ (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --work-dir")
    parser.add_argument(
        "--reuse-runs",
        action="store_true",
        help="with --overwrite: keep the finished training runs in --work-dir and redo only prediction and evaluation",
    )
    return parser.parse_args(argv)


# --- cases and split ------------------------------------------------------------------------


def link_cases(cases, folder: Path) -> Path:
    """Make a dataset folder of symbolic links to the case folders."""
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        (folder / case.root.name).symlink_to(case.root.resolve(), target_is_directory=True)
    return folder


def prepare_cases(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from gliomaseg.data.cases import discover_cases
    from gliomaseg.training.datasets import split_cases

    cases = [c for c in discover_cases(args.data) if c.label is not None]
    if args.max_cases:
        cases = cases[: args.max_cases]
    if len(cases) < 4:
        raise SystemExit(f"{args.data}: found {len(cases)} labelled cases; the test, validation and training split needs at least 4")
    ids = [c.case_id for c in cases]
    held_out = split_cases(ids, args.test_fraction, args.seed).validation
    split = split_cases([i for i in ids if i not in held_out], 0.2, args.seed)
    split_file = work / "split.json"
    split_file.write_text(json.dumps(split.to_json(), indent=2))

    by_id = {c.case_id: c for c in cases}
    return {
        "labelled": link_cases(cases, work / "cases" / "labelled"),
        "held_out": link_cases([by_id[i] for i in held_out], work / "cases" / "held_out"),
        "split_file": split_file,
        "ids": {"train": split.train, "validation": split.validation, "held_out": held_out},
    }


# --- training -------------------------------------------------------------------------------


def finished_run(run_dir: Path):
    """Rebuild the RunResult of a training run that finished earlier in `run_dir`."""
    from gliomaseg.training import RunResult, read_metrics

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    metrics = read_metrics(run_dir / "metrics.csv")
    epochs = int(metrics[-1]["epoch"]) if metrics else 0
    best = run_dir / "best.safetensors"
    return RunResult(
        run_dir=run_dir,
        last_checkpoint=run_dir / "last.safetensors",
        best_checkpoint=best if best.is_file() else None,
        metrics=metrics,
        epochs_completed=epochs,
        stopped_by_time=epochs < int(config["training"]["epochs"]),
        config=config,
    )


def train_model(model: str, args: argparse.Namespace, prepared: dict[str, Any], work: Path) -> dict[str, Any]:
    from gliomaseg.training import train

    config = f"{model}_imagenet" if args.encoder_weights else f"{model}_scratch"
    overrides = {
        "seed": args.seed,
        "data.dataset": str(prepared["labelled"]),
        "data.split_file": str(prepared["split_file"]),
        "training.epochs": 100_000,
        "training.batches_per_epoch": args.batches_per_epoch,
        "training.max_minutes": args.minutes_per_model,
        "training.progress_bar": False,
        "validation.patches": args.validation_patches,
    }
    if args.encoder_weights:
        overrides["model.params.encoder_weights"] = str(Path(args.encoder_weights).resolve())
    for item in args.overrides:
        key, separator, value = item.partition("=")
        if not separator:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = yaml.safe_load(value)
    run_dir = work / "runs" / model
    start = time.perf_counter()
    if args.reuse_runs and (run_dir / "last.safetensors").is_file():
        log.info("reusing the finished training run %s", run_dir)
        result = finished_run(run_dir)
    else:
        result = train(config, overrides=overrides, output_dir=run_dir, overwrite=args.overwrite)
    seconds = time.perf_counter() - start

    metrics = result.metrics
    last = metrics[-1] if metrics else {}
    best = max(metrics[1:] or metrics, key=lambda row: row.get("val_dice_mean", float("-inf")), default={})
    patches = result.config["patches"]
    return {
        "config": config,
        "overrides": overrides,
        "checkpoint": str(result.best_checkpoint or result.last_checkpoint),
        "seconds": seconds,
        "training_seconds": float(last.get("elapsed_seconds", 0.0)),
        "epochs": result.epochs_completed,
        "iterations": int(last.get("step", 0)),
        "patch_size": patches["size"],
        "batch_size": patches["batch_size"],
        "best_epoch": int(best.get("epoch", 0)),
        "best_validation_dice": {k[len("val_dice_"):]: best[k] for k in best if k.startswith("val_dice_")},
        "step_seconds": float(last.get("step_seconds", 0.0)),
        "stopped_by_time": result.stopped_by_time,
    }


# --- prediction and evaluation --------------------------------------------------------------


def prediction_sets(args: argparse.Namespace, prepared: dict[str, Any]) -> dict[str, Path]:
    """Return {set name: case or dataset folder} of everything to segment."""
    sets = {"held_out": prepared["held_out"]}
    for folder in args.predict if args.predict is not None else DEFAULT_PREDICT:
        folder = Path(folder)
        if not folder.exists():
            log.warning("skipping %s: not found", folder)
            continue
        name = folder.parent.name if folder.name == "raw_bet" else folder.name
        sets[name] = folder
    if args.converted:
        sets["converted_" + Path(args.converted).name] = Path(args.converted)
    if args.extra_eval:
        sets["extra_eval"] = Path(args.extra_eval)
    return sets


def predict_all(models: dict[str, dict], sets: dict[str, Path], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from gliomaseg.inference import predict_cases

    outcome: dict[str, Any] = {}
    for model, trained in models.items():
        for name, folder in sets.items():
            output = work / "predictions" / model / name
            summary = predict_cases(trained["checkpoint"], folder, output, precision=args.precision, overwrite=True, progress=False)
            outcome.setdefault(model, {})[name] = {
                "folder": str(output),
                "seconds": summary.seconds,
                "cases": {
                    r.case_id: {"status": r.status, "seconds": r.seconds, "volumes_cm3": r.volumes_cm3, "reason": r.reason}
                    for r in summary.results
                },
            }
    return outcome


def agreement_references(sets: dict[str, Path], work: Path) -> Path | None:
    """Link the BraTS Toolkit majority-vote fusion of each BraTS-space case as `<case_id>.nii.gz`."""
    from gliomaseg.data.cases import discover_cases

    folder = work / "cases" / "toolkit_fusion"
    for path in sets.values():
        fusion = path.parent / "fusion" / "mav.nii.gz"
        if path.name != "raw_bet" or not fusion.is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for case in discover_cases(path):
            link = folder / f"{case.case_id}.nii.gz"
            if not link.exists():
                link.symlink_to(fusion.resolve())
    return folder if folder.is_dir() else None


def evaluate(name: str, predictions: dict[str, Path], reference: Path, work: Path, images: Path | None = None, ref_schema: str | None = None) -> dict[str, Any]:
    from gliomaseg.evaluation import evaluate_folders, summarize, table_i, write_evaluation

    start = time.perf_counter()
    results, references = evaluate_folders(predictions, reference, ref_schema=ref_schema, progress=False)
    written = write_evaluation(results, references, work / "evaluation" / name, images=images, progress=False)
    summary = summarize(results)
    return {
        "seconds": time.perf_counter() - start,
        "table": table_i(summary, "dice"),
        "summary": {method: entry["regions"] for method, entry in summary.items()},
        "cases": [
            {"method": r.method, "case_id": r.case_id, "status": r.status, "reason": r.reason, "scores": r.scores}
            for r in results
        ],
        "overlays": [str(p) for p in written["overlays"]],
    }


def draw_unlabelled_overlays(predicted: dict[str, Any], sets: dict[str, Path], work: Path) -> list[str]:
    """Overlay each prediction of a set without reference label maps on its FLAIR and T1c."""
    import numpy as np

    from gliomaseg.data.cases import discover_cases
    from gliomaseg.data.io import load_volume
    from gliomaseg.data.labels import to_model_classes
    from gliomaseg.evaluation import plot_overlay

    drawn = []
    for name, folder in sets.items():
        if name in ("held_out", "extra_eval"):
            continue
        for case in discover_cases(folder):
            images = {
                title: np.asarray(load_volume(case.images[m].path).array, dtype=np.float32)
                for title, m in (("FLAIR", "flair"), ("T1c", "t1c")) if m in case.images
            }
            for model, sets_predicted in predicted.items():
                label_map = Path(sets_predicted[name]["folder"]) / f"{case.case_id}.nii.gz"
                if not label_map.is_file():
                    continue
                volume = load_volume(label_map)
                classes = to_model_classes(np.asarray(volume.array), case.schema, label_map)
                out = work / "overlays" / name / model / f"{case.case_id}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                plot_overlay(out, volume.affine, prediction=classes, images=images, title=f"{case.case_id}: {MODELS[model]}")
                drawn.append(str(out))
    return drawn


# --- record ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": os.getloadavg(),
    }


def copy_pngs(paths: list[str], record: str) -> list[str]:
    """Copy PNGs next to the record, scaled down so that together they stay below RECORD_PNG_BYTES."""
    from PIL import Image

    copied = []
    budget = RECORD_PNG_BYTES
    for index, path in enumerate(paths):
        # Every overlay is written as .../<method or model>/<case_id>.png.
        target = RECORDS / f"{record}_{index}_{Path(path).stem}_{Path(path).parent.name}.png"
        image = Image.open(path)
        image.thumbnail((700, 700))
        image = image.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=128)
        image.save(target, optimize=True)
        size = target.stat().st_size
        if size > budget:
            target.unlink()
            break
        budget -= size
        copied.append(target.name)
    return copied


def write_record(record: dict[str, Any], name: str, pngs: list[str]) -> None:
    from gliomaseg.data.labels import REGIONS

    RECORDS.mkdir(parents=True, exist_ok=True)
    (RECORDS / f"{name}.json").write_text(json.dumps(record, indent=2, default=str))

    args, models = record["arguments"], record["training"]
    lines = [
        f"# Real-data run: AlbuNet2D and AlbuNet3D on {record['data_name']}",
        "",
        f"Script: `benchmarks/realdata_run.py`, run {record['finished']} (UTC). Machine: {record['machine']['platform']}, "
        f"{record['machine']['cpus']} CPUs, torch {record['machine']['torch']} with {record['machine']['torch_threads']} threads, "
        f"GPU: {record['machine']['cuda'] or 'none'}. Load average (1, 5, 15 min) at the start "
        f"{', '.join(f'{v:.1f}' for v in record['load_start'])}, at the end "
        f"{', '.join(f'{v:.1f}' for v in record['machine']['load_average'])}.",
        "",
        "NOTE: the CPU was shared with other jobs while this ran, so times are noisy and the number of iterations "
        "in a time budget is lower than on an idle machine.",
        "",
        f"Data: {record['counts']['labelled']} labelled cases from `{args['data']}`; patient-level split with seed "
        f"{args['seed']}: {len(record['split']['train'])} training, {len(record['split']['validation'])} validation "
        f"(choice of the best epoch), {len(record['split']['held_out'])} held-out test cases "
        f"({', '.join(record['split']['held_out'])}).",
    ]
    if args["max_cases"]:
        lines += ["", f"**Quick check only**: limited to the first {args['max_cases']} cases, {args['minutes_per_model']} min per model."]
    lines += [
        "",
        f"Encoder start: {'ImageNet weights from ' + args['encoder_weights'] if args['encoder_weights'] else 'random (no ImageNet weights on this offline machine)'}.",
        "",
        "## Training",
        "",
        "| model | config | patch | batch | budget min | training min | epochs | iterations | s/iteration | best epoch | best val Dice WT / TC / ET (patches) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, entry in models.items():
        best = entry["best_validation_dice"]
        lines.append(
            f"| {MODELS[model]} | {entry['config']} | {'x'.join(map(str, entry['patch_size']))} | {entry['batch_size']} | "
            f"{args['minutes_per_model']} | {entry['training_seconds'] / 60:.1f} | {entry['epochs']} | {entry['iterations']} | "
            f"{entry['step_seconds']:.1f} | {entry['best_epoch']} | "
            + " / ".join(f"{best.get(r, float('nan')):.3f}" for r in REGIONS) + " |"
        )
    lines += [
        "",
        "The paper trained 5000 iterations (50 epochs of 100 batches) on a GPU; the iterations above are what the budget "
        "allowed here, so these Dice values measure a short run, not the method's accuracy.",
        "",
    ]

    for set_name, title in (("held_out", "Held-out test cases (Dice against the BraTS label maps)"),
                        ("extra_eval", "Extra evaluation folder"),
                        ("toolkit_fusion", "Agreement with the BraTS Toolkit fusion (majority vote of five BraTS 2020 algorithms, not ground truth)")):
        evaluation = record["evaluation"].get(set_name)
        if not evaluation:
            continue
        lines += [f"## {title}", "", "Dice, mean (median):", "", evaluation["table"], "",
                  "| model | case | status | Dice WT | Dice TC | Dice ET | HD95 WT mm | HD95 TC mm | HD95 ET mm |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for case in evaluation["cases"]:
            scores = case["scores"]
            cells = [f"{scores[r]['dice']:.3f}" if scores else "-" for r in REGIONS]
            cells += [f"{scores[r]['hd95']:.1f}" if scores else "-" for r in REGIONS]
            lines.append(f"| {case['method']} | {case['case_id']} | {case['status']} | " + " | ".join(cells) + " |")
        lines.append("")

    lines += ["## Predicted tumor volumes (cm3) and prediction time", "",
              "| set | case | model | status | WT | TC | ET | seconds |", "|---|---|---|---|---|---|---|---|"]
    for model, sets in record["prediction"].items():
        for set_name, entry in sets.items():
            for case_id, case in entry["cases"].items():
                volumes = case["volumes_cm3"] or {}
                cells = [f"{volumes[r]:.1f}" if r in volumes else "-" for r in REGIONS]
                lines.append(f"| {set_name} | {case_id} | {MODELS[model]} | {case['status']} | " + " | ".join(cells) + f" | {case['seconds']:.1f} |")
    lines += ["", "## Time of each stage", "", "| stage | minutes |", "|---|---|"]
    lines += [f"| {stage} | {seconds / 60:.1f} |" for stage, seconds in record["stage_seconds"].items()]
    lines += ["", f"Total: {sum(record['stage_seconds'].values()) / 60:.1f} min.", ""]
    if pngs:
        lines += ["## Overlays", ""] + [f"![{png}]({png})" for png in pngs] + [""]
    lines += ["Command:", "", "    " + record["command"], ""]
    (RECORDS / f"{name}.md").write_text("\n".join(lines))


# --- main -----------------------------------------------------------------------------------


def prepare_work_dir(work: Path, overwrite: bool, keep_runs: bool = False) -> None:
    if work.exists() and any(work.iterdir()):
        if not overwrite:
            raise SystemExit(f"{work} is not empty; pass --overwrite to replace an earlier run's results, or another --work-dir")
        kept = ("runs", "split.json") if keep_runs else ()
        for sub in ("cases", "runs", "predictions", "evaluation", "overlays", "split.json"):
            if sub in kept:
                continue
            target = work / sub
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    work.mkdir(parents=True, exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not Path(args.data).is_dir():
        print(f"data folder not found: {args.data}", file=sys.stderr)
        return 1
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        print(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}", file=sys.stderr)
        return 2
    work = Path(args.work_dir).expanduser().resolve()
    if work == REPO or REPO in work.parents:
        print(f"--work-dir {work} is inside the repository; choose a folder outside it", file=sys.stderr)
        return 2
    prepare_work_dir(work, args.overwrite, keep_runs=args.reuse_runs)
    load_start = os.getloadavg()
    stage_seconds: dict[str, float] = {}

    start = time.perf_counter()
    prepared = prepare_cases(args, work)
    stage_seconds["discover and split cases"] = time.perf_counter() - start

    trained = {}
    for model in models:
        log.info("training %s for up to %.1f min", model, args.minutes_per_model)
        trained[model] = train_model(model, args, prepared, work)
        stage_seconds[f"train {MODELS[model]} (with preprocessing)"] = trained[model]["seconds"]

    sets = prediction_sets(args, prepared)
    start = time.perf_counter()
    predicted = predict_all(trained, sets, args, work)
    stage_seconds["predict"] = time.perf_counter() - start
    for model in models:
        for name, entry in predicted[model].items():
            stage_seconds[f"predict {MODELS[model]}: {name}"] = entry["seconds"]
    stage_seconds.pop("predict")

    start = time.perf_counter()
    evaluation = {}
    for name in ("held_out", "extra_eval"):
        if name in sets:
            methods = {MODELS[m]: Path(predicted[m][name]["folder"]) for m in models}
            evaluation[name] = evaluate(name, methods, sets[name], work)
    fusion = agreement_references(sets, work)
    if fusion is not None:
        methods = {}
        for model in models:
            folder = work / "predictions" / model / "toolkit_fusion"
            folder.mkdir(parents=True, exist_ok=True)
            for name, entry in predicted[model].items():
                for label_map in Path(entry["folder"]).glob("*.nii.gz"):
                    if (fusion / label_map.name).exists() and not (folder / label_map.name).exists():
                        (folder / label_map.name).symlink_to(label_map)
            methods[MODELS[model]] = folder
        images = work / "cases" / "toolkit_images"
        images.mkdir(parents=True, exist_ok=True)
        for name, path in sets.items():
            if path.name == "raw_bet":
                (images / name).symlink_to(path.resolve(), target_is_directory=True)
        evaluation["toolkit_fusion"] = evaluate("toolkit_fusion", methods, fusion, work, images=images, ref_schema="brats2017")
    stage_seconds["evaluate (metrics and overlays)"] = time.perf_counter() - start

    start = time.perf_counter()
    unlabelled_overlays = draw_unlabelled_overlays(predicted, sets, work)
    stage_seconds["overlays of unlabelled cases"] = time.perf_counter() - start

    chosen = [p for p in evaluation.get("held_out", {}).get("overlays", [])[:2]]
    # TCGA-FG-6692 is named OtherEXampleFromTCIA in the BraTS Toolkit's BraTS-space folder.
    chosen += [p for p in unlabelled_overlays if "OtherEXampleFromTCIA" in p or "converted_" in p][:2]
    pngs = copy_pngs(chosen, args.record)

    record = {
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "command": " ".join([".venv/bin/python", "benchmarks/realdata_run.py", *(argv if argv is not None else sys.argv[1:])]),
        "arguments": vars(args),
        "data_name": Path(args.data).name if Path(args.data).name != "brats" else "the BraTS 2018 cases of deepbrainseg_brats2018",
        "machine": machine(),
        "load_start": load_start,
        "counts": {"labelled": len(prepared["ids"]["train"]) + len(prepared["ids"]["validation"]) + len(prepared["ids"]["held_out"])},
        "split": prepared["ids"],
        "training": trained,
        "prediction": predicted,
        "prediction_sets": {k: str(v) for k, v in sets.items()},
        "evaluation": evaluation,
        "unlabelled_overlays": unlabelled_overlays,
        "stage_seconds": stage_seconds,
        "work_dir": str(work),
    }
    write_record(record, args.record, pngs)
    print(f"record: {RECORDS / (args.record + '.md')}")
    if "held_out" in evaluation:
        print(evaluation["held_out"]["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
