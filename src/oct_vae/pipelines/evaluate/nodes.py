"""Thin Kedro adapters over ``oct_vae.vae.detector`` and ``oct_vae.evaluation`` (``report``,
``transfer``, ``markdown``, ``plots``)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from oct_vae.data import lineage
from oct_vae.evaluation import markdown, plots, report, transfer
from oct_vae.evaluation.metrics import PAPER_COLUMNS, ROW_NAMES, auc_table, metric_key
from oct_vae.training.device import resolve_device
from oct_vae.vae.detector import AnomalyDetector
from oct_vae.vae.scores import reconstruct

log = logging.getLogger(__name__)

ID_COLUMNS, ERROR_COLUMN = report.ID_COLUMNS, report.ERROR_COLUMN


def _split_rows(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    rows = manifest[manifest["split"] == split]
    if "row" in rows.columns:
        rows = rows.sort_values("row")
    return rows.reset_index(drop=True)


def score_test_set(
    vae_model: dict[str, Any], test_images: np.ndarray, oct_manifest: pd.DataFrame, device: str
) -> pd.DataFrame:
    """Every anomaly score of every test scan, one row per scan."""
    rows = _split_rows(oct_manifest, "test")
    # Checked here as well as by RunIsolationHook: a runner without hooks gets it too.
    lineage.check_rows(
        "test_images",
        np.asarray(test_images),
        rows["sha1"].astype(str).tolist(),
        rows["path"].tolist(),
    )
    check_model_matches_split(vae_model, oct_manifest, test_images)
    detector = AnomalyDetector(vae_model, resolve_device(device))
    scores = detector.score(np.asarray(test_images), what="score test scans")
    out = rows[list(ID_COLUMNS)].copy()
    out["patient_id"] = out["patient_id"].astype(str)
    for name, values in scores.items():
        out[name] = values
    return out


def check_model_matches_split(
    vae_model: dict[str, Any], oct_manifest: pd.DataFrame, test_images: np.ndarray
) -> None:
    """Refuse a model trained on other data than this manifest's training and validation
    rows (it may have seen the test patients), or made for another image size.

    Raises:
        LineageError: With the command that makes model and data agree.
    """
    size = int(vae_model["model_config"]["image_size"])
    if np.asarray(test_images).shape[1:] != (size, size):
        raise lineage.LineageError(
            f"vae_model takes {size}x{size} images but test_images holds "
            f"{'x'.join(map(str, np.asarray(test_images).shape[1:]))}: they come from ingest "
            "runs with different ingest.image_size. Run `kedro run` to ingest and train anew."
        )
    hashes = [
        *_split_rows(oct_manifest, "train")["sha1"].astype(str),
        *_split_rows(oct_manifest, "val")["sha1"].astype(str),
    ]
    lineage.check_model_data(
        vae_model.get("metadata", {}).get("data_fingerprint"), lineage.fingerprint(hashes)
    )


def score_real_scans(
    real_scans: pd.DataFrame,
    vae_model: dict[str, Any],
    oct_manifest: pd.DataFrame,
    max_image_pixels: int,
    workers: int,
    device: str,
) -> pd.DataFrame:
    """Transfer to real scans: every score of every real labelled scan in ``real_scans``,
    indexed and decoded exactly like ingest, only scored (``oct_vae.evaluation.transfer``).

    Only files that are not scans at all (README, .DS_Store: ``data/scan_files``) are
    skipped, when the folder is listed; a file that is not a readable scan, and a
    scan the model may have seen (its pixels or its patient in this manifest's training
    or validation split), gets a row with empty scores and the reason in ``error``. A
    missing or empty folder gives an empty table and one log line.

    Returns:
        One row per file: ``path`` (relative to the folder), ``label``, ``patient_id``,
        every score, ``error``.
    """
    if real_scans is None or len(real_scans) == 0:
        log.info(
            "transfer to real scans skipped: no files in the real_scans folder "
            "(default ../shared/data next to the project; set it with --params real_dir=<folder>)"
        )
        return pd.DataFrame(columns=transfer.real_scan_columns(vae_model))
    seen = transfer.seen_by_model(oct_manifest)
    out = transfer.score_real_scans(
        real_scans, vae_model, seen, max_image_pixels, workers, resolve_device(device)
    )
    _log_real_scans(out)
    return out


def _log_real_scans(out: pd.DataFrame) -> None:
    bad = out[out[ERROR_COLUMN] != ""]
    for path, reason in bad[["path", ERROR_COLUMN]].itertuples(index=False):
        log.warning("real scan %s not scored: %s", path, reason)
    scored = out[out[ERROR_COLUMN] == ""]
    log.info(
        "transfer to real scans: %d scored (%s), %d not scored (listed in real_scan_scores)",
        len(scored), scored["label"].value_counts().to_dict(), len(bad),
    )


def build_auc_table(test_scores: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The paper's AUC table (rows: scores; columns: CNV, DME, Drusen, All), logged beside
    the paper's own numbers, and every cell as an MLflow metric."""
    labels = test_scores["label"].to_numpy()
    names = report.score_columns(test_scores)
    table = auc_table(labels, {n: test_scores[n].to_numpy() for n in names})
    frame = pd.DataFrame(
        [{"score": row, **cells} for row, cells in table.items()], columns=["score", *PAPER_COLUMNS]
    )
    log.info("AUC table (this run | paper):\n%s", markdown.paper_layout(frame))
    metrics = {
        metric_key("auc", name, col): {
            "value": float(table[ROW_NAMES.get(name, name)][col]),
            "step": 0,
        }
        for name in names
        for col in PAPER_COLUMNS
        if np.isfinite(table[ROW_NAMES.get(name, name)][col])
    }
    return frame, metrics


