"""The ``inference`` pipeline, and its binding to training with kedro-mlflow."""

from kedro.pipeline import Node, Pipeline
from kedro_mlflow.pipeline import pipeline_ml_factory
from kedro_mlflow.pipeline.pipeline_ml import PipelineML
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from oct_vae.framework.requirements import pins
from oct_vae.pipelines.inference.nodes import (
    ID_COLUMN,
    IMAGE_COLUMN,
    export_checkpoint,
    score_request,
)
from oct_vae.pipelines.inference.runner import SequentialRunner as QuietSequentialRunner

# The MLflow model every training run logs: runs:/<run id>/oct_vae_scorer.
MODEL_NAME = "oct_vae_scorer"
INPUT_NAME = "scoring_request"
# What a request may hold; the id is optional and echoed back.
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", IMAGE_COLUMN), ColSpec("string", ID_COLUMN, required=False)])
)
# What the served model needs, as pinned in pyproject.toml (the one place pins live).
PIP_REQUIREMENTS = pins(
    "kedro", "kedro-mlflow", "mlflow", "torch", "numpy", "pandas", "pillow", "scikit-image",
    "scipy",
)


def create_pipeline(**kwargs) -> Pipeline:
    """Request rows of base64 scans -> ``load_scan`` -> model -> scores and flag."""
    return Pipeline(
        [
            Node(
                score_request,
                inputs={
                    "scorer_checkpoint": "scorer_checkpoint",
                    "scoring_request": INPUT_NAME,
                    "max_image_pixels": "params:ingest.max_image_pixels",
                    "max_image_bytes": "params:score.max_image_bytes",
                    "max_request_rows": "params:score.max_request_rows",
                    "flag_score": "params:score.flag_score",
                    "specificity": "params:score.specificity",
                    "device": "params:device",
                    "max_request_bytes": "params:score.max_request_bytes",
                },
                outputs="scoring_response",
                name="score_request",
            )
        ],
        tags=["inference"],
    )


def bind_to_training(training: Pipeline) -> PipelineML:
    """``training`` plus the export of ``vae_model``, logging the inference pipeline as an
    MLflow model at the end of every run (kedro-mlflow's ``MlflowHook``).

    The served model packs ``scorer_checkpoint`` (this run's checkpoint, one file), not the
    versioned ``vae_model`` folder, which holds every version ever trained. It runs the
    pipeline with ``runner.SequentialRunner`` (no Kedro log lines per request) and keeps its
    inputs as they are loaded (``copy_mode="assign"``: the request's frame and the
    checkpoint are not copied again by each load).
    """
    export = Pipeline(
        [
            Node(
                export_checkpoint,
                inputs="vae_model",
                outputs="scorer_checkpoint",
                name="export_scorer_checkpoint",
            )
        ],
        tags=["training"],
    )
    return pipeline_ml_factory(
        training=training + export,
        inference=create_pipeline(),
        input_name=INPUT_NAME,
        kpm_kwargs={"copy_mode": "assign", "runner": QuietSequentialRunner()},
        log_model_kwargs={
            "name": MODEL_NAME,
            # Also a new version of the registered model (oct_vae.framework.registry).
            "registered_model_name": MODEL_NAME,
            "signature": SIGNATURE,
            "pip_requirements": PIP_REQUIREMENTS,
        },
    )
