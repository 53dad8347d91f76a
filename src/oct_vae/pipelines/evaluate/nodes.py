"""Thin Kedro adapters over ``oct_vae.detector``, ``oct_vae.evaluation`` and ``oct_vae.plots``."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from oct_vae import lineage, plots
from oct_vae.detector import AnomalyDetector, operating_threshold
from oct_vae.evaluation import (
    GROUPS,
    PAPER_AUC,
    PAPER_COLUMNS,
    ROW_NAMES,
    auc_table,
    bootstrap_auc_draws,
    format_cell,
    group_auc,
    group_auprc,
    interval,
    metric_key,
    patient_level,
    sensitivity_at_threshold,
    specificity_at_threshold,
)
from oct_vae.scores import reconstruct
from oct_vae.training import resolve_device

log = logging.getLogger(__name__)

ID_COLUMNS = ("path", "label", "patient_id")
# New scores are compared with the paper's best score, paired over bootstrap resamples.
REFERENCE_SCORE = "reconstruction"


def _split_rows(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    rows = manifest[manifest["split"] == split]
    if "row" in rows.columns:
        rows = rows.sort_values("row")
    return rows.reset_index(drop=True)


def _score_columns(scores: pd.DataFrame) -> list[str]:
    """Score columns in the report's order: the paper's, the baselines, the new scores."""
    present = [c for c in scores.columns if c not in ID_COLUMNS]
    return [c for c in ROW_NAMES if c in present] + [c for c in present if c not in ROW_NAMES]


def score_test_set(
    vae_model: dict[str, Any], test_images: np.ndarray, oct_manifest: pd.DataFrame, device: str
) -> pd.DataFrame:
    """Every anomaly score of every test scan, one row per scan."""
    rows = _split_rows(oct_manifest, "test")
    # Checked here as well as by RunIsolationHook: a runner without hooks gets it too.
    lineage.check_rows(
        "test_images", np.asarray(test_images), rows["sha1"].astype(str).tolist(),
        rows["path"].tolist(),
    )
    check_model_matches_split(vae_model, oct_manifest, test_images)
    detector = AnomalyDetector(vae_model, resolve_device(device))
    scores = detector.score(np.asarray(test_images))
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


def build_auc_table(test_scores: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The paper's AUC table (rows: scores; columns: CNV, DME, Drusen, All), logged beside
    the paper's own numbers, and every cell as an MLflow metric."""
    labels = test_scores["label"].to_numpy()
    names = _score_columns(test_scores)
    table = auc_table(labels, {n: test_scores[n].to_numpy() for n in names})
    frame = pd.DataFrame(
        [{"score": row, **cells} for row, cells in table.items()], columns=["score", *PAPER_COLUMNS]
    )
    log.info("AUC table (this run | paper):\n%s", _paper_layout(frame))
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


def _paper_layout(frame: pd.DataFrame) -> str:
    header = f"{'':36s}" + "".join(f"{c:>14s}" for c in PAPER_COLUMNS)
    lines = [header]
    for _, row in frame.iterrows():
        paper = PAPER_AUC.get(row["score"], {})
        cells = "".join(
            f"{format_cell(row[c]):>7s} | {paper[c]:.2f}"
            if c in paper
            else f"{format_cell(row[c]):>7s} |  -  "
            for c in PAPER_COLUMNS
        )
        lines.append(f"{row['score']:36s}{cells}")
    return "\n".join(lines)


def build_statistical_report(
    test_scores: pd.DataFrame,
    vae_model: dict[str, Any],
    n_bootstrap: int,
    specificity: float,
    seed: int,
    run_info: dict[str, Any],
) -> tuple[pd.DataFrame, str, dict[str, Any]]:
    """AUCs with patient-bootstrap 95% CIs, AUPRC and sensitivity at the validation-chosen
    threshold, at image and patient level, for every score and every column.

    The operating threshold of each score is the ``specificity`` quantile of the validation
    normals' scores stored in ``vae_model``; test labels never touch it.

    Every row also names what it was computed from: the versions of ``vae_model``,
    ``test_images`` and ``oct_manifest`` this run read (``run_info``) and the fingerprint of
    the model's training data.

    Returns:
        A long table (one row per level, score and column), its Markdown rendering, and the
        same numbers as MLflow metrics.
    """
    calibration = {k: v.numpy() for k, v in vae_model["calibration"].items()}
    names = [n for n in _score_columns(test_scores) if n in calibration]
    labels = test_scores["label"].to_numpy()
    patients = test_scores["patient_id"].astype(str).to_numpy()
    scores = {n: test_scores[n].to_numpy(dtype=np.float64) for n in names}
    columns = list(GROUPS)
    thresholds = {n: operating_threshold(calibration[n], specificity) for n in names}

    records = []
    for level in ("image", "patient"):
        if level == "image":
            lab, pat, sc = labels, patients, scores
        else:
            lab, pat, sc = patient_level(labels, patients, scores)
        draws = bootstrap_auc_draws(lab, pat, sc, columns, n_resamples=n_bootstrap, seed=seed)
        for n in names:
            for col in columns:
                ref = sc.get(REFERENCE_SCORE)
                delta = (
                    group_auc(lab, sc[n], col) - group_auc(lab, ref, col)
                    if ref is not None
                    else np.nan
                )
                # paired: the same resamples for both scores
                delta_ci = (
                    interval(draws[n][col] - draws[REFERENCE_SCORE][col])
                    if ref is not None
                    else (np.nan, np.nan)
                )
                records.append(
                    {
                        "level": level,
                        "score": ROW_NAMES.get(n, n),
                        "score_key": n,
                        "column": col,
                        "auc": group_auc(lab, sc[n], col),
                        "ci_low": interval(draws[n][col])[0],
                        "ci_high": interval(draws[n][col])[1],
                        "delta_vs_reconstruction": delta,
                        "delta_ci_low": delta_ci[0],
                        "delta_ci_high": delta_ci[1],
                        "auprc": group_auprc(lab, sc[n], col),
                        "threshold": thresholds[n],
                        "sensitivity": sensitivity_at_threshold(lab, sc[n], thresholds[n], col),
                        "test_specificity": specificity_at_threshold(lab, sc[n], thresholds[n]),
                        "n_positive": int(np.isin(lab, GROUPS[col]).sum()),
                        "n_normal": int((lab == "NORMAL").sum()),
                    }
                )
    report = pd.DataFrame.from_records(records)
    provenance = _provenance(vae_model, run_info)
    for key, value in provenance.items():
        report[key] = value
    markdown = render_markdown(report, specificity, n_bootstrap)
    markdown += "\n## Provenance\n\n" + "".join(
        f"- {key}: `{value}`\n" for key, value in provenance.items()
    )
    log.info("Extended results:\n%s", markdown)
    metrics: dict[str, Any] = {}
    for r in report.itertuples():
        prefix = "auc" if r.level == "image" else "patient_auc"
        for field, value in (("", r.auc), ("_ci_low", r.ci_low), ("_ci_high", r.ci_high)):
            if np.isfinite(value):
                metrics[metric_key(prefix, r.score_key, r.column) + field] = {
                    "value": float(value),
                    "step": 0,
                }
        for kind, value in (
            ("auprc", r.auprc),
            ("sens_at_spec", r.sensitivity),
            ("delta_auc", r.delta_vs_reconstruction),
        ):
            if np.isfinite(value):
                key = metric_key(
                    kind if r.level == "image" else f"patient_{kind}", r.score_key, r.column
                )
                metrics[key] = {"value": float(value), "step": 0}
    return report, markdown, metrics


