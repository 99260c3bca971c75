"""Errors raised while converting clinical scans into a BraTS-format case."""

from __future__ import annotations


class ConversionError(ValueError):
    """An input cannot be converted as requested; the message names the input and the fix."""


class DicomGeometryError(ConversionError):
    """A DICOM series has a slice geometry that cannot be corrected (for example mixed orientations)."""
