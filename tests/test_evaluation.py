import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from oct_vae.evaluation.metrics import (
    auc_table,
    bootstrap_auc,
    group_auc,
    metric_key,
    patient_level,
    rank_auc,
    sensitivity_at_threshold,
)
from oct_vae.vae.detector import operating_threshold


def _test_set(n_norm=40, n_dis=20, shift=1.0, seed=0, per_patient=2):
    rng = np.random.default_rng(seed)
    labels = np.array(["NORMAL"] * n_norm + ["CNV"] * n_dis + ["DME"] * n_dis + ["DRUSEN"] * n_dis)
    score = rng.normal(size=len(labels))
    score[labels == "CNV"] += 2 * shift
    score[labels == "DME"] += shift
    score[labels == "DRUSEN"] += 0.3 * shift
    patients = np.array([f"{lab}{i // per_patient}" for i, lab in enumerate(labels)])
    return labels, patients, score


def test_auc_table_equals_sklearn():
    labels, _, s = _test_set()
    table = auc_table(labels, {"reconstruction": s, "kl": -s})
    for col, dis in (
        ("CNV", ["CNV"]),
        ("DME", ["DME"]),
        ("Drusen", ["DRUSEN"]),
        ("All", ["CNV", "DME", "DRUSEN"]),
    ):
        keep = np.isin(labels, dis + ["NORMAL"])
        expected = roc_auc_score(np.isin(labels[keep], dis), s[keep])
        assert table["Reconstruction"][col] == pytest.approx(expected)
        assert table["KL"][col] == pytest.approx(1 - expected)
    assert list(table) == ["Reconstruction", "KL"]


def test_rank_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(3)
    y = rng.random(200) < 0.3
    s = rng.integers(0, 5, 200).astype(float)  # many ties
    assert rank_auc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_bootstrap_ci_contains_the_estimate_and_shrinks_with_more_data():
    small = _test_set(n_norm=30, n_dis=15, seed=1)
    big = _test_set(n_norm=300, n_dis=150, seed=1)
    widths = []
    for labels, patients, s in (small, big):
        ci = bootstrap_auc(labels, patients, {"r": s}, ["All", "CNV"], n_resamples=200, seed=0)
        for col in ("All", "CNV"):
            lo, hi = ci["r"][col]
            assert lo <= group_auc(labels, s, col) <= hi
        widths.append(ci["r"]["All"][1] - ci["r"]["All"][0])
    assert widths[1] < 0.6 * widths[0]


def test_bootstrap_is_seeded():
    labels, patients, s = _test_set()
    a = bootstrap_auc(labels, patients, {"r": s}, ["All"], n_resamples=50, seed=5)
    b = bootstrap_auc(labels, patients, {"r": s}, ["All"], n_resamples=50, seed=5)
    assert a == b


def test_patient_level_averages_each_patients_scans():
    labels = np.array(["NORMAL", "NORMAL", "CNV", "CNV", "CNV"])
    patients = np.array(["1", "1", "2", "2", "3"])
    lab, pat, sc = patient_level(labels, patients, {"s": np.array([1.0, 3.0, 5.0, 7.0, 9.0])})
    got = dict(zip(pat, sc["s"]))
    assert got == {"1": 2.0, "2": 6.0, "3": 9.0}
    assert dict(zip(pat, lab)) == {"1": "NORMAL", "2": "CNV", "3": "CNV"}


def test_threshold_comes_from_validation_normals_only():
    val = np.arange(100, dtype=float)
    t = operating_threshold(val, 0.95)
    assert t == 95.0
    assert (val <= t).mean() >= 0.95
    # "higher" interpolation: the threshold is a validation score, never below the quantile
    assert operating_threshold(np.array([3.0, 1.0, 2.0, 10.0]), 0.5) == 3.0
    assert operating_threshold(np.array([1.0, np.nan, 2.0]), 0.99) == 2.0  # NaN ignored
    labels, _, s = _test_set()
    # sensitivity: the share of the group's test scores strictly above the threshold
    threshold = operating_threshold(s[labels == "NORMAL"], 0.9)
    for group, members in (("CNV", ["CNV"]), ("Urgent", ["CNV", "DME"])):
        expected = (s[np.isin(labels, members)] > threshold).mean()
        assert sensitivity_at_threshold(labels, s, threshold, group) == expected
    assert sensitivity_at_threshold(labels, s, threshold, "CNV") > sensitivity_at_threshold(
        labels, s, threshold, "Drusen"
    )  # the CNV scores are shifted most


def test_metric_keys():
    assert metric_key("auc", "reconstruction", "CNV") == "auc_reconstruction_cnv"
    assert metric_key("auc", "Baseline: mean intensity", "All") == "auc_baseline_mean_intensity_all"
