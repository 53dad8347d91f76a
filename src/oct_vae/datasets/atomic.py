"""Atomic variants of the kedro-datasets the catalog uses for its versioned outputs.

``AtomicCSVDataset``, ``AtomicMatplotlibDataset`` and ``AtomicTextDataset`` take the same
options as ``pandas.CSVDataset``, ``matplotlib.MatplotlibDataset`` and ``text.TextDataset``
and load, preview, version and list versions exactly like them; only ``save`` differs. The
parent writes straight to the final (versioned) path, so a kill or a full disk mid-write
leaves a partial file that becomes the "latest" version. Here the data goes to a
temporary file in the same folder, is fsynced and renamed into place
(``oct_vae.framework.fileio.atomic_write``): after a failure no file exists under the final name,
Kedro (which globs ``<filepath>/*/<name>``) sees no new version, the previous version
stays the latest, and an emptied version folder is removed.

The temporary file is opened through the dataset's own fsspec file system with its
``open_args_save``, so the bytes written are those the parent writes.

Local files only: for another protocol (``s3://``, ...) and for a save mode other than
``w``/``wb`` (``fs_args: {open_args_save: {mode: a}}``) ``save`` is the parent's, not atomic.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from kedro.io.core import get_filepath_str
from kedro_datasets.matplotlib import MatplotlibDataset
from kedro_datasets.pandas import CSVDataset
from kedro_datasets.text import TextDataset
from matplotlib.figure import Figure

from oct_vae.datasets.versioned import remove_empty_version_dir
from oct_vae.framework.adapters import kedro as kedro_adapter
from oct_vae.framework.adapters import kedro_datasets as parent
from oct_vae.framework.fileio import atomic_write, atomic_write_dir


class _AtomicSave:
    """Shared save plumbing; mixed into subclasses of the kedro-datasets classes (whose
    settings are read through ``oct_vae.framework.adapters.kedro_datasets``)."""

    def _save_is_atomic(self) -> bool:
        return parent.protocol(self) == "file" and parent.save_mode(self).startswith("w")

    def _local_path(self, save_path: PurePosixPath) -> Path:
        return Path(get_filepath_str(save_path, parent.protocol(self)))

    def _open_save(self, path: Path) -> Any:  # an fsspec file object
        return parent.open_for_save(self, path)

    def _write_atomically(
        self, save_path: PurePosixPath, write: Callable[[Path], None], directory: bool = False
    ) -> None:
        path = self._local_path(save_path)
        try:
            (atomic_write_dir if directory else atomic_write)(path, write)
        except BaseException:
            if kedro_adapter.version(self) is not None:
                remove_empty_version_dir(path.parent)
            raise


def _parent_save(cls: type) -> Callable[[Any, Any], None]:
    """The parent's undecorated ``save`` (the decorated one would resolve a new version)."""
    return kedro_adapter.undecorated_save(cls)


class AtomicCSVDataset(_AtomicSave, CSVDataset):
    """``pandas.CSVDataset`` whose saves are atomic (local files).

    Example:
        ```yaml
        auc_table:
          type: oct_vae.datasets.AtomicCSVDataset
          filepath: data/base/08_reporting/auc_table.csv
          versioned: true
        ```
    """

    def save(self, data: pd.DataFrame) -> None:
        if not self._save_is_atomic():
            _parent_save(CSVDataset)(self, data)
            return

        def write(tmp: Path) -> None:
            with self._open_save(tmp) as fs_file:
                data.to_csv(path_or_buf=fs_file, **parent.save_args(self))

        self._write_atomically(kedro_adapter.save_path(self), write)
        parent.invalidate_cache(self)


class AtomicTextDataset(_AtomicSave, TextDataset):
    """``text.TextDataset`` whose saves are atomic (local files).

    Example:
        ```yaml
        auc_report_markdown:
          type: oct_vae.datasets.AtomicTextDataset
          filepath: data/base/08_reporting/auc_report.md
          versioned: true
        ```
    """

    def save(self, data: str) -> None:
        if not self._save_is_atomic():
            _parent_save(TextDataset)(self, data)
            return

        def write(tmp: Path) -> None:
            with self._open_save(tmp) as fs_file:
                fs_file.write(data)

        self._write_atomically(kedro_adapter.save_path(self), write)
        parent.invalidate_cache(self)


class AtomicMatplotlibDataset(_AtomicSave, MatplotlibDataset):
    """``matplotlib.MatplotlibDataset`` whose saves are atomic (local files).

    One figure is written like a file of the other atomic datasets. A list or dict of
    figures (one folder of images) is written to a temporary folder that is renamed into
    place, so a version folder appears complete or not at all; without versioning, figures
    saved into an existing folder (``overwrite: false``) replace their files one by one,
    each atomically. Every figure is rendered before anything is written.

    Example:
        ```yaml
        roc_curves:
          type: oct_vae.datasets.AtomicMatplotlibDataset
          filepath: data/base/08_reporting/roc_curves.png
          versioned: true
          save_args: {dpi: 110}
        ```
    """

    def save(self, data: Figure | list[Figure] | dict[str, Figure]) -> None:
        if not self._save_is_atomic():
            _parent_save(MatplotlibDataset)(self, data)
            return
        save_path = kedro_adapter.save_path(self)
        if isinstance(data, list | dict):
            self._save_many(save_path, data)
        else:
            png = self._render(data)
            self._write_atomically(save_path, lambda tmp: self._write_bytes(tmp, png))
        plt.close("all")
        parent.invalidate_cache(self)

    def _save_many(self, save_path: PurePosixPath, data: list[Figure] | dict[str, Figure]) -> None:
        if isinstance(data, list):
            data = {f"{i}.png": fig for i, fig in enumerate(data)}
        figures: dict[str, Figure] = data
        for name in figures:
            parent.validate_sub_path(name, str(save_path))
        rendered = {name: self._render(fig) for name, fig in figures.items()}
        target = self._local_path(save_path)
        if parent.overwrite(self) and parent.exists(self, target):
            parent.remove(self, target)
        if target.exists():
            for name, png in rendered.items():
                self._write_atomically(
                    save_path / name, lambda tmp, png=png: self._write_bytes(tmp, png)
                )
            return

        def write_all(tmp_dir: Path) -> None:
            for name, png in rendered.items():
                file = tmp_dir / name
                file.parent.mkdir(parents=True, exist_ok=True)
                self._write_bytes(file, png)

        self._write_atomically(save_path, write_all, directory=True)

    def _render(self, plot: Figure) -> bytes:
        buffer = io.BytesIO()
        plot.savefig(buffer, **parent.save_args(self))
        return buffer.getvalue()

    def _write_bytes(self, path: Path, payload: bytes) -> None:
        with self._open_save(path) as fs_file:
            fs_file.write(payload)
