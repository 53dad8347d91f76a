"""The ``promote`` pipeline: move the alias ``champion`` of ``oct_vae_scorer`` to the best
version evaluated on the same test split (``kedro run --pipeline promote``)."""

from oct_vae.pipelines.promote.pipeline import create_pipeline

__all__ = ["create_pipeline"]
