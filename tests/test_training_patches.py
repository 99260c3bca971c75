"""Patch sampling: positions inside the brain, zero padding, tumor oversampling, index streams."""

from __future__ import annotations

import numpy as np
import pytest

from gliomaseg.data.patches import (
    EpochSampler,
    FixedPatchDataset,
    PatchCase,
    PatchSampler,
    RandomPatchDataset,
    crop_with_padding,
)


def _case(shape=(12, 20, 24), brain_box=(slice(2, 10), slice(4, 16), slice(5, 19)), tumor_box=None, case_id="case") -> PatchCase:
    brain = np.zeros(shape, dtype=bool)
    brain[brain_box] = True
    image = np.zeros((3, *shape), dtype=np.float32)
    image[:, brain] = 1.0 + np.arange(3, dtype=np.float32)[:, None]
    label = np.zeros(shape, dtype=np.uint8)
    if tumor_box is not None:
        label[tumor_box] = 3
    return PatchCase(case_id, image, label, brain, np.flatnonzero(label).astype(np.int64))


def test_crop_with_padding_fills_outside_with_zero():
    array = np.arange(1, 10).reshape(3, 3)
    out = crop_with_padding(array, (-1, 1), (3, 3))
    expected = np.array([[0, 0, 0], [2, 3, 0], [5, 6, 0]])
    assert np.array_equal(out, expected)


def test_crop_with_padding_keeps_leading_axes():
    array = np.ones((2, 4, 4))
    assert crop_with_padding(array, (1, 1), (2, 2)).shape == (2, 2, 2)


def test_crop_with_padding_outside_returns_zeros():
    assert not crop_with_padding(np.ones((4, 4)), (10, 0), (2, 2)).any()


def test_patches_contain_brain_and_lie_inside_case():
    sampler = PatchSampler([_case()], (4, 8, 8))
    rng = np.random.default_rng(0)
    for _ in range(50):
        image, label, _ = sampler.sample(rng)
        assert image.shape == (3, 4, 8, 8)
        assert label.shape == (4, 8, 8)
        assert (image[0] > 0).any()


def test_patch_start_shifts_patch_inside_case():
    sampler = PatchSampler([_case()], (4, 8, 8))
    case = sampler.cases[0]
    assert sampler.patch_start(case, (0, 0, 0)) == (0, 0, 0)
    assert sampler.patch_start(case, (11, 19, 23)) == (8, 12, 16)


def test_case_smaller_than_patch_is_zero_padded():
    case = _case(shape=(2, 6, 6), brain_box=(slice(0, 2), slice(0, 6), slice(0, 6)))
    image, label, _ = PatchSampler([case], (4, 8, 8)).sample(np.random.default_rng(1))
    assert image.shape == (3, 4, 8, 8)
    assert int((image[0] > 0).sum()) == 2 * 6 * 6
    assert not image[:, 0].any()


def test_margin_enlarges_region_around_patch():
    image, label, _ = PatchSampler([_case()], (1, 8, 8)).sample(np.random.default_rng(2), margin=(0, 3, 2))
    assert image.shape == (3, 1, 14, 12)
    assert label.shape == (1, 14, 12)


def test_tumor_fraction_one_centres_every_patch_on_tumor():
    case = _case(tumor_box=(slice(3, 5), slice(5, 7), slice(6, 8)))
    sampler = PatchSampler([case], (1, 4, 4), tumor_fraction=1.0)
    rng = np.random.default_rng(3)
    hits = [sampler.sample(rng)[1].any() for _ in range(30)]
    assert all(hits)


def test_tumor_fraction_zero_often_misses_small_tumor():
    case = _case(tumor_box=(slice(3, 4), slice(5, 6), slice(6, 7)))
    sampler = PatchSampler([case], (1, 4, 4), tumor_fraction=0.0)
    rng = np.random.default_rng(4)
    hits = [sampler.sample(rng)[1].any() for _ in range(60)]
    assert sum(hits) < 30


def test_sampler_rejects_invalid_tumor_fraction():
    with pytest.raises(ValueError, match="tumor_fraction"):
        PatchSampler([_case()], (1, 4, 4), tumor_fraction=1.5)


def test_case_without_label_is_rejected():
    from gliomaseg.data.preprocessing import PreprocessedCase

    unlabelled = PreprocessedCase("nolabel", np.zeros((3, 2, 2, 2), np.float32), None, np.ones((2, 2, 2), bool), ("flair", "t1c", "t2"), None)
    with pytest.raises(ValueError, match="nolabel"):
        PatchCase.from_preprocessed(unlabelled)


def test_dataset_item_depends_only_on_seed_and_index():
    cases = [_case(case_id="a"), _case(shape=(10, 22, 22), case_id="b")]
    first = RandomPatchDataset(PatchSampler(cases, (2, 6, 6)), seed=5)
    second = RandomPatchDataset(PatchSampler(cases, (2, 6, 6)), seed=5)
    assert np.array_equal(first[17]["image"].numpy(), second[17]["image"].numpy())
    assert np.array_equal(first[17]["label"].numpy(), second[17]["label"].numpy())


def test_dataset_items_differ_between_seeds():
    cases = [_case(shape=(30, 40, 40), brain_box=(slice(0, 30), slice(0, 40), slice(0, 40)))]
    cases[0].image[:] = np.random.default_rng(0).random(cases[0].image.shape, dtype=np.float32)
    seed_one = RandomPatchDataset(PatchSampler(cases, (2, 6, 6)), seed=1)[0]["image"]
    seed_two = RandomPatchDataset(PatchSampler(cases, (2, 6, 6)), seed=2)[0]["image"]
    assert not np.array_equal(seed_one.numpy(), seed_two.numpy())


def test_dataset_returns_float_image_and_long_label():
    item = RandomPatchDataset(PatchSampler([_case()], (2, 6, 6)), seed=0)[0]
    assert tuple(item["image"].shape) == (3, 2, 6, 6)
    assert str(item["image"].dtype) == "torch.float32"
    assert str(item["label"].dtype) == "torch.int64"


def test_fixed_dataset_has_count_and_bounds():
    dataset = FixedPatchDataset(PatchSampler([_case()], (1, 6, 6)), seed=0, count=3)
    assert len(dataset) == 3
    with pytest.raises(IndexError):
        dataset[3]


def test_epoch_sampler_covers_epoch_once_across_ranks():
    ranks = [EpochSampler(12, rank, 3) for rank in range(3)]
    for sampler in ranks:
        sampler.set_epoch(2)
    indices = sorted(i for sampler in ranks for i in sampler)
    assert indices == list(range(24, 36))
    assert len(ranks[0]) == 4


def test_epoch_sampler_offset_continues_stream():
    resumed = EpochSampler(5, epoch_offset=2)
    resumed.set_epoch(0)
    fresh = EpochSampler(5)
    fresh.set_epoch(2)
    assert list(resumed) == list(fresh)


def test_epoch_sampler_without_repeat_yields_same_indices():
    sampler = EpochSampler(5, rank=1, world_size=2, repeat=False)
    sampler.set_epoch(7)
    assert list(sampler) == [1, 3]


def test_epoch_sampler_rejects_uneven_split():
    with pytest.raises(ValueError, match="evenly"):
        EpochSampler(10, 0, 3)
