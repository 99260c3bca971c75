"""Training of the UCL-TIG cascade: WNet, TNet and ENet, each for the axial, sagittal and coronal view.

Every (stage, view) network is trained separately, as in the authors' code (GitHub
``taigw/brats17``, ``train.py`` and ``config17/train_*.txt``):

- binary target per stage: WNet the whole tumor, TNet the tumor core (necrotic/non-enhancing
  core and enhancing tumor), ENet the enhancing tumor;
- patches of 19 x 144 x 144 (WNet), 19 x 96 x 96 (TNet), 19 x 64 x 64 (ENet) voxels in the
  view's axes (slices, rows, columns), whose central 11 slices are predicted and scored;
- sampling region: the whole brain crop for WNet. TNet samples inside the reference whole
  tumor's bounding box plus a margin, and ENet inside the reference tumor core's, so they
  learn what the previous stage's crop contains. Patch centres are uniform along the slice axis (a patch
  may reach past the region, zero-filled), and in-plane the patch lies inside the region where
  the region is larger, else it is centred on it. A batch whose targets are all background is
  drawn again;
- 5 patches per batch, each from a training case drawn uniformly with replacement;
- soft Dice loss over both classes (background included) with squared probabilities in the
  denominator, Adam with learning rate 1e-3, no weight decay.

The output is a checkpoint folder: one ``<stage>_<view>.safetensors`` file per network (the
format of :func:`gliomaseg.models.save_checkpoint`) and a ``cascade.json`` that lists them
with the settings prediction needs; :func:`gliomaseg.inference.cascade.load_cascade` reads it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from monai.losses import DiceCELoss, DiceLoss
from tqdm.auto import tqdm

from gliomaseg.data.io import default_file_mode
from gliomaseg.data.labels import CORE, EDEMA, ENHANCING
from gliomaseg.data.preprocessing import PreprocessedCase
from gliomaseg.inference.cascade import CASCADE_FILE, CASCADE_FORMAT, bounding_box, expand_box
from gliomaseg.inference.sliding_window import resolve_device
from gliomaseg.models.checkpoint import save_checkpoint
from gliomaseg.models.ucltig import DEFAULT_PATCH_SIZES, DEPTH_MARGIN, STAGES, VIEWS, UclTigNet, to_view
from gliomaseg.training.config import dump_config, merge, parse_overrides, read_config_source

__all__ = [
    "DEFAULT_CONFIG",
    "LOSSES",
    "NetworkHistory",
    "load_ucltig_config",
    "stage_target",
    "sampling_box",
    "PatchSampler",
    "build_loss",
    "train_network",
    "train_cascade",
    "train_cascade_from_config",
]

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "ucltig.yaml"
LOSSES = ("dice", "dice_ce")
# Model classes that make up each stage's binary target.
_STAGE_CLASSES = {"wnet": (CORE, EDEMA, ENHANCING), "tnet": (CORE, ENHANCING), "enet": (ENHANCING,)}


# --- configuration -----------------------------------------------------------------------------


def load_ucltig_config(
    source: str | Path | Mapping[str, Any] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
) -> dict[str, Any]:
    """Read a UCL-TIG training configuration on top of the shipped defaults (``configs/ucltig.yaml``).

    Args:
        source: a dict, a YAML file, the name of a shipped configuration, or None for the
            defaults alone.
        overrides: ``key.sub=value`` strings, values parsed as YAML (``training.iterations=50``).

    Raises:
        gliomaseg.training.config.ConfigError: unreadable source, unknown key or malformed override.
    """
    defaults = yaml.safe_load(resources.files("gliomaseg.configs").joinpath(DEFAULT_CONFIG).read_text())
    config = defaults
    if source is not None:
        written, _ = read_config_source(source)
        config = merge(defaults, written)
    return merge(config, parse_overrides(overrides))


# --- data ------------------------------------------------------------------------------------


def stage_target(classes: np.ndarray, stage: str) -> np.ndarray:
    """Return the uint8 binary target (1 = the stage's region) of a model-class label map."""
    return np.isin(classes, _STAGE_CLASSES[stage]).astype(np.uint8)


def sampling_box(case: PreprocessedCase, stage: str, margin: int) -> tuple[slice, slice, slice] | None:
    """Return the canonical box patches of a stage are drawn from, or None when the case has no such region.

    WNet draws from the whole brain crop; TNet from the reference whole tumor's bounding box
    plus `margin`; ENet from the reference tumor core's bounding box plus `margin`.
    """
    shape = case.label.shape
    if stage == "wnet":
        return tuple(slice(0, n) for n in shape)
    region = "wnet" if stage == "tnet" else "tnet"
    box = bounding_box(stage_target(case.label, region).astype(bool))
    return None if box is None else expand_box(box, margin, shape)


def _extract(array: np.ndarray, starts: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Copy a block of the last three axes, zero-filled where it reaches past the array."""
    out = np.zeros((*array.shape[:-3], *size), dtype=array.dtype)
    source, target = [], []
    for start, length, limit in zip(starts, size, array.shape[-3:]):
        low, high = max(start, 0), min(start + length, limit)
        if high <= low:
            return out
        source.append(slice(low, high))
        target.append(slice(low - start, high - start))
    out[(Ellipsis, *target)] = array[(Ellipsis, *source)]
    return out


class PatchSampler:
    """Random training batches of one stage and view, in the view's axes.

    Args:
        cases: preprocessed training cases with labels.
        stage, view: the network's stage and view.
        patch_size: (slices, rows, columns) of the input patch; the target has the central
            ``slices - 8`` slices.
        margin: voxels around the reference region for TNet and ENet sampling boxes.
        seed: seed of the sampler's random generator.

    Raises:
        ValueError: no case has the stage's region (TNet and ENet need tumors, resp. cores).
    """

    def __init__(
        self,
        cases: Sequence[PreprocessedCase],
        stage: str,
        view: str,
        patch_size: Sequence[int],
        margin: int = 5,
        seed: int = 0,
    ) -> None:
        self.stage = stage
        self.view = view
        self.patch_size = tuple(int(s) for s in patch_size)
        if self.patch_size[0] < 2 * DEPTH_MARGIN + 1:
            raise ValueError(f"patch size {self.patch_size} needs at least {2 * DEPTH_MARGIN + 1} slices")
        self.rng = np.random.default_rng(seed)
        self.regions: list[tuple[np.ndarray, np.ndarray]] = []
        for case in cases:
            if case.label is None:
                raise ValueError(f"case {case.case_id} has no reference label map; training needs one")
            box = sampling_box(case, stage, margin)
            if box is None:
                log.debug("case %s has no region for %s sampling; skipped", case.case_id, stage)
                continue
            image = to_view(case.image[(slice(None), *box)], view)
            target = to_view(stage_target(case.label[box], stage), view)
            self.regions.append((image, target))
        if not self.regions:
            raise ValueError(f"no training case contains the region {stage} is trained on; check the label maps")

    def _patch(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, target = self.regions[index]
        extent = target.shape
        starts = [int(self.rng.integers(0, extent[0])) - self.patch_size[0] // 2]
        for length, size in zip(extent[1:], self.patch_size[1:]):
            if length >= size:
                starts.append(int(self.rng.integers(0, length - size + 1)))
            else:
                starts.append((length - size) // 2)
        patch = _extract(image, starts, self.patch_size)
        label = _extract(target, starts, self.patch_size)[DEPTH_MARGIN:-DEPTH_MARGIN]
        return patch, label

    def batch(self, batch_size: int, max_draws: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw a batch: float32 images (N, C, S, R, Q) and int64 targets (N, 1, S - 8, R, Q).

        A batch whose targets are all background is drawn again, up to `max_draws` times.
        """
        for _ in range(max_draws):
            pairs = [self._patch(int(self.rng.integers(len(self.regions)))) for _ in range(batch_size)]
            labels = np.stack([label for _, label in pairs])
            if labels.any():
                break
        images = np.stack([patch for patch, _ in pairs])
        return torch.from_numpy(images), torch.from_numpy(labels[:, None].astype(np.int64))


# --- training ----------------------------------------------------------------------------------


def build_loss(name: str = "dice") -> torch.nn.Module:
    """Build the loss of a binary stage network on (N, 2, ...) logits and (N, 1, ...) class targets.

    ``dice``: 1 - mean over both classes of 2 sum(p g) / (sum(p^2) + sum(g) + 1e-5), sums over
    the whole batch (NiftyNet's Dice of the authors' code). ``dice_ce``: that plus cross-entropy.
    """
    options = {
        "include_background": True,
        "to_onehot_y": True,
        "softmax": True,
        "squared_pred": True,
        "batch": True,
        "smooth_nr": 0.0,
        "smooth_dr": 1e-5,
    }
    if name == "dice":
        return DiceLoss(**options)
    if name == "dice_ce":
        return DiceCELoss(**options)
    raise ValueError(f"unknown UCL-TIG loss {name!r}; use one of {', '.join(LOSSES)}")


@dataclass
class NetworkHistory:
    """Training record of one network.

    Attributes:
        losses: (iteration, mean training loss since the previous entry) pairs.
        fixed_batch_loss: loss on one fixed, seeded batch in eval mode, before and after training.
        iterations: iterations run; seconds: wall time.
    """

    stage: str
    view: str
    losses: list[tuple[int, float]] = field(default_factory=list)
    fixed_batch_loss: dict[str, float] = field(default_factory=dict)
    iterations: int = 0
    seconds: float = 0.0


def _fixed_batch_loss(network: UclTigNet, loss_fn, batch, device) -> float:
    network.eval()
    with torch.no_grad():
        images, labels = batch
        value = float(loss_fn(network.net(images.to(device)), labels.to(device)))
    network.train()
    return value


def train_network(
    network: UclTigNet,
    sampler: PatchSampler,
    *,
    iterations: int,
    batch_size: int = 5,
    learning_rate: float = 1e-3,
    loss: str = "dice",
    max_seconds: float | None = None,
    log_every: int = 100,
    device: str | torch.device | None = "cpu",
    progress: bool = True,
) -> NetworkHistory:
    """Train one stage/view network on patches from `sampler` with Adam.

    Training stops after `iterations` batches or when `max_seconds` of wall time have passed,
    whichever comes first (at least one iteration runs).

    Returns:
        The network's NetworkHistory; the network itself is trained in place and left in eval mode.
    """
    device = resolve_device(device)
    network.to(device).train()
    loss_fn = build_loss(loss)
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
    history = NetworkHistory(network.stage, network.view)
    fixed_batch = sampler.batch(batch_size)
    history.fixed_batch_loss["before"] = _fixed_batch_loss(network, loss_fn, fixed_batch, device)

    started = time.perf_counter()
    running, count = 0.0, 0
    bar = tqdm(range(1, iterations + 1), desc=f"{network.stage} {network.view}", unit="it", disable=not progress, leave=False)
    for iteration in bar:
        images, labels = sampler.batch(batch_size)
        optimizer.zero_grad(set_to_none=True)
        value = loss_fn(network.net(images.to(device)), labels.to(device))
        value.backward()
        optimizer.step()

        running += float(value.detach())
        count += 1
        history.iterations = iteration
        out_of_time = max_seconds is not None and time.perf_counter() - started >= max_seconds
        if iteration % log_every == 0 or iteration == iterations or out_of_time:
            history.losses.append((iteration, running / count))
            bar.set_postfix(loss=f"{running / count:.4f}")
            log.info("%s %s: iteration %d, loss %.4f", network.stage, network.view, iteration, running / count)
            running, count = 0.0, 0
        if out_of_time:
            log.info("%s %s: time budget of %.0f s reached after %d iterations", network.stage, network.view, max_seconds, iteration)
            break

    history.seconds = time.perf_counter() - started
    history.fixed_batch_loss["after"] = _fixed_batch_loss(network, loss_fn, fixed_batch, device)
    network.eval()
    return history


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(temp_name, default_file_mode())
    with os.fdopen(handle, "w") as stream:
        json.dump(data, stream, indent=2)
    os.replace(temp_name, path)


def _read_manifest(output_dir: Path) -> dict[str, Any]:
    path = output_dir / CASCADE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def train_cascade(
    cases: Sequence[PreprocessedCase],
    output_dir: str | Path,
    config: Mapping[str, Any],
    *,
    stages: Sequence[str] | None = None,
    views: Sequence[str] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the cascade's networks on preprocessed cases and write the checkpoint folder.

    Args:
        cases: training cases (with labels), preprocessed with ``config["data"]["channels"]``.
        output_dir: checkpoint folder; created where missing. Networks already listed in its
            cascade.json are kept, and retrained only where `stages`/`views` name them.
        config: a configuration as returned by :func:`load_ucltig_config`.
        stages, views: train only these (default ``config["cascade"]``'s lists).
        resume: skip networks that the folder's cascade.json already lists and whose file
            exists, so an interrupted run continues with the next network.

    Returns:
        The cascade.json contents written.

    Raises:
        ValueError: unknown stage, view or loss, or no case with the region a stage needs.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cascade_config = config["cascade"]
    stages = list(stages or cascade_config["stages"])
    views = list(views or cascade_config["views"])
    for stage in stages:
        if stage not in STAGES:
            raise ValueError(f"unknown UCL-TIG stage {stage!r}; use one of {', '.join(STAGES)}")
    for view in views:
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; use one of {', '.join(VIEWS)}")

    training = config["training"]
    channels = list(config["data"]["channels"])
    width = int(config["model"]["params"].get("width", 32))
    patch_sizes = {stage: tuple(cascade_config["patch_sizes"].get(stage, DEFAULT_PATCH_SIZES[stage])) for stage in STAGES}
    seed = int(config.get("seed", 0))
    device = resolve_device(training.get("device", "cpu"))
    max_minutes = training.get("max_minutes")
    deadline = None if max_minutes is None else time.perf_counter() + 60.0 * float(max_minutes)

    manifest = _read_manifest(output_dir) or {"format": CASCADE_FORMAT, "version": 1, "networks": {}}
    manifest.update(
        {
            "channels": channels,
            "substitute": dict(config["data"].get("substitute") or {}),
            "label_schema": config["data"].get("label_schema") or "brats2017",
            "patch_sizes": {stage: list(size) for stage, size in patch_sizes.items()},
            "inference": dict(config.get("inference", {})),
            "training_cases": sorted(case.case_id for case in cases),
        }
    )
    manifest.setdefault("history", {})

    jobs = [(stage, view) for stage in stages for view in views]
    log.info("training %d UCL-TIG networks on %d cases (device %s)", len(jobs), len(cases), device)
    if resume:
        done = [
            (stage, view)
            for stage, view in jobs
            if (name := manifest["networks"].get(stage, {}).get(view)) and (output_dir / name).is_file()
        ]
        if done:
            log.info("resuming: %s already trained", ", ".join(f"{s} {v}" for s, v in done))
        jobs = [job for job in jobs if job not in done]
    for number, (stage, view) in enumerate(jobs):
        torch.manual_seed(seed * 1000 + number)
        sampler = PatchSampler(cases, stage, view, patch_sizes[stage], int(cascade_config.get("region_margin", 5)), seed * 1000 + number)
        network = UclTigNet(stage, view, in_channels=len(channels), width=width)
        max_seconds = None
        if deadline is not None:
            max_seconds = max((deadline - time.perf_counter()) / (len(jobs) - number), 1.0)
        history = train_network(
            network,
            sampler,
            iterations=int(training["iterations"]),
            batch_size=int(config["patches"]["batch_size"]),
            learning_rate=float(config["optimizer"]["lr"]),
            loss=config["loss"]["name"],
            max_seconds=max_seconds,
            log_every=int(training.get("log_every", 100)),
            device=device,
            progress=progress,
        )

        name = f"{stage}_{view}.safetensors"
        save_checkpoint(
            output_dir / name,
            network,
            {
                "channels": channels,
                "label_schema": manifest["label_schema"],
                "patch_size": list(patch_sizes[stage]),
                "training": {"config": dict(config), "iterations": history.iterations, "seconds": round(history.seconds, 1)},
                "stage": stage,
                "region": {"wnet": "whole_tumor", "tnet": "tumor_core", "enet": "enhancing_tumor"}[stage],
            },
        )
        manifest["networks"].setdefault(stage, {})[view] = name
        manifest["history"][f"{stage}_{view}"] = {
            "iterations": history.iterations,
            "seconds": round(history.seconds, 1),
            "losses": history.losses,
            "fixed_batch_loss": history.fixed_batch_loss,
        }
        _write_json_atomic(output_dir / CASCADE_FILE, manifest)
        log.info(
            "%s %s: %d iterations in %.0f s, fixed-batch loss %.4f -> %.4f",
            stage,
            view,
            history.iterations,
            history.seconds,
            history.fixed_batch_loss["before"],
            history.fixed_batch_loss["after"],
        )
    return manifest


def train_cascade_from_config(
    config: Mapping[str, Any] | str | Path,
    output_dir: str | Path,
    *,
    overrides: Sequence[str] = (),
    stages: Sequence[str] | None = None,
    views: Sequence[str] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Discover, split and preprocess the configured dataset, then train the cascade.

    The patient-level split is that of AlbuNet training
    (:func:`gliomaseg.training.datasets.split_cases` with ``data.validation_fraction`` and
    ``seed``, or an earlier run's ``data.split_file``), so both models can be compared on the
    same held-out cases. It is written to ``output_dir/split.json``, the resolved configuration
    to ``output_dir/config.yaml``, and only the training cases are trained on.

    Args:
        config: a configuration dict (merged onto the shipped defaults) or a YAML path.
        output_dir: the checkpoint folder.
        overrides: ``key.sub=value`` changes applied on top of `config`.
        stages, views: train only these networks.
        resume: continue an interrupted run in `output_dir`: its split.json is reused and
            networks already trained are skipped.

    Returns:
        The cascade.json contents written.

    Raises:
        FileNotFoundError: the dataset folder is missing.
        ValueError: no cases, a case without a label map, an unreadable split file, or an
            invalid setting (ConfigError is a ValueError).
    """
    from gliomaseg.data.preprocessing import preprocess_case
    from gliomaseg.training.datasets import discover_training_cases, read_split, split_cases

    if isinstance(config, Mapping):
        config = merge(load_ucltig_config(None), config)
        config = merge(config, parse_overrides(overrides))
    else:
        config = load_ucltig_config(config, overrides)
    data = config["data"]
    if not data.get("dataset"):
        raise ValueError("the configuration has no data.dataset; set it to a folder of cases (--set data.dataset=PATH)")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    cases = discover_training_cases(config)
    by_id = {case.case_id: case for case in cases}
    split_file = output_dir / "split.json" if resume and (output_dir / "split.json").is_file() else data.get("split_file")
    if split_file:
        split = read_split(split_file, list(by_id))
    else:
        split = split_cases(list(by_id), float(data.get("validation_fraction", 0.2)), int(config.get("seed", 0)))
    _write_json_atomic(output_dir / "split.json", split.to_json())
    dump_config(config, output_dir / "config.yaml")

    started = time.perf_counter()
    substitute = dict(data.get("substitute") or {}) or None
    preprocessed = [
        preprocess_case(by_id[case_id], data["channels"], substitute=substitute)
        for case_id in tqdm(split.train, desc="preprocessing", unit="case", disable=not progress)
    ]
    log.info("preprocessed %d training cases in %.0f s (%d held out)", len(preprocessed), time.perf_counter() - started, len(split.validation))
    return train_cascade(preprocessed, output_dir, config, stages=stages, views=views, resume=resume, progress=progress)
