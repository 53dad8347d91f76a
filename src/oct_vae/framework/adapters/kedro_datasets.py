"""kedro-datasets' private internals, in one place (``PRIVATE_NAMES``).

``oct_vae.datasets.Atomic*Dataset`` extend ``pandas.CSVDataset``, ``text.TextDataset`` and
``matplotlib.MatplotlibDataset`` and replace only ``save``: they open the temporary file
through the parent's fsspec file system with the parent's save arguments, so the bytes
written are the parent's. Those settings are private attributes of the parents; the
checks on a ``PartitionedDataset``'s folder use its private path. Contract test:
``tests/framework/test_adapters.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro_datasets._utils import validate_sub_path as _validate_sub_path

# (class, attribute): what this module touches, checked on an instance of the class.
PRIVATE_NAMES = (
    ("kedro_datasets.pandas.CSVDataset", "_protocol"),
    ("kedro_datasets.pandas.CSVDataset", "_fs"),
    ("kedro_datasets.pandas.CSVDataset", "_fs_open_args_save"),
    ("kedro_datasets.pandas.CSVDataset", "_save_args"),
    ("kedro_datasets.pandas.CSVDataset", "_invalidate_cache"),
    ("kedro_datasets.text.TextDataset", "_invalidate_cache"),
    ("kedro_datasets.matplotlib.MatplotlibDataset", "_overwrite"),
    ("kedro_datasets.matplotlib.MatplotlibDataset", "_save_args"),
    ("kedro_datasets.partitions.PartitionedDataset", "_path"),
    ("kedro_datasets._utils", "validate_sub_path"),
)


def protocol(dataset: Any) -> str:
    """The fsspec protocol of a file dataset (``file`` for local files)."""
    return dataset._protocol


def save_mode(dataset: Any) -> str:
    """The mode the dataset opens its file with to save (``w``, ``wb``, ``a``, ...)."""
    return dataset._fs_open_args_save.get("mode", "w")


def open_for_save(dataset: Any, path: Path) -> Any:
    """``path`` opened the way the dataset opens its own file to save (an fsspec file)."""
    return dataset._fs.open(str(path), **dataset._fs_open_args_save)


def save_args(dataset: Any) -> dict[str, Any]:
    """The ``save_args`` the dataset passes to its writer (``to_csv``, ``savefig``)."""
    return dataset._save_args


def overwrite(dataset: Any) -> bool:
    """``MatplotlibDataset``'s ``overwrite`` (clear a folder of figures before saving)."""
    return dataset._overwrite


def remove(dataset: Any, path: Path) -> None:
    """Remove ``path`` (recursively) through the dataset's file system."""
    dataset._fs.rm(str(path), recursive=True)


def exists(dataset: Any, path: Path) -> bool:
    """Whether ``path`` exists on the dataset's file system."""
    return dataset._fs.exists(str(path))


def invalidate_cache(dataset: Any) -> None:
    """Forget what the dataset's file system cached about its file (after a save)."""
    dataset._invalidate_cache()


def validate_sub_path(name: str, root: str) -> None:
    """Refuse a partition name that would leave ``root`` (``..``, an absolute path).

    Raises:
        DatasetError: From kedro-datasets, naming the path.
    """
    _validate_sub_path(name, root)


def partition_folder(dataset: Any) -> str | None:
    """The folder of a ``PartitionedDataset`` (``None`` for another dataset)."""
    return getattr(dataset, "_path", None)
