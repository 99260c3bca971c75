"""Training augmentation of patch regions with MONAI transforms.

Each transform fires with its own probability per sample. First the spatial transforms:
rotation, isotropic scaling and elastic deformation are drawn, the region around the patch that
they reach is cut from the case (see `data.patches`), and one resampling maps it to the patch
(MONAI Affine, or Rand2DElastic/Rand3DElastic with the drawn rotation and scale when the
deformation fires). Images are interpolated linearly, label maps with nearest neighbour, and
voxels outside the case are 0. Then mirroring, brightness, gamma, Gaussian noise and Gaussian
blur run on the patch.

2D patches (depth 1) are augmented as (C, H, W) images: rotation is in-plane only and no
transform moves voxels across slices.

Configuration (a mapping; every entry optional, a missing entry or prob 0 turns a transform off):

    rotation:   {prob, degrees, axes: in_plane | all}   uniform in [-degrees, degrees]
    scaling:    {prob, range: [min, max]}               zoom factor, < 1 shrinks the anatomy
    elastic:    {prob, magnitude: [min, max], spacing: [..] (2D), sigma: [min, max] (3D)}
                MONAI Rand2DElastic (control-point spacing in voxels, offset std in voxels)
                or Rand3DElastic (smoothing sigma in voxels, offset magnitude)
    flip:       {prob, axes: [0, 1, 2]}                 each axis (D, H, W) flipped with prob
    brightness: {prob, range: [min, max]}               multiplier per channel
    gamma:      {prob, range: [min, max]}               gamma on the patch's min-max range
    noise:      {prob, std}                             noise std drawn uniformly in [0, std]
    blur:       {prob, sigma: [min, max]}               Gaussian sigma in voxels, per axis
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import (
    Affine,
    Compose,
    Rand2DElasticd,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
)
from monai.transforms.utils import create_rotate

KEYS = ("image", "label")
KNOWN_TRANSFORMS = ("rotation", "scaling", "elastic", "flip", "brightness", "gamma", "noise", "blur")


def _prob(config: Mapping, name: str) -> float:
    entry = config.get(name) or {}
    prob = float(entry.get("prob", 0.0))
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"augmentation.{name}.prob is {prob}; a probability lies in [0, 1]")
    return prob


def _pair(value, name: str) -> tuple[float, float]:
    values = [float(v) for v in (value if isinstance(value, (list, tuple)) else (value, value))]
    if len(values) != 2 or values[0] > values[1]:
        raise ValueError(f"augmentation {name} must be [min, max] with min <= max, got {value}")
    return values[0], values[1]


def _elastic_reach(config: Mapping, two_d: bool) -> float:
    """Estimate how far (in voxels) the elastic deformation moves a voxel: three standard deviations."""
    if _prob(config, "elastic") == 0:
        return 0.0
    entry = config["elastic"]
    magnitude = _pair(entry.get("magnitude", (0.0, 0.0)), "elastic.magnitude")[1]
    if two_d:
        # Rand2DElastic adds normal(0, 1) * magnitude offsets at control points.
        return 3.0 * magnitude
    # Rand3DElastic smooths uniform(-1, 1) offsets with a Gaussian of width sigma; the smoothed
    # field's standard deviation is about (1 / sqrt(3)) / (2 sqrt(pi) sigma)^(3/2).
    sigma = _pair(entry.get("sigma", (1.0, 1.0)), "elastic.sigma")[0]
    return 3.0 * magnitude / math.sqrt(3.0) / (2.0 * math.sqrt(math.pi) * sigma) ** 1.5


@dataclass(frozen=True)
class SpatialDraw:
    """The spatial transform drawn for one sample: nothing happens when all are at rest.

    Attributes:
        angles: rotation in radians about the D, H and W axes (only D for 2D patches).
        zoom: isotropic magnification; > 1 enlarges the anatomy.
        elastic: whether the elastic deformation fires.
        seed: seed of the deformation field and of the patch-level transforms.
    """

    angles: tuple[float, float, float] = (0.0, 0.0, 0.0)
    zoom: float = 1.0
    elastic: bool = False
    seed: int = 0

    @property
    def moves_voxels(self) -> bool:
        return self.elastic or self.zoom != 1.0 or any(self.angles)


class PatchAugmentation:
    """Augment a region and return it cropped to the patch; picklable, so it runs in DataLoader workers.

    Args:
        patch_size: (D, H, W) of the output patch; depth 1 selects 2D augmentation.
        config: the augmentation mapping described in the module docstring.

    Use: `draw = augmentation.draw(rng)`, cut the region `augmentation.margin(draw)` voxels
    around the patch, then `augmentation(image_region, label_region, draw)` returns
    (image float32 (C, *patch), label uint8 (*patch)). The result depends only on the region
    and the draw.

    Raises:
        ValueError: unknown entries, probabilities outside [0, 1], invalid ranges.
    """

    def __init__(self, patch_size: Sequence[int], config: Mapping) -> None:
        unknown = sorted(set(config) - set(KNOWN_TRANSFORMS) - {"enabled"})
        if unknown:
            raise ValueError(f"unknown augmentation entries {unknown}; known: {', '.join(KNOWN_TRANSFORMS)}")
        self.patch_size = tuple(int(s) for s in patch_size)
        self.two_d = self.patch_size[0] == 1
        self.config = dict(config)
        self.enabled = bool(config.get("enabled", True))

        self._rotation_prob = _prob(config, "rotation")
        self._max_angles = self._rotation_limits()
        self._scaling_prob = _prob(config, "scaling")
        self._zoom_range = _pair((config.get("scaling") or {}).get("range", (1.0, 1.0)), "scaling.range")
        if self._zoom_range[0] <= 0:
            raise ValueError(f"augmentation.scaling.range must be positive, got {list(self._zoom_range)}")
        self._elastic_prob = _prob(config, "elastic")
        self._elastic_reach = _elastic_reach(config, self.two_d)
        self._elastic_options = self._elastic_parameters()
        self._patch_transforms = Compose(self._flips() + self._intensity())

    @property
    def _spatial_patch(self) -> tuple[int, ...]:
        return self.patch_size[1:] if self.two_d else self.patch_size

    def _rotation_limits(self) -> tuple[float, float, float]:
        if self._rotation_prob == 0:
            return (0.0, 0.0, 0.0)
        entry = self.config["rotation"]
        angle = math.radians(float(entry.get("degrees", 0.0)))
        axes = entry.get("axes", "in_plane")
        if axes not in ("in_plane", "all"):
            raise ValueError(f"augmentation.rotation.axes is {axes!r}; use in_plane or all")
        if self.two_d or axes == "in_plane":
            return (angle, 0.0, 0.0)
        return (angle, angle, angle)

    def _elastic_parameters(self) -> dict:
        if self._elastic_prob == 0:
            return {}
        entry = self.config["elastic"]
        magnitude = _pair(entry.get("magnitude", (0.0, 0.0)), "elastic.magnitude")
        if self.two_d:
            spacing = tuple(float(s) for s in entry.get("spacing", (32.0, 32.0)))
            return {"spacing": spacing, "magnitude_range": magnitude}
        return {"sigma_range": _pair(entry.get("sigma", (5.0, 8.0)), "elastic.sigma"), "magnitude_range": magnitude}

    def _flips(self) -> list:
        prob = _prob(self.config, "flip")
        if prob == 0:
            return []
        axes = [int(a) for a in self.config["flip"].get("axes", (0, 1, 2))]
        if any(a not in (0, 1, 2) for a in axes):
            raise ValueError(f"augmentation.flip.axes {axes} must be among 0 (D), 1 (H), 2 (W)")
        if self.two_d:
            axes = [a - 1 for a in axes if a != 0]
        return [RandFlipd(KEYS, prob=prob, spatial_axis=a) for a in axes]

    def _intensity(self) -> list:
        config = self.config
        transforms = []
        if _prob(config, "brightness") > 0:
            low, high = _pair(config["brightness"].get("range", (1.0, 1.0)), "brightness.range")
            transforms.append(RandScaleIntensityd("image", factors=(low - 1.0, high - 1.0), prob=_prob(config, "brightness"), channel_wise=True))
        if _prob(config, "gamma") > 0:
            gamma = _pair(config["gamma"].get("range", (1.0, 1.0)), "gamma.range")
            transforms.append(RandAdjustContrastd("image", prob=_prob(config, "gamma"), gamma=gamma))
        if _prob(config, "noise") > 0:
            transforms.append(RandGaussianNoised("image", prob=_prob(config, "noise"), std=float(config["noise"].get("std", 0.1))))
        if _prob(config, "blur") > 0:
            sigma = _pair(config["blur"].get("sigma", (0.5, 1.5)), "blur.sigma")
            axes = {"sigma_x": sigma, "sigma_y": sigma} if self.two_d else {"sigma_x": sigma, "sigma_y": sigma, "sigma_z": sigma}
            transforms.append(RandGaussianSmoothd("image", prob=_prob(config, "blur"), **axes))
        return transforms

    def draw(self, rng: np.random.Generator) -> SpatialDraw:
        """Draw which spatial transforms fire for one sample, and their parameters."""
        seed = int(rng.integers(2**31 - 1))
        if not self.enabled:
            return SpatialDraw(seed=seed)
        angles = (0.0, 0.0, 0.0)
        if self._rotation_prob and rng.random() < self._rotation_prob:
            angles = tuple(float(rng.uniform(-a, a)) if a else 0.0 for a in self._max_angles)
        zoom = 1.0
        if self._scaling_prob and rng.random() < self._scaling_prob:
            zoom = float(rng.uniform(*self._zoom_range))
        elastic = bool(self._elastic_prob and rng.random() < self._elastic_prob)
        return SpatialDraw(angles, zoom, elastic, seed)

    def margin(self, draw: SpatialDraw) -> tuple[int, int, int]:
        """Return the voxels needed on each side of the patch for `draw`, per axis (D, H, W).

        The elastic reach is an estimate (three standard deviations of the offsets); zoom and
        rotation are exact. 2D patches never need a margin in depth.
        """
        if not draw.moves_voxels:
            return (0, 0, 0)
        half = np.asarray(self.patch_size, dtype=float) / 2.0
        reach = half + (self._elastic_reach if draw.elastic else 0.0)
        reach = reach / draw.zoom
        if any(draw.angles):
            reach = np.abs(create_rotate(3, list(draw.angles))[:3, :3]) @ reach
        margin = np.maximum(np.ceil(reach - half).astype(int) + 1, 0)
        if self.two_d:
            margin[0] = 0
        return tuple(int(m) for m in margin)

    def _resample(self, data: dict[str, torch.Tensor], draw: SpatialDraw) -> dict[str, torch.Tensor]:
        modes = ("bilinear", "nearest")
        angles = draw.angles[:1] if self.two_d else draw.angles
        scale = 1.0 / draw.zoom
        if draw.elastic:
            fixed_rotation = [(a, a) for a in angles]
            fixed_scale = [(scale - 1.0, scale - 1.0)] * len(self._spatial_patch)
            elastic_class = Rand2DElasticd if self.two_d else Rand3DElasticd
            transform = elastic_class(
                KEYS, prob=1.0, spatial_size=self._spatial_patch, rotate_range=fixed_rotation, scale_range=fixed_scale,
                mode=modes, padding_mode="zeros", **self._elastic_options,
            )
            transform.set_random_state(seed=draw.seed)
            return transform(data)
        out = {}
        for key, mode in zip(KEYS, modes):
            affine = Affine(
                rotate_params=list(angles), scale_params=[scale] * len(self._spatial_patch),
                spatial_size=self._spatial_patch, mode=mode, padding_mode="zeros", image_only=True,
            )
            out[key] = affine(data[key])
        return out

    def __call__(self, image: np.ndarray, label: np.ndarray, draw: SpatialDraw) -> tuple[np.ndarray, np.ndarray]:
        expected = tuple(p + 2 * m for p, m in zip(self.patch_size, self.margin(draw)))
        if tuple(image.shape[1:]) != expected or tuple(label.shape) != expected:
            raise ValueError(f"region of shape {image.shape[1:]} (label {label.shape}) does not match the region {expected} of this draw")
        data = {"image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), "label": torch.from_numpy(label[None].astype(np.float32))}
        if self.two_d:
            data = {key: value[:, 0] for key, value in data.items()}

        if draw.moves_voxels:
            data = self._resample(data, draw)
        if self.enabled:
            self._patch_transforms.set_random_state(seed=draw.seed)
            data = self._patch_transforms(data)

        image_out = torch.as_tensor(data["image"]).float()
        label_out = torch.as_tensor(data["label"])[0]
        if self.two_d:
            image_out = image_out[:, None]
            label_out = label_out[None]
        return image_out.numpy(), np.rint(label_out.numpy()).astype(np.uint8)
