"""Synthetic retinal OCT phantom in the layout and naming of the Kermany (2018) dataset.

A fresh clone has no real data (it is a manual download), so the pipeline runs on this phantom:
layered retinas with a foveal pit on a curved, tilted band, a textured choroid, speckle, vessel
shadows and the white registration wedges of real Spectralis exports, written as
``<root>/{train,test}/<CLASS>/<CLASS>-<patient>-<n>.jpeg`` (8-bit grayscale JPEG at the real
files' quality 75; 512x496, 768x496 or wide-field 1536x496). Versions 2 to 4
(``FORMAT_VERSION``) were fitted to summary statistics of 59 real scans (docs/phantom.md,
docs/realism.md; version 4 by ``benchmarks/fit_phantom.py``).
Diseases (CNV, DME, DRUSEN) are local lesions whose size and contrast scale with ``severity``;
anatomy, gain and artefacts vary more between patients than lesions change global statistics,
so disease is visible in local structure only, as on real scans.

Only numpy, Pillow and the standard library are used. Every scan has its own random stream
derived from ``(seed, patient id, scan index)``, so output bytes do not depend on generation
order or on the number of worker processes.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from oct_vae.data.kermany import CLASSES
from oct_vae.framework.fileio import atomic_write, interprocess_lock, sweep_stale_temp_files

FORMAT_VERSION = 4
META_NAME = "phantom.json"
_PARTIAL_NAME = ".phantom-partial.json"
REF_HEIGHT = 496  # all vertical sizes below are pixels at this height
# The layered scene is rendered at width // 4 columns, at most 128 (the model's input width),
# and upsampled laterally; noise is added at full resolution.
_DS, _MAX_COLS = 4, 128
# Version 3, fitted to the real scans' dark grey levels (not to the classifier test): wide
# (768 and 1536 px) real exports are darker than 512-wide ones (at full size 26 % of their
# pixels are below 10 and their 5th percentile is 0.3; 512 wide: 11 % and 4.3). The additive
# noise floor (std, grey levels before gain) and a lower black level for wide scans give
# 13 % / 4.6 (512) and 20 % / 2.0 (wide), and the real scans' histogram of dark levels at
# the model's 128x128 (version 2: floor 4, no wide black level). Since version 4 this floor
# applies to wide scans only (512-wide: _NARROW_NOISE_FLOOR below).
_NOISE_FLOOR = 5.0
_WIDE_BLACK_LEVEL = 2.5
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
_NARROW_NOISE_FLOOR = 6.0
_NARROW_LIFT = 2.0
_WIDE_GAIN_SD = 0.2
_BRUCH_Y = (0.36, 0.64)
_TONE_KNOTS = ((0, 0), (48, 48), (64, 61), (80, 80), (96, 98), (112, 112), (128, 127), (144, 142),
               (160, 161), (176, 181), (192, 199), (208, 214), (224, 227), (240, 240), (255, 255))


def tone_lut(knots: tuple[tuple[float, float], ...] = _TONE_KNOTS) -> np.ndarray:
    """The 256-entry uint8 lookup table of a monotone piecewise-linear tone curve."""
    k = np.asarray(knots, np.float64)
    x, y = (k[:, 0], k[:, 1]) if k.ndim == 2 and k.shape[1] == 2 else (None, None)
    if x is None or np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0):
        raise ValueError("tone knots must be (in, out) pairs, increasing in and non-decreasing "
                         f"out: {knots}")
    return np.clip(np.rint(np.interp(np.arange(256), x, y)), 0, 255).astype(np.uint8)


_TONE_LUT = tone_lut()

# Retina from the inner limiting membrane (ILM) down to Bruch's membrane, top to bottom:
# name, thickness (px), reflectivity (display units before gain), foveal thinning (share of
# the thickness removed at the pit centre; negative: thicker at the fovea, as the ONL/Henle
# layer is). SRF, SHRM (CNV) and SUB (drusen) have zero thickness in a healthy eye.
_LAYERS = (
    ("NFL", 9.0, 118.0, 1.15),  # nerve fibre layer (thickness also grows nasally)
    ("GCL", 10.0, 74.0, 1.15),  # ganglion cell layer
    ("IPL", 8.0, 82.0, 1.1),  # inner plexiform
    ("INL", 8.0, 50.0, 1.0),  # inner nuclear
    ("OPL", 6.0, 76.0, 0.8),  # outer plexiform
    ("ONL", 17.0, 50.0, -0.3),  # outer nuclear + Henle fibres
    ("ELM", 1.5, 75.0, 0.0),  # external limiting membrane
    ("MZ", 3.0, 85.0, 0.0),  # myoid zone
    ("EZ", 4.0, 150.0, 0.0),  # ellipsoid zone
    ("IZ", 3.0, 140.0, 0.0),  # outer segments / interdigitation
    ("SRF", 0.0, 20.0, 0.0),  # subretinal fluid
    ("SHRM", 0.0, 190.0, 0.0),  # subretinal hyperreflective material (CNV)
    ("RPE", 7.0, 165.0, 0.0),  # retinal pigment epithelium
    ("SUB", 0.0, 100.0, 0.0),  # sub-RPE deposit (drusen), ends on Bruch's membrane
)
_L = {name: i for i, (name, *_rest) in enumerate(_LAYERS)}
_THICK = np.array([t for _, t, _, _ in _LAYERS], dtype=np.float32)
_REFL = np.array([r for _, _, r, _ in _LAYERS], dtype=np.float32)
_FOVEA = np.array([f for _, _, _, f in _LAYERS], dtype=np.float32)
_CHOROID_REFL = 95.0
_DEPTH_DECAY = 110.0  # px, e-folding of the signal below Bruch's membrane
_DEEP_FLOOR = 4.0
_FLUID = 20.0


@dataclass(frozen=True)
class PhantomConfig:
    """Parameters of a phantom dataset (stored in ``phantom.json``)."""

    n_normal_patients: int = 450
    n_patients_per_disease: int = 60
    scans_per_patient: tuple[int, int] = (2, 8)
    wide_fraction: float = 0.33
    severity: float = 1.0
    cnv_lesions: tuple[int, int] = (1, 2)
    dme_cysts: tuple[int, int] = (2, 10)
    drusen_count: tuple[int, int] = (3, 7)
    test_fraction: float = 0.1
    jpeg_quality: int = 75
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("scans_per_patient", "cnv_lesions", "dme_cysts", "drusen_count"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi or (name == "scans_per_patient" and lo < 1):
                raise ValueError(f"PhantomConfig.{name} must be an inclusive range, got {lo, hi}")
        if min(self.n_normal_patients, self.n_patients_per_disease) < 0 or self.seed < 0:
            raise ValueError("patient counts and seed must be non-negative")
        if not (0.0 <= self.wide_fraction <= 1.0 and 0.0 <= self.test_fraction <= 1.0):
            raise ValueError("wide_fraction and test_fraction must lie in [0, 1]")
        if self.severity <= 0 or not 1 <= self.jpeg_quality <= 100:
            raise ValueError("severity must be positive and jpeg_quality in 1..100")


@dataclass(frozen=True)
class Anatomy:
    """One synthetic patient's eye; lengths are px at 496 rows, x positions are width fractions."""

    bruch_y: float  # Bruch's membrane row under the fovea, as a fraction of the height
    tilt: float  # rise of the band from the left to the right edge (px)
    sag: float  # edges minus centre (px); positive: bowl-shaped band
    wobble: tuple[float, ...]  # amplitudes of 1-3 cycles/width undulations (px)
    wobble_phase: tuple[float, ...]
    fovea_x: float
    pit_width: float  # Gaussian sigma of the foveal pit (width fraction)
    pit_depth: float  # share of the inner layers removed at the pit centre
    thickness: float  # retina thickness multiplier
    layer_scale: tuple[float, ...]  # per-layer thickness multipliers
    reflectivity: tuple[float, ...]  # per-layer reflectivity multipliers
    nasal_side: float  # +1: nasal (thick NFL) side on the right
    choroid: float  # choroid thickness (px)
    gain: float  # display gain
    vitreous: float  # vitreous noise-floor level
    vessels: tuple[float, ...]  # x of the large retinal vessels
    lesion_seed: int  # patient-level lesion layout (same lesions in all of its scans)


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's anatomy.

    Args:
        rng: Random generator (consumed).

    Returns:
        The patient's anatomy.
    """
    n_layers = len(_LAYERS)
    fovea_x = float(rng.uniform(0.38, 0.62))
    n_vessels = int(rng.integers(3, 8))
    vessels = rng.uniform(0.03, 0.97, size=n_vessels)
    vessels = vessels[np.abs(vessels - fovea_x) > 0.08]
    return Anatomy(
        bruch_y=float(rng.uniform(*_BRUCH_Y)),
        tilt=float(np.clip(rng.normal(0.0, 35.0), -85.0, 85.0)),
        sag=float(rng.uniform(-20.0, 90.0)),
        wobble=tuple(float(v) for v in rng.normal(0.0, 3.0, size=2) * (1.0, 0.5)),
        wobble_phase=tuple(float(v) for v in rng.uniform(0.0, 2 * np.pi, size=2)),
        fovea_x=fovea_x,
        pit_width=float(rng.uniform(0.038, 0.075)),
        pit_depth=float(rng.uniform(0.75, 1.0)),
        thickness=float(rng.uniform(0.8, 1.22)),
        layer_scale=tuple(float(v) for v in rng.uniform(0.85, 1.15, size=n_layers)),
        reflectivity=tuple(float(v) for v in np.exp(rng.normal(0.0, 0.08, size=n_layers))),
        nasal_side=float(rng.choice((-1.0, 1.0))),
        choroid=float(rng.uniform(35.0, 85.0)),
        gain=float(np.exp(rng.normal(0.08, 0.08))),
        vitreous=float(rng.uniform(18.0, 32.0)),
        vessels=tuple(float(v) for v in np.sort(vessels)),
        lesion_seed=int(rng.integers(0, 2**31 - 1)),
    )


@dataclass
class _Scene:
    """Low-resolution geometry and clean intensities of one B-scan before noise."""

    s: np.ndarray  # (wl,) column centres as width fractions
    y: np.ndarray  # (h,) row centres
    hs: float  # height / REF_HEIGHT
    fovea: float
    bruch: np.ndarray  # (wl,)
    thick: np.ndarray  # (n_layers, wl) px
    refl: np.ndarray  # (n_layers, wl)
    choroid: np.ndarray  # (wl,) px
    shadow: np.ndarray  # (wl,) multiplier below Bruch's membrane
    # (x, host layer index, x radius, y radius in px, kind, reflectivity)
    ellipses: list[tuple[float, int, float, float, str, float]]
    base_thick: np.ndarray  # (n_layers,) px, healthy thickness away from the fovea
    field: float = 1.0  # lateral field of view relative to a 512/768-wide scan
    bounds: np.ndarray | None = None  # (n_layers + 2, wl): ILM .. Bruch, choroid bottom
    gain: float = 1.0


@lru_cache(maxsize=32)
def _lerp_index(n_out: int, n_in: int, smooth: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights resampling n_in pixel-centred samples to n_out (edges clamped)."""
    x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0, n_in - 1.0)
    i0 = np.minimum(np.floor(x).astype(np.intp), n_in - 2) if n_in > 1 else np.zeros(n_out, np.intp)
    w = (x - i0).astype(np.float32) if n_in > 1 else np.zeros(n_out, np.float32)
    if smooth:
        w = w * w * (3.0 - 2.0 * w)
    return i0, np.minimum(i0 + 1, n_in - 1), w


