"""Run every command of docs/walkthrough.md, in order, on small synthetic data.

The commands come from the page's ```bash blocks, so the page and this test cannot drift
apart. `gliomaseg` commands run in this process through `gliomaseg.cli.main`; each
`gliomaseg train` command gets the `TINY_TRAINING` overrides appended. Every other command
runs unchanged in bash. Files that the page tells the user to make with another tool
(the brain mask) are written by `EXTERNAL_TOOLS` just before the first command that
names them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from gliomaseg.cli import build_parser, main

DOC = Path(__file__).resolve().parents[1] / "docs" / "walkthrough.md"

# Appended to every `gliomaseg train` command of the page: a run of seconds, not hours.
TINY_TRAINING = [
    "training.epochs=1",
    "training.batches_per_epoch=2",
    "training.num_workers=0",
    "training.precision=32-true",
    "training.progress_bar=false",
    "validation.patches=2",
]
TINY_PATCHES = {
    "albunet2d": ["patches.size=[1,32,32]", "patches.batch_size=4"],
    "albunet3d": ["patches.size=[2,32,32]", "patches.batch_size=2"],
}
SHIPPED_VARIANTS = {"albunet2d_scratch", "albunet2d_imagenet", "albunet3d_scratch", "albunet3d_imagenet"}

SHAPE = (48, 48, 32)
TRAINING_CASES = {
    "HGG": ["Brats18_2013_2_1", "Brats18_CBICA_AAB_1", "Brats18_TCIA01_190_1"],
    "LGG": ["Brats18_2013_0_1", "Brats18_TCIA09_141_1"],
}
VALIDATION_CASE = "Brats18_CBICA_AAM_1"
# (series number, description, modality) of the synthetic DICOM export, as the page lists them.
DICOM_SERIES = [("2", "T2_AX", "t2"), ("5", "FLAIR_AX", "flair"), ("13", "T1_AX_POST_GAD", "t1c")]
WEIGHTS_FILE = "resnet34-b627a593.pth"
SHELL_SYNTAX = re.compile(r"[$*|;&<>`]")


# --- reading the page -----------------------------------------------------------------------


def read_commands(markdown: str) -> list[str]:
    """Return the commands of the ```bash blocks, in order, with continuation lines joined."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL):
        pending = ""
        for line in block.splitlines():
            stripped = line.strip()
            if not pending and (not stripped or stripped.startswith("#")):
                continue
            if stripped.endswith("\\"):
                pending += stripped[:-1].rstrip() + " "
                continue
            commands.append(pending + stripped)
            pending = ""
        assert not pending, f"a bash block of {DOC} ends with a continuation line: {pending!r}"
    return commands


def gliomaseg_arguments(command: str) -> list[str] | None:
    """Return the arguments after `gliomaseg`, or None for a command of another program."""
    words = shlex.split(command)
    return words[1:] if words[0] == "gliomaseg" else None


def with_tiny_training(arguments: list[str]) -> list[str]:
    config = arguments[1]
    model = "albunet3d" if "3d" in config else "albunet2d"
    extra = [*TINY_PATCHES[model], *TINY_TRAINING]
    return [*arguments, *(item for value in extra for item in ("--set", value))]


@pytest.fixture(scope="module")
def commands() -> list[str]:
    return read_commands(DOC.read_text())


# --- small data the page's commands expect --------------------------------------------------


def write_dicom_series(image: sitk.Image, folder: Path, number: str, description: str, uid: str) -> None:
    """Write `image` as one single-frame MR DICOM file per axial slice."""
    folder.mkdir(parents=True)
    pixels = sitk.GetArrayFromImage(image).astype(np.int16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(pixels.shape[0]):
        slice_image = sitk.GetImageFromArray(pixels[k : k + 1])
        slice_image.SetSpacing(image.GetSpacing())
        slice_image.SetOrigin(image.TransformIndexToPhysicalPoint((0, 0, k)))
        slice_image.SetDirection(image.GetDirection())
        tags = {
            "0008|0060": "MR", "0020|000e": uid, "0020|000d": "1.2.826.0.1.3680043.2.1125.7",
            "0020|0013": str(k + 1), "0008|103e": description, "0020|0011": number,
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4", "0008|0018": f"{uid}.{k + 1}",
        }
        for key, value in tags.items():
            slice_image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"IM{k:04d}.dcm"))
        writer.Execute(slice_image)


def write_inputs(root: Path, torch_home: Path) -> None:
    import torch
    import torchvision

    from gliomaseg.data.synthetic import make_synthetic_case

    training = root / "MICCAI_BraTS_2018_Data_Training"
    seed = 0
    for grade, case_ids in TRAINING_CASES.items():
        for case_id in case_ids:
            make_synthetic_case(training / grade, case_id, SHAPE, seed=seed)
            seed += 1
    (training / "survival_data.csv").write_text("BraTS18ID,Age,Survival,ResectionStatus\n")
    validation = root / "MICCAI_BraTS_2018_Data_Validation"
    make_synthetic_case(validation, VALIDATION_CASE, SHAPE, seed=seed, with_label=False)
    (validation / "survival_evaluation.csv").write_text("BraTS18ID,Age,ResectionStatus\n")

    scan_case = make_synthetic_case(root / "scan-sources", "patient", SHAPE, seed=seed + 1, with_label=False)
    tags = {"t2": "t2", "flair": "flair", "t1c": "t1ce"}
    for index, (number, description, modality) in enumerate(DICOM_SERIES):
        image = sitk.ReadImage(str(scan_case / f"patient_{tags[modality]}.nii.gz"))
        write_dicom_series(image, root / "exam123" / f"series{number}", number, description, f"1.2.826.0.1.3680043.2.1125.7.{index + 1}")

    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), checkpoints / WEIGHTS_FILE)


def write_brain_mask(root: Path) -> None:
    """Stand in for a brain extraction tool: the synthetic head has no skull, so brain = non-zero T1c."""
    t1c = nib.load(root / "cases" / "patient123-head" / "patient123_t1ce.nii.gz")
    mask = (np.asanyarray(t1c.dataobj) > 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, t1c.affine, t1c.header), root / "patient123_brainmask.nii.gz")


EXTERNAL_TOOLS = {"patient123_brainmask.nii.gz": write_brain_mask}


# --- running the page -----------------------------------------------------------------------


@dataclass
class CommandRun:
    command: str
    status: int
    output: str
    seconds: float = 0.0


def run_command(command: str, root: Path, environment: dict[str, str]) -> CommandRun:
    arguments = gliomaseg_arguments(command)
    if arguments is None:
        finished = subprocess.run(["bash", "-c", command], cwd=root, env=environment, capture_output=True, text=True)
        return CommandRun(command, finished.returncode, finished.stdout + finished.stderr)

    if arguments[0] == "train":
        arguments = with_tiny_training(arguments)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = main(arguments)
        except SystemExit as error:
            status = int(error.code or 0)
    return CommandRun(command, status, stdout.getvalue() + stderr.getvalue())


@dataclass
class Walkthrough:
    root: Path
    torch_home: Path
    runs: list[CommandRun]


@pytest.fixture(scope="module")
def walkthrough(commands, tmp_path_factory) -> Walkthrough:
    """Run the page's commands in order until one fails."""
    root = tmp_path_factory.mktemp("walkthrough")
    torch_home = tmp_path_factory.mktemp("torch-home")
    write_inputs(root, torch_home)
    environment = dict(os.environ, TORCH_HOME=str(torch_home))
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"

    runs: list[CommandRun] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("TORCH_HOME", str(torch_home))
        for command in commands:
            for name, make in EXTERNAL_TOOLS.items():
                if name in command and not (root / name).exists():
                    make(root)
            start = time.perf_counter()
            runs.append(run_command(command, root, environment))
            runs[-1].seconds = time.perf_counter() - start
            if runs[-1].status != 0:
                break
    return Walkthrough(root, torch_home, runs)


# --- the page itself (fast) -----------------------------------------------------------------


def test_page_commands_parse(commands):
    parser = build_parser()
    for command in commands:
        arguments = gliomaseg_arguments(command)
        if arguments is None:
            continue
        assert not SHELL_SYNTAX.search(command), f"gliomaseg commands run without a shell; remove shell syntax: {command}"
        parser.parse_args(arguments)


def test_page_trains_four_shipped_variants(commands):
    trained = [gliomaseg_arguments(c)[1] for c in commands if (gliomaseg_arguments(c) or [""])[0] == "train"]
    assert sorted(trained) == sorted(SHIPPED_VARIANTS)


def test_page_trains_on_downloaded_dataset_folder(commands):
    datasets = {
        argument.partition("=")[2]
        for command in commands
        if (gliomaseg_arguments(command) or [""])[0] == "train"
        for argument in gliomaseg_arguments(command)
        if argument.startswith("data.dataset=")
    }
    assert datasets == {"MICCAI_BraTS_2018_Data_Training"}


def test_page_makes_no_symbolic_links(commands):
    assert not [command for command in commands if command.startswith("ln ")]


def test_page_compares_four_methods(commands):
    evaluations = [gliomaseg_arguments(c) for c in commands if "--method" in c]
    assert len(evaluations) == 1
    assert evaluations[0].count("--method") == 4


def test_page_converts_and_predicts_clinical_case(commands):
    subcommands = [gliomaseg_arguments(c)[0] for c in commands if gliomaseg_arguments(c)]
    assert subcommands.count("convert") == 3
    assert any("cases/patient123" in c and c.startswith("gliomaseg predict") for c in commands)


def test_read_commands_joins_continuations():
    markdown = "text\n```bash\n# comment\ngliomaseg train a \\\n    --set x=1\nls\n```\n```text\nnot run\n```\n"
    assert read_commands(markdown) == ["gliomaseg train a --set x=1", "ls"]


