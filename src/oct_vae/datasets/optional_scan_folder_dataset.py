"""``OptionalScanFolderDataset``: a folder of scan files that may be absent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from kedro.io.core import DatasetError

from oct_vae.datasets.scan_folder_dataset import ScanFolderDataset, list_files

COLUMNS = ["path", "key"]


class OptionalScanFolderDataset(ScanFolderDataset):
    """Lists the files under a folder, like ``ScanFolderDataset``, but a missing or empty
    folder is an empty table (columns ``path``, ``key``), not an error: the node that
    reads it decides what to do without it. Read-only; never generates a phantom.

    Example:
        ```yaml
        real_scans:
          type: oct_vae.datasets.optional_scan_folder_dataset.OptionalScanFolderDataset
          path: ${runtime_params:real_dir,${project_root:}/../shared/data}
        ```
    """

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(path, phantom=None, metadata=metadata)

    def load(self) -> pd.DataFrame:
        """One row per file under the folder (not-scans such as README excluded), sorted:
        ``path`` (to read it) and ``key`` (relative to the folder); no rows when the folder
        is missing or empty."""
        paths = list_files(self._path, "real_scans") if self._path.is_dir() else []
        keys = [Path(p).relative_to(self._path).as_posix() for p in paths]
        return pd.DataFrame({"path": paths, "key": keys}, columns=COLUMNS, dtype=object)

    def save(self, data: pd.DataFrame) -> None:
        """Refuse: the scans are read-only."""
        raise DatasetError(f"OptionalScanFolderDataset({self._path.as_posix()}) is read-only")

    def _exists(self) -> bool:
        return True  # an absent folder is a valid, empty dataset

    def _describe(self) -> dict[str, Any]:
        return {"path": self._path.as_posix()}
