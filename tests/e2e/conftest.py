"""A tiny but complete project run (`kedro run --env tiny`) in a temporary copy of the
project, shared by the end-to-end tests: ingest, train, evaluate, MLflow included."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass
class TinyProject:
    path: Path

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.path / 'mlflow.db'}"


def make_project_copy(dest: Path) -> Path:
    """Copy what a Kedro session needs (pyproject, conf) into ``dest``; the package itself
    is the installed one. ``src/`` exists (Kedro checks it) but is empty."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "pyproject.toml", dest / "pyproject.toml")
    shutil.copy(REPO / ".telemetry", dest / ".telemetry")
    shutil.copytree(REPO / "conf", dest / "conf", ignore=shutil.ignore_patterns("local"))
    (dest / "conf" / "local").mkdir(exist_ok=True)
    (dest / "src").mkdir(exist_ok=True)
    (dest / "data").mkdir(exist_ok=True)
    return dest


def run_session(project: Path, env: str = "tiny", **kwargs):
    """Run a KedroSession in ``project`` (cwd switched there, restored afterwards)."""
    import mlflow
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    old = Path.cwd()
    os.chdir(project)
    # MLflow keeps finished runs on its active-run stack in this process; a later session
    # would log into them, and MLflow's exit handler would end them against whatever
    # tracking URI is set by then (by default ./mlflow.db: a file in the repository).
    # Each session run starts and ends with an empty stack.
    _end_active_runs(mlflow)
    try:
        bootstrap_project(project)
        with KedroSession.create(
            project_path=project, env=env, runtime_params=kwargs.pop("runtime_params", None)
        ) as session:
            return session.run(**kwargs)
    finally:
        _end_active_runs(mlflow)
        os.chdir(old)


def _end_active_runs(mlflow) -> None:
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Iterator[TinyProject]:
    """A temporary project after one full `kedro run --env tiny`."""
    project = make_project_copy(tmp_path_factory.mktemp("tiny_project"))
    run_session(project)
    # The tracking URI stays on this temporary project: resetting it to MLflow's default
    # (./mlflow.db) would let MLflow's exit handler write into the repository.
    yield TinyProject(project)


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
    """Poll ``url`` until it answers 200; fail with the server's log if ``proc`` exits or
    ``timeout_s`` passes. (A launcher may exit while its server runs on, so the URL is
    asked first.)"""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=10).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(1)
    pytest.fail(f"{what} not up after {timeout_s} s:\n{log.read_text()[-3000:]}")
