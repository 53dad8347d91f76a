"""The ``train`` pipeline."""

from kedro.pipeline import Node, Pipeline

from oct_vae.pipelines.train.nodes import calibrate_model, train_vae


def create_pipeline(**kwargs) -> Pipeline:
    """Train on healthy scans, then calibrate the scores on healthy scans."""
    return Pipeline(
        [
            Node(
                train_vae,
                inputs={
                    "train_images": "train_images",
                    "val_images": "val_images",
                    "params": "params:train",
                    "seed": "params:seed",
                    "device": "params:device",
                    "run_info": "run_info",
                },
                outputs=["trained_vae", "training_history", "training_metrics"],
                name="train_vae",
            ),
            Node(
                calibrate_model,
                inputs={
                    "checkpoint": "trained_vae",
                    "train_images": "train_images",
                    "val_images": "val_images",
                    "scoring": "params:train.scoring",
                    "seed": "params:seed",
                    "device": "params:device",
                },
                outputs="vae_model",
                name="calibrate_model",
            ),
        ],
        tags=["train", "training"],
    )
