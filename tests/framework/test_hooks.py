"""Hooks of ``oct_vae.framework.hooks`` without a Kedro session (the rest: through real
runs in tests/e2e/test_guarantees.py and tests/test_guarantees.py)."""

from __future__ import annotations

import os

import mlflow

from oct_vae.framework import fileio
from oct_vae.framework.hooks import run_state
from oct_vae.framework.hooks.run_state import HOST_TAG, PID_TAG
from tests.test_fileio import dead_pid


def test_only_runs_of_dead_processes_of_this_host_are_ended_killed(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    monkeypatch.setattr(run_state.mlflow, "MlflowClient", lambda: client)
    experiment = client.create_experiment("runs")
    here, gone = fileio.host_id(), str(dead_pid())

    def run(pid: str, host: str) -> str:
        return client.create_run(experiment, tags={PID_TAG: pid, HOST_TAG: host}).info.run_id

    dead = run(gone, here)
    alive = run(str(os.getpid()), here)
    elsewhere = run(gone, "0123abcd")  # its pid means nothing on this host
    current = run(gone, here)  # the run that looks: never ends itself
    run_state._end_dead_runs(experiment, current)

    status = {r: client.get_run(r).info.status for r in (dead, alive, elsewhere, current)}
    assert status == {dead: "KILLED", alive: "RUNNING", elsewhere: "RUNNING", current: "RUNNING"}
    assert client.get_run(dead).data.tags["oct_vae.end_reason"] == "process gone (killed)"
