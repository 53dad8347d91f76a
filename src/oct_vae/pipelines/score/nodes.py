"""Nodes of the ``score`` pipeline: thin adapters over ``imaging``, ``serving`` and ``plots``."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from oct_vae import imaging, lineage, plots, serving
from oct_vae.datasets.scan_folder_dataset import list_files
from oct_vae.detector import AnomalyDetector
from oct_vae.scores import reconstruct
from oct_vae.training import resolve_device

log = logging.getLogger(__name__)

# Unscorable files logged one by one; the rest are counted in one line.
_LOGGED_ERRORS = 20
USAGE = "kedro run --pipeline score --params score.input_dir=<folder of JPEG/PNG scans>"


def find_scans(input_dir: str | None) -> pd.DataFrame:
    """List every file under ``input_dir``, recursively (hidden files excluded).

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
    paths = list_files(root)
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
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Decode each file as ingest does (``load_scan``), score it, and draw its heatmap.

    Returns:
        ``score_results`` (one row per file, ``path`` relative to ``score.input_dir``;
        ``error`` says why a file was not scored)
        and ``score_heatmaps``: ``<run time>/<file>.png`` -> a callable drawing the
        figure, so a partitioned dataset saves one figure at a time.
    """
    fingerprint = vae_model.get("metadata", {}).get("data_fingerprint")
    if fingerprint is None:
        raise lineage.LineageError(
            "vae_model records no data fingerprint (it was written by an older oct-vae), so "
            f"its scores could not be traced to its training data. Run `{lineage.TRAIN_COMMAND}`."
        )
    detector = AnomalyDetector(vae_model, resolve_device(device))
    serving.check_flag_score(detector, flag_score)
    pixels, results = imaging.decode_scans(
        score_files["path"].tolist(), detector.image_size, max_image_pixels, workers
    )
    decoded = serving.Decoded(pixels, [r.reason or None for r in results])
    cols = serving.score_decoded(detector, decoded, flag_score, specificity)
    run = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H.%M.%S.%f")[:-3] + "Z"
    keys = [
        f"{run}/{key}.png" if err is None else None
        for key, err in zip(score_files["key"], decoded.errors)
    ]
    # Paths relative to score.input_dir: where the folder lives is not recorded.
    table = pd.DataFrame({"path": score_files["key"], "heatmap": keys, **cols})
    heatmaps = {
        key: partial(_heatmap, detector, image, _title(row))
        for key, image, row in zip(keys, decoded.images, table.itertuples())
        if key is not None
    }
    _log_summary(table, flag_score, specificity, run)
    log.info("model trained on data %s (vae_model metadata.data_fingerprint)", fingerprint)
    return table, heatmaps


def _heatmap(detector: AnomalyDetector, image: np.ndarray, title: str) -> Figure:
    recon, error = reconstruct(detector.model, image[None], detector.score_config, detector.device)
    return plots.heatmap_figure(image, recon[0], error[0], title)


def _title(row: Any) -> str:
    value = getattr(row, row.flag_score)
    verdict = "ANOMALOUS" if row.anomalous else "normal"
    return (
        f"{Path(row.path).name}: {row.flag_score} {value:.1f} "
        f"(percentile {getattr(row, f'{row.flag_score}_percentile'):.0f} of validation normals) "
        f"- {verdict}"
    )


def _log_summary(table: pd.DataFrame, flag_score: str, specificity: float, run: str) -> None:
    failed = table["error"].notna()
    log.info(
        "scored %d of %d files; %d flagged anomalous (%s > %.6g, %.0f%% specificity on "
        "validation normals); heatmaps in the score_heatmaps folder %s/",
        (~failed).sum(),
        len(table),
        int(table["anomalous"].eq(True).sum()),
        flag_score,
        table["threshold"].iloc[0],
        100 * specificity,
        run,
    )
    for row in table[failed].head(_LOGGED_ERRORS).itertuples():
        log.warning("not scored: %s (%s)", row.path, row.error)
    if failed.sum() > _LOGGED_ERRORS:
        log.warning("... and %d more files not scored", failed.sum() - _LOGGED_ERRORS)
