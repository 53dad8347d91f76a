"""Project pipelines."""

import importlib
import pkgutil

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

import oct_vae.pipelines
from oct_vae.pipelines.inference import bind_to_training

# Order of the default run: each pipeline consumes what the previous one produced.
DEFAULT_ORDER = ("ingest", "train", "evaluate")


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines.

    ``__default__`` chains ``ingest``, ``train`` and ``evaluate``; it and ``train`` are
    bound to the ``inference`` pipeline, so both log the servable MLflow model
    ``oct_vae_scorer``. ``inference`` itself is not listed: it only runs inside that
    model. Kedro may load only the requested pipelines, so any of them can be absent.

    Returns:
        A mapping from pipeline names to ``Pipeline`` objects.
    """
    pipelines = find_pipelines(raise_errors=True)
    pipelines.pop("inference", None)
    default = [pipelines[name] for name in DEFAULT_ORDER if name in pipelines]
    pipelines["__default__"] = sum(default, Pipeline([]))
    if len(default) == len(DEFAULT_ORDER):
        pipelines["__default__"] = bind_to_training(pipelines["__default__"])
    if "train" in pipelines:
        pipelines["train"] = bind_to_training(pipelines["train"])
    return pipelines


def every_pipeline() -> dict[str, Pipeline]:
    """Every pipeline of the project, built afresh, whatever ``kedro run --pipeline``
    selected (Kedro then loads only the selected ones): for messages that name the
    pipeline that reads a parameter. ``train`` is bound to ``inference`` as registered."""
    found: dict[str, Pipeline] = {}
    for module in pkgutil.iter_modules(oct_vae.pipelines.__path__):
        if module.name != "inference":
            package = importlib.import_module(f"oct_vae.pipelines.{module.name}")
            found[module.name] = package.create_pipeline()
    if "train" in found:
        found["train"] = bind_to_training(found["train"])
    return found
