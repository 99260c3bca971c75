import pytest

from gliomaseg.cli import main
from gliomaseg.data.labels import REGIONS
from gliomaseg.demo import run_demo


@pytest.mark.slow
def test_demo_writes_report_folder(tmp_path):
    result = run_demo(tmp_path / "demo", cases=4, test_cases=1, minutes=2, shape=(40, 40, 24), epochs=1, batches_per_epoch=2)
    report = tmp_path / "demo" / "report"
    assert result.report == report / "report.md"
    assert (report / "metrics_per_case.csv").is_file()
    assert (report / "training_curve.png").is_file()
    assert len(list((report / "overlays").rglob("*.png"))) == 1
    assert (tmp_path / "demo" / "predictions" / "Test_000.nii.gz").is_file()
    assert set(result.dice) == set(REGIONS)
    assert all(0.0 <= d <= 1.0 for d in result.dice.values())


def test_demo_refuses_non_empty_output(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["demo", "--output", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_demo_rejects_too_few_cases(tmp_path):
    with pytest.raises(ValueError, match="at least 4 training cases"):
        run_demo(tmp_path / "demo", cases=2)
