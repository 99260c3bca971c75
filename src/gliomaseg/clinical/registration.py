"""Rigid co-registration of one modality to the reference modality (6 degrees of freedom).

The method is SimpleITK's ImageRegistrationMethod with a Euler3D transform (three
rotations about the reference's centre, three translations), Mattes mutual information
(50 histogram bins, 20 % random samples with a fixed seed) and regular step gradient
descent over three resolution levels (shrink 4, 2, 1 voxels; Gaussian smoothing 2, 1, 0 mm).
Scans of one exam share the scanner's coordinate system, so the start is the identity
(`initialization="scanner"`); scans from different exams can start from aligned centres
of mass (`"moments"`).

A result is flagged as implausible when it moves the head more than rigid head motion
within one exam would (thresholds below) or when its final metric is much weaker than
that of the other modalities; flagged results are kept but reported.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from gliomaseg.clinical.errors import ConversionError

log = logging.getLogger(__name__)

# Plausibility thresholds for one exam.
MAX_ROTATION_DEG = 15.0  # total rotation angle
MAX_TRANSLATION_MM = 20.0  # displacement of the reference's centre
# A modality whose final mutual information is below this fraction of the median over all
# registered modalities is flagged (Mattes MI values are negative; their magnitudes are compared).
MIN_RELATIVE_METRIC = 0.5

INITIALIZATIONS = ("scanner", "moments")


@dataclass
class RegistrationResult:
    """A rigid transform mapping reference (fixed) points to moving-image points, with its metrics.

    `metric_before` and `metric_after` are Mattes mutual information evaluated on all voxels
    of the reference (inside its mask where one is given) for the identity and the final
    transform; lower (more negative) is better.
    """

    transform: sitk.Euler3DTransform
    metric_before: float
    metric_after: float
    optimizer_metric: float
    iterations: int
    stop_condition: str
    warnings: list[str] = field(default_factory=list)

    @property
    def rotation_deg(self) -> tuple[float, float, float]:
        """Euler angles about x, y, z of the LPS world, in degrees."""
        return tuple(math.degrees(a) for a in (self.transform.GetAngleX(), self.transform.GetAngleY(),
                                                self.transform.GetAngleZ()))

    @property
    def rotation_angle_deg(self) -> float:
        """Total rotation angle (axis-angle magnitude) in degrees."""
        matrix = np.asarray(self.transform.GetMatrix()).reshape(3, 3)
        return math.degrees(math.acos(float(np.clip((np.trace(matrix) - 1.0) / 2.0, -1.0, 1.0))))

    @property
    def translation_mm(self) -> tuple[float, float, float]:
        """Displacement of the rotation centre (the reference's centre) in LPS mm."""
        return tuple(self.transform.GetTranslation())

    @property
    def plausible(self) -> bool:
        return not self.warnings

    def to_dict(self) -> dict:
        return {
            "transform": "Euler3DTransform",
            "maps": "reference (fixed) physical points to moving physical points, LPS mm",
            "parameters": [float(p) for p in self.transform.GetParameters()],
            "parameter_names": ["angle_x_rad", "angle_y_rad", "angle_z_rad", "tx_mm", "ty_mm", "tz_mm"],
            "center_mm": [float(c) for c in self.transform.GetCenter()],
            "matrix": [float(m) for m in self.transform.GetMatrix()],
            "rotation_deg": [round(a, 4) for a in self.rotation_deg],
            "rotation_angle_deg": round(self.rotation_angle_deg, 4),
            "translation_mm": [round(t, 4) for t in self.translation_mm],
            "metric": "Mattes mutual information (negative; lower is better)",
            "metric_before": self.metric_before,
            "metric_after": self.metric_after,
            "optimizer_final_metric": self.optimizer_metric,
            "iterations": self.iterations,
            "stop_condition": self.stop_condition,
            "plausible": self.plausible,
            "warnings": list(self.warnings),
        }


def register_rigid(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
    initialization: str = "scanner",
    seed: int = 20240,
) -> RegistrationResult:
    """Find the rigid transform that aligns `moving` to `fixed` by maximising mutual information.

    Args:
        fixed: the reference image (any orientation and spacing, mm).
        moving: the image to align; its voxel grid may differ from `fixed`.
        fixed_mask, moving_mask: optional binary brain masks on each image's grid that
            restrict the metric to brain voxels.
        initialization: "scanner" (identity: both scans share the scanner's coordinates)
            or "moments" (align the centres of mass first).
        seed: seed of the metric's random sampling, for reproducible results.

    Returns:
        A `RegistrationResult` with plausibility warnings for rotation and translation
        (the metric check across modalities is `flag_weak_metrics`).

    Raises:
        ConversionError: unknown initialization, or the optimizer failed (for example
            because the images do not overlap).
    """
    if initialization not in INITIALIZATIONS:
        raise ConversionError(f"initialization {initialization!r} is not one of {', '.join(INITIALIZATIONS)}.")
    fixed_float = sitk.Cast(fixed, sitk.sitkFloat32)
    moving_float = sitk.Cast(moving, sitk.sitkFloat32)

    center = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in fixed.GetSize()])
    initial = sitk.Euler3DTransform()
    initial.SetCenter(center)
    if initialization == "moments":
        moments = sitk.CenteredTransformInitializer(
            fixed_float, moving_float, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
        )
        initial = sitk.Euler3DTransform(moments)

    method = _registration_method(fixed_mask, moving_mask, seed)
    method.SetInitialTransform(initial, inPlace=False)
    try:
        final = method.Execute(fixed_float, moving_float)
    except RuntimeError as error:
        raise ConversionError(
            f"rigid registration failed ({str(error).strip().splitlines()[-1]}); check that the scans show the "
            "same head and overlap in scanner coordinates, or try initialization='moments'."
        ) from error
    transform = _as_euler(final, center)

    identity = sitk.Euler3DTransform()
    identity.SetCenter(center)
    result = RegistrationResult(
        transform=transform,
        metric_before=evaluate_metric(fixed_float, moving_float, identity, fixed_mask),
        metric_after=evaluate_metric(fixed_float, moving_float, transform, fixed_mask),
        optimizer_metric=float(method.GetMetricValue()),
        iterations=int(method.GetOptimizerIteration()),
        stop_condition=method.GetOptimizerStopConditionDescription(),
    )
    result.warnings.extend(plausibility_warnings(result))
    return result


