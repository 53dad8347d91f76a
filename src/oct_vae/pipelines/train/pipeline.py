"""The ``train`` pipeline."""

from kedro.pipeline import Node, Pipeline

from oct_vae.pipelines.train.nodes import calibrate_model, train_vae


def create_pipeline(**kwargs) -> Pipeline:
    """Train on healthy scans, then calibrate the scores on healthy scans."""
    return Pipeline(
        [
            Node(
                train_vae,
                inputs=[
                    "train_images",
                    "val_images",
                    "params:train",
                    "params:seed",
                    "params:device",
                    "run_info",
                ],
                outputs=["trained_vae", "training_history", "training_metrics"],
                name="train_vae",
            ),
            Node(
                calibrate_model,
                inputs=[
                    "trained_vae",
                    "train_images",
                    "val_images",
                    "params:train.scoring",
                    "params:seed",
                    "params:device",
                ],
                outputs=["vae_model", "vae_pytorch_model"],
                name="calibrate_model",
            ),
        ],
        tags=["train", "training"],
    )
