"""UCL-TIG cascade prediction: slab stitching, view fusion, crops and mapping back to the full grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gliomaseg.data.cases import discover_cases
from gliomaseg.data.labels import CORE, EDEMA, ENHANCING
from gliomaseg.data.synthetic import make_synthetic_case
from gliomaseg.inference.cascade import (
    UclTigCascade,
    bounding_box,
    class_probabilities,
    expand_box,
    fuse_views,
    paste,
    predict_case_with_cascade,
    predict_view_probabilities,
    select_components,
)
from gliomaseg.models.ucltig import DEPTH_MARGIN, STAGES, VIEWS, UclTigNet, build_ucltig_network


@pytest.fixture(autouse=True)
def single_torch_thread():
    """Run torch on one thread: tiny tensors on a shared, loaded CPU are many times faster so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ThresholdNet(nn.Module):
    """Voxel-wise stand-in for MSNet: foreground logit = scale * (channel - threshold), central slices only."""

    def __init__(self, channel: int, threshold: float = 0.5, scale: float = 4.0, in_plane_multiple: int = 4) -> None:
        super().__init__()
        self.channel = channel
        self.threshold = threshold
        self.scale = scale
        self.in_plane_multiple = in_plane_multiple
        self.slabs_seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.slabs_seen.append(tuple(x.shape))
        foreground = self.scale * (x[:, self.channel : self.channel + 1] - self.threshold)
        logits = torch.cat([torch.zeros_like(foreground), foreground], dim=1)
        return logits[:, :, DEPTH_MARGIN:-DEPTH_MARGIN]


def threshold_network(stage: str, view: str, channel: int) -> UclTigNet:
    network = UclTigNet(stage, view, width=4)
    network.net = ThresholdNet(channel, in_plane_multiple=2 if stage == "enet" else 4)
    return network


def threshold_cascade(views=VIEWS, **options) -> UclTigCascade:
    # WNet reads channel 0, TNet channel 1, ENet channel 2.
    networks = {stage: {view: threshold_network(stage, view, index) for view in views} for index, stage in enumerate(STAGES)}
    return UclTigCascade(networks, **options)


