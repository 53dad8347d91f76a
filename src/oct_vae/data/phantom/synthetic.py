"""Layered, speckled, retina-like images made in memory, for benchmarks and tests.

Not the phantom: no anatomy, lesions or files, and a random stream of its own.
"""

from __future__ import annotations

import numpy as np


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
