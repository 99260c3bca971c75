"""UCL-TIG networks: output shapes per stage and view, parameter counts, view permutations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gliomaseg.models import build_model, count_parameters, list_models
from gliomaseg.models.ucltig import (
    DEPTH_MARGIN,
    STAGES,
    VIEWS,
    MSNet,
    ResidualBlock,
    UclTigNet,
    build_ucltig_network,
    from_view,
    output_shape,
    slice_axis,
    to_view,
)


@pytest.fixture(autouse=True)
def single_torch_thread():
    """Run torch on one thread: tiny tensors on a shared, loaded CPU are many times faster so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("view", VIEWS)
def test_network_output_shape_per_stage_and_view(stage: str, view: str) -> None:
    torch.manual_seed(0)
    net = build_ucltig_network(stage, view, width=4).eval()
    # Every axis is long enough to be a slice axis and divisible by 4 (WNet/TNet) where in-plane.
    shape = (12, 16, 20)
    x = torch.randn(2, 4, *shape)

    with torch.no_grad():
        y = net(x)

    expected = list(shape)
    expected[slice_axis(view)] -= 2 * DEPTH_MARGIN
    assert tuple(y.shape) == (2, 2, *expected)
    assert output_shape(shape, view) == tuple(expected)


def test_msnet_reference_patch_gives_eleven_slices() -> None:
    net = MSNet(width=4).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 4, 19, 24, 24))
    assert tuple(y.shape) == (1, 2, 11, 24, 24)


@pytest.mark.parametrize(("stage", "expected"), [("wnet", 214_470), ("tnet", 214_470), ("enet", 204_396)])
def test_parameter_count_matches_released_checkpoints(stage: str, expected: int) -> None:
    # Trainable parameters of the authors' BraTS 2017 checkpoints (taigw/brats17, model17).
    assert count_parameters(build_ucltig_network(stage)) == expected


def test_enet_accepts_in_plane_sizes_divisible_by_two() -> None:
    net = build_ucltig_network("enet", width=4).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 4, 9, 14, 18))
    assert tuple(y.shape) == (1, 2, 1, 14, 18)


def test_wnet_rejects_in_plane_size_not_divisible_by_four() -> None:
    net = build_ucltig_network("wnet", width=4)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 4, 19, 14, 16))


def test_network_rejects_too_few_slices() -> None:
    net = build_ucltig_network("tnet", width=4)
    with pytest.raises(ValueError, match="at least 9 slices"):
        net(torch.randn(1, 4, 8, 16, 16))


def test_network_rejects_unknown_stage_and_view() -> None:
    with pytest.raises(ValueError, match="unknown UCL-TIG stage"):
        UclTigNet("xnet")
    with pytest.raises(ValueError, match="unknown view"):
        UclTigNet("wnet", "oblique")


@pytest.mark.parametrize("view", VIEWS)
def test_view_permutation_round_trip(view: str) -> None:
    array = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    tensor = torch.from_numpy(array)

    assert np.array_equal(from_view(to_view(array, view), view), array)
    assert torch.equal(from_view(to_view(tensor, view), view), tensor)


def test_view_puts_slice_axis_first() -> None:
    array = np.zeros((3, 4, 5))
    assert to_view(array, "axial").shape == (3, 4, 5)
    assert to_view(array, "sagittal").shape == (5, 3, 4)
    assert to_view(array, "coronal").shape == (4, 3, 5)


def test_sagittal_network_is_axial_network_on_permuted_input() -> None:
    torch.manual_seed(0)
    axial = build_ucltig_network("tnet", "axial", width=4).eval()
    sagittal = build_ucltig_network("tnet", "sagittal", width=4).eval()
    sagittal.load_state_dict(axial.state_dict())
    x = torch.randn(1, 4, 16, 20, 12)

    with torch.no_grad():
        expected = axial(to_view(x, "sagittal").contiguous())
        actual = sagittal(x)

    assert torch.allclose(to_view(actual, "sagittal"), expected, atol=1e-5)


def test_residual_block_pads_narrow_input_symmetrically() -> None:
    block = ResidualBlock(4, 32).eval()
    for module in block.branch:
        if isinstance(module, torch.nn.Conv3d):
            torch.nn.init.zeros_(module.weight)
    x = torch.randn(1, 4, 1, 3, 3)

    with torch.no_grad():
        y = block(x)

    assert torch.equal(y[:, 14:18], x)
    assert torch.count_nonzero(y[:, :14]) == 0
    assert torch.count_nonzero(y[:, 18:]) == 0


def test_prelu_starts_as_relu() -> None:
    net = build_ucltig_network("wnet", width=4)
    slopes = [m.weight for m in net.modules() if isinstance(m, torch.nn.PReLU)]
    assert slopes
    assert all(torch.count_nonzero(s) == 0 for s in slopes)


@pytest.mark.parametrize("stage", STAGES)
def test_registry_builds_each_stage(stage: str) -> None:
    assert f"ucltig_{stage}" in list_models()
    net = build_model(f"ucltig_{stage}", view="coronal", width=4)
    assert net.stage == stage
    assert net.view == "coronal"
    rebuilt = build_model(net.model_name, **net.config)
    assert rebuilt.config == net.config
