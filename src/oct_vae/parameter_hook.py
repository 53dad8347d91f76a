"""The Kedro hook that checks every parameter before any node runs (``oct_vae.params``)."""

from __future__ import annotations

from typing import Any

from kedro.framework.hooks import hook_impl


class CheckParametersHook:
    """Stop a run before its first node when a parameter is unknown, missing, of the wrong
    type or out of range, with every problem in one error (``oct_vae.params``).

    ``before_pipeline_run`` runs in the main process for every runner (sequential, thread,
    parallel), after the catalog is built and before any node; ``tryfirst`` puts it ahead
    of the other hooks, so kedro-mlflow opens no MLflow run for a run that cannot start.
    """

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        # Imported here: oct_vae.params loads torch, which `kedro --help` and the other
        # commands that import settings.py do not need.
        from oct_vae.params import check_parameters

        dataset = catalog.get("parameters")
        check_parameters(dataset.load() if dataset is not None else {})
