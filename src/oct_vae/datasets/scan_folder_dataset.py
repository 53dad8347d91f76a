"""``ScanFolderDataset``: a folder of scan files, listed; optionally a phantom made on first use."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from kedro.io.core import AbstractDataset, DatasetError

from oct_vae.data import scan_files
from oct_vae.data.imaging import resolve_workers
from oct_vae.data.phantom import PhantomConfig, generate_phantom

PHANTOM_MANIFEST = "phantom.json"
log = logging.getLogger(__name__)

MISSING_DATASET = (
    "No scans found at {path}. Download OCT2017 (Kermany, Zhang, Goldbaum 2018) from "
    "Mendeley Data, doi:10.17632/rscbjbr9sj (or Kaggle 'kermany2018'), and unpack it to "
    "{path}, or pass --params raw_dir=<folder> with --env kermany."
)


class ScanFolderDataset(AbstractDataset[pd.DataFrame, pd.DataFrame]):
    """Lists the files under a folder; read-only.

    With ``phantom`` set, the synthetic OCT phantom described by those
    ``oct_vae.data.phantom.PhantomConfig`` fields is generated into the folder first (once:
    an identical existing phantom is reused). Without it the folder must hold the real
    dataset.

    Example:
        ```yaml
        raw_scans:
          type: oct_vae.datasets.ScanFolderDataset
          path: data/base/01_raw/phantom
          phantom: {n_normal_patients: 450, seed: 2024}
        ```
    """

    def __init__(
        self,
        path: str,
        phantom: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._path = Path(path).expanduser()
        self._phantom = dict(phantom) if phantom is not None else None
        self.metadata = metadata

    def load(self) -> pd.DataFrame:
        """Generate the phantom if configured, then list the folder.

        Returns:
            One row per regular file, sorted, ``phantom.json`` and the files that are not
            scans (``oct_vae.data.scan_files``: README, .DS_Store, hidden ...) excluded:
            ``path`` (posix, to read it) and ``key`` (relative to the folder; what results
            record).

        Raises:
            DatasetError: No phantom is configured and the folder is missing or empty.
        """
        if self._phantom is not None:  # runs started at once take turns (generate_phantom)
            generate_phantom(self._path, self._phantom_config(), workers=resolve_workers(0))
        paths = list_files(self._path, "raw_scans") if self._path.is_dir() else []
        if not paths:
            raise DatasetError(MISSING_DATASET.format(path=self._path.as_posix()))
        keys = [Path(p).relative_to(self._path).as_posix() for p in paths]
        return pd.DataFrame({"path": paths, "key": keys})

    def save(self, data: pd.DataFrame) -> None:
        """Refuse: the raw scans are read-only."""
        raise DatasetError(f"ScanFolderDataset({self._path.as_posix()}) is read-only")

    def _exists(self) -> bool:
        return self._path.is_dir() and any(
            kind is None for _, kind in scan_files.walk(self._path))

    def _describe(self) -> dict[str, Any]:
        return {"path": self._path.as_posix(), "phantom": self._phantom}

    def _phantom_config(self) -> PhantomConfig:
        fields = {f.name: f for f in dataclasses.fields(PhantomConfig)}
        unknown = set(self._phantom) - set(fields)  # type: ignore[arg-type]
        if unknown:
            raise DatasetError(
                f"unknown phantom option(s) {sorted(unknown)}; known: {sorted(fields)}"
            )
        defaults = PhantomConfig()
        # YAML gives lists where the config holds tuples.
        kwargs = {
            key: tuple(value)
            if isinstance(value, list) and isinstance(getattr(defaults, key), tuple)
            else value
            for key, value in self._phantom.items()  # type: ignore[union-attr]
        }
        return PhantomConfig(**kwargs)


def list_files(root: Path, what: str) -> list[str]:
    """Posix paths of the files under ``root`` that may be scans, sorted (``phantom.json``
    at the root excluded); the not-scans skipped (``scan_files.not_a_scan``) are counted in
    one INFO line that names the listing ``what``."""
    paths, skipped = scan_files.list_scan_files(root)
    line = scan_files.summary(skipped, what)
    if line:
        log.info("%s", line)
    manifest = (Path(root) / PHANTOM_MANIFEST).as_posix()
    return [p for p in paths if p != manifest]
