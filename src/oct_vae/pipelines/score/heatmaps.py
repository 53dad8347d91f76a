"""Heatmaps of the ``score`` pipeline, drawn on all cores while the scans are scored.

Each figure is :func:`oct_vae.evaluation.plots.heatmap_figure` (scan, mean reconstruction, squared
error over the scan), drawn to PNG in a pool of processes as soon as its scan is scored
and spooled to a temporary folder (``tempfile``; about 150 kB a scan until saved): memory
holds a few figures in flight, however many scans there are. Each process builds a
figure once and then only updates its pictures, colour scale and title for the next scan
(building a figure costs more than drawing it), keeping one figure per colour-bar
layout, so every PNG is, to the pixel, the one a new figure gives. :meth:`HeatmapSpool.close`
hands the spooled PNGs to the ``score_heatmaps`` dataset as callables that the
partitioned dataset calls one at a time; each file is deleted once saved, the folder when
the mapping is no longer referenced (or at exit).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from oct_vae.data.imaging import resolve_workers

# Resolution of the spooled PNGs: the score_heatmaps dataset's save_args (conf/base/catalog.yml).
HEATMAP_DPI = 110

# This process's figures, reused from one heatmap to the next, one per layout (see
# _layout_key); a few at most.
_FIGURES: dict[tuple[Any, ...], Any] = {}
_MAX_FIGURES = 16


def draw_heatmap(
    image: np.ndarray, recon: np.ndarray, error: np.ndarray, title: str, target: str, dpi: int
) -> str:
    """Write the heatmap of one scan as a PNG to ``target``; returns ``target``.

    The PNG is the one :func:`oct_vae.evaluation.plots.heatmap_figure` would give, to the pixel: a
    figure is reused only for scans whose colour bar has the same labels, the only thing
    besides the pictures and the title that moves the figure's layout.
    """
    fig = next(iter(_FIGURES.values()), None)
    if fig is not None:
        _update(fig, image, recon, error, title)
        fig = _FIGURES.get(_layout_key(fig))
        if fig is not None:
            _update(fig, image, recon, error, title)
    if fig is None:
        fig = _new_figure(image, recon, error, title)
    fig.savefig(target, dpi=dpi, format="png")
    return target


def _new_figure(image: np.ndarray, recon: np.ndarray, error: np.ndarray, title: str) -> Any:
    import matplotlib.pyplot as plt

    from oct_vae.evaluation import plots

    fig = plots.heatmap_figure(image, recon, error, title)
    plt.close(fig)  # kept out of pyplot: a dataset's `plt.close("all")` leaves it alone
    if len(_FIGURES) >= _MAX_FIGURES:
        _FIGURES.clear()
    _FIGURES[_layout_key(fig)] = fig
    return fig


def _update(fig: Any, image: np.ndarray, recon: np.ndarray, error: np.ndarray, title: str) -> None:
    scan_ax, recon_ax, overlay_ax = fig.axes[:3]
    img = image / 255.0 if image.dtype == np.uint8 else image
    scan_ax.images[0].set_data(img)
    recon_ax.images[0].set_data(recon)
    overlay_ax.images[0].set_data(img)
    overlay_ax.images[1].set_data(error)
    overlay_ax.images[1].set_clim(0, max(float(error.max()), 1e-6))
    fig._suptitle.set_text(title)


def _layout_key(fig: Any) -> tuple[Any, ...]:
    """The colour bar's tick labels (and offset), which set the width tight_layout gives it."""
    axis = fig.axes[3].yaxis
    formatter = axis.get_major_formatter()
    labels = tuple(formatter.format_ticks(axis.get_majorticklocs()))
    return labels, formatter.get_offset()


class SpooledPng:
    """A PNG already drawn, saved like a figure: ``savefig`` copies the file's bytes (the
    figure was drawn at :data:`HEATMAP_DPI`) and then deletes the spooled file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def savefig(self, fname: Any, **kwargs: Any) -> None:
        data = Path(self.path).read_bytes()
        if hasattr(fname, "write"):
            fname.write(data)
        else:
            Path(fname).write_bytes(data)
        Path(self.path).unlink(missing_ok=True)


class HeatmapFiles(dict):
    """``{partition key: callable returning a SpooledPng}``; removes its spool folder when
    it is no longer referenced."""


class HeatmapSpool:
    """Draws heatmaps on ``workers`` processes (1: in this process) into a temporary folder,
    with at most ``max_in_flight`` figures (default: 2 per process) drawing at once."""

    def __init__(self, workers: int = 0, max_in_flight: int | None = None) -> None:
        workers = resolve_workers(workers)
        self.max_in_flight = max_in_flight or 2 * workers
        self._dir = tempfile.mkdtemp(prefix="oct_vae_heatmaps_")
        self._pool = ProcessPoolExecutor(workers) if workers > 1 else None
        self._pending: deque[Future[str]] = deque()
        self._files: dict[str, str] = {}
        self.peak_in_flight = 0

    def add(
        self, key: str, image: np.ndarray, recon: np.ndarray, error: np.ndarray, title: str
    ) -> None:
        """Draw the heatmap of one scan, saved later under the partition ``key``."""
        target = os.path.join(self._dir, f"{len(self._files)}.png")
        self._files[key] = target
        if self._pool is None:
            draw_heatmap(image, recon, error, title, target, HEATMAP_DPI)
            return
        while len(self._pending) >= self.max_in_flight:
            self._pending.popleft().result()
        self._pending.append(
            self._pool.submit(draw_heatmap, image, recon, error, title, target, HEATMAP_DPI)
        )
        self.peak_in_flight = max(self.peak_in_flight, len(self._pending))

    def close(self) -> HeatmapFiles:
        """Wait for every figure; the mapping for the ``score_heatmaps`` dataset."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)
        files = HeatmapFiles({key: partial(SpooledPng, path) for key, path in self._files.items()})
        weakref.finalize(files, shutil.rmtree, self._dir, True)
        return files

    def abort(self) -> None:
        """Stop drawing and remove the spool folder (after an error)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self._dir, ignore_errors=True)
