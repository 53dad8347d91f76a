"""Project hooks."""

from __future__ import annotations

import logging
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl

log = logging.getLogger(__name__)

# Dataset -> the command that produces it, for the message when it is missing.
PRODUCERS = {
    "oct_manifest": "kedro run --pipeline ingest",
    "train_images": "kedro run --pipeline ingest",
    "val_images": "kedro run --pipeline ingest",
    "test_images": "kedro run --pipeline ingest",
    "vae_model": "kedro run --pipeline train",
    "test_scores": "kedro run --pipeline evaluate",
}


class MissingInputsError(RuntimeError):
    """A pipeline was started before the pipeline that produces its inputs."""


class MissingInputsHook:
    """Stop a run before it starts when a free input has never been produced, and say
    which command produces it (e.g. ``kedro run --pipeline evaluate`` with no model)."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        missing = []
        for name in sorted(pipeline.inputs()):
            if name in PRODUCERS and not catalog.exists(name):
                missing.append(name)
        if missing:
            commands = sorted({PRODUCERS[m] for m in missing}, key=list(PRODUCERS.values()).index)
            raise MissingInputsError(
                f"No saved version of {', '.join(missing)} was found, so this pipeline cannot "
                f"run yet. Run `{commands[0]}` first (or `kedro run` to run everything)."
            )


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
        path = _saved_path(dataset)
        if path is None:
            log.warning("cannot log %s to MLflow: no local file path", dataset_name)
            return
        mlflow.log_artifact(path, artifact_path)


def _saved_path(dataset) -> str | None:
    version = getattr(dataset, "_version", None)
    if version is not None:
        return str(dataset._get_versioned_path(dataset.resolve_save_version()))
    filepath = getattr(dataset, "_filepath", None)
    return str(filepath) if filepath is not None else None
