"""The evaluation report: the long AUC table with bootstrap CIs, its Markdown, its MLflow
metrics, and the transfer-to-real-scans section.

Everything here is computed from score tables (one row per scan: path, label, patient_id
and one column per score); ``oct_vae.evaluation.metrics`` holds the statistics. The evaluate
pipeline's nodes are thin adapters over these functions.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from oct_vae.data import kermany
from oct_vae.evaluation.metrics import (
    GROUPS,
    PAPER_AUC,
    PAPER_COLUMNS,
    ROW_NAMES,
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
    """The long report table and its Markdown: the test split and, when
    ``real_scan_scores`` has scored scans, the real scans (transfer). ``flag_score`` (the
    score that flags scans, ``score.flag_score``) is named in the Markdown and marked in
    the table's ``flags`` column.

    Returns:
        One row per dataset, level, score and column (``dataset`` is ``TEST_DATASET`` or
        ``REAL_DATASET``; provenance columns on every row), and the Markdown (the real
        scans in a section "Transfer to real scans", then "Provenance").
    """
    args = (calibration, n_bootstrap, specificity, seed)
    report = report_rows(test_scores, *args)
    report.insert(0, "dataset", TEST_DATASET)
    real = scored_real_scans(real_scan_scores)
    real_report = None
    if real is not None:
        real_report = report_rows(real, *args)
        real_report.insert(0, "dataset", REAL_DATASET)
        report = pd.concat([report, real_report], ignore_index=True)
    flag_row = ROW_NAMES.get(flag_score, flag_score) if flag_score else None
    report["flags"] = report["score"] == flag_row
    for key, value in provenance.items():
        report[key] = value
    test_part = report[report["dataset"] == TEST_DATASET]
    markdown = render_markdown(test_part, specificity, n_bootstrap, flag_row)
    if real_report is not None:
        markdown += render_transfer_markdown(test_part, real_report, real, real_scan_scores)
    markdown += "\n## Provenance\n\n" + "".join(
        f"- {key}: `{value}`\n" for key, value in provenance.items()
    )
    return report, markdown


def report_rows(
    scores_table: pd.DataFrame,
    calibration: dict[str, np.ndarray],
    n_bootstrap: int,
    specificity: float,
    seed: int,
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
        draws = bootstrap_auc_draws(lab, pat, sc, columns, n_resamples=n_bootstrap, seed=seed)
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


def render_transfer_markdown(
    test_report: pd.DataFrame,
    real_report: pd.DataFrame,
    real: pd.DataFrame,
    real_scan_scores: pd.DataFrame,
) -> str:
    """The Markdown section "Transfer to real scans": the real scans' AUC tables, the All
    column beside the test split's, and which score ranks first on each."""
    columns = list(GROUPS)
    counts = ", ".join(f"{n} {label}" for label, n in real["label"].value_counts().items())
    n_bad = len(real_scan_scores) - len(real)
    parts = [
        "",
        "## Transfer to real scans",
        "",
        f"{len(real)} real labelled scans ({counts}; {real['patient_id'].nunique()} patients) "
        "from the `real_scans` folder, scored by this model as they are. They are never used "
        "for training, thresholds or any choice: the thresholds are the validation normals' "
        "(above). 95% CIs resample patients; with this few patients they are wide. "
        f"{n_bad} file(s) were not scored; `real_scan_scores` lists each with the reason.",
    ]
    for level in ("image", "patient"):
        parts += _auc_table(
            f"### {level.capitalize()}-level AUC on real scans",
            real_report[real_report["level"] == level], columns,
        )
    parts += [
        "",
        "### All column: test split beside real scans (image level)",
        "",
        "| score | test split AUC | real scans AUC | real scans sens. All | real scans spec. |",
        "|---|---|---|---|---|",
    ]
    test_all = _all_rows(test_report)
    real_all = _all_rows(real_report)
    for score, r in real_all.iterrows():
        t = test_all.loc[score] if score in test_all.index else None
        test_cell = format_cell(t.auc, (t.ci_low, t.ci_high)) if t is not None else "n/a"
        parts.append(
            f"| {score} | {test_cell} | {format_cell(r.auc, (r.ci_low, r.ci_high))} | "
            f"{format_cell(r.sensitivity)} | {format_cell(r.test_specificity)} |"
        )
    parts += ["", _best_line(test_all, real_all)]
    return "\n".join(parts) + "\n"


def _all_rows(report: pd.DataFrame) -> pd.DataFrame:
    rows = report[(report["level"] == "image") & (report["column"] == "All")]
    return rows.set_index("score")


def _best_line(test_all: pd.DataFrame, real_all: pd.DataFrame) -> str:
    """Which score has the highest All AUC on each; a score is best only if on both."""
    best = {}
    for name, table in (("test split", test_all), ("real scans", real_all)):
        finite = table["auc"].astype(float).dropna()
        best[name] = (finite.idxmax(), finite.max()) if len(finite) else ("n/a", np.nan)
    (t_name, t_auc), (r_name, r_auc) = best["test split"], best["real scans"]
    line = (
        f"Highest image-level All AUC: test split {t_name} ({format_cell(t_auc)}); "
        f"real scans {r_name} ({format_cell(r_auc)})."
    )
    if t_name != r_name and t_name in real_all.index:
        line += (
            f" {t_name} does not transfer as the best score: on the real scans it has "
            f"{format_cell(real_all.loc[t_name, 'auc'])}."
        )
    return line


def _auc_table(title: str, sub: pd.DataFrame, columns: list[str]) -> list[str]:
    """A titled Markdown table: one row per score, AUC [95% CI] per column."""
    lines = ["", title, "", "| score | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for score, grp in sub.groupby("score", sort=False):
        cells = {r.column: format_cell(r.auc, (r.ci_low, r.ci_high)) for r in grp.itertuples()}
        lines.append(f"| {score} | " + " | ".join(cells[c] for c in columns) + " |")
    return lines


def provenance(vae_model: dict[str, Any], run_info: dict[str, Any]) -> dict[str, str]:
    """What a result was computed from: the run, the versions it read, the model's data."""
    versions = run_info.get("versions", {})
    out = {"run_id": str(run_info.get("run_id", ""))}
    for name in ("vae_model", "test_images", "oct_manifest"):
        out[f"{name}_version"] = str(versions.get(name, ""))
    out["data_fingerprint"] = str(vae_model.get("metadata", {}).get("data_fingerprint", ""))
    return out


def render_markdown(
    report: pd.DataFrame, specificity: float, n_bootstrap: int, flag_row: str | None = None
) -> str:
    """Markdown tables: AUC [95% CI] per level, then AUPRC and sensitivity at the threshold."""
    parts = [
        "# oct-vae results",
        "",
        f"AUC with 95% CI from {n_bootstrap} patient-level bootstrap resamples. "
        "Urgent = CNV + DME vs normal. Paper rows first, then baselines, then new scores.",
    ]
    if flag_row:
        parts += ["", f"Flag score (`score.flag_score`, what flags a scan as anomalous): "
                      f"**{flag_row}**, at {specificity:.0%} specificity on validation normals "
                      "(`score.specificity`)."]
    columns = list(GROUPS)
    for level in ("image", "patient"):
        parts += _auc_table(
            f"## {level.capitalize()}-level AUC", report[report["level"] == level], columns
        )
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


def paper_layout(frame: pd.DataFrame) -> str:
    """The AUC table beside the paper's numbers, as plain text for the log."""
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
