"""The `gliomaseg` console script: argument parsing only; the work happens in the packages."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Sequence

from gliomaseg import __version__

log = logging.getLogger("gliomaseg")


SCHEMA_CHOICES = "brats2017 (BraTS 2017-2021: 1, 2, 4), brats2023 (1, 2, 3), msd (MSD Task01), brats2013 (BRATS 2013/2015)"


class CommandError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def _parse_substitutions(entries: Sequence[str]) -> dict[str, str]:
    """Parse repeated ``--substitute MISSING=SOURCE`` options into {missing: source}."""
    substitutions: dict[str, str] = {}
    for entry in entries:
        missing, separator, source = entry.partition("=")
        if not separator or not missing.strip() or not source.strip():
            raise CommandError(f"--substitute {entry!r}: expected MISSING=SOURCE, for example --substitute t1=t1c")
        substitutions[missing.strip().lower()] = source.strip().lower()
    return substitutions


# --- validate -------------------------------------------------------------------------------


def _add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a case folder or a dataset of cases and print a table")
    p.add_argument("path", help="a case folder, a dataset folder of cases, an MSD Task01 folder or a case manifest")
    p.add_argument("--label-schema", default=None, help=f"label schema of the cases: {SCHEMA_CHOICES} (default: inferred from the layout)")
    p.set_defaults(func=_run_validate)


def _run_validate(args: argparse.Namespace) -> int:
    from gliomaseg.data.validate import format_report, validate_path

    reports = validate_path(args.path, schema=args.label_schema)
    print(format_report(reports))
    return 0 if all(r.usable for r in reports) else 1


# --- convert --------------------------------------------------------------------------------


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert clinical scans (DICOM or NIfTI) to a BraTS-format case",
        description=(
            "Convert one patient's scans into a BraTS-format case folder: DICOM to NIfTI, reorientation to "
            "BraTS's LPS axes, brain masks, rigid registration to a reference scan and resampling to 1 mm. "
            "SRC is a NIfTI file, a folder holding one DICOM series, or (with --dicom-dir) a series number, "
            "UID or description from --list. Run `gliomaseg convert --list DICOM_DIR` first to see the series."
        ),
    )
    p.add_argument("output_dir", nargs="?", metavar="OUTPUT_DIR", help="case folder to create (must be empty)")
    p.add_argument("--list", metavar="DICOM_DIR", help="print the DICOM series under DICOM_DIR and exit")
    scans = p.add_argument_group("scans (SRC: NIfTI file, DICOM series folder, or series number/UID with --dicom-dir)")
    for modality, text in (("t1", "T1"), ("t1c", "contrast-enhanced T1"), ("t2", "T2"), ("flair", "FLAIR")):
        scans.add_argument(f"--{modality}", metavar="SRC", help=f"{text} scan")
    scans.add_argument("--dicom-dir", metavar="DIR", help="DICOM folder in which series numbers or UIDs are looked up")
    scans.add_argument("--fill-missing-slices", action="store_true",
                       help="interpolate missing DICOM slices instead of stopping with an error")
    p.add_argument("--case-id", help="file name prefix of the case (default: the output folder's name)")
    p.add_argument("--reference", choices=("t1", "t1c", "t2", "flair"),
                   help="scan to register to and whose extent the output covers (default: finest voxel grid)")
    masks = p.add_argument_group("skull removal (binary brain masks; nonzero = brain)")
    masks.add_argument("--brain-mask", metavar="FILE", help="brain mask on the reference scan, applied to every modality")
    for modality in ("t1", "t1c", "t2", "flair"):
        masks.add_argument(f"--mask-{modality}", metavar="FILE", help=f"brain mask on the {modality} scan's grid")
    p.add_argument("--label", metavar="FILE", help="label map (e.g. a tumor annotation) to carry into the case as _seg")
    p.add_argument("--label-on", choices=("t1", "t1c", "t2", "flair"),
                   help="scan the label map was drawn on (default: the reference)")
    p.add_argument("--interpolation", choices=("nearest", "linear", "bspline"), default="nearest",
                   help="image interpolation when resampling to the output grid (default: nearest); masks "
                        "and labels always use nearest neighbour")
    p.add_argument("--spacing", type=float, default=1.0, help="output voxel size in mm, isotropic (default: 1.0)")
    p.add_argument("--missing", choices=("fail", "substitute"), default="fail",
                   help="a modality without a scan stops the conversion (fail, default) or is substituted "
                        "(substitute: --substitute pairs, else T1c for T1)")
    p.add_argument("--substitute", action="append", default=[], metavar="MISSING=SOURCE",
                   help="write the SOURCE scan in place of the MISSING modality, e.g. t1=t1c (repeatable)")
    p.add_argument("--naming", choices=("brats2017", "brats2023"), default="brats2017",
                   help="file names: brats2017 (<id>_t1, _t1ce, _t2, _flair, _seg) or brats2023 "
                        "(<id>-t1n, -t1c, -t2w, -t2f, -seg)")
    p.add_argument("--no-registration", action="store_true", help="skip registration (scans already co-registered)")
    p.add_argument("--init", choices=("scanner", "moments"), default="scanner",
                   help="registration start: scanner coordinates (same exam, default) or centres of mass")
    p.add_argument("--keep-intermediate", action="store_true",
                   help="also write each step's volumes to OUTPUT_DIR/intermediate")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty OUTPUT_DIR")
    p.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from gliomaseg.clinical import convert_case, format_series_table, list_dicom_series

    if args.list:
        print(format_series_table(list_dicom_series(args.list)))
        print("guess: a modality suggested by the series description only; assign scans with --t1c, --t2, ...")
        return 0
    if not args.output_dir:
        raise CommandError("give OUTPUT_DIR, the case folder to create, or --list DICOM_DIR to see the series")
    substitutions = _parse_substitutions(args.substitute)

    modalities = ("t1", "t1c", "t2", "flair")
    result = convert_case(
        {m: getattr(args, m) for m in modalities if getattr(args, m)},
        args.output_dir,
        case_id=args.case_id,
        dicom_dir=args.dicom_dir,
        reference=args.reference,
        brain_mask=args.brain_mask,
        masks={m: getattr(args, f"mask_{m}") for m in modalities if getattr(args, f"mask_{m}")},
        label=args.label,
        label_on=args.label_on,
        interpolation=args.interpolation,
        spacing=args.spacing,
        missing="substitute" if substitutions and args.missing == "fail" else args.missing,
        substitutions=substitutions,
        naming=args.naming,
        register=not args.no_registration,
        initialization=args.init,
        keep_intermediate=args.keep_intermediate,
        overwrite=args.overwrite,
        fill_missing_slices=args.fill_missing_slices,
    )
    for kind, path in result.files.items():
        print(f"{kind:>9}: {path}")
    print(f" manifest: {result.manifest_path}")
    for warning in result.warnings:
        print(f"  warning: {warning}")
    return 0


# --- train ----------------------------------------------------------------------------------


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from a YAML configuration",
        description="Train a model from a YAML configuration; writes config.yaml, split.json, metrics.csv and checkpoints to the run folder.",
    )
    p.add_argument("config", help="a YAML configuration file or a shipped configuration name, e.g. albunet2d_imagenet")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="change a configuration value (dotted key, YAML value), e.g. --set training.epochs=5; repeatable",
    )
    p.add_argument("--output", default=None, help="run folder (default: runs/<config name>-<date-time>)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --output from its last finished epoch")
    p.add_argument("--overwrite", action="store_true", help="replace the run folder given by --output if it exists")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from gliomaseg.models.weights import WeightsUnavailableError
    from gliomaseg.training import train
    from gliomaseg.training.config import read_config_source
    from gliomaseg.training.ucltig import train_cascade_from_config

    if args.resume and args.overwrite:
        raise CommandError("--resume and --overwrite exclude each other")
    written, name = read_config_source(args.config)
    if written.get("model", {}).get("name") == "ucltig":
        from pathlib import Path

        from gliomaseg.inference.cascade import CASCADE_FILE
        from gliomaseg.output_folder import create_folder, removed_on_failure

        output = args.output or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        created = create_folder(output)
        # The cascade file lists every network trained so far, which --resume keeps.
        with removed_on_failure(created, keep=(Path(output) / CASCADE_FILE).is_file):
            train_cascade_from_config(args.config, output, overrides=args.overrides or (), resume=args.resume)
        print(f"checkpoint folder for prediction: {output}")
        return 0
    try:
        result = train(args.config, overrides=args.overrides, output_dir=args.output, resume=args.resume, overwrite=args.overwrite)
    except WeightsUnavailableError as error:
        raise CommandError(f"{error} In gliomaseg train, set it with --set model.params.encoder_weights=PATH (or =null).") from error
    best = result.best_checkpoint or result.last_checkpoint
    print(f"run folder: {result.run_dir}")
    steps = int(result.metrics[-1]["step"]) if result.metrics else 0
    stopped = f" (stopped at training.max_minutes after optimizer step {steps})" if result.stopped_by_time else ""
    print(f"epochs trained: {result.epochs_completed}{stopped}")
    print(f"checkpoint for prediction: {best}")
    return 0


# --- predict --------------------------------------------------------------------------------


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment a case or a folder of cases with a trained checkpoint",
        description="Segment each case and write OUTPUT/<case_id>.nii.gz (label map in the input's grid and header) "
        "and OUTPUT/<case_id>.json (tumor volumes in cm3, checkpoint, settings, timing). Exit status 1 if a case failed.",
    )
    p.add_argument("--model", required=True, metavar="CKPT", help="checkpoint file (.safetensors) written by gliomaseg train, or a UCL-TIG checkpoint folder (with cascade.json)")
    p.add_argument("input", help="a case folder, a dataset folder of cases, an MSD Task01 folder or a case manifest")
    p.add_argument("output", help="output folder (created where missing)")
    p.add_argument("--step", type=int, default=32, help="in-plane distance between sliding-window starts, in voxels (default 32)")
    p.add_argument("--depth-step", type=int, default=24, help="distance between window starts along the slice axis, in voxels (default 24)")
    p.add_argument("--window", default=None, metavar="D,H,W", help="window size in voxels (default: the checkpoint's training patch size)")
    p.add_argument("--gaussian", action="store_true", help="weight overlapping windows by a Gaussian centred in each window")
    p.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (4x the work for 2D, 8x for 3D)")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="arithmetic precision; auto (default): bf16 on GPUs and on CPUs with native bf16, else fp32; fp16 on GPUs only",
    )
    p.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda or cuda:N")
    p.add_argument(
        "--compile",
        action="store_true",
        help="compile the network with torch.compile first (19-27 s per window size on a 2-core CPU); speeds up some networks and devices, see docs/predict.md",
    )
    p.add_argument("--batch-windows", type=int, default=None, metavar="N", help="windows per forward pass (default: from --max-memory-gb)")
    p.add_argument("--max-memory-gb", type=float, default=2.0, help="memory budget for a case's accumulators and a batch of windows, in GB (default 2)")
    p.add_argument("--save-probabilities", action="store_true", help="also write OUTPUT/<case_id>_probabilities.nii.gz (float32, 4 classes)")
    p.add_argument("--label-schema", default=None, help=f"label schema of the output: {SCHEMA_CHOICES} (default: that of each input case)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs instead of skipping those cases")
    p.add_argument("--shard", default=None, metavar="INDEX/COUNT", help="predict only cases INDEX, INDEX+COUNT, ... (default: torchrun's RANK/WORLD_SIZE, else all)")
    p.add_argument("--substitute", action="append", default=[], metavar="MISSING=SOURCE", help="use modality SOURCE where MISSING is absent, e.g. t1=t1c (repeatable)")
    p.add_argument(
        "--keep-outside-brain",
        action="store_true",
        help="keep labels the network gives to voxels that are zero in every input modality (default: set them to background)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_run_predict)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _run_predict(args: argparse.Namespace) -> int:
    from gliomaseg.inference import PredictionSettings, predict_cases

    substitute = _parse_substitutions(args.substitute)
    window = None
    if args.window:
        try:
            window = tuple(int(v) for v in args.window.split(","))
        except ValueError:
            window = ()
        if len(window) != 3 or min(window) < 1:
            raise CommandError(f"--window {args.window!r}: expected three positive integers D,H,W, for example 24,128,128")
    if args.precision == "fp16" and (args.device == "cpu" or (args.device == "auto" and not _cuda_available())):
        raise CommandError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on a CPU")
    if args.step < 1 or args.depth_step < 1:
        raise CommandError(f"--step ({args.step}) and --depth-step ({args.depth_step}) must be positive")
    if args.batch_windows is not None and args.batch_windows < 1:
        raise CommandError(f"--batch-windows {args.batch_windows}: must be at least 1")

    settings = PredictionSettings(
        step=args.step,
        depth_step=args.depth_step,
        window=window,
        gaussian=args.gaussian,
        tta=args.tta,
        precision=args.precision,
        device=args.device,
        compile=args.compile,
        batch_windows=args.batch_windows,
        max_memory_gb=args.max_memory_gb,
        save_probabilities=args.save_probabilities,
        label_schema=args.label_schema,
        overwrite=args.overwrite,
        substitute=substitute,
        mask_outside_brain=not args.keep_outside_brain,
    )
    summary = predict_cases(args.model, args.input, args.output, settings, shard=args.shard, progress=not args.no_progress)
    print(summary.format())
    return 0 if summary.ok else 1


# --- evaluate -------------------------------------------------------------------------------


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score predicted label maps against reference label maps; tables, box plots, overlays, curves",
        description=(
            "Score predicted label maps against reference label maps: Dice, HD95 (mm), sensitivity and "
            "specificity per region (whole tumor, tumor core, enhancing tumor), with the BraTS conventions "
            "for empty masks. Forms: 'evaluate PRED_DIR REF_DIR', 'evaluate --method NAME=PRED_DIR "
            "[--method ...] REF_DIR', and 'evaluate --curves RUN_DIR [...] --output DIR' for training curves."
        ),
    )
    p.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="PRED_DIR REF_DIR, or only REF_DIR with --method. REF_DIR is a dataset of cases with label maps "
        "or a folder of <case_id>.nii.gz / <case_id>_seg.nii.gz label maps",
    )
    p.add_argument(
        "--method",
        action="append",
        default=[],
        metavar="NAME=PRED_DIR",
        help="a named prediction folder; repeat to compare methods in one table",
    )
    p.add_argument(
        "--output",
        default=None,
        metavar="DIR",
        help="output folder (default: PRED_DIR/evaluation for one prediction folder; required otherwise)",
    )
    p.add_argument(
        "--pred-schema",
        default=None,
        metavar="SCHEMA",
        help="label schema of the predictions: brats2017 (also brats2018-2021), brats2023, msd or brats2013 "
        "(default: inferred per file from its values)",
    )
    p.add_argument(
        "--ref-schema",
        default=None,
        metavar="SCHEMA",
        help="label schema of the references (default: the dataset layout's, or inferred per file)",
    )
    p.add_argument("--images", default=None, metavar="DIR", help="cases with FLAIR and T1c images for the overlays")
    p.add_argument("--no-overlays", action="store_true", help="do not draw the overlay PNG of each case")
    p.add_argument(
        "--missing-as-empty",
        action="store_true",
        help="score a case without prediction as an empty prediction (BraTS rule) instead of leaving it out",
    )
    p.add_argument(
        "--affine-tolerance",
        type=float,
        default=None,
        metavar="MM",
        help="largest difference between the affines of a prediction and its reference (default 0.001)",
    )
    p.add_argument(
        "--curves",
        nargs="+",
        default=None,
        metavar="RUN",
        help="training run folders or metrics.csv files; writes training_curves.png (mean and std band across "
        "runs). Put it after the positional paths, because it takes every path that follows",
    )
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gliomaseg.evaluation import AFFINE_TOLERANCE, evaluate_folders, plot_training_curves, table_i, write_evaluation
    from gliomaseg.evaluation.report import check_output_folder
    from gliomaseg.evaluation.summary import format_unscored, summarize

    methods: dict[str, str] = {}
    for entry in args.method:
        name, separator, folder = entry.partition("=")
        if not separator or not name.strip() or not folder.strip():
            raise CommandError(f"--method {entry!r}: expected NAME=PRED_DIR, for example --method AlbuNet3D=preds/3d")
        if name in methods:
            raise CommandError(f"--method {name}: the name is given twice; give each method its own name")
        methods[name.strip()] = folder.strip()

    if methods and len(args.paths) != 1:
        raise CommandError("with --method give exactly one positional path, the reference folder REF_DIR")
    if not methods and args.paths and len(args.paths) != 2:
        raise CommandError("give PRED_DIR REF_DIR, or --method NAME=PRED_DIR ... REF_DIR")
    if not methods and not args.paths and not args.curves:
        raise CommandError("nothing to do: give PRED_DIR REF_DIR, --method NAME=PRED_DIR ... REF_DIR, or --curves")
    if not methods and args.paths:
        methods = {Path(args.paths[0]).name or "prediction": args.paths[0]}

    output = args.output
    if output is None and len(methods) == 1 and not args.curves:
        output = str(Path(next(iter(methods.values()))) / "evaluation")
    if output is None:
        raise CommandError("--output DIR is required with several methods or with --curves")
    reference = args.paths[-1] if methods else None
    inputs = [*methods.values(), *([reference] if reference else []), *([args.images] if args.images else [])]
    output_dir = check_output_folder(output, inputs)

    if args.curves:
        curves = plot_training_curves(args.curves, output_dir / "training_curves.png")
        print(f"training curves: {curves}")
    if not methods:
        return 0

    results, references = evaluate_folders(
        methods,
        reference,
        pred_schema=args.pred_schema,
        ref_schema=args.ref_schema,
        missing_as_empty=args.missing_as_empty,
        affine_tolerance=args.affine_tolerance if args.affine_tolerance is not None else AFFINE_TOLERANCE,
    )
    written = write_evaluation(results, references, output_dir, overlays=not args.no_overlays, images=args.images)
    summary = summarize(results)
    print("Dice, mean (median):")
    print(table_i(summary, "dice"))
    unscored = format_unscored(results)
    if unscored:
        print(unscored)
        print(f"(also in the status and reason columns of {written['csv']} and under not_scored in {written['summary']})")
    print(f"results: {output_dir} (metrics_per_case.csv, summary.json, report.md, box plots, overlays)")
    return 0 if any(r.scored for r in results) else 1


# --- demo -----------------------------------------------------------------------------------


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train, predict and evaluate on synthetic cases in a few minutes on a CPU",
        description="Make a synthetic cohort, train a model on it, segment held-out cases and write a report.",
    )
    p.add_argument("--output", default="gliomaseg-demo", help="folder for everything the demo writes (default: %(default)s)")
    p.add_argument("--model", choices=("albunet2d", "albunet3d"), default="albunet2d", help="network to train (default: %(default)s)")
    p.add_argument("--cases", type=int, default=16, help="synthetic training cases (default: %(default)s)")
    p.add_argument("--test-cases", type=int, default=4, help="held-out synthetic cases to segment (default: %(default)s)")
    p.add_argument("--minutes", type=float, default=6.0, help="training time budget in minutes (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of cohort, split, sampling and initialisation (default: %(default)s)")
    p.add_argument(
        "--encoder-weights",
        default=None,
        help="encoder start: omitted for random weights, 'imagenet' (needs a download) or a local ResNet34 state-dict file",
    )
    p.add_argument("--overwrite", action="store_true", help="reuse a non-empty output folder")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from gliomaseg.data.labels import REGION_LABELS
    from gliomaseg.demo import run_demo

    result = run_demo(
        output=args.output,
        model=args.model,
        cases=args.cases,
        test_cases=args.test_cases,
        minutes=args.minutes,
        seed=args.seed,
        encoder_weights=args.encoder_weights,
        overwrite=args.overwrite,
    )
    print()
    print(f"Report: {result.report}")
    print(f"Overlays: {result.output / 'report' / 'overlays'}")
    print("Mean Dice on the held-out synthetic cases: " + ", ".join(f"{REGION_LABELS[r]} {d:.3f}" for r, d in result.dice.items()))
    print("Stage times: " + ", ".join(f"{stage} {s:.0f} s" for stage, s in result.seconds.items()))
    return 0


# --- entry point ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gliomaseg",
        description="Glioma segmentation in multimodal brain MRI with ImageNet-pretrained U-Nets.",
    )
    parser.add_argument("--version", action="version", version=f"gliomaseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_validate, _add_convert, _add_train, _add_predict, _add_evaluate, _add_demo):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Lightning 2.6 advertises a cloud logger on every run.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda record: "litlogger" not in record.getMessage())
    # Raised inside Lightning 2.6 on every run; nothing in gliomaseg can act on it.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    try:
        return int(args.func(args) or 0)
    except (CommandError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"gliomaseg {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
