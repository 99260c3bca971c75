"""Evaluation: Dice, HD95, sensitivity and specificity per region, summaries, tables and figures.

Typical use::

    from gliomaseg.evaluation import evaluate_folders, write_evaluation

    results, references = evaluate_folders({"AlbuNet3D": "preds/3d", "AlbuNet2D": "preds/2d"}, "BraTS2018/val")
    write_evaluation(results, references, "evaluation")
"""

from gliomaseg.evaluation.folders import AFFINE_TOLERANCE, SCORED_STATUSES, CaseResult, evaluate_folders
from gliomaseg.evaluation.metrics import (
    HD95_ONE_EMPTY_MM,
    METRICS,
    dice,
    evaluate_case,
    hd95,
    score_masks,
    sensitivity,
    specificity,
)
from gliomaseg.evaluation.pairing import find_predictions, find_references, infer_schema, pair_cases
from gliomaseg.evaluation.plots import plot_boxplots, plot_overlay, plot_training_curves, read_training_log
from gliomaseg.evaluation.report import write_evaluation, write_results_csv, write_summary_json
from gliomaseg.evaluation.summary import format_report, format_unscored, summarize, summary_statistics, table_i

__all__ = [
    "AFFINE_TOLERANCE",
    "HD95_ONE_EMPTY_MM",
    "METRICS",
    "SCORED_STATUSES",
    "CaseResult",
    "dice",
    "evaluate_case",
    "evaluate_folders",
    "find_predictions",
    "find_references",
    "format_report",
    "format_unscored",
    "hd95",
    "infer_schema",
    "pair_cases",
    "plot_boxplots",
    "plot_overlay",
    "plot_training_curves",
    "read_training_log",
    "score_masks",
    "sensitivity",
    "specificity",
    "summarize",
    "summary_statistics",
    "table_i",
    "write_evaluation",
    "write_results_csv",
    "write_summary_json",
]