def sphere(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


@pytest.fixture
def region_image() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A (4, D, H, W) image whose channels 0, 1, 2 are WT, TC and ET indicators."""
    shape = (30, 44, 36)
    whole = sphere(shape, (15, 20, 18), 9)
    core = sphere(shape, (15, 20, 18), 5)
    enhancing = core & ~sphere(shape, (15, 20, 18), 3)
    image = np.zeros((4, *shape), dtype=np.float32)
    image[0] = whole
    image[1] = core
    image[2] = enhancing
    image[3] = 0.1
    return image, {"whole": whole, "core": core, "enhancing": enhancing}


# --- view stitching and fusion ------------------------------------------------------------------


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("shape", [(13, 10, 23), (5, 7, 3), (40, 12, 16)])
def test_view_probabilities_cover_every_voxel(view: str, shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, *shape)).astype(np.float32)
    network = threshold_network("tnet", view, channel=2)

    probabilities = predict_view_probabilities(network, image, batch_size=2)

    expected = torch.sigmoid(4.0 * (torch.from_numpy(image[2]) - 0.5))
    assert tuple(probabilities.shape) == (2, *shape)
    assert torch.allclose(probabilities[1], expected, atol=1e-6)
    assert torch.allclose(probabilities.sum(0), torch.ones(shape), atol=1e-6)


def test_view_probabilities_pad_in_plane_to_minimum() -> None:
    image = np.zeros((4, 12, 10, 6), dtype=np.float32)
    network = threshold_network("wnet", "axial", channel=0)

    predict_view_probabilities(network, image, min_in_plane=(16, 20))

    assert network.net.slabs_seen[0][2:] == (19, 16, 20)


def test_view_probabilities_with_overlapping_slabs() -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(size=(4, 30, 8, 8)).astype(np.float32)
    network = threshold_network("wnet", "axial", channel=1)

    probabilities = predict_view_probabilities(network, image, step=4)

    expected = torch.sigmoid(4.0 * (torch.from_numpy(image[1]) - 0.5))
    assert torch.allclose(probabilities[1], expected, atol=1e-6)


def test_fuse_views_of_identical_maps_equals_each() -> None:
    rng = np.random.default_rng(2)
    foreground = rng.uniform(size=(6, 7, 8)).astype(np.float32)
    probabilities = np.stack([1 - foreground, foreground])

    fused = fuse_views([probabilities, probabilities.copy(), torch.from_numpy(probabilities)])

    assert fused.shape == probabilities.shape
    assert np.allclose(fused, probabilities, atol=1e-7)


def test_fuse_views_averages_different_maps() -> None:
    first = np.zeros((2, 2, 2, 2), dtype=np.float32)
    second = np.ones((2, 2, 2, 2), dtype=np.float32)
    assert np.allclose(fuse_views([first, second]), 0.5)


def test_fuse_views_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="different shapes"):
        fuse_views([np.zeros((2, 3, 3, 3)), np.zeros((2, 3, 3, 4))])


def test_three_views_of_random_network_fuse_to_probabilities() -> None:
    torch.manual_seed(0)
    image = np.random.default_rng(3).normal(size=(4, 12, 12, 16)).astype(np.float32)
    per_view = [predict_view_probabilities(build_ucltig_network("wnet", view, width=4), image) for view in VIEWS]

    fused = fuse_views(per_view)

    assert fused.shape == (2, 12, 12, 16)
    assert np.allclose(fused.sum(0), 1, atol=1e-5)


# --- crops and components -----------------------------------------------------------------------


def test_paste_round_trip() -> None:
    crop = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5) + 1
    box = (slice(1, 4), slice(2, 6), slice(0, 5))

    full = paste(crop, box, (6, 8, 5))

    assert full.shape == (2, 6, 8, 5)
    assert np.array_equal(full[(Ellipsis, *box)], crop)
    assert full.sum() == crop.sum()


def test_paste_rejects_wrong_box() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        paste(np.zeros((3, 3, 3)), (slice(0, 3), slice(0, 3), slice(0, 2)), (5, 5, 5))


def test_expand_box_clamps_to_grid() -> None:
    box = bounding_box(sphere((20, 20, 20), (2, 10, 17), 2))
    assert box == (slice(0, 5), slice(8, 13), slice(15, 20))
    assert expand_box(box, 5, (20, 20, 20)) == (slice(0, 10), slice(3, 18), slice(10, 20))


def test_bounding_box_of_empty_mask_is_none() -> None:
    assert bounding_box(np.zeros((3, 3, 3), dtype=bool)) is None


def test_select_components_keeps_largest_and_large_ones() -> None:
    shape = (40, 40, 40)
    largest = sphere(shape, (10, 10, 10), 6)
    large = sphere(shape, (30, 30, 30), 5)
    small = sphere(shape, (30, 8, 30), 1)
    mask = largest | large | small

    kept = select_components(mask, min_voxels=int(large.sum()) - 1)

    assert np.array_equal(kept, largest | large)


def test_select_components_keeps_second_above_fraction() -> None:
    shape = (40, 40, 40)
    largest = sphere(shape, (10, 10, 10), 6)
    second = sphere(shape, (30, 30, 30), 4)
    third = sphere(shape, (30, 8, 30), 3)

    kept = select_components(largest | second | third, second_fraction=0.1)

    assert np.array_equal(kept, largest | second)


def test_select_components_joins_parts_across_one_voxel_gap() -> None:
    mask = np.zeros((9, 9, 30), dtype=bool)
    mask[2:7, 2:7, 2:12] = True
    mask[2:7, 2:7, 13:16] = True

    kept = select_components(mask, min_voxels=10**6)

    assert np.array_equal(kept, mask)


# --- the whole cascade --------------------------------------------------------------------------


def test_cascade_recovers_regions(region_image) -> None:
    image, regions = region_image

    result = threshold_cascade().predict(image)

    assert np.array_equal(result.whole_tumor, regions["whole"])
    assert np.array_equal(result.tumor_core, regions["core"])
    assert np.array_equal(result.enhancing_tumor, regions["enhancing"])
    assert np.array_equal(result.classes == EDEMA, regions["whole"] & ~regions["core"])
    assert np.array_equal(result.classes == CORE, regions["core"] & ~regions["enhancing"])
    assert np.array_equal(result.classes == ENHANCING, regions["enhancing"])
    assert result.classes.dtype == np.uint8


def test_class_probabilities_are_nested_and_sum_to_one(region_image) -> None:
    image, regions = region_image

    result = threshold_cascade(views=("axial",)).predict(image)
    probabilities = class_probabilities(result)

    assert probabilities.shape == (4, *image.shape[1:])
    assert np.allclose(probabilities.sum(0), 1, atol=1e-6)
    assert np.array_equal(probabilities.argmax(0) == ENHANCING, regions["enhancing"])
    assert np.array_equal(probabilities.argmax(0) > 0, regions["whole"])


def test_cascade_crops_contain_previous_stage_mask(region_image) -> None:
    image, _ = region_image
    shape = image.shape[1:]

    result = threshold_cascade(margin=3).predict(image)

    inside_tnet = paste(np.ones([s.stop - s.start for s in result.tnet_box], dtype=bool), result.tnet_box, shape)
    inside_enet = paste(np.ones([s.stop - s.start for s in result.enet_box], dtype=bool), result.enet_box, shape)
    assert result.whole_tumor.any()
    assert not np.any(result.whole_tumor & ~inside_tnet)
    assert result.tumor_core.any()
    assert not np.any(result.tumor_core & ~inside_enet)
    assert result.tnet_box == expand_box(bounding_box(result.whole_tumor), 3, shape)
    assert result.enet_box == expand_box(bounding_box(result.tumor_core), 3, shape)


def test_cascade_stage_probabilities_map_back_to_full_grid(region_image) -> None:
    image, _ = region_image

    result = threshold_cascade(views=("axial", "coronal")).predict(image)

    for stage, box in (("tnet", result.tnet_box), ("enet", result.enet_box)):
        probability = result.probabilities[stage]
        expected = torch.sigmoid(4.0 * (torch.from_numpy(image[STAGES.index(stage)][box]) - 0.5)).numpy()
        outside = np.ones(probability.shape, dtype=bool)
        outside[box] = False
        assert probability.shape == image.shape[1:]
        assert np.allclose(probability[box], expected, atol=1e-6)
        assert not np.any(probability[outside])


def test_cascade_restricts_core_to_whole_tumor(region_image) -> None:
    image, regions = region_image
    # A core-like blob far from the whole tumor, and an enhancing blob outside the core.
    image[1][sphere(image.shape[1:], (25, 38, 30), 3)] = 1
    image[2][regions["whole"] & ~regions["core"]] = 1

    result = threshold_cascade().predict(image)

    assert np.array_equal(result.tumor_core, regions["core"])
    assert np.array_equal(result.enhancing_tumor, regions["enhancing"])


def test_cascade_removes_small_whole_tumor_components(region_image) -> None:
    image, regions = region_image
    stray = sphere(image.shape[1:], (3, 3, 3), 1)
    image[0][stray] = 1

    result = threshold_cascade().predict(image)

    assert np.array_equal(result.whole_tumor, regions["whole"])


def test_cascade_removes_tiny_enhancing_tumor(region_image) -> None:
    image, regions = region_image
    image[2] = 0
    image[2][15, 20, 14:18] = 1

    result = threshold_cascade().predict(image)

    assert not result.enhancing_tumor.any()
    assert np.array_equal(result.tumor_core, regions["core"])


def test_cascade_without_tumor_is_empty(region_image) -> None:
    image, _ = region_image
    image[0] = 0

    result = threshold_cascade().predict(image)

    assert not result.classes.any()
    assert result.tnet_box == tuple(slice(0, n) for n in image.shape[1:])


def test_cascade_uses_enet_in_plane_multiple_of_two() -> None:
    image = np.zeros((4, 12, 14, 10), dtype=np.float32)
    image[:3, 4:8, 4:10, 3:7] = 1
    cascade = threshold_cascade(views=("axial",), margin=1, min_enhancing_voxels=0, min_whole_tumor_voxels=0)

    cascade.predict(image)

    # The ENet crop is 6 x 8 x 6 voxels in-plane (box plus margin), already a multiple of 2.
    assert cascade.networks["enet"]["axial"].net.slabs_seen[0][3:] == (8, 6)


def test_cascade_rejects_missing_stage() -> None:
    networks = {"wnet": {"axial": threshold_network("wnet", "axial", 0)}, "tnet": {"axial": threshold_network("tnet", "axial", 1)}}
    with pytest.raises(ValueError, match="at least one enet network"):
        UclTigCascade(networks)


def test_cascade_rejects_network_under_wrong_view() -> None:
    networks = {stage: {"axial": threshold_network(stage, "axial", 0)} for stage in STAGES}
    networks["tnet"]["sagittal"] = threshold_network("tnet", "coronal", 1)
    with pytest.raises(ValueError, match="for the coronal view"):
        UclTigCascade(networks)


def test_case_maps_back_to_file_grid(tmp_path) -> None:
    make_synthetic_case(tmp_path, "Synth_000", shape=(40, 44, 32), orientation="LPS", seed=4)
    case = discover_cases(tmp_path)[0]
    cascade = threshold_cascade(views=("axial",), channels=("flair", "t1", "t1c", "t2"), min_whole_tumor_voxels=0)

    classes, result, preprocessed = predict_case_with_cascade(cascade, case)

    geometry = preprocessed.geometry
    assert classes.shape == geometry.file_shape
    assert classes.dtype == np.uint8
    canonical = geometry.to_canonical(classes)
    assert np.array_equal(geometry.crop(canonical), result.classes)
    assert canonical.sum() == result.classes.sum()
    # The threshold WNet reads z-scored FLAIR, which is above 0.5 in the synthetic edema.
    assert result.whole_tumor.any()


def test_case_with_missing_t1_uses_t1c(tmp_path) -> None:
    make_synthetic_case(tmp_path, "Synth_001", shape=(32, 32, 24), modalities=("t1c", "t2", "flair"), seed=5)
    case = discover_cases(tmp_path)[0]
    cascade = threshold_cascade(views=("axial",), substitute={"t1": "t1c"})

    classes, _, preprocessed = predict_case_with_cascade(cascade, case)

    assert np.array_equal(preprocessed.image[1], preprocessed.image[2])
    assert classes.shape == preprocessed.geometry.file_shape


@pytest.mark.realdata
def test_real_case_maps_back_exactly() -> None:
    from pathlib import Path

    from gliomaseg.data.io import load_volume

    folder = Path(__file__).parents[1] / ".." / "shared" / "data" / "deepbrainseg_brats2018" / "brats" / "Brats18_2013_23_1"
    if not folder.is_dir():
        pytest.skip(f"real BraTS 2018 case not available at {folder}")
    case = discover_cases(folder)[0]
    # Channel 0 (z-scored FLAIR) above 1.5 is a stand-in whole tumor; edema is bright in FLAIR.
    networks = {stage: {"axial": threshold_network(stage, "axial", 0)} for stage in STAGES}
    for stage in STAGES:
        networks[stage]["axial"].net.threshold = 1.5
    cascade = UclTigCascade(networks, channels=("flair", "t1", "t1c", "t2"))

    classes, result, preprocessed = predict_case_with_cascade(cascade, case)

    geometry = preprocessed.geometry
    flair = load_volume(case.images["flair"].path)
    assert classes.shape == flair.shape
    assert np.array_equal(geometry.crop(geometry.to_canonical(classes)), result.classes)
    assert int(np.count_nonzero(classes)) == int(np.count_nonzero(result.classes))
    assert result.whole_tumor.any()
    inside = np.zeros(result.whole_tumor.shape, dtype=bool)
    inside[result.tnet_box] = True
    assert not np.any(result.whole_tumor & ~inside)
