"""The ``evaluate`` pipeline."""

from kedro.pipeline import Node, Pipeline

from oct_vae.pipelines.evaluate.nodes import (
    build_auc_table,
    build_statistical_report,
    collect_report_metrics,
    plot_reconstructions,
    plot_roc_curves,
    plot_score_distributions,
    score_real_scans,
    score_test_set,
)


def create_pipeline(**kwargs) -> Pipeline:
    """Score the test scans (and the real scans of ``real_scans``, a transfer test) with the
    latest ``vae_model`` and report."""
    return Pipeline(
        [
            Node(
                score_test_set,
                inputs=["vae_model", "test_images", "oct_manifest", "params:device"],
                outputs="test_scores",
                name="score_test_set",
            ),
            Node(
                score_real_scans,
                inputs={
                    "real_scans": "real_scans",
                    "vae_model": "vae_model",
                    "oct_manifest": "oct_manifest",
                    "max_image_pixels": "params:ingest.max_image_pixels",
                    "workers": "params:ingest.workers",
                    "device": "params:device",
                },
                outputs="real_scan_scores",
                name="score_real_scans",
            ),
            Node(
                build_auc_table,
                inputs="test_scores",
                outputs=["auc_table", "auc_metrics"],
                name="build_auc_table",
            ),
            Node(
                build_statistical_report,
                inputs={
                    "test_scores": "test_scores",
                    "vae_model": "vae_model",
                    "n_bootstrap": "params:evaluate.n_bootstrap",
                    "specificity": "params:score.specificity",
                    "flag_score": "params:score.flag_score",
                    "seed": "params:seed",
                    "run_info": "run_info",
                    "real_scan_scores": "real_scan_scores",
                },
                outputs=["auc_report", "auc_report_markdown"],
                name="build_statistical_report",
            ),
            Node(
                collect_report_metrics,
                inputs="auc_report",
                outputs="report_metrics",
                name="collect_report_metrics",
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
