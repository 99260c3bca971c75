import gzip

import nibabel as nib
import numpy as np
import pytest

from gliomaseg.data.io import ImageError, load_volume, save_label_map, save_volume


def _oblique_affine():
    angle = np.deg2rad(17)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.9, 0.9, 3.3])
    affine[:3, 3] = [-101.5, 12.25, 40.0]
    return affine


def _write(path, array, affine, qform_code=1, sform_code=2):
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=qform_code)
    image.set_sform(affine, code=sform_code)
    nib.save(image, path)
    return path


def test_oblique_affine_round_trips(tmp_path):
    affine = _oblique_affine()
    source = _write(tmp_path / "t1c.nii.gz", np.arange(60, dtype=np.int16).reshape(3, 4, 5), affine)
    volume = load_volume(source)
    out = save_label_map(np.ones(volume.shape, dtype=np.uint8), volume, tmp_path / "seg.nii.gz")
    written = nib.load(out)
    assert np.allclose(written.affine, affine, atol=1e-6)
    assert np.allclose(written.get_qform(), nib.load(source).get_qform(), atol=1e-6)
    assert np.allclose(written.get_sform(), affine, atol=1e-6)


def test_qform_and_sform_codes_copied(tmp_path):
    source = _write(tmp_path / "flair.nii.gz", np.zeros((3, 4, 5), np.int16), _oblique_affine(), 1, 2)
    volume = load_volume(source)
    out = save_label_map(np.zeros(volume.shape, np.uint8), volume, tmp_path / "seg.nii.gz")
    header = nib.load(out).header
    assert int(header["qform_code"]) == 1
    assert int(header["sform_code"]) == 2


def test_label_map_written_as_uint8(tmp_path):
    volume = load_volume(_write(tmp_path / "t2.nii.gz", np.zeros((3, 4, 5), np.float32), np.eye(4)))
    out = save_label_map(np.full(volume.shape, 4), volume, tmp_path / "seg.nii.gz")
    assert nib.load(out).get_data_dtype() == np.uint8


def test_save_refuses_existing_file(tmp_path):
    source = _write(tmp_path / "t2.nii.gz", np.zeros((3, 4, 5), np.int16), np.eye(4))
    volume = load_volume(source)
    with pytest.raises(FileExistsError):
        save_volume(np.zeros(volume.shape), volume, source)


def test_save_refuses_input_even_with_overwrite(tmp_path):
    source = _write(tmp_path / "t2.nii.gz", np.zeros((3, 4, 5), np.int16), np.eye(4))
    before = source.read_bytes()
    volume = load_volume(source)
    with pytest.raises(ValueError, match="input image itself"):
        save_volume(np.ones(volume.shape), volume, source, overwrite=True)
    assert source.read_bytes() == before


def test_save_leaves_no_temporary_files(tmp_path):
    volume = load_volume(_write(tmp_path / "t2.nii.gz", np.zeros((3, 4, 5), np.int16), np.eye(4)))
    save_label_map(np.zeros(volume.shape, np.uint8), volume, tmp_path / "out" / "seg.nii.gz")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["seg.nii.gz"]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ImageError, match="flair.nii.gz: image file not found"):
        load_volume(tmp_path / "flair.nii.gz")


def test_4d_file_rejected(tmp_path):
    path = _write(tmp_path / "t1.nii.gz", np.zeros((3, 4, 5, 2), np.int16), np.eye(4))
    with pytest.raises(ImageError, match=r"expected a 3D image, found shape \(3, 4, 5, 2\)"):
        load_volume(path)


def test_4d_channel_read(tmp_path):
    data = np.stack([np.full((3, 4, 5), i, np.int16) for i in range(4)], axis=-1)
    volume = load_volume(_write(tmp_path / "msd.nii.gz", data, np.eye(4)), channel=2)
    assert volume.shape == (3, 4, 5)
    assert np.all(volume.array == 2)


def test_nan_voxels_rejected(tmp_path):
    data = np.zeros((3, 4, 5), np.float32)
    data[1, 1, 1] = np.nan
    data[0, 0, 0] = np.inf
    with pytest.raises(ImageError, match="2 voxels are NaN or infinite"):
        load_volume(_write(tmp_path / "t1.nii.gz", data, np.eye(4)))


def test_all_zero_volume_rejected(tmp_path):
    path = _write(tmp_path / "t1.nii.gz", np.zeros((3, 4, 5), np.int16), np.eye(4))
    with pytest.raises(ImageError, match="every voxel"):
        load_volume(path, require_nonzero=True)


def test_truncated_gzip_rejected(tmp_path):
    path = _write(tmp_path / "t1.nii.gz", np.random.default_rng(0).random((20, 20, 20)).astype(np.float32), np.eye(4))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated|not a readable NIfTI"):
        load_volume(path)


def test_non_nifti_file_rejected(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_bytes(gzip.compress(b"this is a text file, not an image"))
    with pytest.raises(ImageError, match="not a readable NIfTI"):
        load_volume(path)


def test_spacing_and_orientation():
    from gliomaseg.data.io import Volume

    affine = np.diag([-1.0, -1.0, 2.5, 1.0])
    volume = Volume(None, affine, nib.Nifti1Header())
    assert volume.spacing == (1.0, 1.0, 2.5)
    assert volume.orientation == "LPS"


def test_written_file_readable_by_others(tmp_path):
    import os
    import stat

    volume = load_volume(_write(tmp_path / "t2.nii.gz", np.zeros((3, 4, 5), np.int16), np.eye(4)))
    old_umask = os.umask(0o022)
    try:
        out = save_label_map(np.zeros(volume.shape, np.uint8), volume, tmp_path / "seg.nii.gz")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
