"""Cases, patient-level split and data loaders of a training run."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from gliomaseg.data.augmentation import PatchAugmentation
from gliomaseg.data.cases import Case, discover_cases
from gliomaseg.data.patches import EpochSampler, FixedPatchDataset, PatchCase, PatchSampler, RandomPatchDataset
from gliomaseg.data.preprocessing import preprocess_case

log = logging.getLogger(__name__)

# Streams of the per-sample generators: training and validation patches never share draws.
TRAIN_STREAM = 0
VALIDATION_STREAM = 1


@dataclass
class Split:
    """Patient-level split of case ids."""

    train: list[str]
    validation: list[str]
    seed: int

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "train": self.train, "validation": self.validation}


def split_cases(case_ids: Sequence[str], validation_fraction: float, seed: int) -> Split:
    """Split case ids at random into training and validation cases.

    The number of validation cases is round(fraction * n), at least 1 when the fraction is
    positive and at most n - 1, so both sides keep a case. The draw depends only on the sorted
    ids and the seed.

    Raises:
        ValueError: no cases, or a positive fraction with fewer than 2 cases.
    """
    ids = sorted(case_ids)
    if not ids:
        raise ValueError("no cases to split")
    if validation_fraction <= 0:
        return Split(ids, [], seed)
    if len(ids) < 2:
        raise ValueError(f"a validation split needs at least 2 cases, found {len(ids)}; set data.validation_fraction=0")
    count = min(max(round(validation_fraction * len(ids)), 1), len(ids) - 1)
    order = np.random.default_rng(seed).permutation(len(ids))
    validation = sorted(ids[i] for i in order[:count])
    return Split([i for i in ids if i not in validation], validation, seed)


def read_split(path: str | Path, case_ids: Sequence[str]) -> Split:
    """Read a split.json and check that its cases exist.

    Raises:
        ValueError: unreadable file, or case ids that the dataset does not contain.
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text())
        split = Split(list(content["train"]), list(content["validation"]), int(content.get("seed", -1)))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"cannot read the split file {path}: {error}") from error
    unknown = sorted(set(split.train + split.validation) - set(case_ids))
    if unknown:
        raise ValueError(f"split file {path} names cases that are not in the dataset: {unknown[:5]}")
    return split


def discover_training_cases(config: Mapping[str, Any]) -> list[Case]:
    """Find the cases of `data.dataset`; every case needs a label map.

    Raises:
        FileNotFoundError: the dataset folder does not exist.
        ValueError: no cases, or cases without a label map.
    """
    data = config["data"]
    root = Path(data["dataset"]).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"dataset folder {root} not found; set data.dataset to a folder of cases (--set data.dataset=PATH)")
    cases = discover_cases(root, schema=data["label_schema"])
    if not cases:
        raise ValueError(f"no cases found in {root}; expected sub-folders in a BraTS layout or an MSD Task01 folder")
    unlabelled = [c.case_id for c in cases if c.label is None]
    if unlabelled:
        raise ValueError(f"{len(unlabelled)} cases in {root} have no label map (e.g. {unlabelled[0]}); training needs a label map for every case")
    return cases


def load_patch_cases(cases: Sequence[Case], config: Mapping[str, Any], description: str = "preprocessing") -> list[PatchCase]:
    """Preprocess cases once and keep their arrays in memory (shared with forked workers)."""
    data = config["data"]
    start = time.perf_counter()
    loaded = []
    for case in tqdm(cases, desc=description, unit="case", leave=False, disable=not cases):
        preprocessed = preprocess_case(case, tuple(data["channels"]), substitute=data["substitute"] or None)
        loaded.append(PatchCase.from_preprocessed(preprocessed))
    megabytes = sum(c.image.nbytes + c.label.nbytes + c.brain_mask.nbytes for c in loaded) / 2**20
    log.info("Preprocessed %d cases in %.1f s (%.0f MiB in memory)", len(loaded), time.perf_counter() - start, megabytes)
    return loaded


def resolve_num_workers(value: int | str) -> int:
    """Return the worker count: `auto` is the CPU count minus one (for the training process), at most 8."""
    if value != "auto":
        return int(value)
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, available - 1))


def _worker_init(_: int) -> None:
    # Each worker augments one sample at a time; more threads would oversubscribe the CPU.
    torch.set_num_threads(1)


def _loader(dataset, sampler, batch_size: int, workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init if workers > 0 else None,
        drop_last=False,
    )


def make_train_loader(
    cases: Sequence[PatchCase], config: Mapping[str, Any], rank: int, world_size: int, epoch_offset: int, pin_memory: bool
) -> DataLoader:
    """Build the training loader: `batches_per_epoch` batches per epoch, split over the processes.

    `patches.batch_size` is the global batch; each of the `world_size` processes gets an equal
    share.

    Raises:
        ValueError: the batch size is not divisible by the number of processes.
    """
    patches, training = config["patches"], config["training"]
    batch = int(patches["batch_size"])
    if batch % world_size:
        raise ValueError(f"patches.batch_size {batch} cannot be split evenly over {world_size} processes")
    sampler = PatchSampler(cases, patches["size"], tumor_fraction=float(patches["tumor_fraction"]))
    augmentation = PatchAugmentation(patches["size"], config["augmentation"]) if config["augmentation"].get("enabled", True) else None
    dataset = RandomPatchDataset(sampler, config["seed"], augmentation, stream=TRAIN_STREAM)
    epoch_sampler = EpochSampler(batch * int(training["batches_per_epoch"]), rank, world_size, epoch_offset)
    return _loader(dataset, epoch_sampler, batch // world_size, resolve_num_workers(training["num_workers"]), pin_memory)


def make_validation_loader(cases: Sequence[PatchCase], config: Mapping[str, Any], rank: int, world_size: int, pin_memory: bool) -> DataLoader:
    """Build the loader of the fixed, un-augmented validation patches; each process takes a share."""
    patches, validation = config["patches"], config["validation"]
    sampler = PatchSampler(cases, patches["size"], tumor_fraction=0.0)
    dataset = FixedPatchDataset(sampler, config["seed"], int(validation["patches"]), stream=VALIDATION_STREAM)
    index_sampler = EpochSampler(dataset.count, rank, world_size, repeat=False)
    batch = int(validation["batch_size"] or patches["batch_size"])
    workers = min(resolve_num_workers(config["training"]["num_workers"]), 2)
    return _loader(dataset, index_sampler, max(1, batch // world_size), workers, pin_memory)
