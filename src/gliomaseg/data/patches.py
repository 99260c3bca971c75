"""Random training patches and fixed validation patches from preprocessed cases.

Every patch is a pure function of a seed and a sample index: item `i` of a dataset draws its
case, position and augmentation from a generator seeded with `(seed, i)`. So the same seed
gives the same patches whatever the number of worker processes or devices, and a resumed run
continues the stream where it stopped.

A patch is centred on a brain voxel drawn uniformly from all brain voxels of a case chosen
uniformly at random (or, with probability `tumor_fraction`, on a tumor voxel). The patch is then
shifted to lie inside the case along every axis where the case is at least as large as the patch. Cases smaller than the
patch are zero-padded. For a spatial augmentation a larger *region* around the patch is cut
(zero outside the case), as large as that sample's rotation, scaling and deformation reach, so
they pull in real context instead of an empty border; the augmentation returns the patch.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from gliomaseg.data.augmentation import PatchAugmentation
from gliomaseg.data.preprocessing import PreprocessedCase

log = logging.getLogger(__name__)

# Rejection sampling inside the bounding box finds a brain voxel in a few tries, because the brain
# fills about half of its box. After this many misses the sampler draws from the voxel list.
_MAX_REJECTION_TRIES = 64


@dataclass
class PatchCase:
    """Arrays of one training or validation case kept in memory.

    Attributes:
        case_id: the case's id.
        image: float32 (C, D, H, W).
        label: uint8 model classes (D, H, W).
        brain_mask: bool (D, H, W).
        tumor_voxels: flat indices of the voxels with a label > 0, int64 (T,).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    brain_mask: np.ndarray
    tumor_voxels: np.ndarray

    @classmethod
    def from_preprocessed(cls, case: PreprocessedCase) -> PatchCase:
        """Keep the arrays of a preprocessed case; raises ValueError if it has no label map."""
        if case.label is None:
            raise ValueError(f"case {case.case_id} has no reference label map; training needs one for every case")
        label = np.ascontiguousarray(case.label, dtype=np.uint8)
        return cls(
            case.case_id,
            np.ascontiguousarray(case.image, dtype=np.float32),
            label,
            np.ascontiguousarray(case.brain_mask, dtype=bool),
            np.flatnonzero(label).astype(np.int64),
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.label.shape)


