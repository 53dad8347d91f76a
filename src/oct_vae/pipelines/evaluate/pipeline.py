"""The ``evaluate`` pipeline."""

from kedro.pipeline import Node, Pipeline

from oct_vae.pipelines.evaluate.nodes import (
    build_auc_table,
    build_statistical_report,
    plot_reconstructions,
    plot_roc_curves,
    plot_score_distributions,
    score_test_set,
)


def create_pipeline(**kwargs) -> Pipeline:
    """Score the test scans with the latest ``vae_model`` and report."""
    return Pipeline(
        [
            Node(
                score_test_set,
                inputs=["vae_model", "test_images", "oct_manifest", "params:device"],
                outputs="test_scores",
                name="score_test_set",
            ),
            Node(
                build_auc_table,
                inputs="test_scores",
                outputs=["auc_table", "auc_metrics"],
                name="build_auc_table",
            ),
            Node(
                build_statistical_report,
                inputs=[
                    "test_scores",
                    "vae_model",
                    "params:evaluate.n_bootstrap",
                    "params:evaluate.specificity",
                    "params:seed",
                    "run_info",
                ],
                outputs=["auc_report", "auc_report_markdown", "report_metrics"],
                name="build_statistical_report",
            ),
            Node(
                plot_reconstructions,
                inputs=[
                    "vae_model",
                    "val_images",
                    "params:evaluate.n_examples",
                    "params:seed",
                    "params:device",
                ],
                outputs="reconstruction_grid",
                name="plot_reconstructions",
            ),
            Node(
                plot_roc_curves, inputs="test_scores", outputs="roc_curves", name="plot_roc_curves"
            ),
            Node(
                plot_score_distributions,
                inputs="test_scores",
                outputs="score_distributions",
                name="plot_score_distributions",
            ),
        ],
        tags=["evaluate"],
    )