# --- running the page (slow) ----------------------------------------------------------------


@pytest.mark.slow
def test_every_command_succeeds(walkthrough, commands):
    runs = walkthrough.runs
    failed = runs[-1]
    assert failed.status == 0, f"{failed.command!r} exited with status {failed.status}:\n{failed.output[-3000:]}"
    assert len(runs) == len(commands)


@pytest.mark.slow
def test_split_moves_one_case_to_test(walkthrough):
    root = walkthrough.root
    train = sorted(p.name for p in (root / "MICCAI_BraTS_2018_Data_Training").glob("[HL]GG/*"))
    test = sorted(p.name for p in (root / "brats18-test").glob("[HL]GG/*"))
    assert test == ["Brats18_TCIA09_141_1"]
    assert len(train) == 4
    assert (root / "brats18-test" / "LGG" / "Brats18_TCIA09_141_1").is_dir()


@pytest.mark.slow
def test_weights_file_copied_from_hub_cache(walkthrough):
    root = walkthrough.root
    cached = walkthrough.torch_home / "hub" / "checkpoints" / WEIGHTS_FILE
    assert (root / WEIGHTS_FILE).read_bytes() == cached.read_bytes()


@pytest.mark.slow
def test_four_runs_write_best_checkpoints(walkthrough):
    root = walkthrough.root
    for variant in SHIPPED_VARIANTS:
        assert (root / "runs" / variant / "best.safetensors").is_file(), variant


