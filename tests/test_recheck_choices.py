"""The rules of scripts/recheck_choices.py on small made-up results (not its targets)."""

from __future__ import annotations

import numpy as np
import pytest

from scripts.recheck_choices import MARGIN, candidates, paired_differences, select, verdict

SCORES = ("reconstruction", "structural_residual", "latent_distance")


def _grid(best_k: float) -> list[dict]:
    rows = []
    for sigma in (0.0, 1.0, 2.0):
        for k in (0.25, 10.0):
            auc = 0.9 if (sigma == 1.0 and k == best_k) else 0.6
            rows.append({"sigma": sigma, "k_percent": k, "CNV": auc, "DME": auc,
                         "Drusen": auc, "All": auc})
    return rows


def _dev(recon: dict[str, float], structural: float = 0.70) -> dict:
    """Two seeds; the seeds' reconstruction AUCs straddle the given mean by 0.02."""
    out = {}
    for name, mean in recon.items():
        out[name] = {}
        for seed, shift in ((7, -0.02), (8, 0.02)):
            all_auc = {"reconstruction": mean + shift, "structural_residual": structural + shift,
                       "latent_distance": 0.65, "baseline_mean_intensity": 0.99}
            out[name][seed] = {"scores": {n: {"All": v} for n, v in all_auc.items()},
                               "grid": _grid(10.0)}
    return out


def test_a_candidate_replaces_the_base_only_by_the_margin():
    small = _dev({"base": 0.70, "epochs_40": 0.70 + MARGIN / 2})
    assert select(small, "reconstruction")["config"] == "base"
    clear = _dev({"base": 0.70, "epochs_40": 0.70 + 2 * MARGIN})
    choice = select(clear, "reconstruction")
    assert choice["config"] == "epochs_40"
    assert choice["reconstruction_all"]["epochs_40"] == pytest.approx(0.72)


def test_the_flag_score_moves_only_by_the_margin_and_never_to_a_baseline():
    keep = select(_dev({"base": 0.70}, structural=0.70 + MARGIN / 2), "reconstruction")
    assert keep["flag_score"] == "reconstruction"  # the 0.99 baseline is not a candidate
    move = select(_dev({"base": 0.70}, structural=0.75), "reconstruction")
    assert move["flag_score"] == "structural_residual"
    assert (move["filtered"]["sigma"], move["filtered"]["k_percent"]) == (1.0, 10.0)


def _real(paired: dict) -> dict:
    scores = {n: {"All": 0.6} for n in (*SCORES, "baseline_mean_intensity")}
    return {"base": {"scores": scores}, "_paired": paired}


@pytest.mark.parametrize(("config_diffs", "word"), [
    ({"width_16": (-0.10, -0.15, -0.05)}, "refuted (worse than `width_16`)"),
    ({"width_16": (0.10, 0.05, 0.15), "bernoulli": (0.2, 0.1, 0.3)}, "supported"),
    ({"width_16": (-0.02, -0.08, 0.03), "bernoulli": (0.2, 0.1, 0.3)}, "not resolved"),
])
def test_the_verdict_follows_the_paired_intervals(config_diffs, word):
    paired = {"config": config_diffs, "flag_score": {"latent_distance": (0.0, -0.1, 0.1)}}
    lines = verdict({"config": "base", "flag_score": "reconstruction"}, _real(paired),
                    "reconstruction")
    assert lines[0].startswith(f"- Training configuration `base`: {word}")
    assert "not resolved" in lines[1]


def test_paired_differences_see_a_clear_gap_and_not_a_tie():
    rng = np.random.default_rng(0)
    labels = np.array(["NORMAL"] * 20 + ["CNV"] * 20)
    patients = np.array([f"p{i // 2}" for i in range(40)])
    truth = (labels != "NORMAL").astype(float)
    vectors = {}
    for seed in ("7", "8"):
        noise = rng.normal(0, 0.1, 40)
        vectors[f"good|{seed}|reconstruction"] = truth + noise  # separates the classes
        vectors[f"bad|{seed}|reconstruction"] = rng.normal(0, 1, 40)  # chance
        vectors[f"good|{seed}|structural_residual"] = truth + noise + 1e-9  # same ranking
    out = paired_differences(vectors, labels, patients,
                             {"config": "good", "flag_score": "reconstruction"}, 300)
    diff, low, high = out["config"]["bad"]
    assert diff > 0.3 and low > 0
    diff, low, high = out["flag_score"]["structural_residual"]
    assert diff == pytest.approx(0.0) and low <= 0 <= high


def test_candidates_change_one_setting_of_the_base_and_never_repeat_it():
    base = {"likelihood": "gaussian", "gaussian_sigma": 0.1, "width": 8, "epochs": 20}
    got = candidates(base)
    # round 2 of docs/recheck.md started from this base and tried exactly these
    assert got == {
        "base": {}, "bernoulli": {"train.likelihood": "bernoulli"},
        "gaussian_sigma_0.05": {"train.gaussian_sigma": 0.05},
        "gaussian_sigma_0.2": {"train.gaussian_sigma": 0.2},
        "width_16": {"train.width": 16},
        "epochs_10": {"train.epochs": 10}, "epochs_40": {"train.epochs": 40},
    }
    now = candidates({**base, "epochs": 40})  # conf/base after round 2
    assert now["epochs_20"] == {"train.epochs": 20} and now["epochs_80"] == {"train.epochs": 80}
    for name, change in now.items():
        assert len(change) == (0 if name == "base" else 1)
        for key, value in change.items():
            assert value != {**base, "epochs": 40}[key.removeprefix("train.")], name
