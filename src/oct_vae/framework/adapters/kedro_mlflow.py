"""kedro-mlflow's internals, in one place (``PRIVATE_NAMES``).

``PrivateMlflowHook`` extends kedro-mlflow's ``MlflowHook`` and switches it off on a
``torchrun`` rank other than 0 (the hook has no setting for that: it reads a private
flag); the model server reads the parameters logged with a ``KedroPipelineModel``; and
kedro-mlflow itself points the served model's datasets at the packed files by setting
their ``_filepath`` (``KedroPipelineModel.load_context``), which the project's datasets
must keep honouring; the project's batched metrics dataset reuses the history dataset's
conversion of a metrics dict into (key, value, step) and its logging switch. Contract
test: ``tests/framework/test_adapters.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain
from typing import Any

from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook

__all__ = ["MlflowHook", "disable", "metric_tuples", "metrics_logging_activated",
           "pipeline_model_parameter"]

# (class, attribute): what this module touches, checked on an instance of the class.
PRIVATE_NAMES = (
    ("kedro_mlflow.framework.hooks.mlflow_hook.MlflowHook", "_is_mlflow_enabled"),
    ("kedro_mlflow.framework.hooks.mlflow_hook.MlflowHook", "run_id"),
    ("kedro_mlflow.mlflow.KedroPipelineModel", "loaded_catalog"),
    ("kedro_mlflow.io.metrics.MlflowMetricsHistoryDataset", "_build_args_list_from_metric_item"),
    ("kedro_mlflow.io.metrics.MlflowMetricsHistoryDataset", "_logging_activated"),
)


def disable(hook: MlflowHook) -> None:
    """Make ``hook`` do nothing for this process: no store opened, no run, no logging."""
    hook._is_mlflow_enabled = False
    hook.run_id = None


def pipeline_model_parameter(model: Any, name: str) -> Any:
    """The parameter ``name`` logged with a loaded ``KedroPipelineModel`` (a pyfunc model).

    Returns:
        Its value, or ``None`` when the model has no such parameter.

    Raises:
        AttributeError: ``model`` is not a kedro-mlflow pipeline model.
    """
    catalog = model.unwrap_python_model().loaded_catalog
    key = f"params:{name}"
    return catalog[key].load() if key in catalog else None


def metric_tuples(dataset: Any, data: dict[str, Any]) -> Iterator[tuple[str, float, int]]:
    """``(key, value, step)`` of every metric in ``data``, exactly as kedro-mlflow's
    ``MlflowMetricsHistoryDataset`` would log them (prefix, value lists, steps)."""
    return chain.from_iterable(
        dataset._build_args_list_from_metric_item(k, v) for k, v in data.items())


def metrics_logging_activated(dataset: Any) -> bool:
    """Whether kedro-mlflow left logging on for this metrics dataset (it switches it off
    for pipelines whose tracking is disabled)."""
    return bool(dataset._logging_activated)
