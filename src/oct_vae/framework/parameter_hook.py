"""The Kedro hook that checks every parameter before any node runs
(``oct_vae.framework.params``)."""

from __future__ import annotations

from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.pipeline import Pipeline


def parameter_reads(pipeline: Pipeline) -> set[str]:
    """The parameter keys a pipeline's nodes read: their ``params:`` inputs (``""`` for a
    node that takes all ``parameters``), the inputs of the inference pipeline a training
    pipeline logs (kedro-mlflow's ``PipelineML``: the served model reads them), and the
    runtime parameters of the catalog's datasets it uses (``params.CATALOG_PARAMS``)."""
    from oct_vae.framework.params import CATALOG_PARAMS

    inputs = set(pipeline.all_inputs())
    inference = getattr(pipeline, "inference", None)
    if isinstance(inference, Pipeline):
        inputs |= set(inference.all_inputs())
    reads = {name.removeprefix("params:") for name in inputs if name.startswith("params:")}
    if "parameters" in inputs:
        reads.add("")
    reads |= {key for key, dataset in CATALOG_PARAMS.items() if dataset in inputs}
    return reads


class CheckParametersHook:
    """Stop a run before its first node when a parameter is unknown, missing, of the wrong
    type or out of range, with every problem in one error (``oct_vae.framework.params``), or when a
    ``--params`` override is read by no node of the selected pipeline(s): it would change
    nothing, and the message names the pipeline that does read it.

    ``before_pipeline_run`` runs in the main process for every runner (sequential, thread,
    parallel), after the catalog is built and before any node; ``tryfirst`` puts it ahead
    of the other hooks, so kedro-mlflow opens no MLflow run for a run that cannot start.
    """

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        # Imported here: oct_vae.framework.params loads torch, which `kedro --help` and the other
        # commands that import settings.py do not need.
        from oct_vae.framework.params import check_overrides, check_parameters

        dataset = catalog.get("parameters")
        check_parameters(dataset.load() if dataset is not None else {})
        overrides = run_params.get("runtime_params") or {}
        if overrides:
            from oct_vae.pipeline_registry import every_pipeline

            names = run_params.get("pipeline_names") or ["__default__"]
            readers = {name: parameter_reads(p) for name, p in every_pipeline().items()}
            selected = "the " + " + ".join(
                "default" if n == "__default__" else n for n in names) + " pipeline"
            check_overrides(overrides, parameter_reads(pipeline), readers, selected)
