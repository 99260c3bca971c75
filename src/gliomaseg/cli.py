"""The `gliomaseg` console script: argument parsing only; the work happens in the packages."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from gliomaseg import __version__

log = logging.getLogger("gliomaseg")


class CommandError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


# --- validate -------------------------------------------------------------------------------


def _add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a case folder or a dataset of cases and print a table")
    p.add_argument("path", help="a case folder, a dataset folder of cases, an MSD Task01 folder or a case manifest")
    p.add_argument("--label-schema", default=None, help="label schema of the cases (default: inferred from the layout)")
    p.set_defaults(func=_run_validate)


def _run_validate(args: argparse.Namespace) -> int:
    from gliomaseg.data.validate import format_report, validate_path

    reports = validate_path(args.path, schema=args.label_schema)
    print(format_report(reports))
    return 0 if all(r.usable for r in reports) else 1


# --- convert --------------------------------------------------------------------------------


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert clinical scans (DICOM or NIfTI) to a BraTS-format case")
    p.set_defaults(func=_not_built, command_name="convert")


# --- train ----------------------------------------------------------------------------------


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a YAML configuration")
    p.set_defaults(func=_not_built, command_name="train")


# --- predict --------------------------------------------------------------------------------


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment a case or a folder of cases with a trained checkpoint")
    p.set_defaults(func=_not_built, command_name="predict")


# --- evaluate -------------------------------------------------------------------------------


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score predicted label maps against reference label maps")
    p.set_defaults(func=_not_built, command_name="evaluate")


# --- demo -----------------------------------------------------------------------------------


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train, predict and evaluate on synthetic cases in a few minutes on a CPU")
    p.set_defaults(func=_not_built, command_name="demo")


def _not_built(args: argparse.Namespace) -> int:
    print(f"gliomaseg {args.command_name}: this command is not built yet in version {__version__}.")
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
    try:
        return int(args.func(args) or 0)
    except (CommandError, FileNotFoundError, ValueError) as error:
        print(f"gliomaseg {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
