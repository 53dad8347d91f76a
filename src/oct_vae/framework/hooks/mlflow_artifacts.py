"""``MlflowArtifactsHook``: the exact saved version of a dataset goes to the MLflow run."""

from __future__ import annotations

import logging
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl

from oct_vae.framework.adapters import kedro as kedro_adapter

log = logging.getLogger(__name__)


class MlflowArtifactsHook:
    """Log the file of each saved version of a dataset whose catalog metadata names an
    ``mlflow_artifact_path`` to the active MLflow run (the run kedro-mlflow opened).

    kedro-mlflow's ``MlflowArtifactDataset`` does the same by wrapping a dataset, but it
    gives the wrapped dataset a save version of its own, which Kedro 1.x rejects for
    versioned datasets; this hook logs exactly the version the catalog saved.
    """

    def __init__(self) -> None:
        self._catalog = None

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        self._catalog = catalog

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node) -> None:
        if self._catalog is None or mlflow.active_run() is None:
            return
        dataset = self._catalog.get(dataset_name)
        artifact_path = (getattr(dataset, "metadata", None) or {}).get("mlflow_artifact_path")
        if not artifact_path:
            return
        path = kedro_adapter.saved_path(dataset)
        if path is None:
            log.warning("cannot log %s to MLflow: no local file path", dataset_name)
            return
        mlflow.log_artifact(str(path), artifact_path)
