"""A folder of scans scored as a stream, in the memory of a few batches.

Files are decoded in batches of ``score_config.batch_size`` on ``workers`` processes
(``imaging.iter_decoded``, a few batches in flight), each batch is scored as it comes
(``serving.score_decoded``: a scan's scores do not depend on its batch), and its heatmaps
are drawn on ``workers`` processes into a temporary folder (``heatmaps.HeatmapSpool``).
Memory holds a few batches, the table's columns and the heatmaps' file names, whatever
the folder's size. No Kedro here: the ``score_scans`` node builds the detector and the
spool, and turns the columns into ``score_results``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oct_vae.data import imaging
from oct_vae.pipelines.score.heatmaps import HeatmapSpool
from oct_vae.progress import Progress
from oct_vae.serving import scoring as serving
from oct_vae.vae.detector import AnomalyDetector
from oct_vae.vae.scores import reconstruct


def score_stream(
    detector: AnomalyDetector, paths: list[str], names: list[str],
    spool: HeatmapSpool | None, run: str, *, max_pixels: int, workers: int, flag_score: str,
    specificity: float,
) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """Score the files ``paths`` (named ``names`` in the table and the heatmaps' keys).

    Returns:
        The table's columns (``heatmap``: the partition key ``<run>/<name>.png`` or None,
        then every column of ``serving.score_decoded``), and the spooled heatmaps
        (``HeatmapSpool.close``; empty without a spool).
    """
    cols: dict[str, list[Any]] = {"heatmap": []}
    with _cores_left_to_workers(workers):
        try:
            batches = imaging.iter_decoded(
                paths, detector.image_size, max_pixels, workers,
                batch_size=detector.score_config.batch_size,
            )
            with Progress("score files", len(paths), "files") as progress:
                for start, results, pixels in batches:
                    decoded = serving.Decoded(pixels, [r.reason or None for r in results])
                    _score_batch(cols, detector, decoded, flag_score, specificity, spool,
                                 names[start:], run)
                    progress.update(len(results))
            drawn = spool.close() if spool is not None else {}
        except BaseException:
            if spool is not None:
                spool.abort()
            raise
    return cols, drawn


@contextmanager
def _cores_left_to_workers(workers: int) -> Iterator[None]:
    """With more than one worker process, torch keeps one thread fewer while inside."""
    threads = torch.get_num_threads()
    if imaging.resolve_workers(workers) > 1:
        # A core is left to the decoding (and drawing) processes: torch's threads would
        # otherwise spin-wait against them (4x slower on a busy 2-core machine).
        torch.set_num_threads(max(1, threads - 1))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _score_batch(
    cols: dict[str, list[Any]], detector: AnomalyDetector, decoded: serving.Decoded,
    flag_score: str, specificity: float, spool: HeatmapSpool | None, names: list[str],
    run: str,
) -> None:
    """Score one decoded batch into the table's columns; spool its heatmaps."""
    part = serving.score_decoded(detector, decoded, flag_score, specificity)
    for name, values in part.items():
        cols.setdefault(name, []).extend(values)
    cols["heatmap"].extend(_spool_heatmaps(spool, detector, decoded, part, names, run))


def _spool_heatmaps(
    spool: HeatmapSpool | None, detector: AnomalyDetector, decoded: serving.Decoded,
    part: dict[str, list[Any]], names: list[str], run: str,
) -> list[str | None]:
    """Hand each scored scan of a batch to the heatmap spool; its partition key, or None."""
    keys: list[str | None] = [None] * len(decoded.errors)
    ok = np.flatnonzero(decoded.ok)
    if spool is None or not ok.size:
        return keys
    recon, error = reconstruct(
        detector.model, decoded.images[ok], detector.score_config, detector.device
    )
    for j, row in enumerate(ok):
        keys[row] = f"{run}/{names[row]}.png"
        spool.add(keys[row], decoded.images[row], recon[j], error[j], _title(names[row], part, row))
    return keys


def _title(path: str, cols: dict[str, list[Any]], row: int) -> str:
    flag_score = cols["flag_score"][row]
    verdict = "ANOMALOUS" if cols["anomalous"][row] else "normal"
    return (
        f"{Path(path).name}: {flag_score} {cols[flag_score][row]:.1f} "
        f"(percentile {cols[f'{flag_score}_percentile'][row]:.0f} of validation normals) "
        f"- {verdict}"
    )
