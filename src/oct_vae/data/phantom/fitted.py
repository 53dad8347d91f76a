"""The phantom's constants fitted to statistics of real scans, and its display tone curve.

Versions 3 and 4 of the phantom (``FORMAT_VERSION``) were fitted to summary statistics of 59
real scans (docs/phantom.md, docs/realism.md; version 4 by ``benchmarks/fit_phantom.py``).
The renderer reads these constants as ``fitted.<NAME>`` when it runs, so the fitting script
can set them on this module while it searches. Changing one changes every image: bump
``FORMAT_VERSION`` (``config.py``) with it.
"""

from __future__ import annotations

import numpy as np

# Version 3, fitted to the real scans' dark grey levels (not to the classifier test): wide
# (768 and 1536 px) real exports are darker than 512-wide ones (at full size 26 % of their
# pixels are below 10 and their 5th percentile is 0.3; 512 wide: 11 % and 4.3). The additive
# noise floor (std, grey levels before gain) and a lower black level for wide scans give
# 13 % / 4.6 (512) and 20 % / 2.0 (wide), and the real scans' histogram of dark levels at
# the model's 128x128 (version 2: floor 4, no wide black level). Since version 4 this floor
# applies to wide scans only (512-wide: NARROW_NOISE_FLOOR below).
NOISE_FLOOR = 5.0
WIDE_BLACK_LEVEL = 2.5
# Version 4, fitted by benchmarks/fit_phantom.py to statistics of the same real scans (each
# value minimises the mismatch that script prints; none was chosen by the classifier test):
# - 512-wide scans: noise floor 6 and black level lifted by 2 grey levels. The lift fits the
#   pooled 128x128 histogram of 512-wide scans (L1 distance to real 0.17 without, 0.09 with);
#   the floor keeps the full-size share of pixels below 10 at the real 0.11 (lift alone: 0.08);
# - wide scans vary more in contrast between scans than 512-wide ones (coefficient of
#   variation over scans of the grey-level std 0.19 real, 0.09 in version 3): an extra
#   per-scan log-gain spread of 0.2 gives 0.20;
# - Bruch's membrane under the fovea lies at 0.36-0.64 of the height (version 3: 0.32-0.66):
#   the real scans' RPE row at 128x128 has percentiles 5/50/95 of 0.34/0.47/0.60 over scans,
#   the phantom's 0.35/0.47/0.60;
# - a display tone curve (knots: grey level in, grey level out, applied after quantisation)
#   is the quantile map from the phantom's pooled 128x128 grey levels to the real ones,
#   iterated twice; below 48 it is the identity (the dark levels are set by the lift above).
#   Version 3 had too few bright pixels (the RPE / ellipsoid band) and too many at 56-96.
NARROW_NOISE_FLOOR = 6.0
NARROW_LIFT = 2.0
WIDE_GAIN_SD = 0.2
BRUCH_Y = (0.36, 0.64)
TONE_KNOTS = ((0, 0), (48, 48), (64, 61), (80, 80), (96, 98), (112, 112), (128, 127), (144, 142),
              (160, 161), (176, 181), (192, 199), (208, 214), (224, 227), (240, 240), (255, 255))


def tone_lut(knots: tuple[tuple[float, float], ...] = TONE_KNOTS) -> np.ndarray:
    """The 256-entry uint8 lookup table of a monotone piecewise-linear tone curve."""
    k = np.asarray(knots, np.float64)
    x, y = (k[:, 0], k[:, 1]) if k.ndim == 2 and k.shape[1] == 2 else (None, None)
    if x is None or np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0):
        raise ValueError("tone knots must be (in, out) pairs, increasing in and non-decreasing "
                         f"out: {knots}")
    return np.clip(np.rint(np.interp(np.arange(256), x, y)), 0, 255).astype(np.uint8)


# The tone curve the renderer applies (``benchmarks/fit_phantom.py`` replaces it while fitting).
TONE_LUT = tone_lut()
