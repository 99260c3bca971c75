"""Prediction with the UCL-TIG cascade: WNet, then TNet inside the whole tumor, then ENet inside the core.

Every stage runs its networks of the axial, sagittal and coronal views on the same crop and
averages their softmax probabilities (view fusion). The steps, on a preprocessed case in the
canonical (D, H, W) grid of :func:`gliomaseg.data.preprocessing.preprocess_case`:

1. WNet on the whole brain crop gives the whole tumor (WT), restricted to the brain mask.
   Connected components are found after a binary closing (18-connectivity). The largest is
   kept with every other component above ``min_whole_tumor_voxels`` (2000, as in the authors'
   code), and WT becomes the WNet mask inside the kept components.
2. TNet on the bounding box of WT plus ``margin`` voxels (5) gives the tumor core (TC),
   restricted to WT. Post-processing: closing, then the largest component, plus the second
   largest where it has more than a tenth of the largest's voxels.
3. ENet on the bounding box of TC plus the margin (the TNet crop where TC is empty) gives the
   enhancing tumor (ET), restricted to TC. An ET of fewer than ``min_enhancing_voxels`` (30)
   voxels is removed.
4. Each crop's result is pasted into the full grid at its box, and the regions become model
   classes: WT outside TC is 2 (edema), TC outside ET is 1 (necrotic/non-enhancing core), ET is 3.

Along a view's slice axis the networks take slabs of 19 slices and predict the central 11
(:data:`gliomaseg.models.ucltig.DEPTH_MARGIN` slices are lost on each side). The crop is
zero-padded by that margin, so every voxel gets a prediction, and slabs overlap where the
axis length is not a multiple of the step; overlapping probabilities are averaged. In-plane,
one window covers the whole crop, zero-padded up to the training patch size and to a
multiple of 4 (2 for ENet). Zero is the value of every voxel outside the brain after the
z-scoring of ``preprocess_case``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm.auto import tqdm

from gliomaseg.data.labels import CORE, EDEMA, ENHANCING
from gliomaseg.inference.sliding_window import resolve_device, window_starts
from gliomaseg.models.ucltig import DEPTH_MARGIN, STAGES, VIEWS, UclTigNet, from_view, to_view

# Channel order of the authors' networks: FLAIR, T1, T1c, T2.
DEFAULT_CHANNELS = ("flair", "t1", "t1c", "t2")

__all__ = [
    "CASCADE_FILE",
    "DEFAULT_CHANNELS",
    "CascadeResult",
    "UclTigCascade",
    "bounding_box",
    "expand_box",
    "paste",
    "fuse_views",
    "select_components",
    "predict_view_probabilities",
    "is_cascade_checkpoint",
    "read_cascade_manifest",
    "load_cascade",
    "predict_case_with_cascade",
    "class_probabilities",
    "predict_cases_with_cascade",
]

log = logging.getLogger(__name__)

CASCADE_FILE = "cascade.json"
CASCADE_FORMAT = "ucltig-cascade"
# 3D structuring element with 18-connectivity, as scipy's generate_binary_structure(3, 2).
_CLOSING_STRUCTURE = ndimage.generate_binary_structure(3, 2)

Box = tuple[slice, slice, slice]


# --- geometry of crops ----------------------------------------------------------------------


def bounding_box(mask: np.ndarray) -> Box | None:
    """Return the slices of the smallest box around the True voxels of a 3D mask, or None when it is empty."""
    if not mask.any():
        return None
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def expand_box(box: Box, margin: int, shape: Sequence[int]) -> Box:
    """Grow a box by `margin` voxels on every side, clamped to a grid of `shape`."""
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, int(n))) for s, n in zip(box, shape))


def paste(crop: np.ndarray, box: Box, shape: Sequence[int], fill: float = 0) -> np.ndarray:
    """Put a cropped (..., d, h, w) array back into a full (..., D, H, W) grid at `box`; other voxels get `fill`.

    Raises:
        ValueError: the crop's spatial shape differs from the box's.
    """
    box_shape = tuple(s.stop - s.start for s in box)
    if tuple(crop.shape[-3:]) != box_shape:
        raise ValueError(f"crop of spatial shape {tuple(crop.shape[-3:])} does not fit the box of shape {box_shape}")
    full = np.full((*crop.shape[:-3], *(int(n) for n in shape)), fill, dtype=crop.dtype)
    full[(Ellipsis, *box)] = crop
    return full


# --- post-processing ------------------------------------------------------------------------


def select_components(
    mask: np.ndarray,
    min_voxels: int | None = None,
    second_fraction: float | None = None,
    closing: bool = True,
) -> np.ndarray:
    """Keep the largest connected components of a binary mask.

    Components are found on the mask after a binary closing (18-connectivity), so parts
    separated by a one-voxel gap count as one. The largest component is always kept, and
    others are kept where they have more than `min_voxels` voxels, or, for the second
    largest only, more than `second_fraction` times the largest's voxels.

    Returns:
        bool array of the mask's shape: the input mask's voxels inside the kept components.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    grouped = ndimage.binary_closing(mask, structure=_CLOSING_STRUCTURE) | mask if closing else mask
    labels, count = ndimage.label(grouped, structure=_CLOSING_STRUCTURE)
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1]

    keep = {int(order[0]) + 1}
    for rank, index in enumerate(order[1:], start=1):
        size = sizes[index]
        if min_voxels is not None and size > min_voxels:
            keep.add(int(index) + 1)
        elif rank == 1 and second_fraction is not None and size > second_fraction * sizes[order[0]]:
            keep.add(int(index) + 1)
    return mask & np.isin(labels, list(keep))


