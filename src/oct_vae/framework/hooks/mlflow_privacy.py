"""``PrivateMlflowHook``: kedro-mlflow's hook, recording no absolute path and no OS user.

Folder and file names of clinical data can carry patient identifiers, and a tracking
server is shared (docs/guarantees.md, "Privacy").
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from oct_vae.framework import fileio
from oct_vae.framework.adapters import kedro_mlflow as kedro_mlflow_adapter
from oct_vae.framework.adapters import mlflow as mlflow_adapter
from oct_vae.training.distributed import is_main_process

# Parameters whose values are paths outside the project's control; recorded redacted.
PATH_PARAMS = ("score.input_dir", "raw_dir", "real_dir")
# Set this to record a user name in MLflow (mlflow.user); by default none is recorded.
USER_ENV = "OCT_VAE_MLFLOW_USER"
ANONYMOUS_USER = "oct-vae"


def redact_path(value: Any) -> Any:
    """A path given by the user, as MLflow may record it: only a short fingerprint (the
    folder and file names of clinical data can carry patient identifiers)."""
    if not value:
        return value
    digest = hashlib.sha1(str(value).encode()).hexdigest()[:12]
    return f"<path sha1:{digest}>"


def _redact_params(params: dict[str, Any]) -> dict[str, Any]:
    out = dict(params)
    for key in PATH_PARAMS:
        if key in out:
            out[key] = redact_path(out[key])
        head, _, tail = key.partition(".")
        if tail and isinstance(out.get(head), dict) and tail in out[head]:
            out[head] = {**out[head], tail: redact_path(out[head][tail])}
    return out


def _redact_node_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """A node's inputs with every path parameter redacted (alone, in a dict, in
    ``parameters``)."""
    safe = {}
    for key, value in inputs.items():
        name = key.removeprefix("params:")
        if key.startswith("params:") and name in PATH_PARAMS:
            value = redact_path(value)
        elif key.startswith("params:") and isinstance(value, dict):
            value = {
                k: redact_path(v) if f"{name}.{k}" in PATH_PARAMS else v for k, v in value.items()
            }
        elif key == "parameters":
            value = _redact_params(value)
        safe[key] = value
    return safe


def setup_lock_path(project_path: str | os.PathLike) -> Path:
    """The lock file that serialises MLflow store setup for one project on this machine."""
    return fileio.machine_lock_path("mlflow-setup", project_path)


class PrivateMlflowHook(kedro_mlflow_adapter.MlflowHook):
    """kedro-mlflow's hook, recording no absolute path and no OS user name by default.

    kedro-mlflow tags the run with every run parameter (the project path, runtime params
    such as ``score.input_dir``) and logs every node parameter; MLflow tags the run with
    the OS user and the script's path. Here the project path is dropped, path parameters
    are reduced to a fingerprint, and ``mlflow.user`` is ``$OCT_VAE_MLFLOW_USER`` or
    ``oct-vae`` (through MLflow's run context). Replaces the plugin's own hook
    (settings.py: ``DISABLE_HOOKS_FOR_PLUGINS``).
    """

    @hook_impl
    def after_context_created(self, context) -> None:
        if not is_main_process():  # a torchrun rank other than 0 never opens the store
            kedro_mlflow_adapter.disable(self)
            return
        # kedro-mlflow opens the store here (a new SQLite store is created and migrated)
        # and creates the experiment if it is missing. Two runs of one project that start
        # together would both migrate the new database, or both create the experiment,
        # and one would fail; runs on this machine therefore do this one at a time.
        with fileio.interprocess_lock(setup_lock_path(context.project_path)):
            super().after_context_created(context=context)

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        if not is_main_process():  # a torchrun rank other than 0: rank 0 logs the run
            kedro_mlflow_adapter.disable(self)
            return
        safe = {k: v for k, v in run_params.items() if k != "project_path"}
        if run_params.get("runtime_params"):
            safe["runtime_params"] = _redact_params(run_params["runtime_params"])
        user = os.environ.get(USER_ENV) or ANONYMOUS_USER
        with mlflow_adapter.run_context({"mlflow.user": user, "mlflow.source.name": "kedro run"}):
            super().before_pipeline_run(run_params=safe, pipeline=pipeline, catalog=catalog)

    @hook_impl
    def before_node_run(self, node, catalog, inputs: dict[str, Any], is_async: bool) -> None:
        super().before_node_run(
            node=node, catalog=catalog, inputs=_redact_node_inputs(inputs), is_async=is_async
        )
