"""The phantom-fitting script on a tiny "real" set that is itself a phantom (not the real fit)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import realism_classifiers as R
from oct_vae.data.phantom import fitted

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fit_phantom  # noqa: E402


def test_fit_recovers_a_known_lift_and_tone_curve_and_restores_the_module(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {k: getattr(fitted, k) for k in fit_phantom.FITTED}
    with monkeypatch.context() as m:  # the "real" scans: brighter mid-tones than the phantom
        m.setattr(fitted, "TONE_LUT", fitted.tone_lut(((0, 0), (48, 48), (128, 170), (255, 255))))
        sample = R.phantom_sample({"NORMAL": 4, "CNV": 2, "DME": 2, "DRUSEN": 2}, seed=50)
    for data_img, label, name in zip(sample.full, sample.labels, sample.names, strict=True):
        (tmp_path / label).mkdir(exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(data_img, "L").save(buf, "JPEG", quality=95)
        (tmp_path / label / name).write_bytes(buf.getvalue())
    result = fit_phantom.main(["--real", str(tmp_path), "--seeds", "0"])
    # the module is left as it was found, whatever the fit chose
    assert all(np.array_equal(getattr(fitted, k), v) for k, v in before.items())
    assert result["BRUCH_Y"][0] < result["BRUCH_Y"][1]
    assert abs(result["NARROW_LIFT"] - fitted.NARROW_LIFT) <= 1.0  # the lift of the "real" set
    knots = np.array(result["TONE_KNOTS"])
    assert np.all(np.diff(knots[:, 0]) > 0) and np.all(np.diff(knots[:, 1]) >= 0)
    dark = knots[:, 0] <= 48
    assert knots[-1, 1] == 255 and np.array_equal(knots[dark, 1], knots[dark, 0])
    mid = dict(map(tuple, knots))
    assert 150 <= mid[128] <= 190 and mid[96] > 100, knots  # 128 -> 170 in the "real" set
