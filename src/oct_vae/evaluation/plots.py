"""Figures of the evaluate pipeline (matplotlib, Agg backend; no Kedro)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from oct_vae.evaluation.metrics import (  # noqa: E402
    GROUPS,
    NORMAL,
    PAPER_COLUMNS,
    ROW_NAMES,
    group_auc,
)

CLASS_COLOURS = {"NORMAL": "tab:green", "CNV": "tab:red", "DME": "tab:blue", "DRUSEN": "tab:orange"}


def reconstruction_grid(images: np.ndarray, recons: np.ndarray, title: str = "") -> Figure:
    """Scans and their mean reconstructions side by side, three pairs per row (as in the paper).

    Args:
        images: uint8 or [0, 1] images (N, H, W).
        recons: Reconstructions in [0, 1], same shape.
    """
    n = len(images)
    cols = 3
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2 * cols * 1.6, rows * 1.7), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, cols)
        img = images[i] / 255.0 if images.dtype == np.uint8 else images[i]
        axes[r, 2 * c].imshow(img, cmap="gray", vmin=0, vmax=1)
        axes[r, 2 * c + 1].imshow(recons[i], cmap="gray", vmin=0, vmax=1)
        if r == 0:
            axes[r, 2 * c].set_title("scan", fontsize=8)
            axes[r, 2 * c + 1].set_title("reconstruction", fontsize=8)
    fig.suptitle(title or "Validation normals and their reconstructions", fontsize=10)
    fig.tight_layout()
    return fig


def roc_curves(labels: np.ndarray, scores: dict[str, np.ndarray]) -> Figure:
    """One panel per disease column, one ROC curve per score."""
    fig, axes = plt.subplots(1, len(PAPER_COLUMNS), figsize=(4.2 * len(PAPER_COLUMNS), 4.2))
    for ax, col in zip(axes, PAPER_COLUMNS):
        keep = np.isin(labels, GROUPS[col]) | (labels == NORMAL)
        y = np.isin(labels[keep], GROUPS[col])
        for name, values in scores.items():
            v = np.asarray(values, dtype=np.float64)[keep]
            if y.all() or not y.any() or not np.isfinite(v).all():
                continue
            fpr, tpr, _ = roc_curve(y, v)
            auc = group_auc(labels, values, col)
            dashed = name.startswith("baseline")
            ax.plot(
                fpr,
                tpr,
                ls="--" if dashed else "-",
                lw=1.2,
                label=f"{ROW_NAMES.get(name, name)} ({auc:.2f})",
            )
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        ax.set(
            title=f"{col} vs normal",
            xlabel="false positive rate",
            ylabel="true positive rate",
            xlim=(0, 1),
            ylim=(0, 1.01),
        )
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return fig


def score_distributions(labels: np.ndarray, scores: dict[str, np.ndarray]) -> Figure:
    """Histogram of each score per class."""
    names = list(scores)
    cols = 3
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    for ax, name in zip(axes.ravel(), names):
        values = np.asarray(scores[name], dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            ax.set_title(f"{ROW_NAMES.get(name, name)}: n/a", fontsize=9)
            continue
        bins = np.histogram_bin_edges(finite, bins=30)
        for cls, colour in CLASS_COLOURS.items():
            v = values[(labels == cls) & np.isfinite(values)]
            if v.size:
                ax.hist(
                    v, bins=bins, histtype="step", lw=1.4, color=colour, label=cls, density=True
                )
        ax.set_title(ROW_NAMES.get(name, name), fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def heatmap_figure(image: np.ndarray, recon: np.ndarray, error: np.ndarray, title: str) -> Figure:
    """Scan, reconstruction and pixel-wise squared error overlaid on the scan."""
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    img = image / 255.0 if image.dtype == np.uint8 else image
    axes[0].imshow(img, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("scan", fontsize=9)
    axes[1].imshow(recon, cmap="gray", vmin=0, vmax=1)
    axes[1].set_title("reconstruction", fontsize=9)
    axes[2].imshow(img, cmap="gray", vmin=0, vmax=1)
    hm = axes[2].imshow(
        error, cmap="inferno", alpha=0.6, vmin=0, vmax=max(float(error.max()), 1e-6)
    )
    axes[2].set_title("squared error", fontsize=9)
    fig.colorbar(hm, ax=axes[2], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
