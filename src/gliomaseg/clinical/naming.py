"""Output file names of a converted case in the BraTS 2017 or BraTS 2023 layout."""

from __future__ import annotations

from gliomaseg.clinical.errors import ConversionError

MODALITIES = ("t1", "t1c", "t2", "flair")

# Naming -> (separator, {modality or "seg": file tag}).
NAMINGS: dict[str, tuple[str, dict[str, str]]] = {
    "brats2017": ("_", {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}),
    "brats2023": ("-", {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}),
}
BRAIN_MASK_TAG = "brainmask"


def output_name(case_id: str, kind: str, naming: str = "brats2017") -> str:
    """Return the file name of a modality, "seg" (label map) or "brainmask" in a naming.

    Raises:
        ConversionError: unknown naming or kind.
    """
    if naming not in NAMINGS:
        raise ConversionError(f"naming {naming!r} is not one of {', '.join(NAMINGS)}.")
    separator, tags = NAMINGS[naming]
    if kind == BRAIN_MASK_TAG:
        return f"{case_id}{separator}{BRAIN_MASK_TAG}.nii.gz"
    if kind not in tags:
        raise ConversionError(f"{kind!r} is not one of {', '.join([*MODALITIES, 'seg', BRAIN_MASK_TAG])}.")
    return f"{case_id}{separator}{tags[kind]}.nii.gz"
