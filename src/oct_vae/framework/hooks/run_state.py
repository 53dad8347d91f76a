"""``MlflowRunStateHook``: a run stopped by Ctrl-C, SIGTERM or SIGKILL never stays RUNNING."""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl

from oct_vae.framework import fileio
from oct_vae.framework.hooks.isolation import RUN_INFO

log = logging.getLogger(__name__)

# Tags that tie a run to its process, so that a run whose process was killed (SIGKILL:
# nothing in the process can react) is marked KILLED by the next run on the machine.
PID_TAG = "oct_vae.pid"
HOST_TAG = "oct_vae.host"


class MlflowRunStateHook:
    """A run ends FINISHED, FAILED or KILLED; never RUNNING.

    * An exception in a node: kedro-mlflow ends the run FAILED.
    * Ctrl-C (KeyboardInterrupt) or SIGTERM (turned into ``SystemExit(143)``, so finally
      blocks run): at exit, a run still open is ended KILLED.
    * SIGKILL: the next run in the same project on the same machine ends it KILLED.

    Also records in the run's tags the version of every dataset it read
    (``input_version.<dataset>``), its process id and a hash of its host
    (``fileio.host_id``).
    """

    def __init__(self) -> None:
        self._run_id: str | None = None  # the MLflow run of a pipeline still running
        self._atexit = False
        self._previous_sigterm = None

    @hook_impl(trylast=True)  # after kedro-mlflow has started the run
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        run = mlflow.active_run()
        if run is None:
            return
        self._run_id = run.info.run_id
        _end_dead_runs(run.info.experiment_id, self._run_id)
        info = catalog.load(RUN_INFO) if RUN_INFO in catalog else {}
        run_id = str(run_params["run_id"])
        tags = {PID_TAG: str(os.getpid()), HOST_TAG: fileio.host_id()}
        for name, version in info.get("versions", {}).items():
            if version != run_id:  # what this run wrote carries its own run id
                tags[f"input_version.{name}"] = version
        mlflow.set_tags(tags)
        if not self._atexit:
            atexit.register(self._end_if_open)
            self._atexit = True
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_exit)

    @hook_impl(trylast=True)  # after kedro-mlflow has ended the run
    def after_pipeline_run(self) -> None:
        self._close("FINISHED")

    @hook_impl(trylast=True)  # after kedro-mlflow has ended the run as FAILED
    def on_pipeline_error(self) -> None:
        self._close("FAILED")

    def _close(self, status: str) -> None:
        # kedro-mlflow reopens the run at every node (nested), so copies of it stay on
        # MLflow's active-run stack after it ended; MLflow's exit handler would end them
        # again, as FINISHED, whatever happened. Pop them here.
        while (run := mlflow.active_run()) is not None and run.info.run_id == self._run_id:
            mlflow.end_run(status)
        self._run_id = None
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def _end_if_open(self) -> None:
        """At interpreter exit: the pipeline neither finished nor failed (Ctrl-C, SIGTERM)."""
        if self._run_id is not None:
            log.warning("run %s was interrupted; ending it as KILLED", self._run_id)
            mlflow.MlflowClient().set_terminated(self._run_id, "KILLED")
            self._close("KILLED")


def _sigterm_to_exit(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _end_dead_runs(experiment_id: str, current: str) -> None:
    """End as KILLED the RUNNING runs of this machine whose process no longer exists."""
    client = mlflow.MlflowClient()
    host = fileio.host_id()
    for run in client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=200
    ):
        tags = run.data.tags
        if run.info.run_id == current or tags.get(HOST_TAG) != host or PID_TAG not in tags:
            continue
        if not fileio.pid_alive(int(tags[PID_TAG])):
            client.set_tag(run.info.run_id, "oct_vae.end_reason", "process gone (killed)")
            client.set_terminated(run.info.run_id, "KILLED")
            log.warning("run %s was left RUNNING by a killed process; ended as KILLED",
                        run.info.run_id)
