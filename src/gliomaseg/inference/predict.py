"""Prediction of a case or a cohort: preprocess, sliding window, argmax, restore, write.

For each case `predict_case` writes, in the output folder:

- ``<case_id>.nii.gz``: the label map in the input's voxel grid and header (qform and sform),
  in the input case's label schema or the one chosen;
- ``<case_id>.json``: tumor volumes in cm3 per region, the checkpoint and its metadata,
  settings, device and seconds per stage;
- ``<case_id>_probabilities.nii.gz`` with ``save_probabilities``: see outputs.save_probabilities.

`predict_cases` runs a folder of cases with a progress bar; a failing case is logged and
reported, and the others go on. Cases can be split across processes with `shard`.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

import gliomaseg
from gliomaseg.data.cases import Case, discover_cases
from gliomaseg.data.io import save_label_map
from gliomaseg.data.labels import LabelSchema, from_model_classes, get_schema
from gliomaseg.data.preprocessing import preprocess_case
from gliomaseg.data.validate import MAX_BRAIN_VOLUME_CM3
from gliomaseg.inference.model import PredictionModel, load_prediction_model
from gliomaseg.inference.outputs import (
    output_paths,
    save_probabilities,
    tumor_volumes_cm3,
    voxel_volume_mm3,
    write_json_atomic,
)
from gliomaseg.inference.sliding_window import (
    CompiledModel,
    VolumeModel,
    count_windows,
    estimate_window_bytes,
    resolve_device,
    resolve_precision,
    sliding_window_probabilities,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictionSettings:
    """Settings of a prediction run; the defaults follow Wacker et al. (steps 32 in-plane, 24 in depth).

    Attributes:
        step: in-plane distance between window starts, in voxels.
        depth_step: distance between window starts along D; reduced to the window depth
            (1 for 2D networks) where larger.
        window: window size (d, h, w); None uses the checkpoint's training patch size. A
            larger window is shrunk to the cropped volume (see Predictor.window_for).
        gaussian: weight window probabilities by a Gaussian centred in the window.
        tta: mirroring test-time augmentation over H and W (and D for 3D networks), all flip
            combinations: 4 (2D) or 8 (3D) times the work.
        precision: "auto", "fp32", "bf16" (autocast; CPU or GPU) or "fp16" (GPU only).
            "auto" is bf16 on GPUs and on CPUs with native bf16, else fp32 (see
            `resolve_precision`).
        device: "auto", "cpu", "cuda" or "cuda:N".
        batch_windows: windows per forward pass; None derives it from `max_memory_gb`.
        max_memory_gb: memory budget for the accumulators and a batch of windows, in GB,
            used when `batch_windows` is None.
        channels_last: run convolutions in channels-last memory format (faster on most CPUs).
        compile: compile the network with torch.compile before the first window, once per
            process and window size. On a 2-core CPU this took 19 to 27 s and made AlbuNet2D
            7 to 12 % faster and AlbuNet3D slower, so measure it on the target hardware.
        save_probabilities: also write the class probabilities.
        label_schema: schema of the written label maps; None uses each input case's schema.
        overwrite: replace existing outputs; otherwise cases with a label map are skipped.
        substitute: missing-modality policy, target -> source modality, e.g. {"t1": "t1c"}.
        mask_outside_brain: label background wherever every input modality is zero (outside
            the skull-stripped brain), where the network has no image to segment.
    """

    step: int = 32
    depth_step: int = 24
    window: tuple[int, int, int] | None = None
    gaussian: bool = False
    tta: bool = False
    precision: str = "auto"
    device: str = "auto"
    batch_windows: int | None = None
    max_memory_gb: float = 2.0
    channels_last: bool = True
    compile: bool = False
    save_probabilities: bool = False
    label_schema: str | None = None
    overwrite: bool = False
    substitute: dict[str, str] = field(default_factory=dict)
    mask_outside_brain: bool = True


@dataclass
class CaseResult:
    """Outcome of one case: status "done", "skipped" or "failed", with outputs or the reason."""

    case_id: str
    status: str
    label_map: Path | None = None
    report: Path | None = None
    reason: str | None = None
    seconds: float = 0.0
    volumes_cm3: dict[str, float] | None = None


@dataclass
class PredictionSummary:
    """Outcome of a prediction run over cases."""

    results: list[CaseResult] = field(default_factory=list)
    seconds: float = 0.0

    def _with(self, status: str) -> list[CaseResult]:
        return [r for r in self.results if r.status == status]

    @property
    def done(self) -> list[CaseResult]:
        return self._with("done")

    @property
    def skipped(self) -> list[CaseResult]:
        return self._with("skipped")

    @property
    def failed(self) -> list[CaseResult]:
        return self._with("failed")

    @property
    def ok(self) -> bool:
        """True when no case failed."""
        return not self.failed

    def format(self) -> str:
        """Return a human-readable summary: counts, then every skipped and failed case."""
        lines = [
            f"{len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed "
            f"({len(self.results)} cases, {self.seconds:.1f} s)"
        ]
        lines += [f"  skipped {r.case_id}: {r.reason}" for r in self.skipped]
        lines += [f"  FAILED  {r.case_id}: {r.reason}" for r in self.failed]
        return "\n".join(lines)


class Predictor:
    """Runs the sliding window of one model over preprocessed cases with fixed settings."""

    def __init__(self, model: PredictionModel, settings: PredictionSettings) -> None:
        self.model = model
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.precision = resolve_precision(settings.precision, self.device)
        model.network.to(self.device).eval()
        self.volume_model = VolumeModel(model.network, model.spatial_dims, channels_last=settings.channels_last)
        self.forward_model: nn.Module = CompiledModel(self.volume_model) if settings.compile else self.volume_model
        self.step = (settings.depth_step, settings.step, settings.step)
        self.mirror_axes = ((1, 2) if model.spatial_dims == 2 else (0, 1, 2)) if settings.tta else ()
        self._window_bytes: dict[tuple[int, int, int], int] = {}

    def window_for(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """Return the window (d, h, w) for a cropped (D, H, W) volume of `shape`.

        The training patch size by default. A window set in the settings is shrunk to the
        volume where larger, but never below the patch size, so `window=(24, 999, 999)`
        means whole slices in one window.
        """
        patch = self.model.patch_size
        if self.settings.window is None:
            window = patch
        else:
            window = tuple(max(min(int(w), int(n)), p) for w, n, p in zip(self.settings.window, shape, patch))
        if self.model.spatial_dims == 2:
            window = (1, *window[1:])
        return window

    def batch_windows(self, shape: Sequence[int]) -> int:
        """Return how many windows to run at once for a cropped (D, H, W) volume of `shape`.

        Without compilation the batch is what the memory budget allows, at most the case's
        window count. A compiled network keeps one batch size for all cases, the largest power
        of two within the budget (the last batch is filled up), so it compiles once per window
        size rather than once per case.
        """
        window = self.window_for(shape)
        if self.settings.batch_windows is not None:
            batch = self.settings.batch_windows
        else:
            if window not in self._window_bytes:
                self._window_bytes[window] = estimate_window_bytes(
                    self.volume_model, len(self.model.channels), window, self.device, self.precision
                )
            voxels = int(np.prod([max(s, w) for s, w in zip(shape, window)]))
            fixed = voxels * 4 * (len(self.model.channels) + 4 + 1)
            budget = self.settings.max_memory_gb * 1024**3 - fixed
            batch = max(1, int(budget // self._window_bytes[window]))
            if self.settings.compile:
                batch = 1 << (batch.bit_length() - 1)
        if self.settings.compile:
            return max(1, batch)
        return max(1, min(batch, count_windows(shape, window, self.step)))

    def probabilities(self, image: np.ndarray) -> torch.Tensor:
        """Return float32 (4, D, H, W) class probabilities of a preprocessed (C, D, H, W) image."""
        return sliding_window_probabilities(
            self.forward_model,
            image,
            self.window_for(image.shape[1:]),
            self.step,
            gaussian=self.settings.gaussian,
            mirror_axes=self.mirror_axes,
            batch_windows=self.batch_windows(image.shape[1:]),
            precision=self.precision,
            device=self.device,
            fixed_batch=self.settings.compile,
        )

    def describe_device(self) -> dict[str, Any]:
        if self.device.type == "cuda":
            return {"device": str(self.device), "name": torch.cuda.get_device_name(self.device)}
        return {"device": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


def _input_files(case: Case) -> set[Path]:
    files = {Path(source.path).resolve() for source in case.images.values()}
    if case.label is not None:
        files.add(Path(case.label.path).resolve())
    return files


def _check_not_input(paths: dict[str, Path], inputs: set[Path]) -> None:
    for path in paths.values():
        if path.resolve() in inputs:
            raise ValueError(f"output {path} is an input file of a case; choose another output folder")


def _settings(settings: PredictionSettings | None, options: dict[str, Any]) -> PredictionSettings:
    settings = settings or PredictionSettings()
    unknown = set(options) - set(PredictionSettings.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown prediction option(s) {sorted(unknown)}; see PredictionSettings")
    return replace(settings, **options)


def _as_model(model: str | Path | PredictionModel, device: str) -> PredictionModel:
    if isinstance(model, PredictionModel):
        return model
    return load_prediction_model(model, device=resolve_device(device))


def _as_case(case: Case | str | Path) -> Case:
    if isinstance(case, Case):
        return case
    cases = discover_cases(case)
    if len(cases) != 1:
        raise ValueError(f"{case}: expected one case, found {len(cases)}; use predict_cases for a dataset folder")
    return cases[0]


def _run_case(
    predictor: Predictor,
    case: Case,
    output_dir: Path,
    schema: LabelSchema,
    inputs: set[Path],
) -> CaseResult:
    settings = predictor.settings
    model = predictor.model
    paths = output_paths(output_dir, case.case_id)
    _check_not_input(paths, inputs)
    if paths["label_map"].exists() and not settings.overwrite:
        return CaseResult(case.case_id, "skipped", paths["label_map"], reason="output exists (use --overwrite to replace it)")

    timing: dict[str, float] = {}
    start = time.perf_counter()
    model.check_case(case, settings.substitute)
    preprocessed = preprocess_case(case, model.channels, substitute=settings.substitute, with_label=False)
    timing["preprocess_s"] = time.perf_counter() - start
    warn_if_not_skull_stripped(case.case_id, preprocessed)

    mark = time.perf_counter()
    probabilities = predictor.probabilities(preprocessed.image)
    if settings.mask_outside_brain:
        # Tumor lies inside the brain: voxels that are zero in every input modality are background.
        outside = torch.from_numpy(~preprocessed.brain_mask).to(probabilities.device)
        probabilities[:, outside] = 0.0
        probabilities[0, outside] = 1.0
    classes_cropped = probabilities.argmax(dim=0).to(torch.uint8).cpu().numpy()
    timing["sliding_window_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    geometry = preprocessed.geometry
    window = predictor.window_for(geometry.cropped_shape)
    classes = geometry.restore(classes_cropped, fill=0)
    labels = from_model_classes(classes, schema)
    voxel_mm3 = voxel_volume_mm3(geometry.reference.affine)
    volumes = tumor_volumes_cm3(classes_cropped, voxel_mm3)
    timing["restore_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    save_label_map(labels, geometry.reference, paths["label_map"], overwrite=True)
    if settings.save_probabilities:
        save_probabilities(probabilities.cpu().numpy(), geometry, paths["probabilities"])
    timing["write_s"] = time.perf_counter() - mark
    timing["total_s"] = time.perf_counter() - start

    report = {
        "case_id": case.case_id,
        "inputs": {m: str(source) for m, source in case.images.items()},
        "label_map": str(paths["label_map"]),
        "probabilities": str(paths["probabilities"]) if settings.save_probabilities else None,
        "label_schema": schema.name,
        "label_values": {name: int(v) for name, v in zip(("background", "core", "edema", "enhancing"), schema.class_to_value)},
        "volumes_cm3": volumes,
        "voxel_volume_mm3": round(voxel_mm3, 6),
        "cropped_shape_dhw": list(geometry.cropped_shape),
        "windows": count_windows(geometry.cropped_shape, window, predictor.step) * (2 ** len(predictor.mirror_axes)),
        "checkpoint": model.summary(),
        "settings": _settings_summary(predictor, window),
        "device": predictor.describe_device(),
        "timing_s": {k.removesuffix("_s"): round(v, 3) for k, v in timing.items()},
        "gliomaseg_version": gliomaseg.__version__,
    }
    write_json_atomic(report, paths["report"])
    log.info("case %s: done in %.1f s, whole tumor %.2f cm3", case.case_id, timing["total_s"], volumes["whole_tumor"])
    return CaseResult(case.case_id, "done", paths["label_map"], paths["report"], seconds=timing["total_s"], volumes_cm3=volumes)


def _settings_summary(predictor: Predictor, window: tuple[int, int, int]) -> dict[str, Any]:
    summary = asdict(predictor.settings)
    summary["precision_used"] = predictor.precision
    summary["window"] = list(window)
    summary["step_dhw"] = [min(s, w) for s, w in zip(predictor.step, window)]
    summary["mirror_axes"] = list(predictor.mirror_axes)
    return summary


def predict_case(
    model: str | Path | PredictionModel,
    case: Case | str | Path,
    output_dir: str | Path,
    settings: PredictionSettings | None = None,
    **options: Any,
) -> CaseResult:
    """Segment one case and write its label map and report (see the module docstring).

    Args:
        model: a checkpoint path or a loaded PredictionModel.
        case: a discovered Case, or a path to a case folder or manifest.
        output_dir: folder for the outputs; created where missing.
        settings: prediction settings; keyword `options` override single fields
            (for example ``tta=True``).

    Returns:
        The CaseResult, status "done" or "skipped" (an output exists and overwrite is off).

    Raises:
        ModelInputError: the case lacks a modality the model takes.
        CaseError, ImageError: unreadable or inconsistent input files.
        ValueError: an output path is an input file, or an invalid setting.
    """
    settings = _settings(settings, options)
    loaded = _as_model(model, settings.device)
    found = _as_case(case)
    schema = get_schema(settings.label_schema or found.schema)
    return _run_case(Predictor(loaded, settings), found, Path(output_dir), schema, _input_files(found))


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int]:
    """Return (index, count) from "INDEX/COUNT", a tuple, or torchrun's RANK/WORLD_SIZE when None.

    Raises:
        ValueError: not two integers with 0 <= index < count.
    """
    if shard is None:
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is None or world is None:
            return 0, 1
        shard = (int(rank), int(world))
    if isinstance(shard, str):
        try:
            index_text, count_text = shard.split("/")
            shard = (int(index_text), int(count_text))
        except ValueError as error:
            raise ValueError(f"invalid shard {shard!r}; use INDEX/COUNT, for example 0/2") from error
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"invalid shard {index}/{count}; INDEX must lie in 0..COUNT-1")
    return index, count


def _shard_device(device: str, shard_count: int) -> str:
    """Give each torchrun process its own GPU (LOCAL_RANK) when several share a machine."""
    local_rank = os.environ.get("LOCAL_RANK")
    if shard_count > 1 and local_rank is not None and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(local_rank) % torch.cuda.device_count()}"
    return device


def predict_cases(
    model: str | Path | PredictionModel,
    input_path: str | Path,
    output_dir: str | Path,
    settings: PredictionSettings | None = None,
    *,
    shard: str | tuple[int, int] | None = None,
    progress: bool = True,
    **options: Any,
) -> PredictionSummary:
    """Segment every case of a case folder, dataset folder, MSD task folder or manifest.

    Cases are sorted by id; shard (index, count) takes cases index, index + count, ... so
    processes with shards 0/n .. n-1/n together cover every case once. Without `shard`,
    torchrun's RANK and WORLD_SIZE are used where set, and each process takes the GPU of
    its LOCAL_RANK. A case whose label map exists is skipped unless overwrite is set. A case
    that fails is logged and listed in the summary, and the remaining cases still run.

    Returns:
        The PredictionSummary of this process's cases.

    Raises:
        CaseError: `input_path` contains no case.
        ValueError: invalid settings or label schema, or an output path would be an input file.
        FileNotFoundError, CheckpointError, ModelInputError: the checkpoint cannot be used.
    """
    settings = _settings(settings, options)
    from gliomaseg.inference.cascade import is_cascade_checkpoint, predict_cases_with_cascade

    if isinstance(model, (str, Path)) and is_cascade_checkpoint(model):
        return predict_cases_with_cascade(model, input_path, output_dir, settings, shard=shard, progress=progress)
    index, count = parse_shard(shard)
    settings = replace(settings, device=_shard_device(settings.device, count))
    explicit_schema = get_schema(settings.label_schema) if settings.label_schema else None

    cases, inputs = select_cohort(input_path, output_dir, (index, count))
    predictor = Predictor(_as_model(model, settings.device), settings)
    output_dir = Path(output_dir)
    summary = run_cohort(
        cases,
        lambda case: _run_case(predictor, case, output_dir, explicit_schema or case.schema, inputs),
        progress=progress,
    )
    log.info("prediction finished: %s", summary.format().splitlines()[0])
    return summary


def warn_if_not_skull_stripped(case_id: str, preprocessed) -> None:
    """Log a warning when the non-zero region of the input is too large for a stripped brain."""
    volume_cm3 = float(preprocessed.brain_mask.sum()) * voxel_volume_mm3(preprocessed.geometry.reference.affine) / 1000
    if volume_cm3 > MAX_BRAIN_VOLUME_CM3:
        log.warning(
            "case %s: the non-zero region of the input measures %.0f cm3, more than a skull-stripped brain "
            "(at most about %.0f cm3); the networks were trained on skull-stripped scans, so apply a brain mask "
            "first (gliomaseg convert --brain-mask)",
            case_id,
            volume_cm3,
            MAX_BRAIN_VOLUME_CM3,
        )


def select_cohort(
    input_path: str | Path, output_dir: str | Path, shard: tuple[int, int]
) -> tuple[list[Case], set[Path]]:
    """Discover the cases under `input_path` and pick this shard's share of them.

    Returns:
        (the shard's cases, the resolved paths of every input file of every case).

    Raises:
        CaseError: `input_path` contains no case.
        ValueError: the output is an existing file, or an output path of some case would be
            an input file.
    """
    index, count = shard
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise ValueError(f"output {output_dir} is a file; give a folder for the label maps and reports")
    all_cases = discover_cases(input_path)
    inputs = set().union(*(_input_files(case) for case in all_cases))
    output_dir = Path(output_dir)
    for case in all_cases:
        _check_not_input(output_paths(output_dir, case.case_id), inputs)
    cases = all_cases[index::count]
    log.info("predicting %d of %d cases (shard %d/%d) into %s", len(cases), len(all_cases), index, count, output_dir)
    return cases, inputs


def run_cohort(cases: Sequence[Case], predict_one, progress: bool = True) -> PredictionSummary:
    """Call `predict_one(case) -> CaseResult` for each case with a progress bar.

    A case that raises is logged and recorded as failed, and the remaining cases still run.
    """
    summary = PredictionSummary()
    start = time.perf_counter()
    bar = tqdm(cases, desc="cases", unit="case", disable=not progress)
    for case in bar:
        bar.set_postfix_str(case.case_id)
        case_start = time.perf_counter()
        try:
            result = predict_one(case)
        except Exception as error:  # a broken case must not stop the cohort
            log.error("case %s failed: %s", case.case_id, error)
            result = CaseResult(case.case_id, "failed", reason=f"{type(error).__name__}: {error}")
            result.seconds = time.perf_counter() - case_start
        summary.results.append(result)
    summary.seconds = time.perf_counter() - start
    return summary
