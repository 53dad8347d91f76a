"""The project's Kedro hooks, one module per concern (registered in ``settings.HOOKS``).

What makes every result traceable to exactly the data and model that made it
(docs/guarantees.md):

* ``isolation``: ``RunIsolationHook`` (every versioned dataset loaded at one version, fixed
  when the run starts; image arrays checked against the manifest; outputs writable before
  any node runs) and ``ScorerCopyCleanupHook``;
* ``missing_inputs``: ``MissingInputsHook``, a pipeline started before its inputs exist
  names the command that makes them;
* ``mlflow_artifacts``: ``MlflowArtifactsHook``, the exact saved version of a dataset goes
  to the MLflow run;
* ``mlflow_privacy``: ``PrivateMlflowHook``, kedro-mlflow's hook recording no absolute path
  and no OS user;
* ``run_state``: ``MlflowRunStateHook``, a run stopped by Ctrl-C, SIGTERM or SIGKILL never
  stays RUNNING;
* ``torchrun``: ``MainProcessOnlyHook``, under ``torchrun`` only rank 0 saves outputs and
  logs to MLflow;
* ``registry``: ``ModelRegistryHook``, the registered model version tagged, the first
  ``champion`` named.

``CheckParametersHook`` lives in ``oct_vae.framework.parameter_hook``.
"""

from oct_vae.framework.hooks.isolation import (
    IMAGE_DATASETS,
    RUN_INFO,
    SCORER_CHECKPOINT,
    RunIsolationHook,
    ScorerCopyCleanupHook,
    check_outputs_writable,
    pin_versions,
)
from oct_vae.framework.hooks.missing_inputs import (
    PRODUCERS,
    MissingInputsError,
    MissingInputsHook,
)
from oct_vae.framework.hooks.mlflow_artifacts import MlflowArtifactsHook
from oct_vae.framework.hooks.mlflow_privacy import (
    PATH_PARAMS,
    PrivateMlflowHook,
    redact_path,
    setup_lock_path,
)
from oct_vae.framework.hooks.registry import ModelRegistryHook
from oct_vae.framework.hooks.run_state import HOST_TAG, PID_TAG, MlflowRunStateHook
from oct_vae.framework.hooks.torchrun import MainProcessOnlyHook

__all__ = [
    "HOST_TAG",
    "IMAGE_DATASETS",
    "PATH_PARAMS",
    "PID_TAG",
    "PRODUCERS",
    "RUN_INFO",
    "SCORER_CHECKPOINT",
    "MainProcessOnlyHook",
    "MissingInputsError",
    "MissingInputsHook",
    "MlflowArtifactsHook",
    "MlflowRunStateHook",
    "ModelRegistryHook",
    "PrivateMlflowHook",
    "RunIsolationHook",
    "ScorerCopyCleanupHook",
    "check_outputs_writable",
    "pin_versions",
    "redact_path",
    "setup_lock_path",
]
