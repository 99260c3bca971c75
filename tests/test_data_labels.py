import numpy as np
import pytest

from gliomaseg.data import labels


def test_brats2017_to_model_classes():
    label_map = np.array([0, 1, 2, 4])
    assert labels.to_model_classes(label_map, "brats2017").tolist() == [0, 1, 2, 3]


def test_msd_to_model_classes():
    label_map = np.array([0, 1, 2, 3])
    assert labels.to_model_classes(label_map, "msd").tolist() == [0, 2, 1, 3]


def test_brats2013_merges_necrosis_and_non_enhancing():
    label_map = np.array([0, 1, 2, 3, 4])
    assert labels.to_model_classes(label_map, "brats2013").tolist() == [0, 1, 2, 1, 3]


@pytest.mark.parametrize("schema", ["brats2017", "brats2023", "msd"])
def test_round_trip_through_model_classes(schema):
    values = np.array(labels.get_schema(schema).allowed_values)
    converted = labels.from_model_classes(labels.to_model_classes(values, schema), schema)
    assert converted.tolist() == values.tolist()


def test_convert_brats2017_to_brats2023():
    assert labels.convert_labels(np.array([0, 1, 2, 4]), "brats2017", "brats2023").tolist() == [0, 1, 2, 3]


def test_convert_msd_to_brats2017():
    assert labels.convert_labels(np.array([0, 1, 2, 3]), "msd", "brats2017").tolist() == [0, 2, 1, 4]


def test_alias_brats2020_is_brats2017():
    assert labels.get_schema("BraTS2020").name == "brats2017"


def test_unknown_schema_names_known_ones():
    with pytest.raises(ValueError, match="brats2023"):
        labels.get_schema("brats1999")


def test_value_4_rejected_in_brats2023(tmp_path):
    with pytest.raises(labels.LabelError) as info:
        labels.to_model_classes(np.array([0, 4]), "brats2023", tmp_path / "case-seg.nii.gz")
    message = str(info.value)
    assert "case-seg.nii.gz" in message
    assert "[4]" in message
    assert "brats2023" in message


def test_value_3_rejected_in_brats2017():
    with pytest.raises(labels.LabelError, match=r"\[3\].*brats2017"):
        labels.to_model_classes(np.array([0, 3]), "brats2017")


def test_region_masks_brats2017():
    label_map = np.array([0, 1, 2, 4])
    regions = labels.region_masks(label_map, "brats2017")
    assert regions["whole_tumor"].tolist() == [False, True, True, True]
    assert regions["tumor_core"].tolist() == [False, True, False, True]
    assert regions["enhancing_tumor"].tolist() == [False, False, False, True]


def test_region_masks_agree_across_schemas():
    brats = np.array([0, 1, 2, 4, 2])
    msd = labels.convert_labels(brats, "brats2017", "msd")
    for region in labels.REGIONS:
        assert np.array_equal(labels.region_masks(brats, "brats2017")[region], labels.region_masks(msd, "msd")[region])


def test_from_model_classes_rejects_out_of_range():
    with pytest.raises(ValueError, match="0..3"):
        labels.from_model_classes(np.array([0, 5]), "brats2017")