@pytest.mark.slow
def test_pretrained_runs_use_local_weights(walkthrough):
    import yaml

    root = walkthrough.root
    for variant in ("albunet2d_imagenet", "albunet3d_imagenet"):
        config = yaml.safe_load((root / "runs" / variant / "config.yaml").read_text())
        assert config["model"]["params"]["encoder_weights"] == WEIGHTS_FILE, variant


@pytest.mark.slow
def test_comparison_table_lists_four_methods(walkthrough):
    root, runs = walkthrough.root, walkthrough.runs
    evaluation = next(r for r in runs if "--method" in r.command)
    summary = json.loads((root / "comparison" / "test" / "summary.json").read_text())
    for method in ("AlbuNet3D-pretrained", "AlbuNet3D-scratch", "AlbuNet2D-pretrained", "AlbuNet2D-scratch"):
        assert f"| {method} |" in evaluation.output, method
        assert method in json.dumps(summary), method


@pytest.mark.slow
def test_upload_contains_only_label_maps(walkthrough):
    root = walkthrough.root
    uploaded = sorted(p.name for p in (root / "upload" / "albunet3d_imagenet").iterdir())
    assert uploaded == [f"{VALIDATION_CASE}.nii.gz"]


@pytest.mark.slow
def test_clinical_case_is_skull_stripped(walkthrough):
    root = walkthrough.root
    manifest = json.loads((root / "cases" / "patient123" / "conversion.json").read_text())
    assert manifest["skull_stripped"] is True


@pytest.mark.slow
def test_clinical_prediction_on_converted_grid(walkthrough):
    root = walkthrough.root
    prediction = nib.load(root / "predictions" / "patient123" / "patient123.nii.gz")
    image = nib.load(root / "cases" / "patient123" / "patient123_t1ce.nii.gz")
    assert prediction.shape == image.shape
    assert np.allclose(prediction.affine, image.affine)
    assert set(np.unique(np.asanyarray(prediction.dataobj))) <= {0, 1, 2, 4}
