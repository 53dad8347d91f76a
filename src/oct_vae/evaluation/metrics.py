"""Per-disease AUC tables, bootstrap confidence intervals and operating points.

Each disease column compares that disease's test scans with the test normals; ``All``
pools every diseased scan; ``Urgent`` pools CNV and DME (the urgent-referral split the
paper highlights). Confidence intervals resample patients, not scans, because scans of
one patient are not independent. Thresholds come from validation normals only.

Imports numpy and scikit-learn (the reference AUC implementation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score

NORMAL = "NORMAL"
# Table column -> labels counted as positive.
GROUPS: dict[str, tuple[str, ...]] = {
    "CNV": ("CNV",),
    "DME": ("DME",),
    "Drusen": ("DRUSEN",),
    "All": ("CNV", "DME", "DRUSEN"),
    "Urgent": ("CNV", "DME"),
}
PAPER_COLUMNS = ("CNV", "DME", "Drusen", "All")

# Score column -> row name, in the report's order: paper, baselines, new scores.
ROW_NAMES: dict[str, str] = {
    "reconstruction": "Reconstruction",
    "kl": "KL",
    "vae": "VAE",
    "baseline_mean_intensity": "Baseline: mean intensity",
    "baseline_distance_to_mean_normal": "Baseline: distance to mean normal",
    "topk_residual": "Top-k residual",
    "filtered_residual": "Filtered top-k residual",
    "structural_residual": "Structural residual (1-SSIM)",
    "latent_distance": "Latent distance (Mahalanobis)",
    "recon_uncertainty": "Reconstruction uncertainty",
}

# Liu & Mitrovic, Table 1 (CNV, DME, Drusen, All).
PAPER_AUC: dict[str, dict[str, float]] = {
    "Reconstruction": {"CNV": 0.93, "DME": 0.90, "Drusen": 0.77, "All": 0.87},
    "KL": {"CNV": 0.56, "DME": 0.51, "Drusen": 0.48, "All": 0.52},
    "VAE": {"CNV": 0.92, "DME": 0.89, "Drusen": 0.76, "All": 0.86},
}


def _group_mask(labels: np.ndarray, group: str) -> tuple[np.ndarray, np.ndarray]:
    positives = np.isin(labels, GROUPS[group])
    return positives | (labels == NORMAL), positives


def group_auc(labels: np.ndarray, scores: np.ndarray, group: str) -> float:
    """ROC AUC of ``group`` vs normals (NaN when either side is empty or scores are not finite)."""
    keep, pos = _group_mask(np.asarray(labels), group)
    y, s = pos[keep], np.asarray(scores, dtype=np.float64)[keep]
    if y.all() or not y.any() or not np.isfinite(s).all():
        return float("nan")
    return float(roc_auc_score(y, s))


def rank_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank sum (ties averaged): equal to scikit-learn's value,
    several times faster, for the thousands of bootstrap resamples."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0 or not np.isfinite(scores).all():
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def group_auprc(labels: np.ndarray, scores: np.ndarray, group: str) -> float:
    """Average precision (area under the precision-recall curve) of ``group`` vs normals."""
    keep, pos = _group_mask(np.asarray(labels), group)
    y, s = pos[keep], np.asarray(scores, dtype=np.float64)[keep]
    if y.all() or not y.any() or not np.isfinite(s).all():
        return float("nan")
    return float(average_precision_score(y, s))


def auc_table(
    labels: np.ndarray, scores: dict[str, np.ndarray], columns: Sequence[str] = PAPER_COLUMNS
) -> dict[str, dict[str, float]]:
    """{row name: {column: AUC}} for every score present, in ``ROW_NAMES`` order."""
    return {
        ROW_NAMES.get(name, name): {c: group_auc(labels, scores[name], c) for c in columns}
        for name in _ordered(scores)
    }


def _ordered(scores: dict[str, np.ndarray]) -> list[str]:
    known = [k for k in ROW_NAMES if k in scores]
    return known + [k for k in scores if k not in ROW_NAMES]


def patient_level(
    labels: np.ndarray, patients: np.ndarray, scores: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Average each score over each (patient, label) group of scans.

    Returns:
        (labels, patient ids, scores) with one entry per patient and label.
    """
    keys = np.char.add(
        np.char.add(np.asarray(patients, dtype=str), "|"), np.asarray(labels, dtype=str)
    )
    uniq, inverse = np.unique(keys, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)
    out = {
        k: np.bincount(inverse, weights=np.asarray(v, dtype=np.float64), minlength=len(uniq))
        / counts
        for k, v in scores.items()
    }
    first = np.zeros(len(uniq), dtype=np.int64)
    first[inverse[::-1]] = np.arange(len(keys))[::-1]
    return np.asarray(labels)[first], np.asarray(patients)[first], out