def _resize(a: np.ndarray, h: int, w: int, smooth: bool = False) -> np.ndarray:
    """Separable (smoothstep-)linear resize of a 2-D float32 array to (h, w)."""
    if a.shape[0] != h:
        i0, i1, wt = _lerp_index(h, a.shape[0], smooth)
        lo = a[i0]
        a = lo + (a[i1] - lo) * wt[:, None]
    if a.shape[1] != w:
        i0, i1, wt = _lerp_index(w, a.shape[1], smooth)
        lo = a.take(i0, axis=1)
        hi = a.take(i1, axis=1)
        hi -= lo
        hi *= wt
        hi += lo
        a = hi
    return a


def _smooth_noise(rng: np.random.Generator, n: int, width: float) -> np.ndarray:
    """1-D noise in [-1, 1]-ish, smoothed with a Gaussian of ``width`` samples."""
    k = max(1, int(3 * width))
    x = np.arange(-k, k + 1, dtype=np.float32)
    ker = np.exp(-0.5 * (x / max(width, 1e-3)) ** 2)
    ker /= np.sqrt((ker**2).sum())
    return np.convolve(rng.standard_normal(n + 2 * k).astype(np.float32), ker, "valid")


def _clip(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``np.clip`` for small arrays, without its per-call dispatch overhead."""
    return np.minimum(np.maximum(a, lo), hi)


def _dome(s: np.ndarray, c: float, r: float, p: float = 0.6) -> np.ndarray:
    """Dome profile (1 - x^2)^p on [c - r, c + r], zero outside."""
    return _clip(1.0 - ((s - c) / r) ** 2, 0.0, 1.0) ** p


def _base_scene(anatomy: Anatomy, rng: np.random.Generator, wl: int, height: int,
                field: float = 1.0) -> _Scene:
    """Healthy geometry of one B-scan: the patient's anatomy plus scan-to-scan jitter.

    ``field`` > 1 widens the lateral field of view (1536-wide scans cover twice the width):
    ``s`` is then the anatomical position, in units of a standard scan's width.
    """
    hs = height / REF_HEIGHT
    px = (np.arange(wl, dtype=np.float32) + 0.5) / wl
    s = (0.5 + (px - 0.5) * field).astype(np.float32)
    dy, dtilt = rng.normal(0.0, 6.0), rng.normal(0.0, 5.0)
    fovea = anatomy.fovea_x + rng.normal(0.0, 0.015)
    pit = anatomy.pit_depth * rng.uniform(0.65, 1.0)  # B-scan slightly off the foveal centre
    u = px - 0.5
    shape = (anatomy.tilt + dtilt) * u + -anatomy.sag * 4.0 * u**2
    for k, (a, ph) in enumerate(zip(anatomy.wobble, anatomy.wobble_phase, strict=True)):
        shape = shape + a * np.sin(2 * np.pi * (k + 1) * px + ph)
    bruch = anatomy.bruch_y * height + (shape + dy) * hs

    base = _THICK * np.asarray(anatomy.layer_scale, np.float32) * anatomy.thickness
    thick = np.repeat(base[:, None], wl, axis=1)
    d = s - fovea
    pitp = np.exp(-0.5 * (d / anatomy.pit_width) ** 2)
    thick *= np.maximum(1.0 - _FOVEA[:, None] * pit * pitp[None, :], 0.02)
    # NFL thickens towards the optic disc (nasal); GCL peaks on the parafoveal rim.
    nasal = 1.0 / (1.0 + np.exp(-anatomy.nasal_side * d / 0.1))
    thick[_L["NFL"]] *= 0.45 + 1.3 * nasal
    ring = np.exp(-0.5 * ((np.abs(d) - 2.3 * anatomy.pit_width) / (1.4 * anatomy.pit_width)) ** 2)
    thick[_L["GCL"]] *= 1.0 + 0.5 * ring
    thick *= hs
    refl = np.repeat((_REFL * np.asarray(anatomy.reflectivity, np.float32))[:, None], wl, axis=1)
    choroid = np.full(wl, anatomy.choroid * hs, np.float32)
    return _Scene(s, np.arange(height, dtype=np.float32), hs, float(fovea),
                  bruch.astype(np.float32), thick.astype(np.float32), refl, choroid,
                  np.ones(wl, np.float32), [], (base * hs).astype(np.float32), field)


def _add_cnv(sc: _Scene, pat: np.random.Generator, rng: np.random.Generator,
             cfg: PhantomConfig) -> None:
    """Choroidal neovascularisation: irregular hyperreflective mound with subretinal fluid."""
    sev, hs, s = cfg.severity, sc.hs, sc.s
    n = int(pat.integers(cfg.cnv_lesions[0], cfg.cnv_lesions[1] + 1))
    for i in range(n):
        main = i == 0
        offset = pat.normal(0.0, 0.05) if main else pat.choice((-1, 1)) * pat.uniform(0.12, 0.3)
        c = sc.fovea + offset
        r = (pat.uniform(0.07, 0.15) if main else pat.uniform(0.03, 0.06)) * np.sqrt(sev)
        h = (pat.uniform(20.0, 42.0) if main else pat.uniform(10.0, 20.0)) * sev * hs
        fluid = pat.random() < (0.9 if main else 0.5)
        fr, fh, fo = pat.uniform(1.1, 1.7), pat.uniform(6.0, 16.0), pat.uniform(-0.9, 0.9)
        size = rng.uniform(0.75, 1.1)
        c += rng.normal(0.0, 0.01)
        env = _dome(s, c, r * size, 0.7)
        rough = np.clip(1.0 + 0.12 * _smooth_noise(rng, len(s), 1.2 * len(s) / 128)
                        + 0.2 * _smooth_noise(rng, len(s), 4.0 * len(s) / 128), 0.4, 1.6)
        shrm = h * size * env * rough
        sc.thick[_L["SHRM"]] += shrm
        # the retina drapes smoothly over the irregular material; fluid fills the gaps
        drape = h * size * _dome(s, c, 1.4 * r * size, 1.0)
        sc.thick[_L["SRF"]] += 0.5 * np.clip(drape - shrm, 0.0, None)
        refl = rng.uniform(95.0, 160.0) * np.clip(1 + 0.2 * _smooth_noise(rng, len(s), 1.0),
                                                   0.6, 1.4)
        sc.refl[_L["SHRM"]] = np.where(env > 0, refl, sc.refl[_L["SHRM"]])
        sc.refl[_L["RPE"]] *= 1.0 - 0.45 * env  # disrupted RPE under the lesion
        sc.refl[_L["EZ"]] *= 1.0 - 0.6 * _dome(s, c, r * size * 1.3, 0.5)
        sc.thick[_L["ONL"]] += 0.25 * h * size * _dome(s, c, r * 1.6, 1.0)  # overlying oedema
        sc.shadow *= 1.0 - 0.55 * _dome(s, c, r * size, 0.5)  # choroid masked by the lesion
        if fluid:
            sc.thick[_L["SRF"]] += fh * sev * hs * size * _dome(s, c + fo * r, r * fr, 0.5)
        if main and rng.random() < 0.4:  # intraretinal cysts over the lesion
            for _ in range(int(rng.integers(1, 3))):
                x, rx = c + rng.normal(0.0, r * 0.5), rng.uniform(0.01, 0.02)
                sc.ellipses.append((x, _L["ONL"], rx, rng.uniform(4.0, 8.0) * sev * hs, "cyst",
                                    _FLUID))


def _add_dme(sc: _Scene, pat: np.random.Generator, rng: np.random.Generator,
             cfg: PhantomConfig) -> None:
    """Diabetic macular oedema: thickened retina, flattened pit, dark intraretinal cysts."""
    sev, hs, s = cfg.severity, sc.hs, sc.s
    c = sc.fovea + pat.normal(0.0, 0.03)
    w = pat.uniform(0.1, 0.2)
    amount = pat.uniform(0.5, 1.1) * sev * rng.uniform(0.8, 1.1)
    env = np.exp(-0.5 * ((s - c) / w) ** 4)  # flat-topped oedema
    for name in ("INL", "OPL", "ONL"):
        i = _L[name]
        sc.thick[i] += amount * env * sc.base_thick[i]  # smooth dome, not peaked at the pit
    # flatten the pit: restore part of the removed inner layers
    flat = min(1.0, pat.uniform(0.4, 0.8) * sev)
    pitp = np.exp(-0.5 * ((s - sc.fovea) / 0.06) ** 2)
    for name in ("GCL", "IPL", "INL"):
        sc.thick[_L[name]] += flat * pitp * _THICK[_L[name]] * 0.6 * hs
    n = int(pat.integers(cfg.dme_cysts[0], cfg.dme_cysts[1] + 1))
    swell = np.zeros((2, len(s)), np.float32)
    for _ in range(n):
        x = c + pat.normal(0.0, 0.08) + rng.normal(0.0, 0.008)
        onl = pat.random() < 0.6
        rx = pat.uniform(0.015, 0.055) * np.sqrt(sev) * rng.uniform(0.75, 1.1)
        ry = (pat.uniform(7.0, 26.0) if onl else pat.uniform(5.0, 13.0)) * sev * hs
        ry *= rng.uniform(0.7, 1.1)
        if rng.random() < 0.1:
            continue  # this B-scan misses the cyst
        host = _L["ONL" if onl else "INL"]
        # the cyst swells its layer (neighbouring cysts share the swelling)
        bump = 2.1 * ry * np.exp(-0.5 * ((s - x) / max(1.5 * rx, 0.05)) ** 4)
        np.maximum(swell[int(onl)], bump, out=swell[int(onl)])
        sc.ellipses.append((x, host, rx, ry, "cyst", rng.uniform(14.0, 34.0)))
    sc.thick[_L["INL"]] += swell[0]
    sc.thick[_L["ONL"]] += swell[1]
    if pat.random() < 0.6:  # hard exudates / hyperreflective foci in the outer plexiform layer
        for _ in range(int(pat.integers(2, 10))):
            sc.ellipses.append((c + pat.normal(0.0, 0.1), _L["OPL"], 0.012 * np.sqrt(sev),
                                4.0 * hs * np.sqrt(sev), "dot", rng.uniform(150.0, 235.0)))
    if pat.random() < 0.35:  # small serous detachment under the fovea
        sc.thick[_L["SRF"]] += pat.uniform(6.0, 14.0) * sev * hs * _dome(s, sc.fovea, 0.06, 0.5)


def _add_drusen(sc: _Scene, pat: np.random.Generator, rng: np.random.Generator,
                cfg: PhantomConfig) -> None:
    """Drusen: small dome-shaped RPE elevations over medium-reflective deposits."""
    sev, hs, s = cfg.severity, sc.hs, sc.s
    n = int(pat.integers(cfg.drusen_count[0], cfg.drusen_count[1] + 1))
    total = np.zeros_like(s)
    for _ in range(n):
        c = sc.fovea + pat.uniform(-0.28, 0.28) + rng.normal(0.0, 0.006)
        r = pat.uniform(0.02, 0.055) * np.sqrt(sev)
        h = pat.uniform(7.0, 24.0) * sev * hs * rng.uniform(0.75, 1.1)
        total = np.maximum(total, h * _dome(s, c, r, 0.6))
    sc.thick[_L["SUB"]] += total
    sc.refl[_L["SUB"]] = rng.uniform(55.0, 85.0)
    rel = total / max(float(total.max()), 1e-6)
    sc.thick[_L["ONL"]] = np.maximum(sc.thick[_L["ONL"]] - 0.7 * total, 3.0 * hs)
    sc.refl[_L["EZ"]] *= 1.0 - 0.5 * rel


_LESIONS = {"CNV": _add_cnv, "DME": _add_dme, "DRUSEN": _add_drusen}


def _clean_image(sc: _Scene, anatomy: Anatomy, tex: np.random.Generator) -> np.ndarray:
    """Rasterise the layered scene to intensities before gain and noise.

    Returns a transposed (wl, height) array: one row per low-resolution column (A-scan).
    """
    h, wl = sc.y.shape[0], sc.s.shape[0]
    bounds = sc.bounds
    # Exact box-filtered rasterisation: per column the profile is piecewise constant, so its
    # integral F(y) is piecewise linear with knots at the boundaries and pixel i's mean
    # intensity is F(i + 1/2) - F(i - 1/2). Columns are laid end to end with an offset so one
    # np.interp call handles all of them.
    lo, hi = -float(h) - 16.0, 2.0 * h + 16.0
    knots = np.concatenate([np.full((1, wl), lo, np.float32), bounds,
                            np.full((1, wl), hi, np.float32)], axis=0)
    knots = np.maximum.accumulate(knots, axis=0)
    vals = np.concatenate([np.full((1, wl), anatomy.vitreous, np.float32), sc.refl,
                           np.full((2, wl), _CHOROID_REFL, np.float32)], axis=0)
    cum = np.concatenate([np.zeros((1, wl), np.float32),
                          np.cumsum(vals * np.diff(knots, axis=0), axis=0)], axis=0)
    off, edges = _pixel_edges(h, wl)
    f = np.interp(edges, (knots.T + off[:, None]).ravel(), cum.T.ravel()).reshape(wl, h + 1)
    img = np.empty((wl, h), np.float32)
    np.subtract(f[:, 1:], f[:, :-1], out=img, casting="same_kind")
    _draw_ellipses(img, sc)
    _below_bruch(img, sc, anatomy, tex)
    return img


def _draw_ellipses(img: np.ndarray, sc: _Scene) -> None:
    """Paint cysts and dots (soft-edged ellipses centred in their host layer) into ``img``."""
    h, wl = sc.y.shape[0], sc.s.shape[0]
    bounds, y, s = sc.bounds, sc.y, sc.s
    for xa, where, rx, ry, _kind, value in sc.ellipses:
        x = 0.5 + (xa - 0.5) / sc.field  # column position as a width fraction
        j = min(max(round(x * wl - 0.5), 0), wl - 1)
        yc = 0.5 * (bounds[int(where), j] + bounds[int(where) + 1, j])
        r0, r1 = max(int(yc - ry - 2), 0), min(int(yc + ry + 3), h)
        rxp = rx / sc.field
        c0, c1 = max(int((x - rxp) * wl - 2), 0), min(int((x + rxp) * wl + 3), wl)
        if r0 >= r1 or c0 >= c1:
            continue
        t = np.sqrt(((s[c0:c1, None] - xa) / rx) ** 2 + ((y[None, r0:r1] - yc) / ry) ** 2)
        m = _clip((1.0 - t) * (0.4 * ry), 0.0, 1.0)  # ~2.5 px soft edge
        img[c0:c1, r0:r1] += m * (value - img[c0:c1, r0:r1])


def _below_bruch(img: np.ndarray, sc: _Scene, anatomy: Anatomy, tex: np.random.Generator) -> None:
    """Choroid and shadows, vessel shading and the axial PSF, in place.

    Below Bruch's membrane: choroidal vessel lumens, vertical streaks and lesion shadows, a
    softer sclera below the choroid, then exponential attenuation with depth.
    """
    h, wl = sc.y.shape[0], sc.s.shape[0]
    bounds, y, s, hs = sc.bounds, sc.y, sc.s, sc.hs
    r0 = min(max(int(np.floor(sc.bruch.min())), 0), h - 1)  # rows above r0 are all retina
    depth = y[None, r0:] - sc.bruch[:, None]
    bank = _lumen_bank(1024 if h <= 1024 else 1 << (h - 1).bit_length())
    ox, oy = tex.integers(0, bank.shape[0] - wl + 1), tex.integers(0, bank.shape[1] - h + 1)
    lumen = bank[ox:ox + wl, oy + r0:oy + h][::1 if tex.random() < 0.5 else -1]
    lumen = lumen * np.clip((depth - 10.0 * hs) * (1.0 / (25.0 * hs)), 0.0, 1.0)
    sclera = depth - sc.choroid[:, None]
    sclera *= 1.0 / (25.0 * hs)
    sclera += 0.5
    np.clip(sclera, 0.0, 1.0, out=sclera)
    streak = 1.0 + 0.14 * _clip(_smooth_noise(tex, wl, 0.7), -2.0, 2.0)
    below = 1.0 - 0.35 * lumen * (1.0 - 0.6 * sclera)
    below *= 1.0 - 0.45 * sclera
    below *= (streak * sc.shadow)[:, None]
    att = np.maximum(depth, 0.0)
    att *= -1.0 / (_DEPTH_DECAY * hs)
    np.exp(att, out=att)
    sub = img[:, r0:]
    below *= sub
    below -= _DEEP_FLOOR
    below *= att
    below += _DEEP_FLOOR
    below -= sub
    depth += 0.5
    np.clip(depth, 0.0, 1.0, out=depth)
    below *= depth  # blend across the boundary pixel
    sub += below
    vshade = np.ones(wl, np.float32)
    jitter = tex.normal(0.0, 0.01)
    for v in anatomy.vessels:
        vshade *= 1.0 - 0.2 * np.exp(-0.5 * ((s - v - jitter) / 0.004) ** 2)
    gcl = bounds[_L["GCL"]]
    r1 = min(max(int(np.floor(gcl.min())), 0), h - 1)
    m = y[None, r1:] - gcl[:, None]
    m += 0.5
    np.clip(m, 0.0, 1.0, out=m)
    m *= (vshade - 1.0)[:, None]
    m += 1.0
    img[:, r1:] *= m
    # axial point-spread function: [1, 2, 1] / 4 three times (sigma ~1.2 px)
    for _ in range(3):
        t = img[:, :-2] + img[:, 2:]
        t *= 0.25
        img[:, 1:-1] *= 0.5
        img[:, 1:-1] += t


@lru_cache(maxsize=8)
def _pixel_edges(h: int, wl: int) -> tuple[np.ndarray, np.ndarray]:
    """Column offsets and the offset pixel edges used by the rasteriser."""
    off = np.arange(wl, dtype=np.float64) * (4.0 * h)
    edges = (np.arange(h + 1, dtype=np.float64)[None, :] - 0.5 + off[:, None]).ravel()
    return off, edges


_LOCAL = threading.local()


def _workspace(width: int, height: int) -> dict[str, np.ndarray]:
    """Per-thread reusable full-resolution buffers (fresh large arrays page-fault every scan)."""
    cache = _LOCAL.__dict__.setdefault("workspaces", {})
    ws = cache.get((width, height))
    if ws is None:
        if len(cache) > 4:
            cache.clear()
        ws = {k: np.empty((width, height), np.float32) for k in "fgk"}
        ws.update(zv=np.empty((width + 1, height), np.int16), z=np.empty((width, height), np.int16),
                  u8=np.empty((width, height), np.uint8))
        cache[(width, height)] = ws
    return ws


def _noise_t(rng: np.random.Generator, ws: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
    """Integer speckle field, transposed (width, height), with the grain of Spectralis scans.

    Uniform bytes filtered with [1, 2, 1] along depth and [1, 1] across A-scans (lag-1
    correlations 0.67 and 0.5 of the noise itself). Measured on the real scans after a 7x7
    high-pass in tissue, the lateral lag-1 correlation is 0.71 at 512, 0.61 at 768 and 0.50 at
    1536 px wide; version 2 left wide scans laterally white (0.14), version 3 filters every width.
    Returns the zero-mean field and its standard deviation.
    """
    width, height = ws["z"].shape
    var_u = (256**2 - 1) / 12.0
    u = np.frombuffer(rng.bytes((width + 1) * (height + 2)), np.uint8).reshape(width + 1, -1)
    zv, z = ws["zv"], ws["z"]
    np.add(u[:, :-2], u[:, 2:], out=zv, dtype=np.int16)
    np.add(zv, u[:, 1:-1], out=zv, dtype=np.int16)
    np.add(zv, u[:, 1:-1], out=zv, dtype=np.int16)
    np.add(zv[:-1], zv[1:], out=z)
    z -= 1020
    return z, float(np.sqrt(12.0 * var_u))


@lru_cache(maxsize=2)
def _lumen_bank(m: int = 1024) -> np.ndarray:
    """Fixed (lateral, depth) field of choroidal vessel lumens in [0, 1]; scans crop it."""
    rng = np.random.default_rng(20180601)
    n = 1024
    coarse = _resize(rng.random((n // 4, m // 16), dtype=np.float32), n, m, smooth=True)
    fine = _resize(rng.random((n // 2, m // 8), dtype=np.float32), n, m, smooth=True)
    return np.clip((0.92 - coarse - 0.6 * fine) * 3.0, 0.0, 1.0).astype(np.float32)


def _scene(label: str, anatomy: Anatomy, rng: np.random.Generator, width: int, height: int,
           config: PhantomConfig) -> tuple[_Scene, list[np.random.Generator]]:
    """Geometry of one B-scan, consuming ``rng`` exactly as ``render_bscan`` does.

    Returns the scene (with layer boundaries) and the scan, lesion, texture, noise and artefact
    streams.
    """
    if label not in CLASSES:
        raise ValueError(f"unknown label {label!r}; expected one of {CLASSES}")
    seeds = rng.integers(0, 2**63 - 1, size=5)
    streams = [np.random.default_rng(int(x)) for x in seeds]
    field = 2.0 if width > 1024 else 1.0
    sc = _base_scene(anatomy, streams[0], max(16, min(width // _DS, _MAX_COLS)), height, field)
    sc.gain = anatomy.gain * float(np.exp(streams[0].normal(0.0, 0.04)))
    spread = float(streams[0].normal())  # drawn for every width: the stream stays aligned
    if width > 600:
        sc.gain *= float(np.exp(_WIDE_GAIN_SD * spread))
    if label != "NORMAL":
        pat = np.random.default_rng([anatomy.lesion_seed, CLASSES.index(label)])
        _LESIONS[label](sc, pat, streams[1], config)
    top = sc.bruch[None, :] - np.cumsum(sc.thick[::-1], axis=0)[::-1]  # top of each layer
    sc.bounds = np.concatenate([top, sc.bruch[None, :], (sc.bruch + sc.choroid)[None, :]], axis=0)
    return sc, streams


def render_bscan(label: str, anatomy: Anatomy, rng: np.random.Generator, width: int = 512,
                 height: int = 496, config: PhantomConfig = PhantomConfig()) -> np.ndarray:
    """Render one B-scan.

    The healthy scene, textures, noise and artefacts use streams drawn from ``rng`` in a fixed
    order whatever the label, so the same anatomy and seed rendered as NORMAL and as a disease
    differ only where the lesions are.

    Args:
        label: One of ``CLASSES``.
        anatomy: The patient's anatomy (see ``sample_anatomy``).
        rng: The scan's random generator (consumed).
        width: Image width in pixels.
        height: Image height in pixels.
        config: Lesion counts and severity.

    Returns:
        uint8 array of shape (height, width).
    """
    sc, streams = _scene(label, anatomy, rng, width, height, config)
    g_tex, g_noise, g_art = streams[2:]
    wl, gain = sc.s.shape[0], sc.gain
    img = _clean_image(sc, anatomy, g_tex)  # (wl, height)
    floor = _NOISE_FLOOR if width > 600 else _NARROW_NOISE_FLOOR
    sigma = _vitreous_and_sigma(img, sc, anatomy, g_tex, g_art, floor)

    # Full resolution, transposed (width, height): lateral linear upsampling of the clean
    # image, nearest-column upsampling of the noise amplitude, plus speckle.
    ws = _workspace(width, height)
    z, zstd = _noise_t(g_noise, ws)
    f, g, k = ws["f"], ws["g"], ws["k"]
    i0, _, w = _lerp_index(width, wl, False)
    sigma *= gain / zstd
    np.take(sigma, _nearest_index(width, wl), axis=0, out=g)
    g *= z
    img *= gain
    img += 0.5 - (_WIDE_BLACK_LEVEL if width > 600 else -_NARROW_LIFT)
    np.take(img, i0, axis=0, out=f)
    g += f
    np.take(np.diff(img, axis=0), i0, axis=0, out=k)  # i1 == i0 + 1
    k *= w[:, None]
    g += k
    np.clip(g, 0.0, 255.0, out=g)
    u8 = ws["u8"]
    np.copyto(u8, g, casting="unsafe")
    out = _TONE_LUT.take(u8.T)  # the display tone curve; a new (height, width) array
    _registration_artefacts(out, g_art)
    return out


def _vitreous_and_sigma(img: np.ndarray, sc: _Scene, anatomy: Anatomy, g_tex: np.random.Generator,
                        g_art: np.random.Generator, floor: float) -> np.ndarray:
    """Add the vitreous haze and a posterior hyaloid to ``img``; return the noise amplitude.

    The vitreous haze brightens towards the retina and varies smoothly across the scan.
    """
    wl = sc.s.shape[0]
    ilm = sc.bounds[0][:, None]
    vit = np.clip(ilm - sc.y[None, :], 0.0, 1.0)
    ramp = _clip(sc.y[None, :] / np.maximum(ilm, 1.0), 0.0, 1.0) ** 2
    ramp *= 0.25
    ramp += (0.82 + 0.3 * _clip(_smooth_noise(g_tex, wl, wl / 6.0), -1.5, 1.5))[:, None]
    img += vit * (ramp - 1.0) * anatomy.vitreous
    # noise: tissue speckle ~5 % of the signal plus a strong floor noise in the vitreous
    sigma = vit.copy()
    sigma *= 0.27 * anatomy.vitreous
    sigma += floor
    sigma += 0.05 * img
    if g_art.random() < 0.12:  # posterior hyaloid membrane floating in the vitreous
        a, b = g_art.uniform(15, 70) * sc.hs, g_art.uniform(-200, 200) * sc.hs
        c0 = g_art.uniform(-0.2, 0.6)
        yh = sc.bounds[0] - a - b * (sc.s - c0) ** 2 * (sc.s > c0)
        band = 60.0 * np.exp(-0.5 * ((sc.y[None, :] - yh[:, None]) / 1.2) ** 2)
        img += band * (sc.y[None, :] < ilm - 4) * ((sc.s > c0) & (sc.s < c0 + 0.6))[:, None]
    return sigma


@lru_cache(maxsize=8)
def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.intp), n_in - 1)


def _registration_artefacts(out: np.ndarray, rng: np.random.Generator) -> None:
    """White wedges and edge columns left by Spectralis' registration (512-wide scans only)."""
    height, width = out.shape
    u, mid, slope = rng.random(), rng.exponential(28.0), rng.uniform(-35.0, 35.0)
    edge, side, ew = rng.random(), rng.random(), int(rng.integers(1, 3))
    if width > 600:
        return
    mid = min(mid, 140.0) * height / REF_HEIGHT
    line = mid + slope * (np.arange(width, dtype=np.float32) / width - 0.5)
    rows = np.arange(height, dtype=np.float32)[:, None]
    if u < 0.55:
        out[rows < line[None, :]] = 255
    elif u < 0.95:
        out[rows >= height - line[None, :]] = 255
    if edge < 0.6:
        if side < 0.5:
            out[:, :ew] = 255
        else:
            out[:, width - ew:] = 255


# ----------------------------------------------------------------------------------------
# dataset generation


@dataclass(frozen=True)
class _Patient:
    label: str
    pid: int
    split: str
    n_scans: int


def _config_dict(config: PhantomConfig) -> dict:
    return json.loads(json.dumps(asdict(config)))


def _patient_rng(seed: int, pid: int, scan: int) -> np.random.Generator:
    """Random stream of patient ``pid``: scan 0 is the anatomy, scans 1.. the B-scans."""
    return np.random.default_rng(np.random.SeedSequence([seed, pid, scan]))


def _plan(config: PhantomConfig) -> list[_Patient]:
    counts = [config.n_normal_patients] + [config.n_patients_per_disease] * 3
    total = sum(counts)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 1]))
    # 7-digit ids, unique over the whole phantom and unrelated to the class
    ids = 1_000_000 + rng.choice(9_000_000, size=total, replace=False)
    patients, k = [], 0
    lo, hi = config.scans_per_patient
    for ci, (label, n) in enumerate(zip(CLASSES, counts, strict=True)):
        n_test = int(round(n * config.test_fraction))
        srng = np.random.default_rng(np.random.SeedSequence([config.seed, 2, ci]))
        test = set(srng.choice(n, size=n_test, replace=False).tolist()) if n_test else set()
        for i in range(n):
            pid = int(ids[k])
            k += 1
            n_scans = int(_patient_rng(config.seed, pid, 0).integers(lo, hi + 1))
            patients.append(_Patient(label, pid, "test" if i in test else "train", n_scans))
    return patients


