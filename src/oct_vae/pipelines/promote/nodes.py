"""Node of the ``promote`` pipeline."""

from __future__ import annotations

from typing import Any

import mlflow

from oct_vae.framework import registry


def promote_champion(kedro_env: str) -> dict[str, Any]:
    """Give ``champion`` to the best version of ``oct_vae_scorer`` evaluated on the same
    test split, in this Kedro environment, as the newest evaluated one
    (``registry.choose_champion``), in the tracking store of this environment.

    Returns:
        What was decided: ``version``, ``auc_all``, ``previous``, ``changed``, ``compared``
        and ``message``; also recorded as tags of this run's MLflow run when there is one.
    """
    decision = registry.promote(mlflow.MlflowClient(), kedro_env)
    if mlflow.active_run() is not None:
        mlflow.set_tags(_tags(decision))
    return {
        "version": decision.version,
        "auc_all": decision.auc,
        "previous": decision.previous,
        "changed": decision.changed,
        "compared": list(decision.compared),
        "message": decision.message,
    }


def _tags(decision: registry.Decision) -> dict[str, str]:
    """The decision as MLflow run tags (``promote.*``)."""
    return {
        "promote.version": str(decision.version),
        "promote.previous": str(decision.previous),
        "promote.changed": str(decision.changed).lower(),
        "promote.message": decision.message,
    }