def fuse_views(probabilities: Sequence[np.ndarray | torch.Tensor]) -> np.ndarray:
    """Average the class probabilities of several views with equal weights.

    Args:
        probabilities: one (K, D, H, W) array per view, all in the same canonical grid.

    Returns:
        float32 (K, D, H, W) mean.

    Raises:
        ValueError: no arrays, or arrays of different shapes.
    """
    if not probabilities:
        raise ValueError("view fusion needs at least one probability map")
    arrays = [np.asarray(p.detach().cpu() if isinstance(p, torch.Tensor) else p, dtype=np.float32) for p in probabilities]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"view probability maps have different shapes {sorted(shapes)}")
    return np.mean(np.stack(arrays), axis=0, dtype=np.float32)


# --- one view's network over a crop ---------------------------------------------------------


def _padding(size: int, target: int) -> tuple[int, int]:
    extra = max(target - size, 0)
    return extra // 2, extra - extra // 2


def predict_view_probabilities(
    network: UclTigNet,
    image: np.ndarray | torch.Tensor,
    *,
    slab_slices: int = 19,
    step: int | None = None,
    min_in_plane: Sequence[int] = (0, 0),
    batch_size: int = 5,
    device: str | torch.device | None = "cpu",
) -> torch.Tensor:
    """Predict the class probabilities of one view's network over a whole (C, D, H, W) crop.

    The crop is permuted into the view's axes and zero-padded: by 4 slices on each side of the
    slice axis, and in-plane up to `min_in_plane` and a multiple of the network's
    ``in_plane_multiple``. Slabs of `slab_slices` slices each give their central
    ``slab_slices - 8`` output slices, and overlapping outputs are averaged.

    Args:
        network: a UCL-TIG network; it is put in eval mode.
        image: float (C, D, H, W) crop, z-scored, 0 outside the brain.
        slab_slices: input slices per slab (19 in training), at least 9.
        step: slab stride in slices; default ``slab_slices - 8``, so slabs do not overlap
            except the last, which is aligned to the end.
        min_in_plane: minimum in-plane window (rows, columns) in the view's axes.
        batch_size: slabs per network call.
        device: where the network runs ("auto" picks CUDA when available).

    Returns:
        float32 (K, D, H, W) probabilities on the CPU, in the canonical grid of `image`.
    """
    device = resolve_device(device)
    if slab_slices < 2 * DEPTH_MARGIN + 1:
        raise ValueError(f"slab_slices must be at least {2 * DEPTH_MARGIN + 1}, got {slab_slices}")
    output_slices = slab_slices - 2 * DEPTH_MARGIN
    step = output_slices if step is None else min(int(step), output_slices)
    network = network.to(device).eval()

    volume = to_view(torch.as_tensor(np.asarray(image), dtype=torch.float32), network.view)
    slices, rows, columns = volume.shape[1:]
    multiple = network.in_plane_multiple
    row_target = max(int(min_in_plane[0]), -(-rows // multiple) * multiple)
    column_target = max(int(min_in_plane[1]), -(-columns // multiple) * multiple)
    row_pad = _padding(rows, -(-row_target // multiple) * multiple)
    column_pad = _padding(columns, -(-column_target // multiple) * multiple)
    # The slice axis is padded so the first and last slices sit at a slab's centre part, and up
    # to one slab where the crop is thinner.
    slice_pad = (DEPTH_MARGIN, DEPTH_MARGIN + max(output_slices - slices, 0))
    # F.pad lists the last axis first.
    padded = F.pad(volume, (*column_pad, *row_pad, *slice_pad))

    starts = window_starts(padded.shape[1], slab_slices, step)
    output_length = padded.shape[1] - 2 * DEPTH_MARGIN
    total: torch.Tensor | None = None
    counts = torch.zeros(output_length, dtype=torch.float32)
    with torch.no_grad():
        for first in range(0, len(starts), batch_size):
            chunk = starts[first : first + batch_size]
            batch = torch.stack([padded[:, s : s + slab_slices] for s in chunk]).to(device)
            scores = torch.softmax(network.net(batch).float(), dim=1).cpu()
            if total is None:
                total = torch.zeros((scores.shape[1], output_length, *padded.shape[2:]), dtype=torch.float32)
            for index, start in enumerate(chunk):
                total[:, start : start + output_slices] += scores[index]
                counts[start : start + output_slices] += 1

    probabilities = total / counts.view(1, -1, 1, 1)
    probabilities = probabilities[
        :,
        :slices,
        row_pad[0] : row_pad[0] + rows,
        column_pad[0] : column_pad[0] + columns,
    ]
    return from_view(probabilities, network.view).contiguous()


# --- the cascade ----------------------------------------------------------------------------


@dataclass
class CascadeResult:
    """Output of the cascade on one preprocessed case, all in its canonical (D, H, W) grid.

    Attributes:
        classes: uint8 model classes (0 background, 1 necrotic/non-enhancing core, 2 edema,
            3 enhancing).
        whole_tumor, tumor_core, enhancing_tumor: bool region masks after post-processing.
        tnet_box: the crop TNet ran on (WT bounding box plus margin; the brain crop when WT is empty).
        enet_box: the crop ENet ran on (TC bounding box plus margin; the TNet crop when TC is empty).
        probabilities: fused foreground probability of each stage that ran, float32 on the
            full grid (0 outside the stage's crop).
        seconds: wall time per stage.
    """

    classes: np.ndarray
    whole_tumor: np.ndarray
    tumor_core: np.ndarray
    enhancing_tumor: np.ndarray
    tnet_box: Box
    enet_box: Box
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class UclTigCascade:
    """The three-stage UCL-TIG cascade, each stage with one network per view.

    Args:
        networks: stage ("wnet", "tnet", "enet") -> view ("axial", "sagittal", "coronal") ->
            network. Every stage needs at least one view; the views of a stage are fused.
        margin: voxels added on every side of a stage's bounding box to make the next crop.
        min_whole_tumor_voxels: WT components above this size are kept besides the largest.
        min_enhancing_voxels: an ET with fewer voxels is removed.
        in_plane_sizes: stage -> minimum in-plane window (rows, columns), normally the
            training patch's; default the network's in-plane multiple only.
        slab_slices, batch_size, device: as in :func:`predict_view_probabilities`.
        channels: modalities in the networks' input channel order.
        substitute: missing-modality policy used when preprocessing cases, for example
            ``{"t1": "t1c"}``.
    """

    def __init__(
        self,
        networks: Mapping[str, Mapping[str, UclTigNet]],
        *,
        margin: int = 5,
        min_whole_tumor_voxels: int = 2000,
        min_enhancing_voxels: int = 30,
        in_plane_sizes: Mapping[str, Sequence[int]] | None = None,
        slab_slices: int = 19,
        batch_size: int = 5,
        device: str | torch.device | None = "cpu",
        channels: Sequence[str] = DEFAULT_CHANNELS,
        substitute: Mapping[str, str] | None = None,
    ) -> None:
        for stage in STAGES:
            if not networks.get(stage):
                raise ValueError(f"the cascade needs at least one {stage} network; got stages {sorted(networks)}")
            for view, network in networks[stage].items():
                if view not in VIEWS or network.view != view or network.stage != stage:
                    raise ValueError(f"network under {stage}/{view} is a {network.stage} network for the {network.view} view")
        self.networks = {stage: dict(networks[stage]) for stage in STAGES}
        self.margin = int(margin)
        self.min_whole_tumor_voxels = int(min_whole_tumor_voxels)
        self.min_enhancing_voxels = int(min_enhancing_voxels)
        self.in_plane_sizes = {stage: tuple(size) for stage, size in (in_plane_sizes or {}).items()}
        self.slab_slices = int(slab_slices)
        self.batch_size = int(batch_size)
        self.device = device
        self.channels = tuple(channels)
        self.substitute = dict(substitute or {})

    def stage_probability(self, stage: str, image: np.ndarray) -> np.ndarray:
        """Return the view-fused foreground probability, float32 (d, h, w), of one stage on a (C, d, h, w) crop."""
        per_view = []
        for view, network in self.networks[stage].items():
            rows, columns = self.in_plane_sizes.get(stage, (0, 0))
            per_view.append(
                predict_view_probabilities(
                    network,
                    image,
                    slab_slices=self.slab_slices,
                    min_in_plane=(rows, columns),
                    batch_size=self.batch_size,
                    device=self.device,
                )
            )
        return fuse_views(per_view)[1]

    def predict(self, image: np.ndarray, brain_mask: np.ndarray | None = None) -> CascadeResult:
        """Segment one preprocessed case.

        Args:
            image: float32 (C, D, H, W), channels in the order the networks were trained on.
            brain_mask: bool (D, H, W); WT is restricted to it. Default: voxels where any
                channel is non-zero.

        Returns:
            A CascadeResult on the (D, H, W) grid of `image`.
        """
        image = np.asarray(image, dtype=np.float32)
        shape = image.shape[1:]
        if brain_mask is None:
            brain_mask = np.any(image != 0, axis=0)
        whole_box: Box = tuple(slice(0, n) for n in shape)
        seconds: dict[str, float] = {}
        probabilities: dict[str, np.ndarray] = {}

        started = time.perf_counter()
        probabilities["wnet"] = self.stage_probability("wnet", image)
        whole_tumor = (probabilities["wnet"] > 0.5) & brain_mask
        whole_tumor = select_components(whole_tumor, min_voxels=self.min_whole_tumor_voxels)
        seconds["wnet"] = time.perf_counter() - started

        empty = np.zeros(shape, dtype=bool)
        if not whole_tumor.any():
            log.info("the whole tumor is empty; TNet and ENet are skipped")
            return CascadeResult(np.zeros(shape, dtype=np.uint8), whole_tumor, empty, empty.copy(), whole_box, whole_box, probabilities, seconds)

        started = time.perf_counter()
        tnet_box = expand_box(bounding_box(whole_tumor), self.margin, shape)
        core_crop = self.stage_probability("tnet", image[(slice(None), *tnet_box)])
        probabilities["tnet"] = paste(core_crop, tnet_box, shape)
        tumor_core = (probabilities["tnet"] > 0.5) & whole_tumor
        tumor_core = select_components(tumor_core, second_fraction=0.1)
        seconds["tnet"] = time.perf_counter() - started

        started = time.perf_counter()
        core_box = bounding_box(tumor_core)
        enet_box = tnet_box if core_box is None else expand_box(core_box, self.margin, shape)
        enhancing_crop = self.stage_probability("enet", image[(slice(None), *enet_box)])
        probabilities["enet"] = paste(enhancing_crop, enet_box, shape)
        enhancing = (probabilities["enet"] > 0.5) & tumor_core
        if enhancing.sum() < self.min_enhancing_voxels:
            enhancing[:] = False
        seconds["enet"] = time.perf_counter() - started

        classes = np.zeros(shape, dtype=np.uint8)
        classes[whole_tumor] = EDEMA
        classes[tumor_core] = CORE
        classes[enhancing] = ENHANCING
        return CascadeResult(classes, whole_tumor, tumor_core, enhancing, tnet_box, enet_box, probabilities, seconds)


# --- checkpoint folders ---------------------------------------------------------------------


def is_cascade_checkpoint(path: str | Path) -> bool:
    """Return True when `path` is a folder with a UCL-TIG ``cascade.json``."""
    return (Path(path) / CASCADE_FILE).is_file()


def read_cascade_manifest(folder: str | Path) -> dict[str, Any]:
    """Read and check the ``cascade.json`` of a UCL-TIG checkpoint folder.

    Raises:
        FileNotFoundError: the folder has no cascade.json.
        ValueError: the file is not valid JSON, is not a UCL-TIG cascade manifest, or names
            no network for a stage.
    """
    path = Path(folder) / CASCADE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; a UCL-TIG checkpoint folder contains cascade.json and one .safetensors file per network")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != CASCADE_FORMAT:
        raise ValueError(f"{path} is not a UCL-TIG cascade manifest (expected \"format\": \"{CASCADE_FORMAT}\")")
    networks = manifest.get("networks", {})
    missing = [stage for stage in STAGES if not networks.get(stage)]
    if missing:
        raise ValueError(f"{path} lists no network for {', '.join(missing)}; train them before predicting with the cascade")
    return manifest


def load_cascade(folder: str | Path, device: str | torch.device | None = "cpu", views: Sequence[str] | None = None) -> UclTigCascade:
    """Load a UCL-TIG cascade from a checkpoint folder written by :mod:`gliomaseg.training.ucltig`.

    Args:
        folder: folder with ``cascade.json`` and the networks' ``.safetensors`` files.
        device: where the networks run.
        views: use only these views (default every view in the folder).

    Raises:
        FileNotFoundError, ValueError: see :func:`read_cascade_manifest`.
        gliomaseg.models.CheckpointError: a network file is corrupt or does not fit its metadata.
    """
    from gliomaseg.models.checkpoint import load_checkpoint

    folder = Path(folder)
    manifest = read_cascade_manifest(folder)
    device = resolve_device(device)
    networks: dict[str, dict[str, UclTigNet]] = {}
    for stage in STAGES:
        networks[stage] = {}
        for view, name in manifest["networks"][stage].items():
            if views is not None and view not in views:
                continue
            network, _ = load_checkpoint(folder / name, map_location=device, expected={"model": f"ucltig_{stage}"})
            networks[stage][view] = network
    inference = manifest.get("inference", {})
    return UclTigCascade(
        networks,
        margin=inference.get("margin", 5),
        min_whole_tumor_voxels=inference.get("min_whole_tumor_voxels", 2000),
        min_enhancing_voxels=inference.get("min_enhancing_voxels", 30),
        in_plane_sizes={stage: size[1:] for stage, size in manifest.get("patch_sizes", {}).items()},
        slab_slices=inference.get("slab_slices", 19),
        batch_size=inference.get("batch_size", 5),
        device=device,
        channels=manifest.get("channels", DEFAULT_CHANNELS),
        substitute=manifest.get("substitute") or None,
    )


def predict_case_with_cascade(
    cascade: UclTigCascade | str | Path,
    case,
    *,
    substitute: Mapping[str, str] | None = None,
    device: str | torch.device | None = "cpu",
):
    """Segment one discovered case with the cascade and map the result to the case's file grid.

    Args:
        cascade: a loaded cascade or a checkpoint folder.
        case: a :class:`gliomaseg.data.cases.Case`.
        substitute: missing-modality policy, for example ``{"t1": "t1c"}``; default the
            cascade's (from its checkpoint).

    Returns:
        ``(classes, result, preprocessed)``: uint8 model classes in the input file's voxel
        order and shape, the :class:`CascadeResult` on the preprocessed grid, and the
        :class:`~gliomaseg.data.preprocessing.PreprocessedCase` (its ``geometry.reference``
        is the header to write outputs with).
    """
    from gliomaseg.data.preprocessing import preprocess_case

    if not isinstance(cascade, UclTigCascade):
        cascade = load_cascade(cascade, device=device)
    substitute = cascade.substitute if substitute is None else dict(substitute)
    started = time.perf_counter()
    preprocessed = preprocess_case(case, cascade.channels, substitute=substitute or None, with_label=False)
    result = cascade.predict(preprocessed.image, preprocessed.brain_mask)
    classes = preprocessed.geometry.restore(result.classes, fill=0)
    log.info(
        "case %s: UCL-TIG cascade in %.1f s (WT %d, TC %d, ET %d voxels)",
        case.case_id,
        time.perf_counter() - started,
        int(result.whole_tumor.sum()),
        int(result.tumor_core.sum()),
        int(result.enhancing_tumor.sum()),
    )
    return classes, result, preprocessed


def class_probabilities(result: CascadeResult) -> np.ndarray:
    """Combine the stages' fused foreground probabilities into float32 (4, D, H, W) model-class probabilities.

    The cascade's regions are nested (ET inside TC inside WT), so with p_wt, p_tc, p_et the
    stages' probabilities: background 1 - p_wt, edema p_wt (1 - p_tc), necrotic/non-enhancing
    core p_wt p_tc (1 - p_et), enhancing p_wt p_tc p_et. A stage that did not run at a voxel
    counts as 0. The argmax of these maps can differ from ``result.classes``, which also went
    through the connected-component and size rules.
    """
    shape = result.classes.shape
    whole = result.probabilities.get("wnet", np.zeros(shape, dtype=np.float32))
    core = result.probabilities.get("tnet", np.zeros(shape, dtype=np.float32))
    enhancing = result.probabilities.get("enet", np.zeros(shape, dtype=np.float32))
    probabilities = np.empty((4, *shape), dtype=np.float32)
    probabilities[0] = 1 - whole
    probabilities[EDEMA] = whole * (1 - core)
    probabilities[CORE] = whole * core * (1 - enhancing)
    probabilities[ENHANCING] = whole * core * enhancing
    return probabilities


def _write_case(cascade: UclTigCascade, folder: Path, case, output_dir: Path, schema, settings) -> "CaseResult":
    from gliomaseg.data.io import save_label_map
    from gliomaseg.data.labels import from_model_classes
    from gliomaseg.inference.outputs import (
        output_paths,
        save_probabilities,
        tumor_volumes_cm3,
        voxel_volume_mm3,
        write_json_atomic,
    )
    from gliomaseg.inference.predict import CaseResult

    paths = output_paths(output_dir, case.case_id)
    if paths["label_map"].exists() and not settings.overwrite:
        return CaseResult(case.case_id, "skipped", paths["label_map"], reason="output exists (use --overwrite to replace it)")

    started = time.perf_counter()
    classes, result, preprocessed = predict_case_with_cascade(cascade, case, substitute=settings.substitute or None)
    geometry = preprocessed.geometry
    voxel_mm3 = voxel_volume_mm3(geometry.reference.affine)
    volumes = tumor_volumes_cm3(result.classes, voxel_mm3)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_label_map(from_model_classes(classes, schema), geometry.reference, paths["label_map"], overwrite=True)
    if settings.save_probabilities:
        save_probabilities(class_probabilities(result), geometry, paths["probabilities"])
    seconds = time.perf_counter() - started

    report = {
        "case_id": case.case_id,
        "inputs": {m: str(source) for m, source in case.images.items()},
        "label_map": str(paths["label_map"]),
        "probabilities": str(paths["probabilities"]) if settings.save_probabilities else None,
        "label_schema": schema.name,
        "volumes_cm3": volumes,
        "voxel_volume_mm3": round(voxel_mm3, 6),
        "cropped_shape_dhw": list(geometry.cropped_shape),
        "checkpoint": {"path": str(folder), "model": "ucltig", "channels": list(cascade.channels)},
        "cascade": {
            "views": {stage: sorted(networks) for stage, networks in cascade.networks.items()},
            "tnet_box_dhw": [[s.start, s.stop] for s in result.tnet_box],
            "enet_box_dhw": [[s.start, s.stop] for s in result.enet_box],
        },
        "timing_s": {**{k: round(v, 3) for k, v in result.seconds.items()}, "total": round(seconds, 3)},
    }
    write_json_atomic(report, paths["report"])
    return CaseResult(case.case_id, "done", paths["label_map"], paths["report"], seconds=seconds, volumes_cm3=volumes)


def predict_cases_with_cascade(
    folder: str | Path,
    input_path: str | Path,
    output_dir: str | Path,
    settings=None,
    *,
    shard: str | tuple[int, int] | None = None,
    progress: bool = True,
):
    """Segment every case under `input_path` with the UCL-TIG cascade in checkpoint folder `folder`.

    The counterpart of :func:`gliomaseg.inference.predict.predict_cases` for cascade
    checkpoint folders, with the same outputs (``<case_id>.nii.gz``, ``<case_id>.json``,
    optionally ``<case_id>_probabilities.nii.gz`` from :func:`class_probabilities`), the same
    skipping, sharding and failure handling. Of the PredictionSettings it uses ``device``,
    ``label_schema``, ``overwrite``, ``substitute`` and ``save_probabilities``; the sliding
    window settings do not apply, because the cascade tiles its crops itself.

    Returns:
        A :class:`gliomaseg.inference.predict.PredictionSummary`.

    Raises:
        FileNotFoundError, ValueError: see :func:`read_cascade_manifest`; an output path that
            is an input file.
        CaseError: `input_path` contains no case.
    """
    from gliomaseg.data.labels import get_schema
    from gliomaseg.inference.predict import PredictionSettings, parse_shard, run_cohort, select_cohort

    settings = settings or PredictionSettings()
    index, count = parse_shard(shard)
    folder = Path(folder)
    cascade = load_cascade(folder, device=settings.device)
    explicit_schema = get_schema(settings.label_schema) if settings.label_schema else None
    if settings.tta or settings.gaussian or settings.window is not None:
        log.warning("the UCL-TIG cascade ignores the sliding-window settings (window, Gaussian weighting, mirroring)")

    cases, _ = select_cohort(input_path, output_dir, (index, count))
    output_dir = Path(output_dir)
    summary = run_cohort(
        cases,
        lambda case: _write_case(cascade, folder, case, output_dir, explicit_schema or case.schema, settings),
        progress=progress,
    )
    log.info("UCL-TIG prediction finished: %s", summary.format().splitlines()[0])
    return summary
