"""The ``inference`` pipeline: base64 scans in a request -> scores; served by MLflow.

It is not run with ``kedro run``: ``bind_to_training`` ties it to a training pipeline,
so that every training run logs it as the MLflow model ``oct_vae_scorer``.
"""

from oct_vae.pipelines.inference.pipeline import bind_to_training, create_pipeline

__all__ = ["bind_to_training", "create_pipeline"]