def _provenance(vae_model: dict[str, Any], run_info: dict[str, Any]) -> dict[str, str]:
    versions = run_info.get("versions", {})
    out = {"run_id": str(run_info.get("run_id", ""))}
    for name in ("vae_model", "test_images", "oct_manifest"):
        out[f"{name}_version"] = str(versions.get(name, ""))
    out["data_fingerprint"] = str(vae_model.get("metadata", {}).get("data_fingerprint", ""))
    return out


def render_markdown(report: pd.DataFrame, specificity: float, n_bootstrap: int) -> str:
    """Markdown tables: AUC [95% CI] per level, then AUPRC and sensitivity at the threshold."""
    parts = [
        "# oct-vae results",
        "",
        f"AUC with 95% CI from {n_bootstrap} patient-level bootstrap resamples. "
        "Urgent = CNV + DME vs normal. Paper rows first, then baselines, then new scores.",
    ]
    columns = list(GROUPS)
    for level in ("image", "patient"):
        sub = report[report["level"] == level]
        parts += [
            "",
            f"## {level.capitalize()}-level AUC",
            "",
            "| score | " + " | ".join(columns) + " |",
            "|---" * (len(columns) + 1) + "|",
        ]
        for score, grp in sub.groupby("score", sort=False):
            cells = {r.column: format_cell(r.auc, (r.ci_low, r.ci_high)) for r in grp.itertuples()}
            parts.append(f"| {score} | " + " | ".join(cells[c] for c in columns) + " |")
    parts += [
        "",
        "## Difference to the paper's reconstruction score, All column (paired bootstrap)",
        "",
        "| score | image level | patient level |",
        "|---|---|---|",
    ]
    allcol = report[report["column"] == "All"]
    for score, grp in allcol.groupby("score", sort=False):
        cells = []
        for level in ("image", "patient"):
            r = grp[grp["level"] == level].iloc[0]
            cells.append(_delta_cell(r.delta_vs_reconstruction, r.delta_ci_low, r.delta_ci_high))
        parts.append(f"| {score} | " + " | ".join(cells) + " |")
    sub = report[report["level"] == "image"]
    parts += [
        "",
        f"## Image-level AUPRC and sensitivity at {specificity:.0%} specificity "
        "(threshold from validation normals)",
        "",
        "| score | "
        + " | ".join(f"AUPRC {c}" for c in columns)
        + " | "
        + " | ".join(f"Sens. {c}" for c in columns)
        + " | test spec. |",
        "|---" * (2 * len(columns) + 2) + "|",
    ]
    for score, grp in sub.groupby("score", sort=False):
        by = {r.column: r for r in grp.itertuples()}
        parts.append(
            f"| {score} | "
            + " | ".join(format_cell(by[c].auprc) for c in columns)
            + " | "
            + " | ".join(format_cell(by[c].sensitivity) for c in columns)
            + f" | {format_cell(grp['test_specificity'].iloc[0])} |"
        )
    return "\n".join(parts) + "\n"


def _delta_cell(delta: float, low: float, high: float) -> str:
    if not np.isfinite(delta):
        return "n/a"
    better = " (better)" if low > 0 else " (worse)" if high < 0 else ""
    return f"{delta:+.3f} [{low:+.3f}, {high:+.3f}]{better}"


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
        labels, {n: test_scores[n].to_numpy() for n in _score_columns(test_scores)}
    )


def plot_score_distributions(test_scores: pd.DataFrame) -> Figure:
    """Score histograms per class."""
    labels = test_scores["label"].to_numpy()
    return plots.score_distributions(
        labels, {n: test_scores[n].to_numpy() for n in _score_columns(test_scores)}
    )
