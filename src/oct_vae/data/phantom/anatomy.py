"""A synthetic patient's eye: the retina's layers and the anatomy drawn per patient.

Lengths are pixels at ``REF_HEIGHT`` (496) rows; lateral positions are fractions of the width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import oct_vae.data.phantom.fitted as fitted

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
        bruch_y=float(rng.uniform(*fitted.BRUCH_Y)),
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
