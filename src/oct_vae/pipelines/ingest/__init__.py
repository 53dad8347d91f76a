"""The ``ingest`` pipeline: scan files to patient-disjoint 128x128 image arrays and a manifest."""

from oct_vae.pipelines.ingest.pipeline import create_pipeline

__all__ = ["create_pipeline"]
