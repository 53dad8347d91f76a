"""The evaluation report: the long AUC table with bootstrap CIs (test split and real scans),
its MLflow metrics and its provenance.

Everything here is computed from score tables (one row per scan: path, label, patient_id
and one column per score); ``oct_vae.evaluation.metrics`` holds the statistics and
``oct_vae.evaluation.markdown`` renders the tables. The evaluate pipeline's nodes are thin
adapters over these functions.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from oct_vae.data import kermany
from oct_vae.evaluation import markdown
from oct_vae.evaluation.metrics import (
    GROUPS,
    ROW_NAMES,
    bootstrap_auc_draws,
    group_auc,
    group_auprc,
    interval,
    metric_key,
    patient_level,
    sensitivity_at_threshold,
    specificity_at_threshold,
)
from oct_vae.progress import Progress
from oct_vae.vae.detector import operating_threshold

log = logging.getLogger(__name__)

ID_COLUMNS = ("path", "label", "patient_id")
# New scores are compared with the paper's best score, paired over bootstrap resamples.
REFERENCE_SCORE = "reconstruction"
# The ``dataset`` column of auc_report: the ingest test split (the phantom's by default,
# the real one under --env kermany), and the real labelled scans of ``real_scans``,
# scored by the same model as a transfer test (never used to train, set thresholds or
# choose anything).
TEST_DATASET = "test split"
REAL_DATASET = "real scans (transfer)"
# MLflow metrics of the real scans: the test split's names with this prefix.
REAL_METRIC_PREFIX = "real_"
# real_scan_scores: why a file has no scores (empty when it was scored).
ERROR_COLUMN = "error"


def score_columns(scores: pd.DataFrame) -> list[str]:
    """Score columns in the report's order: the paper's, the baselines, the new scores."""
    present = [c for c in scores.columns if c not in (*ID_COLUMNS, ERROR_COLUMN)]
    return [c for c in ROW_NAMES if c in present] + [c for c in present if c not in ROW_NAMES]


def build_report(
    test_scores: pd.DataFrame,
    calibration: dict[str, np.ndarray],
    n_bootstrap: int,
    specificity: float,
    seed: int,
    provenance: dict[str, str],
    real_scan_scores: pd.DataFrame | None = None,
    flag_score: str | None = None,
) -> tuple[pd.DataFrame, str]:
    """The long report table and its Markdown (``oct_vae.evaluation.markdown``): the test
    split and, when ``real_scan_scores`` has scored scans, the real scans (transfer).
    ``flag_score`` (``score.flag_score``) is named in the Markdown and marked in the
    table's ``flags`` column.

    Returns:
        One row per dataset, level, score and column (``dataset`` is ``TEST_DATASET`` or
        ``REAL_DATASET``; provenance columns on every row), and the Markdown (the real
        scans in a section "Transfer to real scans", then "Provenance").
    """
    real = scored_real_scans(real_scan_scores)
    resamples = 2 * n_bootstrap * (1 if real is None else 2)  # image and patient level
    with Progress("bootstrap report", resamples, "resamples", bar=False) as progress:
        args = (calibration, n_bootstrap, specificity, seed, progress)
        report = _dataset_rows(TEST_DATASET, test_scores, *args)
        real_report = None if real is None else _dataset_rows(REAL_DATASET, real, *args)
    if real_report is not None:
        report = pd.concat([report, real_report], ignore_index=True)
    flag_row = ROW_NAMES.get(flag_score, flag_score) if flag_score else None
    report["flags"] = report["score"] == flag_row
    for key, value in provenance.items():
        report[key] = value
    test_part = report[report["dataset"] == TEST_DATASET]
    text = markdown.render_markdown(test_part, specificity, n_bootstrap, flag_row)
    if real_report is not None:
        text += markdown.render_transfer_markdown(test_part, real_report, real, real_scan_scores)
    return report, text + markdown.render_provenance(provenance)


def _dataset_rows(dataset: str, scores_table: pd.DataFrame, *args: Any) -> pd.DataFrame:
    """``report_rows`` of one dataset, with the ``dataset`` column first."""
    rows = report_rows(scores_table, *args)
    rows.insert(0, "dataset", dataset)
    return rows


def report_rows(
    scores_table: pd.DataFrame,
    calibration: dict[str, np.ndarray],
    n_bootstrap: int,
    specificity: float,
    seed: int,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """The report's rows (without dataset and provenance) for one table of scored scans:
    AUC with its patient-bootstrap 95% CI, the paired difference to the reconstruction
    score, AUPRC, and sensitivity at the validation-chosen threshold, per level (image,
    patient), score and column."""
    names = [n for n in score_columns(scores_table) if n in calibration]
    labels = scores_table["label"].to_numpy()
    patients = scores_table["patient_id"].astype(str).to_numpy()
    scores = {n: scores_table[n].to_numpy(dtype=np.float64) for n in names}
    columns = list(GROUPS)
    thresholds = {n: operating_threshold(calibration[n], specificity) for n in names}

    records = []
    for level in ("image", "patient"):
        if level == "image":
            lab, pat, sc = labels, patients, scores
        else:
            lab, pat, sc = patient_level(labels, patients, scores)
        draws = bootstrap_auc_draws(lab, pat, sc, columns, n_resamples=n_bootstrap, seed=seed,
                                    progress=progress)
        aucs = {n: {col: group_auc(lab, sc[n], col) for col in columns} for n in names}
        for n in names:
            for col in columns:
                records.append(_record(level, n, col, lab, sc[n], aucs, draws, thresholds[n]))
    return pd.DataFrame.from_records(records)


def _record(
    level: str, name: str, col: str, labels: np.ndarray, values: np.ndarray,
    aucs: dict[str, dict[str, float]], draws: dict[str, dict[str, np.ndarray]],
    threshold: float,
) -> dict[str, Any]:
    """One row of the report: a score on a column at a level."""
    has_ref = REFERENCE_SCORE in aucs
    # paired: the same resamples for both scores
    delta_ci = (
        interval(draws[name][col] - draws[REFERENCE_SCORE][col]) if has_ref else (np.nan,) * 2
    )
    ci_low, ci_high = interval(draws[name][col])
    return {
        "level": level,
        "score": ROW_NAMES.get(name, name),
        "score_key": name,
        "column": col,
        "auc": aucs[name][col],
        "ci_low": ci_low,
        "ci_high": ci_high,
        "delta_vs_reconstruction": (
            aucs[name][col] - aucs[REFERENCE_SCORE][col] if has_ref else np.nan
        ),
        "delta_ci_low": delta_ci[0],
        "delta_ci_high": delta_ci[1],
        "auprc": group_auprc(labels, values, col),
        "threshold": threshold,
        "sensitivity": sensitivity_at_threshold(labels, values, threshold, col),
        "test_specificity": specificity_at_threshold(labels, values, threshold),
        "n_positive": int(np.isin(labels, GROUPS[col]).sum()),
        "n_normal": int((labels == "NORMAL").sum()),
    }


def report_metrics(report: pd.DataFrame) -> dict[str, Any]:
    """Every number of the report as an MLflow metric (the real scans' with ``real_``)."""
    metrics: dict[str, Any] = {}
    for r in report.itertuples():
        dataset_prefix = REAL_METRIC_PREFIX if r.dataset == REAL_DATASET else ""
        prefix = "auc" if r.level == "image" else "patient_auc"
        for field, value in (("", r.auc), ("_ci_low", r.ci_low), ("_ci_high", r.ci_high)):
            if np.isfinite(value):
                key = dataset_prefix + metric_key(prefix, r.score_key, r.column) + field
                metrics[key] = {"value": float(value), "step": 0}
        for kind, value in (
            ("auprc", r.auprc),
            ("sens_at_spec", r.sensitivity),
            ("delta_auc", r.delta_vs_reconstruction),
        ):
            if np.isfinite(value):
                key = metric_key(
                    kind if r.level == "image" else f"patient_{kind}", r.score_key, r.column
                )
                metrics[dataset_prefix + key] = {"value": float(value), "step": 0}
    return metrics


def scored_real_scans(real_scan_scores: pd.DataFrame | None) -> pd.DataFrame | None:
    """The scored rows of ``real_scan_scores``, or None when there is nothing to report
    (no table, no scored scan, or no normal or no diseased scan among them)."""
    if real_scan_scores is None or len(real_scan_scores) == 0:
        return None
    errors = real_scan_scores[ERROR_COLUMN].fillna("").astype(str)
    table = real_scan_scores[errors == ""].drop(columns=[ERROR_COLUMN]).reset_index(drop=True)
    labels = set(table["label"].astype(str))
    if "NORMAL" not in labels or not labels & set(kermany.DISEASES):
        log.warning(
            "transfer to real scans: no AUC without both normal and diseased scored scans "
            "(scored: %s)",
            table["label"].value_counts().to_dict(),
        )
        return None
    table["patient_id"] = table["patient_id"].astype(str)
    for name in score_columns(table):
        table[name] = pd.to_numeric(table[name], errors="coerce")
    return table


def provenance(vae_model: dict[str, Any], run_info: dict[str, Any]) -> dict[str, str]:
    """What a result was computed from: the run, the versions it read, the model's data."""
    versions = run_info.get("versions", {})
    out = {"run_id": str(run_info.get("run_id", ""))}
    for name in ("vae_model", "test_images", "oct_manifest"):
        out[f"{name}_version"] = str(versions.get(name, ""))
    out["data_fingerprint"] = str(vae_model.get("metadata", {}).get("data_fingerprint", ""))
    return out


