"""Shared plumbing for the project's versioned, local-filesystem datasets."""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io.core import AbstractVersionedDataset, Version

from oct_vae.framework.adapters import kedro as kedro_adapter
from oct_vae.framework.fileio import atomic_write


class LocalVersionedDataset(AbstractVersionedDataset[Any, Any]):
    """A versioned dataset on the local disk whose writes are atomic.

    Subclasses implement ``load`` (reading :meth:`_load_path`) and ``save`` (through
    :meth:`_save_atomically`), which writes to a temporary file in the target folder and
    renames it into place, so a crash never leaves a half-written file under the final name.
    """

    def __init__(
        self,
        filepath: str,
        version: Version | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            filepath=PurePosixPath(Path(filepath).as_posix()),
            version=version,
            exists_function=os.path.exists,
            glob_function=glob.glob,
        )
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": str(kedro_adapter.filepath(self)),
            "version": kedro_adapter.version(self),
        }

    def _exists(self) -> bool:
        try:
            path = self._load_path()
        except Exception:  # noqa: BLE001 - no version saved yet
            return False
        return path.exists()

    def _load_path(self) -> Path:
        """The file to load: the pinned or latest version, or the file itself."""
        return kedro_adapter.load_path(self)

    def _save_atomically(self, data: Any, write: Callable[[Path, Any], None]) -> None:
        """``write(tmp, data)`` on a temporary file renamed to the save path; after a failure
        the emptied version folder is removed."""
        path = Path(str(kedro_adapter.save_path(self)))
        try:
            atomic_write(path, lambda tmp: write(tmp, data))
        except BaseException:
            if kedro_adapter.version(self) is not None:
                remove_empty_version_dir(path.parent)
            raise


def remove_empty_version_dir(folder: Path) -> None:
    """Remove the version folder of a failed save if nothing is in it (best effort).

    Kedro would not take it for a version (it globs ``<filepath>/*/<name>``); this only
    keeps the dataset folder tidy.
    """
    # not empty (a killed writer's leftover: see sweep_stale_temp_files) or already gone
    with contextlib.suppress(OSError):
        folder.rmdir()
