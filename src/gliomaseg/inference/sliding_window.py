"""Sliding-window prediction: tile a (C, D, H, W) volume into windows and stitch class probabilities.

Windows start at explicit positions along each axis: 0, step, 2 * step, ... and one last
window aligned to the end of the axis, so every voxel is covered whatever the volume size.
An axis shorter than the window is zero-padded (centred) up to the window and cropped back.
The softmax probabilities of all windows that cover a voxel are averaged, optionally weighted
by a Gaussian that favours window centres. Windows run in batches, and mirroring test-time
augmentation (TTA) averages the probabilities of every combination of flips.

The model is any callable that maps a (N, C, d, h, w) float tensor to (N, K, d, h, w) class
scores (logits). `VolumeModel` adapts a 2D network that takes (N, C, h, w) slices.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
CPUINFO_PATH = Path("/proc/cpuinfo")
ModelFn = Callable[[torch.Tensor], torch.Tensor]


class VolumeModel(nn.Module):
    """A network seen as a (N, C, d, h, w) -> (N, K, d, h, w) model.

    A 2D network (`spatial_dims=2`, taking (N, C, h, w)) gets the d slices of every window
    as extra batch entries, so windows of any depth pass through it slice by slice. A 3D
    network is called unchanged. `channels_last` converts the network and its inputs to the
    channels-last memory format, which is faster for convolutions on many CPUs.
    """

    def __init__(self, network: nn.Module, spatial_dims: int, channels_last: bool = False) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.network = network
        self.spatial_dims = spatial_dims
        self.channels_last = channels_last
        if channels_last:
            fmt = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
            self.network.to(memory_format=fmt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spatial_dims == 3:
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            return self.network(x)

        n, c, d, h, w = x.shape
        slices = x.permute(0, 2, 1, 3, 4).reshape(n * d, c, h, w)
        if self.channels_last:
            slices = slices.contiguous(memory_format=torch.channels_last)
        out = self.network(slices)
        k = out.shape[1]
        return out.reshape(n, d, k, h, w).permute(0, 2, 1, 3, 4)


def window_starts(size: int, window: int, step: int) -> list[int]:
    """Return the start indices of windows along one axis of length `size`.

    Starts are 0, step, 2 * step, ... while the window fits, plus a last window that ends at
    `size`, so every index is covered. An axis no longer than the window gets the single
    start 0 (the caller pads it up to the window).

    Raises:
        ValueError: `window` or `step` is not positive.
    """
    if window < 1 or step < 1:
        raise ValueError(f"window ({window}) and step ({step}) must be positive")
    if size <= window:
        return [0]
    starts = list(range(0, size - window + 1, step))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def gaussian_importance(
    window: Sequence[int], sigma_scale: float = 0.125, device: torch.device | str | None = None
) -> torch.Tensor:
    """Return a float32 (d, h, w) Gaussian weight map with maximum 1, centred in the window.

    The standard deviation along each axis is `sigma_scale` times the window size (the
    nnU-Net choice, 1/8). Axes of size 1 get weight 1. Weights are clamped below at 1e-4 so
    that voxels seen only by window borders still get a well-defined average.
    """
    weights = torch.ones((), dtype=torch.float64)
    for size in window:
        coordinates = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        if size > 1:
            sigma = sigma_scale * size
            profile = torch.exp(-0.5 * (coordinates / sigma) ** 2)
        else:
            profile = torch.ones(1, dtype=torch.float64)
        weights = weights.unsqueeze(-1) * profile
    weights = weights / weights.max()
    return weights.clamp_min(1e-4).to(dtype=torch.float32, device=device)


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Return every subset of the spatial `axes` (0 = D, 1 = H, 2 = W), the empty one first."""
    axes = tuple(sorted(set(axes)))
    for axis in axes:
        if axis not in (0, 1, 2):
            raise ValueError(f"mirror axis {axis} is not a spatial axis; use 0 (D), 1 (H) or 2 (W)")
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Return the torch device for "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".

    Raises:
        ValueError: CUDA is requested but not available.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available; use --device cpu or auto")
    return device


