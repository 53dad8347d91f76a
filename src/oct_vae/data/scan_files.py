"""Which files of a scan folder are not scans at all, and the folder's listing without them.

A folder of scans often carries files nobody means as a scan: a ``README``, a ``LICENSE``,
the operating system's ``.DS_Store``, ``Thumbs.db`` or ``desktop.ini``, macOS's AppleDouble
``._*`` files and ``__MACOSX/`` folders (left by unzipping), and hidden files and folders.
These are skipped quietly in every listing (ingest's ``raw_dir``, the real scans, a folder
scored by ``score``) and counted in one summary line (:func:`summary`). Anything else that
is not a readable scan (``notes.txt``, a corrupt ``.jpeg``) is still listed, so that it gets
a rejected row with its reason.

This module imports only the standard library.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePath

# Exact names (any case) of system files that are never scans, and their kind.
_SYSTEM_FILES = {".ds_store": ".DS_Store", "thumbs.db": "Thumbs.db", "desktop.ini": "desktop.ini"}
# Name prefixes (any case) of documents that are never scans.
_DOCUMENTS = {"readme": "README", "license": "LICENSE", "licence": "LICENSE"}
_MACOSX = "__macosx"
# Names listed in the summary line, at most.
_NAMED = 5


def not_a_scan(path: str | os.PathLike) -> str | None:
    """The kind of not-a-scan file at ``path`` (relative to its folder), or ``None`` when
    the file may be a scan. Kinds: README, LICENSE, .DS_Store, Thumbs.db, desktop.ini,
    AppleDouble, __MACOSX, hidden."""
    parts = PurePath(path).parts
    for folder in parts[:-1]:
        if _folder_kind(folder):
            return _folder_kind(folder)
    name = parts[-1] if parts else ""
    low = name.lower()
    if low in _SYSTEM_FILES:
        return _SYSTEM_FILES[low]
    if low.startswith("._"):
        return "AppleDouble"
    if name.startswith("."):
        return "hidden"
    for prefix, kind in _DOCUMENTS.items():
        if low.startswith(prefix):
            return kind
    return None


def _folder_kind(folder: str) -> str | None:
    if folder.lower() == _MACOSX:
        return "__MACOSX"
    return "hidden" if folder.startswith(".") and folder not in (".", "..") else None


def walk(root: str | os.PathLike) -> Iterator[tuple[str, str | None]]:
    """``(path, kind)`` for every regular file under ``root``, in ``os.walk`` order;
    ``kind`` is :func:`not_a_scan`'s (``None``: may be a scan). A skipped folder
    (``__MACOSX/``, a hidden one) is not entered: it is one entry, its path ending in ``/``."""
    for folder, dirs, files in os.walk(root):
        for name in sorted(dirs):
            kind = _folder_kind(name)
            if kind:
                yield os.path.join(folder, name) + "/", kind
        dirs[:] = [d for d in dirs if not _folder_kind(d)]
        for name in files:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                yield path, not_a_scan(name)


def list_scan_files(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]]]:
    """The files under ``root`` that may be scans (posix paths, sorted), and the skipped
    not-scans as ``(path relative to root, kind)``, sorted."""
    paths: list[str] = []
    skipped: list[tuple[str, str]] = []
    for path, kind in walk(root):
        if kind is None:
            paths.append(Path(path).as_posix())
        else:
            rel = Path(path).relative_to(root).as_posix() + ("/" if path.endswith("/") else "")
            skipped.append((rel, kind))
    return sorted(paths), sorted(skipped)


def summary(skipped: Sequence[tuple[str, str]], where: str) -> str | None:
    """One line for the log: how many not-scans were skipped in ``where``, of which kinds,
    and the first few names; ``None`` when none was."""
    if not skipped:
        return None
    kinds = Counter(kind for _, kind in skipped)
    names = ", ".join(path for path, _ in skipped[:_NAMED])
    more = f", ... ({len(skipped) - _NAMED} more)" if len(skipped) > _NAMED else ""
    by_kind = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
    return (f"{where}: skipped {len(skipped)} file(s) that are not scans ({by_kind}): "
            f"{names}{more}")
