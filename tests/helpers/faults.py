"""Fault injection for the tests: atomic writes that fail as a full disk or a crash would.

``inject(monkeypatch, "<mode>:<glob>")`` patches ``oct_vae.framework.fileio`` so that every
atomic write whose final file name matches ``<glob>`` (``fnmatch``, e.g. ``auc_table.csv``
or ``*.png``) fails after the data was written to the temporary file and that file was
cut to half its size:

* ``enospc``: raises ``OSError(ENOSPC)``, as a full disk would (the writer then removes
  the temporary file, as after any failure);
* ``kill``: the process SIGKILLs itself, leaving the partial temporary file behind, as a
  real crash does.

In another process (no monkeypatch there), this module is the launcher::

    python -m tests.helpers.faults kill:train_images.npy -m kedro run --env tiny
    python -m tests.helpers.faults enospc:*.pt -c "<code>" [args ...]

Nothing here is part of the ``oct_vae`` package: production code has no fault switch.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import runpy
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oct_vae.framework import fileio

MODES = ("enospc", "kill")


def parse(spec: str) -> tuple[str, str]:
    """``<mode>:<glob>`` -> ``(mode, glob)``.

    Raises:
        ValueError: Not of that form, or an unknown mode.
    """
    mode, sep, pattern = spec.partition(":")
    if not sep or mode not in MODES or not pattern:
        raise ValueError(f"{spec!r}: expected '<mode>:<glob>' with mode one of {MODES}")
    return mode, pattern


def inject(monkeypatch: Any, spec: str) -> None:
    """Make the atomic writes that ``spec`` names fail (see the module), until
    ``monkeypatch`` is undone."""
    monkeypatch.setattr(fileio, "_write_and_rename", _faulty(*parse(spec)))


def install(spec: str) -> None:
    """``inject`` for the rest of this process (the launcher's child)."""
    fileio._write_and_rename = _faulty(*parse(spec))


def _faulty(mode: str, pattern: str) -> Callable[..., None]:
    real = fileio._write_and_rename

    def write_and_rename(path: Path, tmp: Path, write: Callable[[Path], None], *rest: Any):
        def write_then_fail(target: Path) -> None:
            write(target)
            if fnmatch.fnmatchcase(path.name, pattern):
                _fail(mode, target)

        return real(path, tmp, write_then_fail, *rest)

    return write_and_rename


def _fail(mode: str, tmp: Path) -> None:
    _truncate_half(tmp)
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))


def _truncate_half(tmp: Path) -> None:
    """Cut the (first) written file to half its size: a write that stopped midway."""
    if tmp.is_dir():
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        if not files:
            return
        tmp = files[0]
    size = tmp.stat().st_size
    with open(tmp, "rb+") as fh:
        fh.truncate(size // 2)


def main(argv: list[str]) -> None:
    """``<spec> -m <module> [args]`` or ``<spec> -c <code> [args]``: run it with the fault."""
    spec, kind, target, *args = argv
    install(spec)
    if kind == "-m":
        sys.argv = [target, *args]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    elif kind == "-c":
        sys.argv = ["-c", *args]
        exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
    else:
        raise SystemExit(f"usage: python -m tests.helpers.faults <mode>:<glob> -m|-c ...: {kind}")


if __name__ == "__main__":
    main(sys.argv[1:])
