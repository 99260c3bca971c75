"""Prediction: sliding-window segmentation of cases and cohorts, and the files it writes."""

from gliomaseg.inference.model import ModelInputError, PredictionModel, load_prediction_model
from gliomaseg.inference.predict import (
    CaseResult,
    PredictionSettings,
    PredictionSummary,
    Predictor,
    parse_shard,
    predict_case,
    predict_cases,
)
from gliomaseg.inference.sliding_window import (
    CompiledModel,
    VolumeModel,
    gaussian_importance,
    resolve_precision,
    sliding_window_probabilities,
    window_starts,
)

__all__ = [
    "CaseResult",
    "CompiledModel",
    "ModelInputError",
    "PredictionModel",
    "PredictionSettings",
    "PredictionSummary",
    "Predictor",
    "VolumeModel",
    "gaussian_importance",
    "load_prediction_model",
    "parse_shard",
    "predict_case",
    "predict_cases",
    "resolve_precision",
    "sliding_window_probabilities",
    "window_starts",
]