def bootstrap_auc_draws(
    labels: np.ndarray,
    patients: np.ndarray,
    scores: dict[str, np.ndarray],
    groups: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
    progress: Any = None,
) -> dict[str, dict[str, np.ndarray]]:
    """AUC of every score and column on each of ``n_resamples`` patient-level resamples
    (each counted on ``progress``, an ``oct_vae.progress.Progress``, when given).

    Patients are resampled with replacement within each label, so every resample keeps
    the class mix of the test set; all of a resampled patient's scans come along. The
    same resamples serve every score and column, so differences between scores are
    paired.

    Returns:
        {score name: {column: array of n_resamples AUCs}}.
    """
    labels, patients = np.asarray(labels), np.asarray(patients, dtype=str)
    rng = np.random.default_rng(seed)
    by_label: list[list[np.ndarray]] = []
    for lab in np.unique(labels):
        pats = np.unique(patients[labels == lab])
        by_label.append([np.flatnonzero((labels == lab) & (patients == p)) for p in pats])
    draws = {k: {g: np.empty(n_resamples) for g in groups} for k in scores}
    values = {k: np.asarray(v, dtype=np.float64) for k, v in scores.items()}
    for r in range(n_resamples):
        idx = _resample(rng, by_label)
        lab = labels[idx]
        masks = {g: _group_mask(lab, g) for g in groups}
        for name, v in values.items():
            vi = v[idx]
            for g, (keep, pos) in masks.items():
                draws[name][g][r] = rank_auc(pos[keep], vi[keep])
        if progress is not None:
            progress.update(1)
    return draws


def _resample(rng: np.random.Generator, by_label: list[list[np.ndarray]]) -> np.ndarray:
    """One patient-level resample: the rows of patients drawn with replacement per label."""
    return np.concatenate(
        [np.concatenate([rows[i] for i in rng.integers(0, len(rows), len(rows))])
         for rows in by_label]
    )


def bootstrap_auc(
    labels: np.ndarray,
    patients: np.ndarray,
    scores: dict[str, np.ndarray],
    groups: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, dict[str, tuple[float, float]]]:
    """Percentile bootstrap CIs of every AUC, resampling patients (``bootstrap_auc_draws``).

    Returns:
        {score name: {column: (low, high)}}.
    """
    draws = bootstrap_auc_draws(labels, patients, scores, groups, n_resamples, seed)
    return {name: {g: interval(d, alpha) for g, d in cols.items()} for name, cols in draws.items()}


def interval(values: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """Central ``1 - alpha`` percentile interval of the finite values (NaN if none)."""
    return _percentiles(list(values), (100 * alpha / 2, 100 * (1 - alpha / 2)))


def _percentiles(values: list[float], q: tuple[float, float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(arr, q)
    return float(lo), float(hi)


def sensitivity_at_threshold(
    labels: np.ndarray, scores: np.ndarray, threshold: float, group: str
) -> float:
    """Share of ``group``'s test scans scoring above ``threshold`` (chosen on validation)."""
    pos = np.isin(np.asarray(labels), GROUPS[group])
    if not pos.any():
        return float("nan")
    return float((np.asarray(scores)[pos] > threshold).mean())


def specificity_at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """Share of test normals at or below ``threshold`` (to check the validation choice)."""
    neg = np.asarray(labels) == NORMAL
    if not neg.any():
        return float("nan")
    return float((np.asarray(scores)[neg] <= threshold).mean())


def format_cell(value: float, ci: tuple[float, float] | None = None) -> str:
    """``0.93 [0.90, 0.95]`` (or ``n/a``)."""
    if not np.isfinite(value):
        return "n/a"
    if ci is None or not np.isfinite(ci[0]):
        return f"{value:.2f}"
    return f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def metric_key(prefix: str, row: str, column: str) -> str:
    """MLflow-safe key, e.g. ``auc_reconstruction_cnv``."""
    slug = "".join(c if c.isalnum() else "_" for c in row.lower())
    while "__" in slug:
        slug = slug.replace("__", "_")
    return f"{prefix}_{slug.strip('_')}_{column.lower()}"
