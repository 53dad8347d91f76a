"""Kedro's private dataset internals, in one place (``PRIVATE_NAMES``).

Kedro 1.x has no public way to fix the version a versioned dataset loads, nor to ask
where it loads from or saved to. ``RunIsolationHook`` pins versions the way
``--load-versions`` would (a new ``Version`` on the dataset), the project's datasets and
hooks read the file paths, and the atomic datasets call their parent's ``save`` without
Kedro's wrapper. Contract test: ``tests/framework/test_adapters.py``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io.core import AbstractVersionedDataset, Version

# (class, attribute): what this module touches, checked on an instance of the class (of a
# subclass for AbstractDataset, whose subclasses' ``save`` Kedro wraps) by the contract test.
PRIVATE_NAMES = (
    ("kedro.io.core.AbstractVersionedDataset", "_version"),
    ("kedro.io.core.AbstractVersionedDataset", "_filepath"),
    ("kedro.io.core.AbstractVersionedDataset", "_clear_version_cache"),
    ("kedro.io.core.AbstractVersionedDataset", "_get_load_path"),
    ("kedro.io.core.AbstractVersionedDataset", "_get_save_path"),
    ("kedro.io.core.AbstractVersionedDataset", "_get_versioned_path"),
    ("kedro.io.core.AbstractDataset", "save.__wrapped__"),
)


def version(dataset: Any) -> Version | None:
    """The ``Version`` of a versioned dataset (``None``: not versioned)."""
    if not isinstance(dataset, AbstractVersionedDataset):
        return None
    return dataset._version or None


def pin_version(dataset: AbstractVersionedDataset, load: str | None, save: str | None) -> None:
    """Make ``dataset`` load version ``load`` and save version ``save``, as
    ``--load-versions`` would; forgets the versions Kedro resolved before."""
    dataset._version = Version(load, save)
    dataset._clear_version_cache()


def forget_resolved_versions(dataset: AbstractVersionedDataset) -> None:
    """Drop the load and save versions Kedro cached, so the next look-up lists the folder."""
    dataset._clear_version_cache()


def filepath(dataset: Any) -> PurePosixPath | None:
    """The file path given to a file dataset (for a versioned one, the folder of its
    versions); ``None`` for a dataset without one."""
    return getattr(dataset, "_filepath", None)


def load_path(dataset: AbstractVersionedDataset) -> Path:
    """The file ``dataset`` loads: its pinned or latest version, or its path."""
    return Path(str(dataset._get_load_path()))


def save_path(dataset: AbstractVersionedDataset) -> PurePosixPath:
    """The file ``dataset`` saves to (resolves the save version)."""
    return dataset._get_save_path()


def saved_path(dataset: Any) -> Path | None:
    """The file of the version ``dataset`` saved in this run (``None``: not a file)."""
    if version(dataset) is not None:
        return Path(str(dataset._get_versioned_path(dataset.resolve_save_version())))
    path = filepath(dataset)
    return None if path is None else Path(str(path))


def undecorated_save(cls: type) -> Callable[[Any, Any], None]:
    """``cls.save`` without Kedro's wrapper (which would resolve a new save version)."""
    return inspect.unwrap(cls.save)
