"""The diseases as local lesions drawn into a healthy scene: CNV, DME and drusen.

Each lesion takes two streams: ``pat``, the patient's lesion layout (the same in all of that
patient's scans), and ``rng``, the scan's jitter of it. Sizes and contrasts scale with
``PhantomConfig.severity``.
"""

from __future__ import annotations

import numpy as np

from oct_vae.data.phantom.anatomy import _FLUID, _L, _THICK
from oct_vae.data.phantom.config import PhantomConfig
from oct_vae.data.phantom.scene import _dome, _Scene, _smooth_noise


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
