"""Training of segmentation networks on patches: configuration, data, loss, loop, checkpoints."""

from gliomaseg.training.config import DEFAULT_CONFIG, ConfigError, resolve_config, shipped_configs
from gliomaseg.training.loss import MultiClassDiceLoss
from gliomaseg.training.recorder import METRIC_COLUMNS, read_metrics
from gliomaseg.training.run import RunResult, train

__all__ = [
    "DEFAULT_CONFIG",
    "ConfigError",
    "METRIC_COLUMNS",
    "MultiClassDiceLoss",
    "RunResult",
    "read_metrics",
    "resolve_config",
    "shipped_configs",
    "train",
]
