"""Label schemas of glioma datasets, the model's four classes and the evaluation regions.

Every dataset names tumor sub-regions with its own integer values. A schema maps each
value to a tissue, and every conversion goes through the model's four classes:

    0 background, 1 necrotic or non-enhancing core (NCR/NET), 2 edema (ED), 3 enhancing tumor (ET)

which is the BraTS 2023 numbering. The evaluation regions are built from tissues, so a
prediction and a reference in different schemas are compared region by region.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

BACKGROUND, CORE, EDEMA, ENHANCING = 0, 1, 2, 3
MODEL_CLASS_NAMES = ("background", "necrotic/non-enhancing core", "edema", "enhancing tumor")
NUM_CLASSES = 4

REGIONS = ("whole_tumor", "tumor_core", "enhancing_tumor")
REGION_LABELS = {"whole_tumor": "WT", "tumor_core": "TC", "enhancing_tumor": "ET"}
# Model classes that make up each evaluation region.
REGION_CLASSES: dict[str, tuple[int, ...]] = {
    "whole_tumor": (CORE, EDEMA, ENHANCING),
    "tumor_core": (CORE, ENHANCING),
    "enhancing_tumor": (ENHANCING,),
}


class LabelError(ValueError):
    """A label map contains values that its schema does not define."""


@dataclass(frozen=True)
class LabelSchema:
    """A dataset's label values: value -> (tissue name, model class)."""

    name: str
    description: str
    values: dict[int, tuple[str, int]]
    # Value written for each model class when converting back into this schema.
    class_to_value: tuple[int, int, int, int]

    @property
    def allowed_values(self) -> tuple[int, ...]:
        return (0, *sorted(self.values))

    def lookup_table(self) -> np.ndarray:
        """Return an int array mapping label value -> model class, -1 for undefined values."""
        table = np.full(max(self.allowed_values) + 1, -1, dtype=np.int16)
        table[0] = BACKGROUND
        for value, (_, model_class) in self.values.items():
            table[value] = model_class
        return table


SCHEMAS: dict[str, LabelSchema] = {
    "brats2017": LabelSchema(
        name="brats2017",
        description="BraTS 2017-2021: 1 necrotic/non-enhancing core, 2 edema, 4 enhancing",
        values={1: ("necrotic/non-enhancing core", CORE), 2: ("edema", EDEMA), 4: ("enhancing tumor", ENHANCING)},
        class_to_value=(0, 1, 2, 4),
    ),
    "brats2023": LabelSchema(
        name="brats2023",
        description="BraTS 2023+: 1 necrotic/non-enhancing core, 2 edema, 3 enhancing",
        values={1: ("necrotic/non-enhancing core", CORE), 2: ("edema", EDEMA), 3: ("enhancing tumor", ENHANCING)},
        class_to_value=(0, 1, 2, 3),
    ),
    "msd": LabelSchema(
        name="msd",
        description="Medical Segmentation Decathlon Task01: 1 edema, 2 non-enhancing tumor, 3 enhancing",
        values={1: ("edema", EDEMA), 2: ("non-enhancing tumor", CORE), 3: ("enhancing tumor", ENHANCING)},
        class_to_value=(0, 2, 1, 3),
    ),
    "brats2013": LabelSchema(
        name="brats2013",
        description="BRATS 2013/2015: 1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing",
        values={
            1: ("necrosis", CORE),
            2: ("edema", EDEMA),
            3: ("non-enhancing tumor", CORE),
            4: ("enhancing tumor", ENHANCING),
        },
        # Necrosis and non-enhancing tumor are one model class; converting back writes 1.
        class_to_value=(0, 1, 2, 4),
    ),
}
SCHEMA_ALIASES = {
    "brats2018": "brats2017",
    "brats2019": "brats2017",
    "brats2020": "brats2017",
    "brats2021": "brats2017",
    "brats2024": "brats2023",
    "brats2015": "brats2013",
    "msd_task01": "msd",
}


def get_schema(name: str | LabelSchema) -> LabelSchema:
    """Return the schema called `name` (aliases such as ``brats2020`` accepted).

    Raises:
        ValueError: the name is not a known schema.
    """
    if isinstance(name, LabelSchema):
        return name
    key = name.strip().lower().replace("-", "").replace(" ", "")
    key = SCHEMA_ALIASES.get(key, key)
    if key not in SCHEMAS:
        known = ", ".join([*SCHEMAS, *SCHEMA_ALIASES])
        raise ValueError(f"unknown label schema {name!r}; known schemas: {known}")
    return SCHEMAS[key]


def check_label_values(label_map: np.ndarray, schema: str | LabelSchema, path: str | Path | None = None) -> None:
    """Raise LabelError if `label_map` contains a value that `schema` does not define."""
    schema = get_schema(schema)
    values = np.unique(label_map)
    bad = [v for v in values.tolist() if v not in schema.allowed_values]
    if bad:
        where = f"{path}: " if path is not None else ""
        raise LabelError(
            f"{where}label value(s) {bad} are not defined in schema {schema.name!r} "
            f"({schema.description}; allowed {list(schema.allowed_values)}). "
            "Choose the schema that matches the file (--label-schema, or --pred-schema/--ref-schema in "
            "gliomaseg evaluate) or fix the label map."
        )


def to_model_classes(label_map: np.ndarray, schema: str | LabelSchema, path: str | Path | None = None) -> np.ndarray:
    """Map a label map in `schema` to model classes 0-3 (uint8, same shape).

    Raises:
        LabelError: a value is not defined in the schema.
    """
    schema = get_schema(schema)
    check_label_values(label_map, schema, path)
    table = schema.lookup_table()
    return table[np.asarray(label_map).astype(np.int64)].astype(np.uint8)


def from_model_classes(classes: np.ndarray, schema: str | LabelSchema) -> np.ndarray:
    """Map model classes 0-3 to the label values of `schema` (uint8, same shape)."""
    schema = get_schema(schema)
    classes = np.asarray(classes)
    if classes.size and (classes.min() < 0 or classes.max() >= NUM_CLASSES):
        raise ValueError(f"model classes must lie in 0..{NUM_CLASSES - 1}, found {classes.min()}..{classes.max()}")
    table = np.asarray(schema.class_to_value, dtype=np.uint8)
    return table[classes.astype(np.int64)]


def convert_labels(label_map: np.ndarray, source: str | LabelSchema, target: str | LabelSchema) -> np.ndarray:
    """Convert a label map from one schema to another through the model classes.

    Conversion into BRATS 2013/2015 writes necrosis (1) for the whole necrotic/non-enhancing
    core, because the other schemas do not tell the two tissues apart.
    """
    return from_model_classes(to_model_classes(label_map, source), target)


def region_masks(label_map: np.ndarray, schema: str | LabelSchema) -> dict[str, np.ndarray]:
    """Return boolean masks of whole tumor, tumor core and enhancing tumor for a label map."""
    classes = to_model_classes(label_map, schema)
    return region_masks_from_classes(classes)


def region_masks_from_classes(classes: np.ndarray) -> dict[str, np.ndarray]:
    """Return boolean region masks for an array of model classes 0-3."""
    return {region: np.isin(classes, members) for region, members in REGION_CLASSES.items()}
