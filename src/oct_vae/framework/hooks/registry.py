"""``ModelRegistryHook``: tags the model version a training run registered, and names the
first ``champion`` (``oct_vae.framework.registry``).

Why a hook and not a node: kedro-mlflow logs (and so registers) ``oct_vae_scorer`` in its
``after_pipeline_run`` hook, after the last node has run, so no node of the run can see
the version. This hook's ``after_pipeline_run`` is marked ``trylast``: it runs after
kedro-mlflow's, finds the version(s) registered from the run's MLflow run, and tags them
with the run's evaluation (the ``All`` AUC of ``score.flag_score``, read back from the
run's metrics), the test split's fingerprint, the Kedro environment and the training
data's fingerprint. When the run evaluated its model and the registered model has no
``champion`` of this run's environment yet (none at all, or one tagged with another
``kedro_env``: a tracking server shared by several environments), it applies the
promotion rule (``registry.promote``), so after the first ``make run``
``models:/oct_vae_scorer@champion`` resolves. Later runs never move the alias away from a
version of their own environment: ``kedro run --pipeline promote`` does.

It also tags the MLflow run with ``kedro_env`` and hands the promotion node the Kedro
environment (the ``kedro_env`` memory dataset). Register it in ``settings.HOOKS``.
"""

from __future__ import annotations

import logging
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl

from oct_vae.evaluation.metrics import metric_key
from oct_vae.framework import registry

log = logging.getLogger(__name__)

# The memory dataset holding the Kedro environment, for the promote pipeline.
KEDRO_ENV = "kedro_env"
# Outputs that show the run evaluated its model (evaluate's AUC metrics).
EVALUATED_BY = "auc_metrics"


class ModelRegistryHook:
    """See the module."""

    def __init__(self) -> None:
        self._mlflow_run_id: str | None = None
        self._tracking_uri: str | None = None
        self._registry_uri: str | None = None

    @hook_impl(trylast=True)  # after kedro-mlflow has started the MLflow run
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        env = run_params.get("env") or registry.DEFAULT_ENV
        if KEDRO_ENV in catalog:
            catalog.save(KEDRO_ENV, env)
        else:
            catalog[KEDRO_ENV] = env
        run = mlflow.active_run()
        self._mlflow_run_id = None if run is None else run.info.run_id
        if run is not None:
            mlflow.set_tag(registry.TAG_ENV, env)
        self._tracking_uri = mlflow.get_tracking_uri()
        self._registry_uri = mlflow.get_registry_uri()

    @hook_impl(trylast=True)  # after kedro-mlflow has logged (registered) the model
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        run_id, self._mlflow_run_id = self._mlflow_run_id, None
        if run_id is None or "vae_model" not in pipeline.all_outputs():
            return  # no MLflow run, or no training: nothing was registered
        client = mlflow.MlflowClient(self._tracking_uri, self._registry_uri)
        versions = registry.versions_of_run(client, run_id)
        if not versions:
            return  # the pipeline logs no model (not bound to inference)
        env = run_params.get("env") or registry.DEFAULT_ENV
        evaluated = EVALUATED_BY in pipeline.all_outputs()
        tags = registry.version_tags(**_tag_fields(client, run_id, run_params, catalog, evaluated))
        registry.tag_versions(client, versions, tags)
        log.info(
            "registered %s version %s (%s)",
            registry.MODEL_NAME,
            ", ".join(map(str, versions)),
            ", ".join(f"{k}={v}" for k, v in tags.items()),
        )
        if evaluated and registry.TAG_AUC in tags:
            registry.promote_first(client, env)

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._mlflow_run_id = None


def _tag_fields(
    client: Any, run_id: str, run_params: dict[str, Any], catalog, evaluated: bool
) -> dict[str, Any]:
    """The arguments of ``registry.version_tags`` for the model of MLflow run ``run_id``:
    the run, the environment and the training data; the evaluation when ``evaluated``."""
    model = catalog.load("vae_model")
    fields: dict[str, Any] = {
        "kedro_run_id": str(run_params["run_id"]),
        "env": run_params.get("env") or registry.DEFAULT_ENV,
        "data_fingerprint": (model.get("metadata") or {}).get("data_fingerprint"),
    }
    if evaluated:
        flag = catalog.load("params:score.flag_score")
        metric = metric_key("auc", flag, "All")
        fields.update(
            flag_score=flag,
            auc_metric=metric,
            auc=client.get_run(run_id).data.metrics.get(metric),
            test_split=registry.split_fingerprint(catalog.load("oct_manifest")),
        )
    return fields
