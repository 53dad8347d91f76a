"""``NpyDataset``: one NumPy array in a ``.npy`` file, versioned, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from kedro.io.core import Version

from oct_vae.datasets.versioned import LocalVersionedDataset


class NpyDataset(LocalVersionedDataset):
    """Loads and saves a NumPy array as ``.npy`` (never pickled).

    Example:
        ```yaml
        train_images:
          type: oct_vae.datasets.NpyDataset
          filepath: data/base/05_model_input/train_images.npy
          versioned: true
          load_args: {mmap_mode: r}
        ```
    """

    def __init__(
        self,
        filepath: str,
        load_args: dict[str, Any] | None = None,
        version: Version | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(filepath, version=version, metadata=metadata)
        self._load_args = dict(load_args or {})

    def load(self) -> np.ndarray:
        return np.load(self._load_path(), allow_pickle=False, **self._load_args)

    def save(self, data: np.ndarray) -> None:
        array = np.asarray(data)
        if array.dtype == object:
            raise ValueError("NpyDataset stores numeric arrays only, not object arrays")

        def write(tmp: Path, arr: np.ndarray) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)

        self._save_atomically(array, write)

    def preview(self, nrows: int = 5) -> dict[str, Any]:
        """Shape, dtype and value range, for kedro-viz."""
        array = np.load(self._load_path(), mmap_mode="r")
        return {
            "columns": ["shape", "dtype", "min", "max"],
            "index": [0],
            "data": [[str(array.shape), str(array.dtype), float(array.min()), float(array.max())]],
        }