def _rel_path(p: _Patient, n: int) -> str:
    return f"{p.split}/{p.label}/{p.label}-{p.pid}-{n}.jpeg"


def _write_atomic(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def scan_image(config: PhantomConfig, label: str, pid: int, n: int) -> np.ndarray:
    """Render scan ``n`` (1-based) of patient ``pid`` exactly as ``generate_phantom`` writes it."""
    prng = _patient_rng(config.seed, pid, 0)
    prng.integers(config.scans_per_patient[0], config.scans_per_patient[1] + 1)
    anatomy = sample_anatomy(prng)
    rng = _patient_rng(config.seed, pid, n)
    width = scan_width(rng, config)
    return render_bscan(label, anatomy, rng, width, REF_HEIGHT, config)


def scan_width(rng: np.random.Generator, config: PhantomConfig) -> int:
    """Width of the next scan: ``wide_fraction`` are wide, a fifth of them 1536 (wide field)."""
    u = rng.random()
    if u >= config.wide_fraction:
        return 512
    return 1536 if u < 0.2 * config.wide_fraction else 768


def _write_patient(args: tuple[str, PhantomConfig, _Patient, bool]) -> int:
    root, config, p, skip_existing = args
    prng = _patient_rng(config.seed, p.pid, 0)
    prng.integers(config.scans_per_patient[0], config.scans_per_patient[1] + 1)
    anatomy = sample_anatomy(prng)
    written = 0
    for n in range(1, p.n_scans + 1):
        path = Path(root) / _rel_path(p, n)
        if skip_existing and path.exists():
            continue
        rng = _patient_rng(config.seed, p.pid, n)
        width = scan_width(rng, config)
        img = render_bscan(p.label, anatomy, rng, width, REF_HEIGHT, config)
        buf = io.BytesIO()
        _pil_image().fromarray(img, "L").save(buf, "JPEG", quality=config.jpeg_quality)
        _write_atomic(path, buf.getvalue())
        written += 1
    return written


def _has_images(root: Path) -> bool:
    return any(any((root / split).rglob("*.jpeg")) for split in ("train", "test")
               if (root / split).is_dir())


def _mismatch(root: Path, stored: dict, config: PhantomConfig) -> ValueError:
    """The error for a folder that holds another phantom (``stored``: its metadata)."""
    want = _config_dict(config)
    old = stored.get("config", {})
    diff = {k: (old.get(k), v) for k, v in want.items() if old.get(k) != v}
    version = stored.get("format_version")
    what = []
    if version != FORMAT_VERSION:
        what.append(f"phantom format {version}, this code writes format {FORMAT_VERSION}")
    if diff:
        what.append(f"configuration stored vs requested: {diff}")
    return ValueError(
        f"{root} holds another phantom ({'; '.join(what)}). Delete the folder to regenerate "
        "it, or restore the stored phantom configuration; two phantoms are never mixed in one "
        "folder.")


def generate_phantom(root: str | os.PathLike, config: PhantomConfig = PhantomConfig(),
                     workers: int = 1) -> dict:
    """Write the phantom dataset under ``root`` (or reuse it when already complete).

    Args:
        root: Dataset folder; ``train/`` and ``test/`` are created inside.
        config: Phantom parameters.
        workers: Worker processes (1: generate in this process). Others are spawned, so a
            calling script needs the usual ``if __name__ == "__main__":`` guard.

    Returns:
        Summary: counts per class and split, patients per class, n_files, seconds, config,
        format_version and ``reused`` (True when an existing complete phantom was kept).

    Raises:
        ValueError: ``root`` holds a phantom with another configuration, or other images.
    """
    root = Path(root)
    # Processes that generate into the same folder (two runs of a fresh project started
    # together) take turns, on a lock file beside the folder: the second finds the first
    # one's complete phantom and reuses it, instead of catching it between its last image
    # and phantom.json, or writing the same files at the same time.
    with interprocess_lock(root.parent / f".{root.name}.lock"):
        return _generate_locked(root, config, workers)


def _generate_locked(root: Path, config: PhantomConfig, workers: int) -> dict:
    meta_path, partial_path = root / META_NAME, root / _PARTIAL_NAME
    want = _config_dict(config)
    plan = _plan(config)
    files = [(p, n) for p in plan for n in range(1, p.n_scans + 1)]
    resume = False
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("config") != want or meta.get("format_version") != FORMAT_VERSION:
            raise _mismatch(root, meta, config)
        if all((root / _rel_path(p, n)).exists() for p, n in files):
            return {**meta["summary"], "reused": True}
        resume = True
    elif partial_path.exists():
        meta = json.loads(partial_path.read_text())
        if meta.get("config") != want or meta.get("format_version") != FORMAT_VERSION:
            raise _mismatch(root, meta, config)
        resume = True  # an interrupted run with this configuration: complete it
    elif root.exists() and _has_images(root):
        raise ValueError(f"{root} already holds images but no {META_NAME}: it is not a phantom "
                         "folder. Choose another folder or delete this one.")

    t0 = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    sweep_stale_temp_files(root)  # left by an interrupted run (never a live run's files)
    for p in plan:
        (root / p.split / p.label).mkdir(parents=True, exist_ok=True)
    _write_atomic(partial_path, json.dumps({"config": want,
                                            "format_version": FORMAT_VERSION}).encode())
    tasks = [(str(root), config, p, resume) for p in plan]
    if workers <= 1:
        for t in tasks:
            _write_patient(t)
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as ex:
            list(ex.map(_write_patient, tasks, chunksize=max(1, len(tasks) // (8 * workers))))
    seconds = time.perf_counter() - t0
    summary = _summary(plan, len(files), seconds, want)
    meta = {"format_version": FORMAT_VERSION, "config": want, "n_files": len(files),
            "summary": summary}
    _write_atomic(meta_path, json.dumps(meta, indent=2).encode())
    partial_path.unlink(missing_ok=True)
    return {**summary, "reused": False}


def _summary(plan: list[_Patient], n_files: int, seconds: float, want: dict) -> dict:
    """Counts per class and split, patients per class, time and configuration."""
    counts = {c: 0 for c in CLASSES}
    by_split = {s: {c: 0 for c in CLASSES} for s in ("train", "test")}
    n_patients = {c: 0 for c in CLASSES}
    for p in plan:
        counts[p.label] += p.n_scans
        by_split[p.split][p.label] += p.n_scans
        n_patients[p.label] += 1
    return {"counts": counts, "counts_by_split": by_split, "patients": n_patients,
            "n_files": n_files, "seconds": round(seconds, 3), "config": want,
            "format_version": FORMAT_VERSION}


def iter_files(root: str | os.PathLike) -> Iterable[Path]:
    """Yield the phantom's JPEG files under ``root`` in a stable order."""
    root = Path(root)
    for split in ("train", "test"):
        for label in CLASSES:
            yield from sorted((root / split / label).glob("*.jpeg"))


def layered_scans(n: int, size: int = 128, seed: int = 0) -> np.ndarray:
    """Layered, speckled, retina-like uint8 images (N, size, size), fast to make.

    Seven curved, tilted bands of random reflectivity with a foveal dip, a dark
    vitreous above and multiplicative speckle: enough structure that a VAE has something
    to learn, in memory at ~10,000 images/s: for benchmarks and tests, where writing and
    decoding JPEG files of ``generate_phantom`` would cost more than what is measured.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size), dtype=np.uint8)
    xs = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    rows = np.arange(size, dtype=np.float32)[None, None, :, None]
    k = 7
    for start in range(0, n, 256):
        m = min(256, n - start)
        top = rng.uniform(0.25, 0.45, (m, 1, 1)) * size
        thick = rng.uniform(0.02, 0.07, (m, k, 1)) * size
        tilt = rng.uniform(-0.1, 0.1, (m, 1, 1)) * size * xs
        bowl = rng.uniform(0.0, 0.12, (m, 1, 1)) * size * xs**2
        centre = rng.uniform(-0.3, 0.3, (m, 1, 1))
        pit = rng.uniform(0.0, 0.08, (m, 1, 1)) * size * np.exp(-(((xs - centre) / 0.15) ** 2))
        depth = np.arange(k)[None, :, None] / k
        bounds = top + np.cumsum(thick, axis=1) + tilt + bowl - pit * (1 - depth)  # (m, k, S)
        layer = np.zeros((m, size, size), dtype=np.intp)  # 0 = vitreous, then bands 1..k
        for j in range(k):
            layer += rows[:, 0] > bounds[:, j, None, :]
        refl = rng.uniform(40, 220, (m, k + 1)).astype(np.float32)
        refl[:, 0] = rng.uniform(5, 20, m)
        layer += (np.arange(m) * (k + 1))[:, None, None]
        img = refl.ravel()[layer]
        # speckle with 2x2-pixel grains: a quarter of the random draws
        grain = rng.standard_normal((m, size // 2, size // 2), dtype=np.float32)
        img *= 1.0 + 0.35 * grain.repeat(2, axis=1).repeat(2, axis=2)
        np.clip(img, 0, 255, out=img)
        out[start : start + m] = img.astype(np.uint8)
    return out


def _pil_image():
    """Pillow, imported when JPEG files are written: ``layered_scans`` and the renderer need
    only numpy (a benchmark box may have torch and numpy alone)."""
    from PIL import Image

    return Image