def cpu_has_native_bf16() -> bool:
    """Return True when the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX-BF16 flags).

    Reads /proc/cpuinfo, so it is False on systems without it; there bf16 autocast still
    works but may run slower than fp32.
    """
    try:
        flags = CPUINFO_PATH.read_text(errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """Return the precision ("fp32", "bf16" or "fp16") that `precision` means on `device`.

    "auto" is bf16 on GPUs that support it (fp16 on older ones) and on CPUs with native
    bf16 (`cpu_has_native_bf16`), else fp32. On trained AlbuNet checkpoints bf16 changed
    Dice by less than 0.001 and ran 2.2 to 2.5 times faster than fp32 on a 2-core CPU with
    AVX512-BF16 (benchmarks/records/inference_speed*.md).

    Raises:
        ValueError: unknown precision, or fp16 on a CPU.
    """
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use auto or one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 autocast is not supported on the CPU; use --precision bf16 or fp32")
    return precision


class CompiledModel(nn.Module):
    """A model compiled with torch.compile (inductor, weights frozen), falling back to eager.

    The first call compiles, which took 19 to 27 s for AlbuNet on a 2-core CPU. Later calls
    with the same input shape reuse the compiled code, and a new shape compiles again. Where
    the first call fails to compile (for example without a C++ compiler on a CPU machine), a
    warning names the error and the model runs uncompiled from then on.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.compiled: Callable[[torch.Tensor], torch.Tensor] | None = torch.compile(
            model, dynamic=False, options={"freezing": True}
        )
        self._compiled_once = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            return self.model(x)
        if self._compiled_once:
            return self.compiled(x)
        try:
            out = self.compiled(x)
        except Exception as error:  # noqa: BLE001 - any compiler failure falls back to eager
            log.warning("torch.compile failed (%s: %s); predicting without compilation", type(error).__name__, error)
            self.compiled = None
            return self.model(x)
        self._compiled_once = True
        return out


def autocast_context(precision: str, device: torch.device):
    """Return the autocast context for `precision` ("auto", "fp32", "bf16" or "fp16") on `device`.

    Raises:
        ValueError: unknown precision, or fp16 on a CPU (use bf16 there).
    """
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _pad_to_window(image: torch.Tensor, window: Sequence[int], value: float) -> tuple[torch.Tensor, list[slice]]:
    """Pad the spatial axes of (C, D, H, W) up to `window` (centred); return it and the crop back."""
    pads: list[tuple[int, int]] = []
    crop: list[slice] = []
    for size, win in zip(image.shape[1:], window):
        missing = max(win - size, 0)
        before = missing // 2
        pads.append((before, missing - before))
        crop.append(slice(before, before + size))
    if not any(sum(p) for p in pads):
        return image, crop
    # torch.nn.functional.pad lists the last axis first.
    flat = [amount for pair in reversed(pads) for amount in pair]
    return torch.nn.functional.pad(image, flat, value=value), crop


def sliding_window_probabilities(
    model: ModelFn,
    image: np.ndarray | torch.Tensor,
    window: Sequence[int],
    step: Sequence[int],
    *,
    gaussian: bool = False,
    sigma_scale: float = 0.125,
    mirror_axes: Sequence[int] = (),
    batch_windows: int = 1,
    precision: str = "fp32",
    device: str | torch.device | None = "cpu",
    apply_softmax: bool = True,
    pad_value: float = 0.0,
    progress: bool = False,
    fixed_batch: bool = False,
) -> torch.Tensor:
    """Predict class probabilities of a whole volume with overlapping windows.

    Args:
        model: callable (N, C, d, h, w) -> (N, K, d, h, w) class scores; wrap 2D networks in
            VolumeModel. It is called under torch.no_grad.
        image: float (C, D, H, W) volume.
        window: window size (d, h, w) in voxels, normally the training patch size.
        step: distance between window starts (d, h, w) in voxels. A step larger than the
            window is reduced to the window, so no voxel is skipped.
        gaussian: weight each window's probabilities by `gaussian_importance` before averaging;
            otherwise every covering window counts equally.
        sigma_scale: Gaussian standard deviation as a fraction of the window size.
        mirror_axes: spatial axes (0 = D, 1 = H, 2 = W) for mirroring TTA. Probabilities are
            averaged over all 2**len(mirror_axes) flip combinations, so cost grows accordingly.
        batch_windows: windows per model call (the memory budget).
        precision: "fp32", "bf16" (autocast, CPU or GPU) or "fp16" (GPU only).
        device: where the model runs; "auto" picks CUDA when available.
        apply_softmax: turn the model's scores into probabilities with a softmax over K; set
            False for a model that already returns probabilities.
        pad_value: value for padding axes shorter than the window (0 is the background value
            of z-scored, brain-masked input).
        progress: show a progress bar over batches.
        fixed_batch: call the model with `batch_windows` windows every time and fill the last
            batch with copies, so a compiled model gets one input shape and compiles once.

    Returns:
        float32 (K, D, H, W) tensor on `device`: the averaged probabilities (sum to 1 over K
        where `apply_softmax` is True).

    Raises:
        ValueError: `image` is not 4D, or `window`/`step` do not have three positive entries.
    """
    device = resolve_device(device)
    if image.ndim != 4:
        raise ValueError(f"expected a (C, D, H, W) image, got shape {tuple(image.shape)}")
    window = tuple(int(w) for w in window)
    step = tuple(int(s) for s in step)
    if len(window) != 3 or len(step) != 3 or min(window) < 1 or min(step) < 1:
        raise ValueError(f"window {window} and step {step} must each have three positive entries (d, h, w)")
    if batch_windows < 1:
        raise ValueError(f"batch_windows must be at least 1, got {batch_windows}")
    step = tuple(min(s, w) for s, w in zip(step, window))

    source = torch.as_tensor(image, dtype=torch.float32).to(device)
    source, crop = _pad_to_window(source, window, pad_value)
    spatial = tuple(source.shape[1:])
    starts = list(itertools.product(*(window_starts(n, w, s) for n, w, s in zip(spatial, window, step))))
    flips = mirror_combinations(mirror_axes)
    weight = gaussian_importance(window, sigma_scale, device) if gaussian else None

    probabilities: torch.Tensor | None = None
    weight_sum = torch.zeros(spatial, dtype=torch.float32, device=device)
    batch = torch.empty((min(batch_windows, len(starts)), source.shape[0], *window), dtype=torch.float32, device=device)
    log.debug("sliding window: %d windows of %s over %s, %d flips", len(starts), window, spatial, len(flips))

    batches = range(0, len(starts), batch_windows)
    # no_grad, not inference_mode, so the returned tensor can be changed in place by callers.
    with torch.no_grad():
        for first in tqdm(batches, desc="windows", unit="batch", disable=not progress, leave=False):
            chunk = starts[first : first + batch_windows]
            regions = [tuple(slice(s, s + w) for s, w in zip(start, window)) for start in chunk]
            inputs = batch if fixed_batch else batch[: len(chunk)]
            for index, region in enumerate(regions):
                inputs[index] = source[(slice(None), *region)]
            if fixed_batch and len(chunk) < batch.shape[0]:
                inputs[len(chunk) :] = inputs[0]

            scores = _mirrored_probabilities(model, inputs, flips, precision, device, apply_softmax)
            if probabilities is None:
                probabilities = torch.zeros((scores.shape[1], *spatial), dtype=torch.float32, device=device)
            if weight is not None:
                scores = scores * weight
            for index, region in enumerate(regions):
                probabilities[(slice(None), *region)] += scores[index]
                weight_sum[region] += weight if weight is not None else 1.0

    probabilities /= weight_sum
    return probabilities[(slice(None), *crop)]


def _mirrored_probabilities(
    model: ModelFn,
    inputs: torch.Tensor,
    flips: list[tuple[int, ...]],
    precision: str,
    device: torch.device,
    apply_softmax: bool,
) -> torch.Tensor:
    """Return float32 (N, K, d, h, w) probabilities averaged over the flip combinations."""
    total: torch.Tensor | None = None
    for flip in flips:
        dims = [axis + 2 for axis in flip]
        x = torch.flip(inputs, dims) if dims else inputs
        with autocast_context(precision, device):
            out = model(x)
        if out.ndim != 5 or out.shape[0] != inputs.shape[0] or out.shape[2:] != inputs.shape[2:]:
            raise ValueError(
                f"the model returned shape {tuple(out.shape)} for input {tuple(inputs.shape)}; "
                "expected (N, K, d, h, w) with the input's batch size and spatial size"
            )
        out = out.float()
        if apply_softmax:
            out = torch.softmax(out, dim=1)
        if dims:
            out = torch.flip(out, dims)
        total = out if total is None else total.add_(out)
    if len(flips) > 1:
        total /= len(flips)
    return total


def count_windows(shape: Sequence[int], window: Sequence[int], step: Sequence[int]) -> int:
    """Return the number of windows `sliding_window_probabilities` runs over a (D, H, W) volume."""
    total = 1
    for size, win, stride in zip(shape, window, step):
        total *= len(window_starts(max(int(size), int(win)), int(win), min(int(stride), int(win))))
    return total


def estimate_window_bytes(
    model: ModelFn, channels: int, window: Sequence[int], device: str | torch.device = "cpu", precision: str = "fp32"
) -> int:
    """Estimate the memory one window needs in a forward pass, in bytes.

    Runs the model once on a depth-1 slab of the window and adds up the outputs of every leaf
    module (hooks on `model` where it is an nn.Module), then scales by the window depth. The
    sum counts every activation as alive at once, so it overestimates networks that free
    activations as they go. Callers use it to choose how many windows to batch.
    """
    device = resolve_device(device)
    window = tuple(int(w) for w in window)
    total = 0

    def add(_module, _inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    handles = []
    if isinstance(model, nn.Module):
        handles = [m.register_forward_hook(add) for m in model.modules() if not list(m.children())]
    try:
        probe = torch.zeros((1, channels, 1, *window[1:]), device=device)
        with torch.inference_mode(), autocast_context(precision, device):
            out = model(probe)
        total += 2 * out.numel() * 4
    finally:
        for handle in handles:
            handle.remove()
    return int(total * window[0]) + math.prod(window) * channels * 4
