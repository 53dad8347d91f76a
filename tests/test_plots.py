"""The figures draw what they say: the images, the ROC curves and histograms of the data."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from oct_vae.evaluation import plots  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _labels_scores(seed=0):
    rng = np.random.default_rng(seed)
    labels = np.array(["NORMAL"] * 20 + ["CNV"] * 8 + ["DME"] * 8 + ["DRUSEN"] * 8)
    s = rng.normal(size=len(labels)) + (labels != "NORMAL")
    return labels, {"reconstruction": s, "baseline_mean_intensity": -s}


def test_reconstruction_grid_shows_each_scan_beside_its_reconstruction():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (4, 16, 16), dtype=np.uint8)
    recons = rng.random((4, 16, 16))
    fig = plots.reconstruction_grid(images, recons)
    shown = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(shown) == 8  # 4 pairs
    for i in range(4):
        np.testing.assert_allclose(shown[2 * i if i < 3 else 6], images[i] / 255.0)
        np.testing.assert_allclose(shown[2 * i + 1 if i < 3 else 7], recons[i])


def test_roc_curves_are_scikit_learns_curves_with_the_auc_in_the_label():
    labels, scores = _labels_scores()
    fig = plots.roc_curves(labels, scores)
    cnv = next(ax for ax in fig.axes if ax.get_title() == "CNV vs normal")
    keep = np.isin(labels, ["NORMAL", "CNV"])
    fpr, tpr, _ = roc_curve(labels[keep] == "CNV", scores["reconstruction"][keep])
    line = cnv.lines[0]
    np.testing.assert_allclose(line.get_xdata(), fpr)
    np.testing.assert_allclose(line.get_ydata(), tpr)
    assert line.get_linestyle() == "-" and cnv.lines[1].get_linestyle() == "--"  # baseline
    assert line.get_label().startswith("Reconstruction (")


def test_score_distributions_has_one_panel_per_score_and_a_histogram_per_class():
    labels, scores = _labels_scores()
    fig = plots.score_distributions(labels, {**scores, "kl": np.full(len(labels), np.nan)})
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 3 and titles[-1].endswith("n/a")
    first = fig.axes[0]
    assert len(first.patches) == 4  # one step histogram per class


def test_heatmap_overlays_the_error_on_the_scan():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (16, 16), dtype=np.uint8)
    recon, error = rng.random((16, 16)), rng.random((16, 16))
    fig = plots.heatmap_figure(image, recon, error, "scan 1")
    panels = [ax for ax in fig.axes if ax.images]
    np.testing.assert_allclose(panels[0].images[0].get_array(), image / 255.0)
    np.testing.assert_allclose(panels[2].images[1].get_array(), error)
    assert fig._suptitle.get_text() == "scan 1"
