"""Shared plumbing for the project's versioned, local-filesystem datasets."""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io.core import AbstractVersionedDataset, Version

from oct_vae.framework.fileio import atomic_write


class LocalVersionedDataset(AbstractVersionedDataset[Any, Any]):
    """A versioned dataset on the local disk whose writes are atomic.

    Subclasses implement ``_write(path, data)`` and ``load``; ``save`` writes to a
    temporary file in the target folder and renames it into place, so a crash never
    leaves a half-written file under the final name.
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
        return {"filepath": str(self._filepath), "version": self._version}

    def _exists(self) -> bool:
        try:
            path = self._get_load_path()
        except Exception:  # noqa: BLE001 - no version saved yet
            return False
        return Path(path).exists()

    def _load_path(self) -> Path:
        return Path(str(self._get_load_path()))

    def _save_atomically(self, data: Any, write: Callable[[Path, Any], None]) -> None:
        path = Path(str(self._get_save_path()))
        try:
            atomic_write(path, lambda tmp: write(tmp, data))
        except BaseException:
            if self._version is not None:
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
