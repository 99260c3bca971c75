"""Sliding-window tiling and stitching, checked with models whose exact output is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gliomaseg.inference import sliding_window
from gliomaseg.inference.sliding_window import (
    CompiledModel,
    VolumeModel,
    count_windows,
    estimate_window_bytes,
    gaussian_importance,
    mirror_combinations,
    resolve_precision,
    sliding_window_probabilities,
    window_starts,
)

WINDOW = (4, 8, 8)
STEP = (2, 3, 3)


def random_probabilities(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Return float32 (4, *shape) probabilities that differ at every voxel and sum to 1 over classes."""
    rng = np.random.default_rng(seed)
    raw = rng.uniform(0.05, 1.0, (4, *shape)).astype(np.float32)
    return raw / raw.sum(axis=0, keepdims=True)


class LogModel(nn.Module):
    """Return log(input), so softmax of the output is the input when the input contains probabilities."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class CountingModel(nn.Module):
    """LogModel that counts its input samples and keeps the inputs of its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.samples = 0
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.samples += x.shape[0]
        self.inputs.append(x.clone())
        return torch.log(x)


class SliceLogModel(nn.Module):
    """A 2D (N, C, H, W) model returning log(input); rejects any other input rank."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4, f"2D model called with shape {tuple(x.shape)}"
        return torch.log(x)


@pytest.mark.parametrize(
    "shape",
    [(3, 5, 6), WINDOW, (9, 17, 13), (4, 8, 21), (1, 30, 2)],
    ids=["smaller", "equal", "not_multiple", "one_axis_long", "mixed"],
)
@pytest.mark.parametrize("gaussian", [False, True], ids=["uniform", "gaussian"])
def test_sliding_window_identity_reproduces_input(shape, gaussian):
    image = random_probabilities(shape)

    result = sliding_window_probabilities(LogModel(), image, WINDOW, STEP, gaussian=gaussian, batch_windows=3)

    assert tuple(result.shape) == (4, *shape)
    np.testing.assert_allclose(result.numpy(), image, rtol=0, atol=2e-6)


def test_sliding_window_identity_without_softmax():
    image = random_probabilities((7, 11, 10), seed=3)

    result = sliding_window_probabilities(nn.Identity(), image, WINDOW, STEP, apply_softmax=False, batch_windows=2)

    np.testing.assert_allclose(result.numpy(), image, rtol=0, atol=2e-6)


def test_sliding_window_averages_overlapping_windows():
    # A model whose output depends on the position inside the window: ramp along W.
    class RampModel(nn.Module):
        def forward(self, x):
            ramp = torch.arange(x.shape[-1], dtype=torch.float32).expand_as(x[:, :1])
            return ramp

    image = np.zeros((1, 1, 1, 6), dtype=np.float32)

    result = sliding_window_probabilities(RampModel(), image, (1, 1, 4), (1, 1, 2), apply_softmax=False)

    # Windows start at 0 and 2: voxel 2 gets ramp values 2 and 0, voxel 3 gets 3 and 1.
    expected = np.array([0, 1, 1, 2, 2, 3], dtype=np.float32)
    np.testing.assert_allclose(result[0, 0, 0].numpy(), expected)


def test_sliding_window_gaussian_weights_overlap():
    class RampModel(nn.Module):
        def forward(self, x):
            return torch.arange(x.shape[-1], dtype=torch.float32).expand_as(x[:, :1])

    image = np.zeros((1, 1, 1, 6), dtype=np.float32)
    weights = gaussian_importance((1, 1, 4))[0, 0].numpy()

    result = sliding_window_probabilities(RampModel(), image, (1, 1, 4), (1, 1, 2), gaussian=True, apply_softmax=False)

    # Voxel 2 is position 2 of the first window and position 0 of the second.
    expected = (2 * weights[2] + 0 * weights[0]) / (weights[2] + weights[0])
    assert result[0, 0, 0, 2].item() == pytest.approx(expected, rel=1e-6)


def test_sliding_window_2d_model_gets_slices():
    image = random_probabilities((5, 12, 9), seed=1)
    model = VolumeModel(SliceLogModel(), spatial_dims=2)

    result = sliding_window_probabilities(model, image, (1, 8, 8), (24, 4, 4), batch_windows=7)

    np.testing.assert_allclose(result.numpy(), image, rtol=0, atol=2e-6)


def test_sliding_window_channels_last_model():
    image = random_probabilities((5, 12, 9), seed=1)
    model = VolumeModel(LogModel(), spatial_dims=3, channels_last=True)

    result = sliding_window_probabilities(model, image, WINDOW, STEP)

    np.testing.assert_allclose(result.numpy(), image, rtol=0, atol=2e-6)


def test_sliding_window_batches_every_window_once():
    shape = (9, 17, 13)
    model = CountingModel()

    sliding_window_probabilities(model, random_probabilities(shape), WINDOW, STEP, batch_windows=5)

    assert model.samples == count_windows(shape, WINDOW, STEP)
    assert max(x.shape[0] for x in model.inputs) == 5


def test_sliding_window_tta_runs_every_flip():
    shape = (5, 9, 10)
    model = CountingModel()
    image = random_probabilities(shape, seed=2)

    result = sliding_window_probabilities(model, image, WINDOW, STEP, mirror_axes=(0, 1, 2), batch_windows=64)

    assert model.samples == 8 * count_windows(shape, WINDOW, STEP)
    np.testing.assert_allclose(result.numpy(), image, rtol=0, atol=2e-6)


def test_sliding_window_tta_flips_inputs():
    model = CountingModel()
    image = random_probabilities((4, 8, 8), seed=5)

    sliding_window_probabilities(model, image, WINDOW, STEP, mirror_axes=(2,))

    assert torch.equal(model.inputs[0][0], torch.from_numpy(image))
    assert torch.equal(model.inputs[1][0], torch.from_numpy(image).flip(-1))


def test_sliding_window_tta_averages_non_equivariant_model():
    # Scores grow along W inside the window; mirroring along W makes the average symmetric.
    class RampModel(nn.Module):
        def forward(self, x):
            return torch.arange(x.shape[-1], dtype=torch.float32).expand_as(x[:, :1])

    image = np.zeros((1, 1, 1, 4), dtype=np.float32)

    result = sliding_window_probabilities(RampModel(), image, (1, 1, 4), (1, 1, 4), mirror_axes=(2,), apply_softmax=False)

    np.testing.assert_allclose(result[0, 0, 0].numpy(), np.full(4, 1.5, dtype=np.float32))


def test_sliding_window_bf16_close_to_fp32():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 4, 1)).eval()
    image = np.random.default_rng(0).standard_normal((2, 6, 12, 12)).astype(np.float32)

    fp32 = sliding_window_probabilities(network, image, WINDOW, STEP)
    bf16 = sliding_window_probabilities(network, image, WINDOW, STEP, precision="bf16")

    assert bf16.dtype == torch.float32
    assert torch.allclose(bf16, fp32, atol=0.03)


def test_sliding_window_matches_monai_uniform_mode():
    monai_inferers = pytest.importorskip("monai.inferers")
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv3d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv3d(6, 4, 1)).eval()
    image = np.random.default_rng(0).standard_normal((2, 10, 21, 19)).astype(np.float32)
    window, step = (4, 8, 8), (4, 2, 2)

    ours = sliding_window_probabilities(network, image, window, step, batch_windows=4)
    with torch.inference_mode():
        theirs = monai_inferers.sliding_window_inference(
            torch.from_numpy(image)[None],
            roi_size=window,
            sw_batch_size=4,
            predictor=lambda x: torch.softmax(network(x), dim=1),
            overlap=(0.0, 0.75, 0.75),
            mode="constant",
        )[0]

    assert torch.allclose(ours, theirs, atol=1e-5)


def test_window_starts_cover_end():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(4, 4, 3) == [0]
    assert window_starts(2, 4, 3) == [0]


def test_window_starts_paper_steps_for_brats_crop():
    starts = window_starts(170, 128, 32)

    assert starts == [0, 32, 42]


def test_window_starts_rejects_zero_step():
    with pytest.raises(ValueError, match="step"):
        window_starts(10, 4, 0)


def test_sliding_window_step_larger_than_window_is_reduced():
    image = random_probabilities((9, 8, 8), seed=4)

    result = sliding_window_probabilities(LogModel(), image, (2, 8, 8), (24, 32, 32))

    np.testing.assert_allclose(result.numpy(), image, rtol=0, atol=2e-6)


def test_sliding_window_rejects_3d_image():
    with pytest.raises(ValueError, match="C, D, H, W"):
        sliding_window_probabilities(LogModel(), np.zeros((4, 4, 4), np.float32), WINDOW, STEP)


def test_sliding_window_rejects_model_that_changes_size():
    class Shrink(nn.Module):
        def forward(self, x):
            return x[..., :-1]

    with pytest.raises(ValueError, match="returned shape"):
        sliding_window_probabilities(Shrink(), random_probabilities(WINDOW), WINDOW, STEP)


def test_sliding_window_rejects_fp16_on_cpu():
    with pytest.raises(ValueError, match="bf16"):
        sliding_window_probabilities(LogModel(), random_probabilities(WINDOW), WINDOW, STEP, precision="fp16")


def test_gaussian_importance_peak_in_centre():
    weights = gaussian_importance((5, 9, 9))

    assert weights.max().item() == pytest.approx(1.0)
    assert weights[2, 4, 4].item() == pytest.approx(1.0)
    assert weights.min().item() > 0


def test_mirror_combinations_all_subsets():
    assert mirror_combinations((1, 2)) == [(), (1,), (2,), (1, 2)]


def test_mirror_combinations_rejects_channel_axis():
    with pytest.raises(ValueError, match="spatial axis"):
        mirror_combinations((3,))


def test_estimate_window_bytes_scales_with_depth():
    network = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 4, 1))

    one = estimate_window_bytes(network, 3, (1, 16, 16))
    four = estimate_window_bytes(network, 3, (4, 16, 16))

    assert one > 16 * 16 * 8 * 4
    assert four > 3 * one


def test_sliding_window_fixed_batch_calls_one_shape():
    shape = (9, 17, 13)
    image = random_probabilities(shape, seed=4)
    model = CountingModel()

    result = sliding_window_probabilities(model, image, WINDOW, STEP, batch_windows=5, fixed_batch=True)

    assert count_windows(shape, WINDOW, STEP) % 5 != 0, "the test needs a partial last batch"
    assert {tuple(x.shape) for x in model.inputs} == {(5, 4, *WINDOW)}
    np.testing.assert_allclose(result.numpy(), image, rtol=0, atol=2e-6)


@pytest.mark.parametrize(
    ("native", "expected"),
    [(True, "bf16"), (False, "fp32")],
)
def test_resolve_precision_auto_on_cpu(monkeypatch, native, expected):
    monkeypatch.setattr(sliding_window, "cpu_has_native_bf16", lambda: native)

    assert resolve_precision("auto", torch.device("cpu")) == expected


@pytest.mark.parametrize(("bf16_supported", "expected"), [(True, "bf16"), (False, "fp16")])
def test_resolve_precision_auto_on_gpu(monkeypatch, bf16_supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16_supported)

    assert resolve_precision("auto", torch.device("cuda")) == expected


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resolve_precision_explicit_kept(precision):
    assert resolve_precision(precision, torch.device("cpu")) == precision


def test_resolve_precision_rejects_unknown():
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        resolve_precision("int8", torch.device("cpu"))


def test_resolve_precision_rejects_fp16_on_cpu():
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", torch.device("cpu"))


def test_cpu_has_native_bf16_reads_cpu_flags(monkeypatch, tmp_path):
    flags = {"avx512_bf16": True, "amx_bf16": True, "avx512f avx2": False}
    found = {}
    for text in flags:
        cpuinfo = tmp_path / text.replace(" ", "_")
        cpuinfo.write_text(f"processor : 0\nflags : fpu sse2 {text}\n")
        monkeypatch.setattr(sliding_window, "CPUINFO_PATH", cpuinfo)
        found[text] = sliding_window.cpu_has_native_bf16()

    assert found == flags


def test_cpu_has_native_bf16_false_without_cpuinfo(monkeypatch, tmp_path):
    monkeypatch.setattr(sliding_window, "CPUINFO_PATH", tmp_path / "missing")

    assert sliding_window.cpu_has_native_bf16() is False


class SmallConvNet(nn.Module):
    """Two 3D convolutions with a ReLU: enough structure for the compiler to fuse."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@pytest.mark.slow
def test_compiled_model_matches_eager():
    image = np.random.default_rng(5).normal(size=(2, 6, 12, 10)).astype(np.float32)
    network = SmallConvNet().eval()

    eager = sliding_window_probabilities(network, image, (4, 8, 8), (2, 4, 4), batch_windows=3)
    compiled_model = CompiledModel(network)
    compiled = sliding_window_probabilities(compiled_model, image, (4, 8, 8), (2, 4, 4), batch_windows=3, fixed_batch=True)

    assert compiled_model.compiled is not None, "compilation fell back to eager"
    np.testing.assert_allclose(compiled.numpy(), eager.numpy(), rtol=0, atol=1e-5)


def test_compiled_model_falls_back_to_eager(monkeypatch, caplog):
    def failing_compile(model, **options):
        def run(x):
            raise RuntimeError("no C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    image = random_probabilities((5, 9, 10), seed=6)
    model = CompiledModel(LogModel())

    with caplog.at_level("WARNING", logger="gliomaseg.inference.sliding_window"):
        result = sliding_window_probabilities(model, image, WINDOW, STEP)

    np.testing.assert_allclose(result.numpy(), image, rtol=0, atol=2e-6)
    assert model.compiled is None
    assert "no C++ compiler found" in caplog.text
