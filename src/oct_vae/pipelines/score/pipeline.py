"""The ``score`` pipeline: ``kedro run --pipeline score --params score.input_dir=<folder>``."""

from kedro.pipeline import Node, Pipeline

from oct_vae.pipelines.score.nodes import find_scans, score_scans


def create_pipeline(**kwargs) -> Pipeline:
    """Score every file under ``score.input_dir`` with the latest ``vae_model``."""
    return Pipeline(
        [
            Node(
                find_scans,
                inputs="params:score.input_dir",
                outputs="score_files",
                name="find_scans",
            ),
            Node(
                score_scans,
                inputs={
                    "vae_model": "vae_model",
                    "score_files": "score_files",
                    "max_image_pixels": "params:ingest.max_image_pixels",
                    "workers": "params:ingest.workers",
                    "flag_score": "params:score.flag_score",
                    "specificity": "params:score.specificity",
                    "device": "params:device",
                    "heatmaps": "params:score.heatmaps",
                },
                outputs=["score_results", "score_heatmaps"],
                name="score_scans",
            ),
        ],
        tags=["score"],
    )
