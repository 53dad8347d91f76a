"""Helpers shared by the scripts and the end-to-end tests: scratch copies of the project,
and local servers (kedro viz, the MLflow UI, a model server) started and stopped cleanly.

Standard library, ``requests`` and PyYAML only; nothing here is part of the ``oct_vae``
package.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the project root


class ServerError(RuntimeError):
    """A server exited, or did not answer in time; the message ends with its log."""


def base_flag_score() -> str:
    """``score.flag_score`` of conf/base, the score that flags scans in every environment
    here (none overrides it)."""
    import yaml

    params = yaml.safe_load((ROOT / "conf" / "base" / "parameters_score.yml").read_text())
    return params["score"]["flag_score"]


def copy_project(dest: Path) -> Path:
    """Copy what a Kedro session needs (pyproject, .telemetry, conf without ``local``) into
    ``dest``; the package itself is the installed one. ``src/`` exists (Kedro checks it)
    but is empty; ``conf/local/`` and ``data/`` are empty."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(ROOT / name, dest / name)
    shutil.copytree(ROOT / "conf", dest / "conf", ignore=shutil.ignore_patterns("local"),
                    dirs_exist_ok=True)
    for folder in ("conf/local", "src", "data"):
        (dest / folder).mkdir(exist_ok=True)
    return dest


def make_ready(dest: Path) -> Path:
    """``copy_project`` plus what a fresh clone has after ``make install``: the Makefile and
    the venv (a link to this one, its install stamp newer than pyproject.toml), so that
    ``make <target>`` runs in ``dest`` as written, without installing again."""
    copy_project(dest)
    shutil.copy(ROOT / "Makefile", dest / "Makefile")
    venv = (ROOT / ".venv") if (ROOT / ".venv").exists() else Path(sys.executable).parents[1]
    if not (dest / ".venv").exists():
        (dest / ".venv").symlink_to(venv.resolve())
    stamp = dest / ".venv" / ".install-stamp"
    if stamp.exists():
        t = stamp.stat().st_mtime - 60
        os.utime(dest / "pyproject.toml", (t, t))
    return dest


def shell_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh shell for a command run as a user would: this one without
    an active venv, an MLflow store or pytest's variables, telemetry off, the package of
    this checkout first on the path; ``extra`` on top."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "MLFLOW_TRACKING_URI") and not k.startswith("PYTEST_")}
    return {**env, "KEDRO_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT / "src"), **extra}


def free_port() -> int:
    """A free local port below 49152 (kedro-viz refuses higher ones, which the OS may pick)."""
    for _ in range(100):
        port = random.randint(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found")


def stop_process_group(proc: subprocess.Popen) -> None:
    """Stop a server started with ``start_new_session=True`` and every process it spawned."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_for_http(
    proc: subprocess.Popen, url: str, log: Path, what: str, timeout_s: float = 90
) -> None:
    """Poll ``url`` until it answers 200.

    The URL is asked before the process is checked: a launcher may exit while its server
    runs on.

    Raises:
        ServerError: ``proc`` exited, or ``timeout_s`` passed, first; with the log's tail.
    """
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=10).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if proc.poll() is not None:
            raise ServerError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(1)
    raise ServerError(f"{what} not up after {timeout_s} s:\n{log.read_text()[-3000:]}")
