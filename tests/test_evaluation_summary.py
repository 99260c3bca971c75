"""Summary statistics and the Markdown tables."""

from __future__ import annotations

import pytest

from gliomaseg.evaluation import CaseResult, summarize, summary_statistics, table_i
from gliomaseg.evaluation.folders import STATUS_MISSING_PREDICTION, STATUS_OK
from gliomaseg.evaluation.summary import format_report, format_unscored


def test_summary_statistics_hand_computed():
    stats = summary_statistics([1.0, 2.0, 3.0, 4.0])
    assert stats["mean"] == pytest.approx(2.5)
    assert stats["median"] == pytest.approx(2.5)
    # Sample standard deviation: sqrt(((1.5^2 + 0.5^2) * 2) / 3).
    assert stats["std"] == pytest.approx((5.0 / 3.0) ** 0.5)
    # Linear interpolation: position 0.75 and 2.25 in the sorted values.
    assert stats["q25"] == pytest.approx(1.75)
    assert stats["q75"] == pytest.approx(3.25)
    assert stats["n"] == 4


def test_summary_statistics_single_value_has_no_std():
    stats = summary_statistics([0.7])
    assert stats["std"] is None
    assert stats["median"] == pytest.approx(0.7)


def test_summary_statistics_empty():
    stats = summary_statistics([])
    assert stats["n"] == 0
    assert stats["mean"] is None


def _result(method: str, case_id: str, dice_value: float, status: str = STATUS_OK) -> CaseResult:
    scores = {}
    if status == STATUS_OK:
        metrics = {"dice": dice_value, "hd95": 10 * (1 - dice_value), "sensitivity": 1.0, "specificity": 1.0}
        scores = {region: dict(metrics) for region in ("whole_tumor", "tumor_core", "enhancing_tumor")}
    return CaseResult(method=method, case_id=case_id, status=status, scores=scores)


def _results() -> list[CaseResult]:
    return [
        _result("3D", "c1", 0.8),
        _result("3D", "c2", 0.9),
        _result("3D", "c3", 0.0, STATUS_MISSING_PREDICTION),
        _result("2D", "c1", 0.5),
        _result("2D", "c2", 0.7),
        _result("2D", "c3", 0.6),
    ]


def test_summarize_leaves_out_unscored_cases():
    summary = summarize(_results())
    assert summary["3D"]["scored"] == 2
    assert summary["3D"]["cases"] == 3
    assert summary["3D"]["statuses"] == {STATUS_OK: 2, STATUS_MISSING_PREDICTION: 1}
    assert summary["3D"]["regions"]["whole_tumor"]["dice"]["mean"] == pytest.approx(0.85)


def test_summarize_keeps_method_order():
    assert list(summarize(_results())) == ["3D", "2D"]


def test_table_i_rows_and_cells():
    lines = table_i(summarize(_results()), "dice").splitlines()
    assert lines[0] == "| Method | Whole tumor | Tumor core | Enhancing tumor | n |"
    assert lines[2] == "| 3D | 0.850 (0.850) | 0.850 (0.850) | 0.850 (0.850) | 2 |"
    assert lines[3] == "| 2D | 0.600 (0.600) | 0.600 (0.600) | 0.600 (0.600) | 3 |"


def test_table_i_rejects_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric"):
        table_i(summarize(_results()), "jaccard")


def test_format_report_lists_unscored_case():
    results = _results()
    report = format_report(results, summarize(results))
    assert "| 3D | c3 | missing_prediction |" in report


def test_summarize_lists_unscored_reasons():
    results = [*_results(), CaseResult("2D", "c4", "shape_mismatch", reason="prediction has shape (2, 2, 2)")]
    summary = summarize(results)
    assert summary["3D"]["not_scored"] == [{"case_id": "c3", "status": STATUS_MISSING_PREDICTION, "reason": ""}]
    assert summary["2D"]["not_scored"] == [
        {"case_id": "c4", "status": "shape_mismatch", "reason": "prediction has shape (2, 2, 2)"}
    ]


def test_format_unscored_one_line_per_case():
    results = [*_results(), CaseResult("2D", "c4", "shape_mismatch", reason="prediction has shape (2, 2, 2)")]
    lines = format_unscored(results).splitlines()
    assert lines[0] == "2 of 7 method-case pair(s) not scored:"
    assert lines[1] == "  3D, case c3: missing_prediction: "
    assert lines[2] == "  2D, case c4: shape_mismatch: prediction has shape (2, 2, 2)"


def test_format_unscored_all_scored_is_empty():
    assert format_unscored([_result("3D", "c1", 0.8)]) == ""
