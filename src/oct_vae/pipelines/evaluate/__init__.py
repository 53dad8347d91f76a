"""The ``evaluate`` pipeline: score the test set, AUC tables with statistics, figures."""

from oct_vae.pipelines.evaluate.pipeline import create_pipeline

__all__ = ["create_pipeline"]
