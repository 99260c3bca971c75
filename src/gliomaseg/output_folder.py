"""Output folders that a failed command removes again, so a rerun with the same path starts clean.

A command records the folders it creates with `create_folder` and runs its work inside
`removed_on_failure`, which removes them again when the work raises. A folder that existed
before the command is never removed, and nothing inside it is touched.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


def create_folder(path: str | os.PathLike) -> list[Path]:
    """Create the folder `path` and its missing parents.

    Returns:
        The folders this call created, outermost first; empty where `path` already existed.

    Raises:
        FileExistsError: `path` or one of its parents is a file.
    """
    folder = Path(os.path.abspath(Path(path).expanduser()))
    created = []
    for candidate in reversed((folder, *folder.parents)):
        if candidate.is_dir():
            continue
        # mkdir without exist_ok shows whether this call made the folder, even when another
        # process creates the same path at the same time.
        try:
            candidate.mkdir()
        except FileExistsError:
            if not candidate.is_dir():
                raise FileExistsError(f"{candidate} is a file; give a folder path that contains no file") from None
            continue
        created.append(candidate)
    return created


def remove_created(created: Sequence[Path]) -> None:
    """Remove folders listed by `create_folder`, for a command that failed.

    The innermost folder is removed with everything in it, because only the command wrote
    there. Each created parent is then removed only while it is empty, so files that another
    process put there stay. Errors while removing are logged, not raised, so they never hide
    the failure that led here.
    """
    if not created:
        return
    *parents, innermost = created
    try:
        shutil.rmtree(innermost)
    except OSError as error:
        log.warning("failed to remove %s after the run failed: %s", innermost, error)
        return
    for parent in reversed(parents):
        try:
            parent.rmdir()
        except OSError:
            return
    log.info("removed %s, created by the failed run", created[0])


@contextmanager
def removed_on_failure(created: Sequence[Path], keep: Callable[[], bool] | None = None) -> Iterator[None]:
    """Remove the `created` folders when the body raises, unless `keep()` then returns True.

    Any exception counts as a failure, KeyboardInterrupt and SystemExit included, and is
    raised again after the removal.
    """
    try:
        yield
    except BaseException:
        if keep is None or not keep():
            remove_created(created)
        raise
