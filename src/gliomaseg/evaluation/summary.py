"""Summary statistics per method and region, and the Markdown tables people read.

The main table has the shape of Table I of Wacker et al., "Transfer Learning for Brain Tumor
Segmentation": one row per method, one column per region, each cell "mean (median)".
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from gliomaseg.data.labels import REGIONS
from gliomaseg.evaluation.folders import CaseResult
from gliomaseg.evaluation.metrics import HD95_ONE_EMPTY_MM, METRICS

STATISTICS = ("mean", "median", "std", "q25", "q75", "n")
REGION_TITLES = {"whole_tumor": "Whole tumor", "tumor_core": "Tumor core", "enhancing_tumor": "Enhancing tumor"}
METRIC_TITLES = {"dice": "Dice", "hd95": "HD95 (mm)", "sensitivity": "Sensitivity", "specificity": "Specificity"}


def summary_statistics(values: Iterable[float]) -> dict[str, float | int | None]:
    """Return mean, median, std, 25th and 75th percentiles and n of a list of numbers.

    The standard deviation is the sample one (ddof=1) and is None for fewer than two values;
    percentiles interpolate linearly (numpy's default). With no values every statistic is None
    and n is 0.
    """
    array = np.asarray([float(v) for v in values], dtype=np.float64)
    if array.size == 0:
        return {"mean": None, "median": None, "std": None, "q25": None, "q75": None, "n": 0}
    return {
        "mean": float(array.mean()),
        "median": float(np.median(array)),
        "std": float(array.std(ddof=1)) if array.size > 1 else None,
        "q25": float(np.percentile(array, 25)),
        "q75": float(np.percentile(array, 75)),
        "n": int(array.size),
    }


def methods_of(results: Sequence[CaseResult]) -> list[str]:
    """Return the method names of `results` in order of first appearance."""
    return list(dict.fromkeys(result.method for result in results))


def summarize(results: Sequence[CaseResult]) -> dict[str, dict]:
    """Summarize per-case results per method, region and metric.

    Returns:
        {method: {"cases": number of case ids, "scored": number scored, "statuses":
        {status: count}, "not_scored": [{"case_id", "status", "reason"} per case not scored],
        "regions": {region: {metric: summary_statistics(...)}}}}. Cases that were not scored
        (see CaseResult.status) do not enter the statistics.
    """
    summary: dict[str, dict] = {}
    for method in methods_of(results):
        method_results = [r for r in results if r.method == method]
        scored = [r for r in method_results if r.scored]
        regions = {
            region: {metric: summary_statistics(r.scores[region][metric] for r in scored) for metric in METRICS}
            for region in REGIONS
        }
        summary[method] = {
            "cases": len(method_results),
            "scored": len(scored),
            "statuses": dict(Counter(r.status for r in method_results)),
            "not_scored": [
                {"case_id": r.case_id, "status": r.status, "reason": r.reason} for r in method_results if not r.scored
            ],
            "regions": regions,
        }
    return summary


def _number(value: float | None, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{decimals}f}"


def _decimals(metric: str) -> int:
    return 2 if metric == "hd95" else 3


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def table_i(summary: dict[str, dict], metric: str = "dice") -> str:
    """Return a Markdown table: rows methods, columns regions, cells "mean (median)" of `metric`."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    decimals = _decimals(metric)
    header = ["Method", *(REGION_TITLES[region] for region in REGIONS), "n"]
    rows = []
    for method, entry in summary.items():
        cells = [method]
        for region in REGIONS:
            stats = entry["regions"][region][metric]
            cells.append(f"{_number(stats['mean'], decimals)} ({_number(stats['median'], decimals)})")
        cells.append(str(entry["scored"]))
        rows.append(cells)
    return _markdown_table(header, rows)


def method_table(summary: dict[str, dict], method: str) -> str:
    """Return a Markdown table of one method: rows region and metric, columns the statistics."""
    header = ["Region", "Metric", "Mean", "Std", "Median", "25th pct", "75th pct", "n"]
    rows = []
    for region in REGIONS:
        for metric in METRICS:
            stats = summary[method]["regions"][region][metric]
            decimals = _decimals(metric)
            rows.append([
                REGION_TITLES[region],
                METRIC_TITLES[metric],
                *(_number(stats[key], decimals) for key in ("mean", "std", "median", "q25", "q75")),
                str(stats["n"]),
            ])
    return _markdown_table(header, rows)


def problems_table(results: Sequence[CaseResult]) -> str:
    """Return a Markdown table of the method-case pairs that were not scored normally, or ''."""
    problems = [r for r in results if r.status != "ok"]
    if not problems:
        return ""
    rows = [[r.method, r.case_id, r.status, r.reason.replace("|", "/")] for r in problems]
    return _markdown_table(["Method", "Case", "Status", "Reason"], rows)


def format_unscored(results: Sequence[CaseResult]) -> str:
    """Format the method-case pairs that were not scored, one line each with status and reason ('' if none)."""
    unscored = [r for r in results if not r.scored]
    if not unscored:
        return ""
    lines = [f"{len(unscored)} of {len(results)} method-case pair(s) not scored:"]
    lines += [f"  {r.method}, case {r.case_id}: {r.status}: {r.reason}" for r in unscored]
    return "\n".join(lines)


def format_report(results: Sequence[CaseResult], summary: dict[str, dict], reference: str = "") -> str:
    """Return the Markdown report: Dice and HD95 tables of all methods, then one table per method."""
    parts = ["# Evaluation", ""]
    if reference:
        parts += [f"Reference: `{reference}`", ""]
    parts += [
        "Dice per region, mean (median) over the scored cases:",
        "",
        table_i(summary, "dice"),
        "",
        "HD95 in mm per region, mean (median):",
        "",
        table_i(summary, "hd95"),
        "",
        "Empty masks follow the BraTS conventions: both empty gives Dice 1 and HD95 0; exactly one empty "
        f"gives Dice 0 and HD95 {HD95_ONE_EMPTY_MM} mm (the diagonal of the 240 x 240 x 155 mm BraTS grid).",
        "",
    ]
    for method, entry in summary.items():
        statuses = ", ".join(f"{status} {count}" for status, count in sorted(entry["statuses"].items()))
        parts += [f"## {method}", "", f"{entry['scored']} of {entry['cases']} cases scored ({statuses}).", ""]
        parts += [method_table(summary, method), ""]
    problems = problems_table(results)
    if problems:
        parts += ["## Cases not scored normally", "", problems, ""]
    return "\n".join(parts)
