"""The runner of the served model: Kedro's ``SequentialRunner`` without Kedro's log lines.

kedro-mlflow's ``KedroPipelineModel`` runs the ``inference`` pipeline once per request,
and Kedro logs about 15 INFO lines for each run ("Loading data from ...", "Running node:
...", "Completed 1 out of 1 tasks", ...). While this runner runs, a filter on the loggers
Kedro writes to drops those lines; the node ``score_request`` logs one line per request
instead. The filter is keyed on a context variable, so it quiets only the thread that is
running the served model (the model server scores each request in a thread of its own) and
leaves every other Kedro run of the process as it was. Errors other than a node's failure
(which ``score_request`` reports itself) are kept.

``pipeline_ml_factory(..., kpm_kwargs={"runner": SequentialRunner()})`` stores the runner in
the logged model. The class keeps Kedro's name on purpose: ``KedroPipelineModel.predict``
uses its stored runner only when the runner's class is named like the ``runner`` parameter
of the request, which defaults to ``"SequentialRunner"``; under another name it would build
a plain Kedro ``SequentialRunner`` for every request.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from kedro.runner import SequentialRunner as KedroSequentialRunner

# The loggers Kedro writes to while a SequentialRunner runs a pipeline (kedro 1.x), and
# this module's: the runner logs under its class's module.
KEDRO_RUN_LOGGERS = (
    "kedro.io.core",
    "kedro.io.data_catalog",
    "kedro.io.memory_dataset",
    "kedro.pipeline.node",
    "kedro.runner.runner",
    "kedro.runner.sequential_runner",
    "kedro.runner.task",
    __name__,
)

_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("oct_vae_quiet_run", default=False)


class _QuietWhileServing(logging.Filter):
    """Drops Kedro's records in the context of a quiet run: all below ERROR, and the node's
    failure report."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _QUIET.get():
            return True
        return record.levelno >= logging.ERROR and record.name != "kedro.pipeline.node"


_FILTER = _QuietWhileServing()


def _install_filter() -> None:
    # Checked on every run: a later logging configuration may have replaced the loggers'
    # settings (dictConfig keeps filters, but this costs nothing).
    for name in KEDRO_RUN_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


class SequentialRunner(KedroSequentialRunner):
    """Kedro's ``SequentialRunner``, silent below ERROR while it runs (see the module)."""

    def run(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        _install_filter()
        token = _QUIET.set(True)
        try:
            return super().run(*args, **kwargs)
        finally:
            _QUIET.reset(token)

    def __eq__(self, other: object) -> bool:
        # kedro-mlflow compares PipelineML objects, kpm_kwargs (this runner) included.
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash(type(self))
