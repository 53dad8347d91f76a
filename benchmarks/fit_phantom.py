"""Fit phantom version 4's global constants to summary statistics of real scans (issue #13).

Each constant is chosen by a grid search (or, for the tone curve, a quantile map) that
minimises one printed mismatch between real and phantom **statistics**. The classifier
two-sample test of ``benchmarks/realism.py`` is never the objective here; it is run afterwards
as the check. Real scans are only read, never copied into the phantom.

Steps, in order (each uses the values fitted before it):

1. ``NARROW_NOISE_FLOOR`` and ``NARROW_LIFT`` (512-wide scans): for each noise floor the
   lift with the lowest L1 distance between the pooled 128x128 grey-level histograms (8-level
   bins) of 512-wide real and phantom scans; then the floor whose full-size share of pixels
   below 10 is closest to the real one (the lift alone fits 128x128 but empties the blacks).
2. ``WIDE_GAIN_SD``: coefficient of variation over wide (768/1536 px) scans of the grey-level
   standard deviation, phantom against real.
3. ``BRUCH_Y``: 5th, 50th and 95th percentiles over scans of the RPE row (median over columns
   of the brightest row of the 128x128 image, white wedges ignored).
4. ``TONE_KNOTS``: the quantile map from the phantom's pooled 128x128 grey levels (< 250) to
   the real ones at fixed knots, identity below 48, composed with the current curve, twice.

Usage:
    python benchmarks/fit_phantom.py [--real DIR ...] [--seeds 0 1]
Prints the fitted constants last, as they are written in ``src/oct_vae/data/phantom/fitted.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from realism import DEFAULT_REAL, load_real  # noqa: E402

from benchmarks import realism_classifiers as R  # noqa: E402
from oct_vae.data.phantom import fitted  # noqa: E402

EDGES = np.arange(0, 257, 8)
KNOTS_IN = (0, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 255)


def _wide(full: np.ndarray) -> bool:
    return full.shape[1] > 600


def hist_512(s: R.ScanSet) -> np.ndarray:
    """Mean 128x128 grey-level histogram of the 512-wide scans."""
    return np.mean([np.histogram(sm, EDGES)[0] / sm.size
                    for sm, f in zip(s.small, s.full) if not _wide(f)], axis=0)


def near_black_512(s: R.ScanSet) -> float:
    """Mean share of full-size pixels below 10 in the 512-wide scans."""
    return float(np.mean([np.mean(f < 10) for f in s.full if not _wide(f)]))


def wide_contrast_cv(s: R.ScanSet) -> float:
    """Coefficient of variation over wide scans of the full-size grey-level std."""
    v = np.array([f.std() for f in s.full if _wide(f)])
    return float(v.std() / v.mean())


def rpe_rows(s: R.ScanSet) -> np.ndarray:
    """5th, 50th and 95th percentiles over scans of the RPE row (fraction of the height)."""
    rows = []
    for sm in s.small:
        a = sm.astype(np.float32)
        a[a >= 250] = 0.0  # registration wedges are not tissue
        rows.append(np.median(R._box(a, 3)[:, 8:-8].argmax(axis=0)) / sm.shape[0])
    return np.percentile(rows, [5, 50, 95])


def pooled_levels(sets: list[R.ScanSet]) -> np.ndarray:
    v = np.concatenate([sm.ravel() for s in sets for sm in s.small])
    return v[v < 250].astype(np.float64)


def _grid(name: str, values, mismatch, real_value) -> float:  # noqa: ANN001
    best = None
    for v in values:
        setattr(fitted, name, v)
        m, shown = mismatch()
        print(f"  {name} = {v}: {shown}")
        if best is None or m < best[0]:
            best = (m, v)
    setattr(fitted, name, best[1])
    print(f"  -> {name} = {best[1]} (real: {real_value})", flush=True)
    return best[1]


FITTED = ("BRUCH_Y", "NARROW_NOISE_FLOOR", "NARROW_LIFT", "WIDE_GAIN_SD", "TONE_LUT")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", type=Path, nargs="+", default=DEFAULT_REAL)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = p.parse_args(argv)
    saved = {k: getattr(fitted, k) for k in FITTED}
    try:
        return fit(load_real(args.real), args.seeds)
    finally:  # the fit sets the phantom's fitted constants as it goes; leave them as found
        for k, v in saved.items():
            setattr(fitted, k, v)


def fit(real: R.ScanSet, seeds: list[int]) -> dict:
    """Run the four steps on ``real``, rendering phantom samples with ``seeds``."""
    counts = {c: 2 * n for c, n in real.counts().items()}

    def fakes() -> list[R.ScanSet]:
        return [R.phantom_sample(counts, seed=s) for s in seeds]

    fitted.TONE_LUT = fitted.tone_lut(((0, 0), (255, 255)))
    h_real, dark_real = hist_512(real), near_black_512(real)
    print("1. noise floor and lift of 512-wide scans: for each floor the lift with the lowest L1\n"
          "   distance of the 128x128 histograms; then the floor whose full-size share of\n"
          f"   pixels < 10 is closest to the real {dark_real:.3f}")
    best = None
    for floor in (5.0, 6.0, 7.0, 8.0, 9.0):
        fitted.NARROW_NOISE_FLOOR = floor
        by_lift = []
        for lift in (1.0, 2.0, 3.0, 4.0, 5.0):
            fitted.NARROW_LIFT = lift
            fs = fakes()
            by_lift.append((np.mean([np.abs(hist_512(f) - h_real).sum() for f in fs]), lift,
                            np.mean([near_black_512(f) for f in fs])))
        l1, lift, dark = min(by_lift)
        print(f"  floor {floor}: lift {lift} (L1 {l1:.3f}), share < 10: {dark:.3f}")
        if best is None or abs(dark - dark_real) < abs(best[2] - dark_real):
            best = (floor, lift, dark)
    floor, lift = best[0], best[1]
    fitted.NARROW_NOISE_FLOOR, fitted.NARROW_LIFT = floor, lift
    print(f"  -> NARROW_NOISE_FLOOR = {floor}, NARROW_LIFT = {lift}", flush=True)

    print("2. extra log-gain spread of wide scans: CV of the grey-level std")
    cv_real = wide_contrast_cv(real)

    def gain_mismatch() -> tuple[float, str]:
        cv = np.mean([wide_contrast_cv(f) for f in fakes()])
        return abs(cv - cv_real), f"CV {cv:.3f}"

    gain_sd = _grid("WIDE_GAIN_SD", [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3], gain_mismatch,
                    f"CV {cv_real:.3f}")

    print("3. range of Bruch's membrane row: RPE-row percentiles 5/50/95")
    q_real = rpe_rows(real)

    def bruch_mismatch() -> tuple[float, str]:
        q = np.mean([rpe_rows(f) for f in fakes()], axis=0)
        return float(np.abs(q - q_real).sum()), f"q {np.round(q, 3)}"

    ranges = [(round(c - h, 2), round(c + h, 2))
              for c in (0.48, 0.50, 0.52) for h in (0.12, 0.14, 0.17)]
    bruch = _grid("BRUCH_Y", ranges, bruch_mismatch, f"q {np.round(q_real, 3)}")

    print("4. tone curve: quantile map of the pooled 128x128 grey levels, twice")
    r = pooled_levels([real])
    knots = np.array(KNOTS_IN, np.float64)
    current = knots.copy()
    for it in range(2):
        f = pooled_levels(fakes())
        target = np.quantile(r, np.clip([(f <= k).mean() for k in knots], 0.0, 1.0))
        target[knots <= 48], target[-1] = knots[knots <= 48], 255.0
        lut = fitted.TONE_LUT.astype(np.float64)
        current = np.maximum.accumulate(np.rint(np.interp(lut[knots.astype(int)], knots, target)))
        fitted.TONE_LUT = fitted.tone_lut(tuple(zip(KNOTS_IN, current)))
        shown = " ".join(f"{int(a)}->{int(b)}" for a, b in zip(knots, current))
        print(f"  iteration {it + 1}: {shown}")
    f = pooled_levels(fakes())
    qs = [10, 50, 90, 99]
    print(f"  pooled percentiles {qs}: real {np.percentile(r, qs)}, phantom {np.percentile(f, qs)}")

    tone = tuple((int(a), int(b)) for a, b in zip(KNOTS_IN, current))
    result = {"BRUCH_Y": bruch, "NARROW_NOISE_FLOOR": floor, "NARROW_LIFT": lift,
              "WIDE_GAIN_SD": gain_sd, "TONE_KNOTS": tone}
    print("\n" + "\n".join(f"{k} = {v}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    main()
