"""The Kedro hook that checks every parameter before any node runs
(``oct_vae.framework.params``), and refuses ``--params`` that no node of the run reads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.pipeline import Pipeline

from oct_vae.framework.params import CATALOG_PARAMS, ParameterError, check_parameters


def parameter_reads(pipeline: Pipeline) -> set[str]:
    """The parameter keys a pipeline's nodes read: their ``params:`` inputs (``""`` for a
    node that takes all ``parameters``), the inputs of the inference pipeline a training
    pipeline logs (kedro-mlflow's ``PipelineML``: the served model reads them), and the
    runtime parameters of the catalog's datasets it uses (``params.CATALOG_PARAMS``)."""
    inputs = set(pipeline.all_inputs())
    inference = getattr(pipeline, "inference", None)
    if isinstance(inference, Pipeline):
        inputs |= set(inference.all_inputs())
    reads = {name.removeprefix("params:") for name in inputs if name.startswith("params:")}
    if "parameters" in inputs:
        reads.add("")
    reads |= {key for key, dataset in CATALOG_PARAMS.items() if dataset in inputs}
    return reads


def flat_keys(overrides: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys of the leaves of ``--params`` (``{"a": {"b": 1}}`` -> ``["a.b"]``)."""
    keys: list[str] = []
    for key, value in overrides.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            keys += flat_keys(value, f"{full}.")
        else:
            keys.append(full)
    return keys


def _reads(key: str, reads: set[str]) -> bool:
    # A node reading a namespace ("params:train") reads every key in it; "" reads all.
    return any(r == "" or key == r or key.startswith(f"{r}.") or r.startswith(f"{key}.")
               for r in reads)


def unread_overrides(
    overrides: Mapping[str, Any], reads: set[str], readers: Mapping[str, set[str]],
    selected: str,
) -> list[str]:
    """The ``--params`` keys that no node of the run reads, each with the pipelines that do.

    Args:
        overrides: The run's ``--params`` (nested, as Kedro parses them).
        reads: The parameter keys the run's nodes read (``params:`` inputs without the
            prefix; ``""`` for a node that reads all parameters).
        readers: The same for every registered pipeline, by name.
        selected: The run's pipeline(s), in words, for the message.
    """
    problems = []
    for key in flat_keys(overrides):
        if _reads(key, reads):
            continue
        owners = sorted(name for name, keys in readers.items() if _reads(key, keys))
        where = (f"it is read by the {' and '.join(owners)} pipeline"
                 f"{'s' if len(owners) > 1 else ''}: run that instead"
                 if owners else "no pipeline reads it")
        problems.append(f"{key}: no node of {selected} reads it, so it would change nothing; "
                        f"{where}, or leave it out")
    return problems


def check_overrides(
    overrides: Mapping[str, Any], reads: set[str], readers: Mapping[str, set[str]],
    selected: str,
) -> None:
    """Refuse ``--params`` that the run would not read (``unread_overrides``).

    Raises:
        ParameterError: Listing each such key and the pipelines that read it.
    """
    problems = unread_overrides(overrides, reads, readers, selected)
    if problems:
        raise ParameterError(problems)


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
