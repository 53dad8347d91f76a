"""Nodes of the ``score`` pipeline: adapters over ``stream`` (``imaging``, ``serving``,
``heatmaps``)."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from oct_vae.data import lineage
from oct_vae.datasets.scan_folder_dataset import list_files
from oct_vae.pipelines.score.heatmaps import HeatmapSpool
from oct_vae.pipelines.score.stream import score_stream
from oct_vae.serving import scoring as serving
from oct_vae.training.device import resolve_device
from oct_vae.vae.detector import AnomalyDetector

log = logging.getLogger(__name__)

# Unscorable files logged one by one; the rest are counted in one line.
_LOGGED_ERRORS = 20
USAGE = "kedro run --pipeline score --params score.input_dir=<folder of JPEG/PNG scans>"


def find_scans(input_dir: str | None) -> pd.DataFrame:
    """List every file under ``input_dir``, recursively (not-scans such as README, .DS_Store
    and hidden files skipped, counted in one log line: ``oct_vae.data.scan_files``).

    Returns:
        Columns ``path`` (as found) and ``key`` (relative to ``input_dir``), sorted.

    Raises:
        ValueError: ``input_dir`` is unset, not a folder, or holds no files.
    """
    if not input_dir:
        raise ValueError(f"No folder to score: score.input_dir is not set. Run `{USAGE}`.")
    root = Path(str(input_dir)).expanduser()
    if not root.is_dir():
        raise ValueError(f"score.input_dir={root} is not a folder. Run `{USAGE}`.")
    paths = list_files(root, "score.input_dir")
    if not paths:
        raise ValueError(f"score.input_dir={root} holds no files to score. Run `{USAGE}`.")
    keys = [Path(p).relative_to(root).as_posix() for p in paths]
    return pd.DataFrame({"path": paths, "key": keys})


def score_scans(
    vae_model: dict[str, Any],
    score_files: pd.DataFrame,
    max_image_pixels: int,
    workers: int,
    flag_score: str,
    specificity: float,
    device: str,
    heatmaps: bool = True,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Decode each file as ingest does (``load_scan``), score it, and draw its heatmap,
    streaming the folder (``stream.score_stream``: a few batches in memory, whatever the
    folder's size).

    Args:
        heatmaps: ``score.heatmaps``; ``False``: none drawn, the ``heatmap`` column empty.

    Returns:
        ``score_results`` (one row per file, ``path`` relative to ``score.input_dir``,
        ``error`` says why a file was not scored) and ``score_heatmaps``
        (``<run time>/<file>.png`` -> a callable giving the drawn figure).
    """
    fingerprint = _model_fingerprint(vae_model)
    detector = AnomalyDetector(vae_model, resolve_device(device))
    serving.check_flag_score(detector, flag_score)
    run = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H.%M.%S.%f")[:-3] + "Z"
    names = score_files["key"].tolist()
    spool = HeatmapSpool(workers) if heatmaps else None
    cols, drawn = score_stream(
        detector, score_files["path"].tolist(), names, spool, run, max_pixels=max_image_pixels,
        workers=workers, flag_score=flag_score, specificity=specificity,
    )
    # Paths relative to score.input_dir: where the folder lives is not recorded.
    table = pd.DataFrame({"path": names, **cols})
    _log_summary(table, flag_score, specificity, run if heatmaps else None)
    log.info("model trained on data %s (vae_model metadata.data_fingerprint)", fingerprint)
    return table, drawn


def _model_fingerprint(vae_model: dict[str, Any]) -> str:
    fingerprint = vae_model.get("metadata", {}).get("data_fingerprint")
    if fingerprint is None:
        raise lineage.LineageError(
            "vae_model records no data fingerprint (it was written by an older oct-vae), so "
            f"its scores could not be traced to its training data. Run `{lineage.TRAIN_COMMAND}`."
        )
    return fingerprint


def _log_summary(table: pd.DataFrame, flag_score: str, specificity: float, run: str | None) -> None:
    failed = table["error"].notna()
    log.info(
        "scored %d of %d files; %d flagged anomalous (%s > %.6g, %.0f%% specificity on "
        "validation normals); %s",
        (~failed).sum(),
        len(table),
        int(table["anomalous"].eq(True).sum()),
        flag_score,
        table["threshold"].iloc[0],
        100 * specificity,
        f"heatmaps in the score_heatmaps folder {run}/"
        if run is not None
        else "no heatmaps (score.heatmaps: false)",
    )
    for row in table[failed].head(_LOGGED_ERRORS).itertuples():
        log.warning("not scored: %s (%s)", row.path, row.error)
    if failed.sum() > _LOGGED_ERRORS:
        log.warning("... and %d more files not scored", failed.sum() - _LOGGED_ERRORS)