def crop_with_padding(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Cut a box of `size` starting at `start` from the last len(size) axes, zero outside.

    `start` may be negative and the box may reach past the end of the array; those voxels are 0.
    Leading axes (for example channels) are kept whole.
    """
    lead = array.ndim - len(size)
    out = np.zeros((*array.shape[:lead], *size), dtype=array.dtype)
    source = [slice(None)] * lead
    target = [slice(None)] * lead
    for axis, (first, length) in enumerate(zip(start, size)):
        extent = array.shape[lead + axis]
        low, high = max(first, 0), min(first + length, extent)
        if high <= low:
            return out
        source.append(slice(low, high))
        target.append(slice(low - first, high - first))
    out[tuple(target)] = array[tuple(source)]
    return out


class PatchSampler:
    """Draw patch regions from cases kept in memory.

    Args:
        cases: the cases to sample from.
        patch_size: (D, H, W) of a patch in voxels.
        tumor_fraction: probability that a patch is centred on a tumor voxel instead of a
            brain voxel; cases without tumor fall back to brain voxels.
    """

    def __init__(
        self,
        cases: Sequence[PatchCase],
        patch_size: Sequence[int],
        tumor_fraction: float = 0.0,
    ) -> None:
        if not cases:
            raise ValueError("no cases to draw patches from")
        if len(patch_size) != 3 or any(int(s) < 1 for s in patch_size):
            raise ValueError(f"patch size {list(patch_size)} is invalid; give three positive sizes (D, H, W)")
        if not 0.0 <= tumor_fraction <= 1.0:
            raise ValueError(f"tumor_fraction {tumor_fraction} is outside [0, 1]")
        self.cases = list(cases)
        self.patch_size = tuple(int(s) for s in patch_size)
        self.tumor_fraction = float(tumor_fraction)

    def _draw_centre(self, case: PatchCase, rng: np.random.Generator) -> tuple[int, ...]:
        if self.tumor_fraction > 0 and case.tumor_voxels.size and rng.random() < self.tumor_fraction:
            flat = case.tumor_voxels[rng.integers(case.tumor_voxels.size)]
            return tuple(int(i) for i in np.unravel_index(flat, case.shape))
        for _ in range(_MAX_REJECTION_TRIES):
            centre = tuple(int(rng.integers(n)) for n in case.shape)
            if case.brain_mask[centre]:
                return centre
        brain = np.flatnonzero(case.brain_mask)
        if brain.size == 0:
            raise ValueError(f"case {case.case_id} has an empty brain mask")
        return tuple(int(i) for i in np.unravel_index(brain[rng.integers(brain.size)], case.shape))

    def patch_start(self, case: PatchCase, centre: Sequence[int]) -> tuple[int, int, int]:
        """Return the first voxel of the patch around `centre`, shifted to lie inside the case.

        Along an axis where the case is smaller than the patch, the patch is centred on the case
        and the rest is zero padding.
        """
        start = []
        for c, p, n in zip(centre, self.patch_size, case.shape):
            if n >= p:
                start.append(int(np.clip(c - p // 2, 0, n - p)))
            else:
                start.append(-((p - n) // 2))
        return tuple(start)

    def sample(self, rng: np.random.Generator, margin: Sequence[int] = (0, 0, 0)) -> tuple[np.ndarray, np.ndarray, str]:
        """Draw one patch with `margin` extra voxels on each side, per axis (D, H, W).

        Returns:
            (image float32 (C, *region), label uint8 (*region), case id), where
            region = patch_size + 2 * margin.
        """
        case = self.cases[int(rng.integers(len(self.cases)))]
        start = self.patch_start(case, self._draw_centre(case, rng))
        region_start = [s - int(m) for s, m in zip(start, margin)]
        region = tuple(p + 2 * int(m) for p, m in zip(self.patch_size, margin))
        return crop_with_padding(case.image, region_start, region), crop_with_padding(case.label, region_start, region), case.case_id


class RandomPatchDataset(Dataset):
    """Patches drawn at random; item `i` is reproducible from (seed, i).

    Each item is a dict with "image" float32 tensor (C, D, H, W) and "label" int64 tensor
    (D, H, W) of the patch size, augmented by `augmentation` where given. The dataset has no
    natural length: indices come from an `EpochSampler`.
    """

    def __init__(self, sampler: PatchSampler, seed: int, augmentation: PatchAugmentation | None = None, stream: int = 0) -> None:
        self.sampler = sampler
        self.seed = int(seed)
        self.augmentation = augmentation
        self.stream = int(stream)

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.stream, int(index)])
        if self.augmentation is None:
            image, label, _ = self.sampler.sample(rng)
        else:
            draw = self.augmentation.draw(rng)
            image, label, _ = self.sampler.sample(rng, self.augmentation.margin(draw))
            image, label = self.augmentation(image, label, draw)
        return {
            "image": torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32),
            "label": torch.as_tensor(np.ascontiguousarray(label), dtype=torch.int64),
        }


class FixedPatchDataset(RandomPatchDataset):
    """A fixed number of un-augmented patches, the same in every epoch (for validation)."""

    def __init__(self, sampler: PatchSampler, seed: int, count: int, stream: int = 1) -> None:
        if count < 1:
            raise ValueError(f"the number of validation patches must be at least 1, got {count}")
        super().__init__(sampler, seed, augmentation=None, stream=stream)
        self.count = int(count)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.count:
            raise IndexError(f"patch index {index} is outside 0..{self.count - 1}")
        return super().__getitem__(index)


class EpochSampler(Sampler[int]):
    """Yield the sample indices of one epoch for one process.

    Epoch `e` covers the global indices e * samples_per_epoch ... (e + 1) * samples_per_epoch - 1;
    process `rank` of `world_size` takes every world_size-th of them. `epoch_offset` is added to
    the epoch set by the training loop, so a resumed run continues the index stream. With
    `repeat=False` every epoch yields the indices 0 ... samples_per_epoch - 1 (validation).
    """

    def __init__(self, samples_per_epoch: int, rank: int = 0, world_size: int = 1, epoch_offset: int = 0, repeat: bool = True) -> None:
        if repeat and samples_per_epoch % world_size:
            raise ValueError(f"{samples_per_epoch} samples per epoch cannot be split evenly over {world_size} processes")
        self.samples_per_epoch = int(samples_per_epoch)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch_offset = int(epoch_offset)
        self.repeat = repeat
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        base = (self.epoch + self.epoch_offset) * self.samples_per_epoch if self.repeat else 0
        return iter(range(base + self.rank, base + self.samples_per_epoch, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.samples_per_epoch, self.world_size))
