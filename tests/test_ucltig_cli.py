"""UCL-TIG through the same commands as AlbuNet: gliomaseg train, predict, evaluate."""

import json

import pytest

from gliomaseg.cli import main
from gliomaseg.data.synthetic import make_synthetic_dataset


@pytest.mark.slow
def test_ucltig_train_predict_evaluate_cli(tmp_path, capsys):
    data = make_synthetic_dataset(tmp_path / "data", 3, shape=(40, 40, 24), seed=3)
    run = tmp_path / "run"
    overrides = [
        f"data.dataset={data}",
        "cascade.views=[axial]",
        "model.params.width=4",
        "training.iterations=2",
        "patches.batch_size=1",
        "cascade.patch_sizes.wnet=[19,32,32]",
        "cascade.patch_sizes.tnet=[19,24,24]",
        "cascade.patch_sizes.enet=[19,16,16]",
    ]
    args = ["train", "ucltig", "--output", str(run)]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 0, capsys.readouterr().err
    assert (run / "cascade.json").is_file()

    predictions = tmp_path / "predictions"
    assert main(["predict", "--model", str(run), str(data), str(predictions)]) == 0
    assert (predictions / "Synth_000.nii.gz").is_file()
    report = json.loads((predictions / "Synth_000.json").read_text())
    assert report["case_id"] == "Synth_000"

    assert main(["evaluate", str(predictions), str(data), "--output", str(tmp_path / "evaluation"), "--no-overlays"]) == 0
    assert (tmp_path / "evaluation" / "report.md").is_file()


def test_ucltig_failed_train_removes_created_folder(tmp_path, capsys):
    empty_dataset = tmp_path / "no_cases"
    empty_dataset.mkdir()
    run = tmp_path / "runs" / "ucltig"
    status = main(["train", "ucltig", "--set", f"data.dataset={empty_dataset}", "--output", str(run)])
    assert status == 2
    assert "no case found" in capsys.readouterr().err
    assert not run.exists()
    assert not run.parent.exists()
