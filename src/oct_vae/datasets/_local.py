"""Shared plumbing for the project's versioned, local-filesystem datasets."""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io.core import AbstractVersionedDataset, Version


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
        atomic_write(path, lambda tmp: write(tmp, data))


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, fsync it, rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
