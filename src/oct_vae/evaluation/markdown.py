"""The report as text: the Markdown of ``auc_report_markdown`` and the AUC table of the log.

Everything here renders tables that ``oct_vae.evaluation.report`` computed (one row per
dataset, level, score and column); nothing is computed again.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from oct_vae.evaluation.metrics import GROUPS, PAPER_AUC, PAPER_COLUMNS, format_cell

LEVELS = ("image", "patient")


def render_markdown(
    report: pd.DataFrame, specificity: float, n_bootstrap: int, flag_row: str | None = None
) -> str:
    """Markdown tables: AUC [95% CI] per level, the paired difference to the reconstruction
    score, then AUPRC and sensitivity at the threshold."""
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
    parts += _level_tables(report, "## {}-level AUC")
    parts += _delta_section(report)
    parts += _operating_section(report[report["level"] == "image"], specificity)
    return "\n".join(parts) + "\n"


def render_transfer_markdown(
    test_report: pd.DataFrame,
    real_report: pd.DataFrame,
    real: pd.DataFrame,
    real_scan_scores: pd.DataFrame,
) -> str:
    """The Markdown section "Transfer to real scans": the real scans' AUC tables, the All
    column beside the test split's, and which score ranks first on each."""
    counts = ", ".join(f"{n} {label}" for label, n in real["label"].value_counts().items())
    n_bad = len(real_scan_scores) - len(real)
    not_scored = (f"{n_bad} file(s) were not scored; `real_scan_scores` lists each with the "
                  "reason." if n_bad else "Every file that may be a scan was scored.")
    parts = [
        "",
        "## Transfer to real scans",
        "",
        f"{len(real)} real labelled scans ({counts}; {real['patient_id'].nunique()} patients) "
        "from the `real_scans` folder, scored by this model as they are. They are never used "
        "for training, thresholds or any choice: the thresholds are the validation normals' "
        "(above). 95% CIs resample patients; with this few patients they are wide. "
        + not_scored,
    ]
    parts += _level_tables(real_report, "### {}-level AUC on real scans")
    parts += _all_column_section(_all_rows(test_report), _all_rows(real_report))
    return "\n".join(parts) + "\n"


def render_provenance(provenance: dict[str, str]) -> str:
    """The Markdown section "Provenance": one line per key."""
    return "\n## Provenance\n\n" + "".join(
        f"- {key}: `{value}`\n" for key, value in provenance.items()
    )


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


def _level_tables(report: pd.DataFrame, title: str) -> list[str]:
    """One AUC table per level; ``title`` has a ``{}`` for the level's name."""
    parts: list[str] = []
    for level in LEVELS:
        parts += _auc_table(
            title.format(level.capitalize()), report[report["level"] == level], list(GROUPS)
        )
    return parts


def _auc_table(title: str, sub: pd.DataFrame, columns: list[str]) -> list[str]:
    """A titled Markdown table: one row per score, AUC [95% CI] per column."""
    lines = ["", title, "", "| score | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for score, grp in sub.groupby("score", sort=False):
        cells = {r.column: format_cell(r.auc, (r.ci_low, r.ci_high)) for r in grp.itertuples()}
        lines.append(f"| {score} | " + " | ".join(cells[c] for c in columns) + " |")
    return lines


def _delta_section(report: pd.DataFrame) -> list[str]:
    """The All column's paired difference to the reconstruction score, per level."""
    parts = [
        "",
        "## Difference to the paper's reconstruction score, All column (paired bootstrap)",
        "",
        "| score | image level | patient level |",
        "|---|---|---|",
    ]
    allcol = report[report["column"] == "All"]
    for score, grp in allcol.groupby("score", sort=False):
        cells = []
        for level in LEVELS:
            r = grp[grp["level"] == level].iloc[0]
            cells.append(_delta_cell(r.delta_vs_reconstruction, r.delta_ci_low, r.delta_ci_high))
        parts.append(f"| {score} | " + " | ".join(cells) + " |")
    return parts


def _delta_cell(delta: float, low: float, high: float) -> str:
    if not np.isfinite(delta):
        return "n/a"
    better = " (better)" if low > 0 else " (worse)" if high < 0 else ""
    return f"{delta:+.3f} [{low:+.3f}, {high:+.3f}]{better}"


def _operating_section(sub: pd.DataFrame, specificity: float) -> list[str]:
    """AUPRC, and sensitivity at the validation-chosen threshold, of the rows ``sub``."""
    columns = list(GROUPS)
    parts = [
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
    return parts


def _all_rows(report: pd.DataFrame) -> pd.DataFrame:
    rows = report[(report["level"] == "image") & (report["column"] == "All")]
    return rows.set_index("score")


def _all_column_section(test_all: pd.DataFrame, real_all: pd.DataFrame) -> list[str]:
    """The All column (image level) of the test split beside the real scans'."""
    parts = [
        "",
        "### All column: test split beside real scans (image level)",
        "",
        "| score | test split AUC | real scans AUC | real scans sens. All | real scans spec. |",
        "|---|---|---|---|---|",
    ]
    for score, r in real_all.iterrows():
        t = test_all.loc[score] if score in test_all.index else None
        test_cell = format_cell(t.auc, (t.ci_low, t.ci_high)) if t is not None else "n/a"
        parts.append(
            f"| {score} | {test_cell} | {format_cell(r.auc, (r.ci_low, r.ci_high))} | "
            f"{format_cell(r.sensitivity)} | {format_cell(r.test_specificity)} |"
        )
    return parts + ["", _best_line(test_all, real_all)]


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
