"""The selection protocol's rule and statistics (``scripts/select_defaults.py``): the parts
that do not train."""

from __future__ import annotations

import numpy as np
import pytest

from scripts.select_defaults import ALPHA, CHALLENGERS, DEFAULT, decide, paired, wilson


def _diffs(**lows: float) -> dict[str, dict[str, float]]:
    return {c: {"diff": lows.get(c, -0.1) + 0.05, "low": lows.get(c, -0.1),
                "high": lows.get(c, -0.1) + 0.1} for c in CHALLENGERS}


def test_the_default_stays_unless_a_challenger_is_resolved_better_on_both():
    assert decide(_diffs(), _diffs())["flag_score"] == DEFAULT
    # better on the phantoms only, or on the real scans only: a row, not the default
    assert decide(_diffs(filtered_residual=0.02), _diffs())["flag_score"] == DEFAULT
    assert decide(_diffs(), _diffs(recon_uncertainty=0.01))["flag_score"] == DEFAULT
    # a lower end at exactly zero is not above it
    assert decide(_diffs(vae=0.0), _diffs(vae=0.3))["flag_score"] == DEFAULT


def test_of_several_qualified_challengers_the_highest_real_lower_end_wins():
    choice = decide(_diffs(vae=0.01, kl=0.2), _diffs(vae=0.05, kl=0.02))
    assert choice["flag_score"] == "vae" and sorted(choice["qualified"]) == ["kl", "vae"]


def test_the_level_is_bonferroni_over_the_seven_challengers():
    assert len(CHALLENGERS) == 7 and DEFAULT not in CHALLENGERS
    assert pytest.approx(0.05 / 7) == ALPHA


def test_wilson_interval_matches_a_textbook_value():
    lo, hi = wilson(12, 15)  # 0.80 of 15 normals
    assert lo == pytest.approx(0.548, abs=1e-3) and hi == pytest.approx(0.930, abs=1e-3)
    assert wilson(15, 15)[1] == 1.0 and wilson(0, 15)[0] == 0.0


def _scored_set(rng: np.random.Generator, shift: float) -> tuple[dict, np.ndarray, np.ndarray]:
    labels = np.array(["NORMAL"] * 30 + ["CNV"] * 30)
    patients = np.array([f"p{i // 2}" for i in range(60)])  # two scans per patient
    disease = (labels != "NORMAL").astype(float)
    base = disease + rng.normal(0, 1.0, 60)
    scores = {DEFAULT: base, **{c: disease + rng.normal(0, 1.0, 60) for c in CHALLENGERS}}
    scores["vae"] = base + shift * disease  # clearly better than the default when shift > 0
    return scores, labels, patients


def test_paired_differences_resolve_a_clear_gain_and_not_noise():
    rng = np.random.default_rng(0)
    scores, labels, patients = _scored_set(rng, shift=3.0)
    out = paired({"a": scores}, {"a": labels}, {"a": patients}, resamples=400)
    assert out["vae"]["low"] > 0 and out["vae"]["diff"] > 0.1
    assert out["kl"]["low"] < 0 < out["kl"]["high"] or out["kl"]["high"] < 0
    # identical scores differ by exactly zero on every resample
    same = {**scores, "kl": scores[DEFAULT]}
    flat = paired({"a": same}, {"a": labels}, {"a": patients}, resamples=50)["kl"]
    assert flat == {"diff": 0.0, "low": 0.0, "high": 0.0}


def test_two_models_on_one_set_share_their_resamples():
    rng = np.random.default_rng(1)
    first, labels, patients = _scored_set(rng, shift=1.0)
    # the same scores under two keys: averaging over keys must not narrow the interval
    one = paired({"a": first}, {"a": labels}, {"a": patients}, resamples=200)
    two = paired({"a": first, "b": first}, {"a": labels, "b": labels},
                 {"a": patients, "b": patients}, resamples=200)
    assert one == two