def plausibility_warnings(result: RegistrationResult) -> list[str]:
    """Return warnings for a rotation, translation or metric change beyond plausible head motion in one exam."""
    warnings = []
    if result.rotation_angle_deg > MAX_ROTATION_DEG:
        warnings.append(
            f"rotation of {result.rotation_angle_deg:.1f} degrees exceeds {MAX_ROTATION_DEG:g} degrees of plausible "
            "head motion within one exam"
        )
    shift = float(np.linalg.norm(result.translation_mm))
    if shift > MAX_TRANSLATION_MM:
        warnings.append(
            f"translation of {shift:.1f} mm exceeds {MAX_TRANSLATION_MM:g} mm of plausible head motion within one exam"
        )
    if result.metric_after > result.metric_before:
        warnings.append("registration made the mutual information worse than the scanner alignment")
    return warnings


def flag_weak_metrics(results: dict[str, RegistrationResult]) -> None:
    """Add a warning to each result whose final metric is far weaker than the median of all results.

    Needs at least three results, so that the median describes the others; with fewer it
    does nothing.
    """
    if len(results) < 3:
        return
    median = float(np.median([abs(r.metric_after) for r in results.values()]))
    for name, result in results.items():
        if abs(result.metric_after) < MIN_RELATIVE_METRIC * median:
            result.warnings.append(
                f"final mutual information {result.metric_after:.3f} is weaker than {MIN_RELATIVE_METRIC:g} x the "
                f"median over modalities ({-median:.3f})"
            )


def evaluate_metric(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                    fixed_mask: sitk.Image | None = None) -> float:
    """Return Mattes mutual information (50 bins) of `moving` under `transform` over all `fixed` voxels.

    The images are cast to float32; only voxels inside `fixed_mask` count where it is given.
    """
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    method.SetMetricSamplingStrategy(method.NONE)
    method.SetInterpolator(sitk.sitkLinear)
    if fixed_mask is not None:
        method.SetMetricFixedMask(_binary(fixed_mask))
    method.SetInitialTransform(transform)
    return float(method.MetricEvaluate(sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32)))


def _registration_method(fixed_mask, moving_mask, seed: int) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.2, seed)
    if fixed_mask is not None:
        method.SetMetricFixedMask(_binary(fixed_mask))
    if moving_mask is not None:
        method.SetMetricMovingMask(_binary(moving_mask))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=300, relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def _binary(mask: sitk.Image) -> sitk.Image:
    return sitk.Cast(mask != 0, sitk.sitkUInt8)


def _as_euler(transform: sitk.Transform, center) -> sitk.Euler3DTransform:
    """Flatten the optimizer's output into one Euler3D transform about `center`."""
    if isinstance(transform, sitk.CompositeTransform):
        transform.FlattenTransform()
        transform = transform.GetNthTransform(0) if transform.GetNumberOfTransforms() == 1 else transform
    euler = sitk.Euler3DTransform()
    euler.SetCenter(center)
    if isinstance(transform, sitk.Euler3DTransform) or transform.GetName() == "Euler3DTransform":
        source = sitk.Euler3DTransform(transform)
        euler.SetMatrix(source.GetMatrix())
        offset = np.asarray(source.TransformPoint(center)) - np.asarray(center)
        euler.SetTranslation(tuple(float(v) for v in offset))
        return euler
    raise ConversionError(f"rigid registration returned an unexpected transform type {transform.GetName()}.")
