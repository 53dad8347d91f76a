"""``MissingInputsHook``: a pipeline started before its inputs exist names the command
that makes them."""

from __future__ import annotations

from typing import Any

from kedro.framework.hooks import hook_impl

# Dataset -> the command that produces it, for the message when it is missing.
PRODUCERS = {
    "oct_manifest": "kedro run --pipeline ingest",
    "train_images": "kedro run --pipeline ingest",
    "val_images": "kedro run --pipeline ingest",
    "test_images": "kedro run --pipeline ingest",
    "vae_model": "kedro run --pipeline train",
    "test_scores": "kedro run --pipeline evaluate",
}


class MissingInputsError(RuntimeError):
    """A pipeline was started before the pipeline that produces its inputs."""


class MissingInputsHook:
    """Stop a run before it starts when a free input has never been produced, and say
    which command produces it (e.g. ``kedro run --pipeline evaluate`` with no model)."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        missing = [
            name
            for name in sorted(pipeline.inputs())
            if name in PRODUCERS and not catalog.exists(name)
        ]
        if missing:
            commands = sorted({PRODUCERS[m] for m in missing}, key=list(PRODUCERS.values()).index)
            raise MissingInputsError(
                f"No saved version of {', '.join(missing)} was found, so this pipeline cannot "
                f"run yet. Run `{commands[0]}` first (or `kedro run` to run everything)."
            )
