"""MLflow's internals, in one place (``PRIVATE_NAMES``).

* The model server is MLflow's own scoring app, built by
  ``mlflow.pyfunc.scoring_server.init`` (what ``mlflow models serve`` runs; not a
  documented API), with its request timeout read from the environment when it is built.
* The tags MLflow gives a new run by default (``mlflow.user``, ``mlflow.source.name``) are
  replaced through ``MLFLOW_RUN_CONTEXT``: JSON tags that MLflow's run-context provider
  adds to every run started while it is set.

Contract test: ``tests/framework/test_adapters.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

# (module, attribute): what this module relies on, checked by the contract test.
PRIVATE_NAMES = (
    ("mlflow.pyfunc.scoring_server", "init"),
    ("mlflow.pyfunc.scoring_server", "CONTENT_TYPE_JSON"),
    ("mlflow.environment_variables", "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"),
    ("mlflow.environment_variables", "MLFLOW_RUN_CONTEXT"),
)
# The content type MLflow's /invocations parses as JSON (its CONTENT_TYPE_JSON).
JSON_CONTENT_TYPE = "application/json"


def scoring_app(model: Any) -> Any:
    """MLflow's scoring app (a FastAPI app) for a loaded ``PyFuncModel``: ``/invocations``,
    ``/ping``, ``/health`` and ``/version``, as ``mlflow models serve`` serves them."""
    from mlflow.pyfunc import scoring_server

    return scoring_server.init(model)


def set_request_timeout(seconds: int) -> None:
    """The request timeout of scoring apps built from now on (MLflow's default: 60 s)."""
    from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT

    os.environ[MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.name] = str(seconds)


@contextlib.contextmanager
def run_context(tags: Mapping[str, str]) -> Iterator[None]:
    """Runs started inside the block get ``tags`` in place of MLflow's defaults of the
    same names (``mlflow.user``, ``mlflow.source.name``); tags already in
    ``MLFLOW_RUN_CONTEXT`` are kept, and the variable is restored afterwards."""
    from mlflow.environment_variables import MLFLOW_RUN_CONTEXT

    name = MLFLOW_RUN_CONTEXT.name
    before = os.environ.get(name)
    os.environ[name] = json.dumps({**json.loads(before or "{}"), **tags})
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