def build_statistical_report(
    test_scores: pd.DataFrame,
    vae_model: dict[str, Any],
    n_bootstrap: int,
    specificity: float,
    flag_score: str,
    seed: int,
    run_info: dict[str, Any],
    real_scan_scores: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, str]:
    """AUCs with patient-bootstrap 95% CIs, AUPRC and sensitivity at the validation-chosen
    threshold, at image and patient level, for every score and column, on the test split
    and on the real scans (transfer), with the provenance of every number
    (``oct_vae.evaluation.report.build_report``).

    The operating threshold of each score is the ``specificity`` quantile of the validation
    normals' scores stored in ``vae_model`` (``score.specificity``, the one operating point);
    test labels and real scans never touch it. ``flag_score`` (``score.flag_score``) is
    named and marked.

    Returns:
        ``auc_report`` (the long table) and ``auc_report_markdown``.
    """
    calibration = {k: v.numpy() for k, v in vae_model["calibration"].items()}
    provenance = report.provenance(vae_model, run_info)
    table, text = report.build_report(
        test_scores, calibration, n_bootstrap, specificity, seed, provenance, real_scan_scores,
        flag_score,
    )
    log.info("Extended results:\n%s", text)
    return table, text


def collect_report_metrics(auc_report: pd.DataFrame) -> dict[str, Any]:
    """Every number of ``auc_report`` as an MLflow metric (real scans: prefix ``real_``)."""
    return report.report_metrics(auc_report)


def plot_reconstructions(
    vae_model: dict[str, Any], val_images: np.ndarray, n_examples: int, seed: int, device: str
) -> Figure:
    """Random validation normals beside their mean reconstructions (the paper's figure)."""
    images = np.asarray(val_images)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(images), size=min(n_examples, len(images)), replace=False))
    detector = AnomalyDetector(vae_model, resolve_device(device))
    recons, _ = reconstruct(detector.model, images[idx], detector.score_config, detector.device)
    return plots.reconstruction_grid(images[idx], recons)


def plot_roc_curves(test_scores: pd.DataFrame) -> Figure:
    """ROC curves per disease for each score."""
    labels = test_scores["label"].to_numpy()
    return plots.roc_curves(
        labels, {n: test_scores[n].to_numpy() for n in report.score_columns(test_scores)}
    )


def plot_score_distributions(test_scores: pd.DataFrame) -> Figure:
    """Score histograms per class."""
    labels = test_scores["label"].to_numpy()
    return plots.score_distributions(
        labels, {n: test_scores[n].to_numpy() for n in report.score_columns(test_scores)}
    )
