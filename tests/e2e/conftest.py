"""A tiny but complete project run (`kedro run --env tiny`) in a temporary copy of the
project, shared by the end-to-end tests: ingest, train, evaluate, MLflow included."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import project as scratch


@dataclass
class TinyProject:
    path: Path

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.path / 'mlflow-tiny.db'}"


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
    project = scratch.copy_project(tmp_path_factory.mktemp("tiny_project"))
    run_session(project)
    # The tracking URI stays on this temporary project: resetting it to MLflow's default
    # (./mlflow.db) would let MLflow's exit handler write into the repository.
    yield TinyProject(project)


def wait_for_http(
    proc: subprocess.Popen, url: str, log: Path, what: str, timeout_s: float = 90
) -> None:
    """``scratch.wait_for_http`` that fails the test, with the server's log, instead."""
    try:
        scratch.wait_for_http(proc, url, log, what, timeout_s)
    except scratch.ServerError as err:
        pytest.fail(str(err))
