"""Project pipelines."""

from kedro.pipeline import Pipeline
from kedro.framework.project import find_pipelines

# Order of the default run: each pipeline consumes what the previous one produced.
DEFAULT_ORDER = ("ingest", "train", "evaluate")


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines.

    Returns:
        A mapping from pipeline names to ``Pipeline`` objects; ``__default__``
        chains ``ingest``, ``train`` and ``evaluate``.
    """
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = sum(
        (pipelines[name] for name in DEFAULT_ORDER if name in pipelines), Pipeline([])
    )
    return pipelines
