"""The ``score`` pipeline: anomaly scores and heatmaps for every scan in a folder."""

from oct_vae.pipelines.score.pipeline import create_pipeline

__all__ = ["create_pipeline"]
