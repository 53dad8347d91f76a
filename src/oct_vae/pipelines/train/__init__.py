"""The ``train`` pipeline: fit the VAE on the healthy training scans."""

from oct_vae.pipelines.train.pipeline import create_pipeline

__all__ = ["create_pipeline"]
