"""Output folders that a failed command removes: what counts as created, what is kept."""

from __future__ import annotations

import pytest

from gliomaseg.output_folder import create_folder, remove_created, removed_on_failure


def test_create_folder_lists_created_outermost_first(tmp_path):
    created = create_folder(tmp_path / "a" / "b")
    assert created == [tmp_path / "a", tmp_path / "a" / "b"]
    assert (tmp_path / "a" / "b").is_dir()


def test_create_folder_existing_lists_nothing(tmp_path):
    assert create_folder(tmp_path) == []


def test_create_folder_under_file_raises(tmp_path):
    (tmp_path / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="notes.txt is a file"):
        create_folder(tmp_path / "notes.txt" / "run")


def test_remove_created_keeps_parent_with_other_files(tmp_path):
    created = create_folder(tmp_path / "runs" / "first")
    (tmp_path / "runs" / "first" / "config.yaml").write_text("seed: 1")
    (tmp_path / "runs" / "other.txt").write_text("keep")
    remove_created(created)
    assert not (tmp_path / "runs" / "first").exists()
    assert (tmp_path / "runs" / "other.txt").read_text() == "keep"


def test_removed_on_failure_removes_after_exception(tmp_path):
    created = create_folder(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        with removed_on_failure(created):
            (tmp_path / "run" / "partial.nii.gz").write_bytes(b"")
            raise KeyboardInterrupt
    assert not (tmp_path / "run").exists()


def test_removed_on_failure_keep_returns_true(tmp_path):
    created = create_folder(tmp_path / "run")
    with pytest.raises(RuntimeError):
        with removed_on_failure(created, keep=lambda: True):
            raise RuntimeError("late failure")
    assert (tmp_path / "run").is_dir()


def test_removed_on_failure_success_keeps_folder(tmp_path):
    created = create_folder(tmp_path / "run")
    with removed_on_failure(created):
        pass
    assert (tmp_path / "run").is_dir()
