"""The realism measurement's code on tiny synthetic inputs (not the phantom's realism target)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import realism_classifiers as R
from oct_vae.data.kermany import CLASSES


def _images(rng: np.random.Generator, n: int, level: float, bar: bool = False) -> np.ndarray:
    """Smooth random images around ``level``; ``bar`` adds a bright horizontal band."""
    x = rng.normal(level, 20.0, size=(n, 16, 16))
    x = np.kron(x, np.ones((8, 8)))  # 128x128, blocky
    x += rng.normal(0.0, 10.0, size=x.shape)
    if bar:
        x[:, 60:68] += 120.0
    return np.clip(x, 0, 255).astype(np.uint8)


def _sets(same: bool, n: int = 32) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    rng = np.random.default_rng(0)
    a = _images(rng, n, 60.0)
    b = _images(rng, n, 60.0) if same else _images(rng, n, 60.0, bar=True)
    y = np.r_[np.ones(n, int), np.zeros(n, int)]
    labels = [CLASSES[i % 4] for i in range(n)] * 2
    groups = [f"a{i // 2}" for i in range(n)] + [f"b{i // 2}" for i in range(n)]
    return np.concatenate([a, b]), y, labels, groups


def test_folds_never_split_a_patient_and_are_stratified() -> None:
    rng = np.random.default_rng(1)
    groups = [f"p{g}" for g in rng.integers(0, 30, size=120)]
    strata = [f"{g % 2}{CLASSES[g % 4]}" for g in range(120)]
    folds = R.grouped_folds(strata, groups, n_splits=5, seed=3)
    assert len(folds) == 5
    seen = np.zeros(120, int)
    for tr, te in folds:
        assert not {groups[i] for i in tr} & {groups[i] for i in te}
        seen[te] += 1
    assert (seen == 1).all()  # every scan is scored exactly once


def test_features_shape() -> None:
    imgs = _images(np.random.default_rng(2), 3, 80.0)
    f = R.image_features(imgs)
    assert f.shape == (3, 256 + 128 + 32 + 32) and np.isfinite(f).all()


@pytest.mark.parametrize("cnn", [False, True])
def test_auc_near_half_for_same_distribution_and_near_one_for_different(cnn: bool) -> None:
    R._torch().set_num_threads(1)
    for same, lo, hi in ((True, 0.2, 0.8), (False, 0.95, 1.0)):
        images, y, labels, groups = _sets(same)
        strata = [f"{t}{lab}" for t, lab in zip(y, labels, strict=True)]
        folds = R.grouped_folds(strata, groups, 5, 0)
        if cnn:
            scores = R.cv_scores_cnn(images, y, folds, seed=0, epochs=10)
        else:
            scores = R.cv_scores_logistic(R.image_features(images), y, folds)
        auc = R.auc_by_class(scores, y, labels)
        assert set(auc) == {"overall", *CLASSES}
        assert lo <= auc["overall"] <= hi, (same, cnn, auc)


def test_statistics_and_report_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    real, fake = R.ScanSet(), R.ScanSet()
    for k, s in enumerate((real, fake)):
        for i in range(8):
            img = np.clip(rng.normal(40 + 10 * k, 25, size=(96, 128)), 0, 255).astype(np.uint8)
            s.full.append(img)
            s.small.append(np.zeros((128, 128), np.uint8))
            s.labels.append(CLASSES[i % 4])
            s.patients.append(str(i))
            s.names.append(f"{CLASSES[i % 4]}-{i}-1.jpeg")
    stats = R.scan_statistics(real.full[0])
    assert set(stats) == set(R.STAT_NOTES) and all(np.isfinite(list(stats.values())))
    table = R.statistics_table(real, fake)
    assert table["mean"]["all"]["std_diff"] > 0  # the phantom set is brighter
    draws = [{"logistic": {"overall": 0.6, "NORMAL": 0.5}, "cnn": {"overall": 0.7}},
             {"logistic": {"overall": 0.8, "NORMAL": 0.7}, "cnn": {"overall": 0.5}}]
    result = {"n_real": real.counts(), "n_phantom": fake.counts(), "n_draws": 2, "seeds": [0, 1],
              "n_folds": 5, "auc": R.summarise_draws(draws), "statistics": table}
    js, md = R.write_report(result, tmp_path / "out")
    assert json.loads(js.read_text())["auc"]["logistic"]["overall"]["mean"] == pytest.approx(0.7)
    assert "| logistic | 0.70 ± 0.10" in md.read_text()
    assert R.headline(result) == (
        "realism: classifier AUC overall logistic 0.70, cnn 0.60 (target <= 0.75)")
