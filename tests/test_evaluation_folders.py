"""Folder evaluation on synthetic cases: pairing, mixed schemas, mismatch reporting, outputs, CLI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from gliomaseg.cli import main
from gliomaseg.data.labels import convert_labels
from gliomaseg.evaluation import evaluate_folders, find_references, write_evaluation
from gliomaseg.evaluation.folders import (
    STATUS_AFFINE_MISMATCH,
    STATUS_INVALID_LABELS,
    STATUS_MISSING_PREDICTION,
    STATUS_MISSING_REFERENCE,
    STATUS_OK,
    STATUS_SCORED_AS_EMPTY,
    STATUS_SHAPE_MISMATCH,
)

CASES = ("Synth_000", "Synth_001", "Synth_002", "Synth_003")


def _reference(dataset: Path, case_id: str) -> nib.Nifti1Image:
    return nib.load(str(dataset / case_id / f"{case_id}_seg.nii.gz"))


def _write(array: np.ndarray, like: nib.Nifti1Image, path: Path, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.uint8), like.affine if affine is None else affine), str(path))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


@pytest.fixture(scope="module")
def methods(synthetic_dataset, tmp_path_factory) -> dict[str, Path]:
    """Two prediction folders with one problem of each kind.

    method "a" (BraTS 2023 labels): Synth_000 exact, Synth_001 without enhancing tumor,
    Synth_002 missing, Synth_003 on a cropped grid, Extra_999 without reference.
    method "b" (BraTS 2017 labels): Synth_000 shifted affine, Synth_001 with label 7,
    Synth_002 and Synth_003 exact.
    """
    root = tmp_path_factory.mktemp("predictions")
    a, b = root / "a", root / "b"
    ref = {case_id: _reference(synthetic_dataset, case_id) for case_id in CASES}
    labels = {case_id: np.asarray(image.dataobj) for case_id, image in ref.items()}

    _write(convert_labels(labels["Synth_000"], "brats2017", "brats2023"), ref["Synth_000"], a / "Synth_000.nii.gz")
    no_enhancing = labels["Synth_001"].copy()
    no_enhancing[no_enhancing == 4] = 1
    _write(convert_labels(no_enhancing, "brats2017", "brats2023"), ref["Synth_001"], a / "Synth_001.nii.gz")
    _write(labels["Synth_003"][:-2], ref["Synth_003"], a / "Synth_003.nii.gz")
    _write(labels["Synth_000"], ref["Synth_000"], a / "Extra_999.nii.gz")
    (a / "Synth_000.json").write_text("{}")
    _write(labels["Synth_000"], ref["Synth_000"], a / "Synth_000_probabilities.nii.gz")

    shifted = ref["Synth_000"].affine.copy()
    shifted[0, 3] += 5.0
    _write(labels["Synth_000"], ref["Synth_000"], b / "Synth_000.nii.gz", affine=shifted)
    invalid = labels["Synth_001"].copy()
    invalid[0, 0, 0] = 7
    _write(invalid, ref["Synth_001"], b / "Synth_001.nii.gz")
    _write(labels["Synth_002"], ref["Synth_002"], b / "Synth_002.nii.gz")
    _write(labels["Synth_003"], ref["Synth_003"], b / "Synth_003.nii.gz")
    return {"a": a, "b": b}


@pytest.fixture(scope="module")
def evaluated(methods, synthetic_dataset):
    results, references = evaluate_folders(methods, synthetic_dataset, progress=False)
    return {(r.method, r.case_id): r for r in results}, references


def test_reference_dataset_is_read_as_cases(evaluated):
    _, references = evaluated
    assert references.kind == "dataset"
    assert sorted(references.labels) == list(CASES)


def test_exact_prediction_in_other_schema(evaluated):
    results, _ = evaluated
    result = results[("a", "Synth_000")]
    assert result.status == STATUS_OK
    assert result.pred_schema == "brats2023"
    assert result.ref_schema == "brats2017"
    for region in ("whole_tumor", "tumor_core", "enhancing_tumor"):
        assert result.scores[region]["dice"] == 1.0


def test_dice_matches_numpy(evaluated, synthetic_dataset):
    results, _ = evaluated
    labels = np.asarray(_reference(synthetic_dataset, "Synth_001").dataobj)
    prediction = labels.copy()
    prediction[prediction == 4] = 1
    scores = results[("a", "Synth_001")].scores
    assert scores["whole_tumor"]["dice"] == pytest.approx(_dice(prediction > 0, labels > 0))
    assert scores["tumor_core"]["dice"] == pytest.approx(_dice(np.isin(prediction, (1, 4)), np.isin(labels, (1, 4))))
    assert scores["enhancing_tumor"]["dice"] == pytest.approx(_dice(prediction == 4, labels == 4))


@pytest.mark.parametrize(
    ("method", "case_id", "status", "words"),
    [
        ("a", "Synth_002", STATUS_MISSING_PREDICTION, "no predicted label map"),
        ("a", "Synth_003", STATUS_SHAPE_MISMATCH, "shape"),
        ("a", "Extra_999", STATUS_MISSING_REFERENCE, "no reference label map"),
        ("b", "Synth_000", STATUS_AFFINE_MISMATCH, "affine"),
        ("b", "Synth_001", STATUS_INVALID_LABELS, "[7]"),
    ],
)
def test_mismatch_reported_with_reason(evaluated, method, case_id, status, words):
    results, _ = evaluated
    result = results[(method, case_id)]
    assert result.status == status
    assert words in result.reason
    assert result.scores == {}


def test_missing_prediction_scored_as_empty(methods, synthetic_dataset):
    results, _ = evaluate_folders({"a": methods["a"]}, synthetic_dataset, missing_as_empty=True, progress=False)
    result = next(r for r in results if r.case_id == "Synth_002")
    assert result.status == STATUS_SCORED_AS_EMPTY
    assert result.scores["whole_tumor"]["dice"] == 0.0


def test_flat_reference_folder_names(synthetic_dataset, tmp_path):
    names = {"Synth_000": "Synth_000_seg.nii.gz", "Synth_001": "Synth_001-seg.nii.gz", "Synth_002": "Synth_002.nii.gz"}
    for case_id, name in names.items():
        shutil.copy(synthetic_dataset / case_id / f"{case_id}_seg.nii.gz", tmp_path / name)
    references = find_references(tmp_path)
    assert references.kind == "flat"
    assert sorted(references.labels) == sorted(names)


def test_flat_reference_duplicate_case_rejected(synthetic_dataset, tmp_path):
    source = synthetic_dataset / "Synth_000" / "Synth_000_seg.nii.gz"
    shutil.copy(source, tmp_path / "Synth_000.nii.gz")
    shutil.copy(source, tmp_path / "Synth_000_seg.nii.gz")
    with pytest.raises(ValueError, match="two reference files"):
        find_references(tmp_path)


def test_write_evaluation_outputs(methods, synthetic_dataset, tmp_path):
    results, references = evaluate_folders(methods, synthetic_dataset, progress=False)
    written = write_evaluation(results, references, tmp_path / "out", progress=False)

    with written["csv"].open() as handle:
        rows = list(csv.DictReader(handle))
    # Method "a" has 5 case ids (4 references and Extra_999), method "b" the 4 references.
    assert len(rows) == 9
    assert {row["status"] for row in rows if row["method"] == "a" and row["case_id"] == "Synth_003"} == {
        STATUS_SHAPE_MISMATCH
    }

    summary = json.loads(written["summary"].read_text())
    assert summary["methods"]["a"]["scored"] == 2
    assert summary["methods"]["b"]["regions"]["whole_tumor"]["dice"]["n"] == 2
    assert summary["conventions"]["hd95_one_empty_mm"] == 373.13

    report = written["report"].read_text()
    assert "| a |" in report
    assert "shape_mismatch" in report
    assert len(written["boxplots"]) == 6
    assert all(path.is_file() for path in written["boxplots"])
    # Overlays for the scored pairs (2 per method) and the prediction without reference.
    assert len(written["overlays"]) == 5


def test_cli_single_method_default_output(methods, synthetic_dataset, tmp_path):
    predictions = tmp_path / "pred"
    shutil.copytree(methods["b"], predictions)
    code = main(["evaluate", str(predictions), str(synthetic_dataset), "--no-overlays"])
    assert code == 0
    assert (predictions / "evaluation" / "metrics_per_case.csv").is_file()
    assert (predictions / "evaluation" / "report.md").is_file()


def test_cli_several_methods(methods, synthetic_dataset, tmp_path, capsys):
    output = tmp_path / "compare"
    code = main([
        "evaluate",
        "--method", f"A={methods['a']}",
        "--method", f"B={methods['b']}",
        str(synthetic_dataset),
        "--output", str(output),
        "--no-overlays",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| A |" in printed
    assert "| B |" in printed
    assert (output / "boxplot_dice_whole_tumor.png").is_file()


UNSCORED_REASONS = {
    ("a", "Synth_002"): "no predicted label map",
    ("a", "Synth_003"): "shape",
    ("a", "Extra_999"): "no reference label map",
    ("b", "Synth_000"): "affine",
    ("b", "Synth_001"): "[7]",
}


def test_summary_json_lists_unscored_reasons(methods, synthetic_dataset, tmp_path):
    results, references = evaluate_folders(methods, synthetic_dataset, progress=False)
    written = write_evaluation(results, references, tmp_path / "out", overlays=False, progress=False)
    summary = json.loads(written["summary"].read_text())
    listed = {(method, entry["case_id"]): entry for method in ("a", "b") for entry in summary["methods"][method]["not_scored"]}
    assert sorted(listed) == sorted(UNSCORED_REASONS)
    for key, words in UNSCORED_REASONS.items():
        assert words in listed[key]["reason"], key
    assert listed[("a", "Synth_003")]["status"] == STATUS_SHAPE_MISMATCH


def test_cli_prints_unscored_case_reasons(methods, synthetic_dataset, tmp_path, capsys):
    code = main([
        "evaluate", "--method", f"a={methods['a']}", "--method", f"b={methods['b']}",
        str(synthetic_dataset), "--output", str(tmp_path / "compare"), "--no-overlays",
    ])
    printed = capsys.readouterr().out.splitlines()
    assert code == 0
    assert "5 of 9 method-case pair(s) not scored:" in printed
    for (method, case_id), words in UNSCORED_REASONS.items():
        lines = [line for line in printed if line.startswith(f"  {method}, case {case_id}: ")]
        assert len(lines) == 1, (method, case_id)
        assert words in lines[0], (method, case_id)


def test_cli_output_equal_to_input_rejected(methods, synthetic_dataset, capsys):
    code = main(["evaluate", str(methods["a"]), str(synthetic_dataset), "--output", str(methods["a"])])
    assert code == 2
    assert "input folder" in capsys.readouterr().err


def test_cli_malformed_method_rejected(synthetic_dataset, capsys):
    code = main(["evaluate", "--method", "no-equals-sign", str(synthetic_dataset), "--output", "unused"])
    assert code == 2
    assert "NAME=PRED_DIR" in capsys.readouterr().err


def test_cli_several_methods_need_output(methods, synthetic_dataset, capsys):
    code = main(["evaluate", "--method", f"A={methods['a']}", "--method", f"B={methods['b']}", str(synthetic_dataset)])
    assert code == 2
    assert "--output" in capsys.readouterr().err


@pytest.fixture(scope="module")
def msd_dataset(tmp_path_factory) -> Path:
    from gliomaseg.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("msd"), 2, shape=(32, 32, 20), layout="msd", seed=2)


def _msd_predictions(msd_dataset: Path, folder: Path, schema: str) -> Path:
    folder.mkdir()
    for label_path in sorted((msd_dataset / "labelsTr").glob("*.nii.gz")):
        image = nib.load(str(label_path))
        converted = convert_labels(np.asarray(image.dataobj), "msd", schema)
        _write(converted, image, folder / label_path.name)
    return folder


def test_msd_reference_against_brats2017_predictions(msd_dataset, tmp_path):
    predictions = _msd_predictions(msd_dataset, tmp_path / "pred", "brats2017")
    results, references = evaluate_folders(predictions, msd_dataset, progress=False)
    assert references.kind == "dataset"
    assert len(results) == 2
    for result in results:
        assert result.ref_schema == "msd"
        assert result.scores["enhancing_tumor"]["dice"] == 1.0
        assert result.scores["tumor_core"]["dice"] == 1.0


def test_pred_schema_option_reads_msd_numbering(msd_dataset, tmp_path):
    predictions = _msd_predictions(msd_dataset, tmp_path / "pred", "msd")
    results, _ = evaluate_folders(predictions, msd_dataset, pred_schema="msd", progress=False)
    for result in results:
        assert result.pred_schema == "msd"
        assert result.scores["tumor_core"]["dice"] == 1.0


def test_ambiguous_schema_warns(msd_dataset, tmp_path, caplog):
    predictions = _msd_predictions(msd_dataset, tmp_path / "pred", "msd")
    with caplog.at_level("WARNING", logger="gliomaseg.evaluation.folders"):
        results, _ = evaluate_folders(predictions, msd_dataset, progress=False)
    assert results[0].pred_schema == "brats2023"
    assert "--pred-schema" in caplog.text
