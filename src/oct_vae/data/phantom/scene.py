"""The healthy geometry of one B-scan (``_Scene``) and the small profiles lesions reuse."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oct_vae.data.phantom.anatomy import _FOVEA, _L, _REFL, _THICK, Anatomy
from oct_vae.data.phantom.config import REF_HEIGHT


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
