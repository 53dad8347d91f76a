"""Rendering one B-scan: the layered scene, lesions, choroid, speckle and export artefacts.

The scene is rasterised at ``width // 4`` columns (16 to 128, the model's input width) and
upsampled laterally; noise is added at full resolution. Only numpy is used.
"""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np

import oct_vae.data.phantom.fitted as fitted
from oct_vae.data.kermany import CLASSES
from oct_vae.data.phantom.anatomy import _CHOROID_REFL, _DEEP_FLOOR, _DEPTH_DECAY, _L, Anatomy
from oct_vae.data.phantom.config import REF_HEIGHT, PhantomConfig
from oct_vae.data.phantom.lesions import _LESIONS
from oct_vae.data.phantom.scene import _base_scene, _clip, _Scene, _smooth_noise

_DS, _MAX_COLS = 4, 128  # the scene's columns: width // _DS, at most _MAX_COLS


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
        sc.gain *= float(np.exp(fitted.WIDE_GAIN_SD * spread))
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
    img = _clean_image(sc, anatomy, g_tex)  # (wl, height)
    floor = fitted.NOISE_FLOOR if width > 600 else fitted.NARROW_NOISE_FLOOR
    sigma = _vitreous_and_sigma(img, sc, anatomy, g_tex, g_art, floor)
    u8 = _full_resolution(img, sigma, sc.gain, width, height, g_noise)
    out = fitted.TONE_LUT.take(u8.T)  # the display tone curve; a new (height, width) array
    _registration_artefacts(out, g_art)
    return out


def _full_resolution(img: np.ndarray, sigma: np.ndarray, gain: float, width: int, height: int,
                     g_noise: np.random.Generator) -> np.ndarray:
    """The scan at full resolution, transposed (width, height), in uint8 before the tone curve.

    Lateral linear upsampling of the clean image ``img`` (after gain and black level),
    nearest-column upsampling of the noise amplitude ``sigma``, plus speckle. ``img`` and
    ``sigma`` are scaled in place; the result is a per-thread buffer that the next scan of
    the same size overwrites.
    """
    wl = img.shape[0]
    ws = _workspace(width, height)
    z, zstd = _noise_t(g_noise, ws)
    f, g, k = ws["f"], ws["g"], ws["k"]
    i0, _, w = _lerp_index(width, wl, False)
    sigma *= gain / zstd
    np.take(sigma, _nearest_index(width, wl), axis=0, out=g)
    g *= z
    img *= gain
    img += 0.5 - (fitted.WIDE_BLACK_LEVEL if width > 600 else -fitted.NARROW_LIFT)
    np.take(img, i0, axis=0, out=f)
    g += f
    np.take(np.diff(img, axis=0), i0, axis=0, out=k)  # i1 == i0 + 1
    k *= w[:, None]
    g += k
    np.clip(g, 0.0, 255.0, out=g)
    u8 = ws["u8"]
    np.copyto(u8, g, casting="unsafe")
    return u8


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


@lru_cache(maxsize=8)
def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
    """Index of the nearest of n_in pixel-centred samples for each of n_out."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.intp), n_in - 1)


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


def _clean_image(sc: _Scene, anatomy: Anatomy, tex: np.random.Generator) -> np.ndarray:
    """Rasterise the layered scene to intensities before gain and noise.

    Layers, cysts and dots, the choroid below Bruch's membrane, vessel shadows and the axial
    point-spread function, in that order.

    Returns:
        A transposed (wl, height) array: one row per low-resolution column (A-scan).
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
    _below_bruch(img, sc, tex)
    _vessel_shadows(img, sc, anatomy, tex)
    _axial_psf(img)
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


def _below_bruch(img: np.ndarray, sc: _Scene, tex: np.random.Generator) -> None:
    """The choroid and sclera below Bruch's membrane, attenuated with depth, in place.

    The signal there is textured (``_choroid_texture``), decays exponentially with depth
    towards a deep floor, and is blended across the boundary pixel.
    """
    h, hs = sc.y.shape[0], sc.hs
    r0 = min(max(int(np.floor(sc.bruch.min())), 0), h - 1)  # rows above r0 are all retina
    depth = sc.y[None, r0:] - sc.bruch[:, None]
    below = _choroid_texture(sc, tex, depth, r0)
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


def _choroid_texture(sc: _Scene, tex: np.random.Generator, depth: np.ndarray,
                     r0: int) -> np.ndarray:
    """Multiplier of the signal in rows ``r0:`` (``depth``: px below Bruch's membrane).

    Choroidal vessel lumens (a crop of the fixed lumen bank), vertical streaks and lesion
    shadows, and a softer sclera below the choroid.
    """
    h, wl, hs = sc.y.shape[0], sc.s.shape[0], sc.hs
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
    return below


def _vessel_shadows(img: np.ndarray, sc: _Scene, anatomy: Anatomy,
                    tex: np.random.Generator) -> None:
    """Shade the columns under the large retinal vessels, from the ganglion cell layer down."""
    h, wl, s = sc.y.shape[0], sc.s.shape[0], sc.s
    vshade = np.ones(wl, np.float32)
    jitter = tex.normal(0.0, 0.01)
    for v in anatomy.vessels:
        vshade *= 1.0 - 0.2 * np.exp(-0.5 * ((s - v - jitter) / 0.004) ** 2)
    gcl = sc.bounds[_L["GCL"]]
    r1 = min(max(int(np.floor(gcl.min())), 0), h - 1)
    m = sc.y[None, r1:] - gcl[:, None]
    m += 0.5
    np.clip(m, 0.0, 1.0, out=m)
    m *= (vshade - 1.0)[:, None]
    m += 1.0
    img[:, r1:] *= m


def _axial_psf(img: np.ndarray) -> None:
    """Blur each A-scan in place: [1, 2, 1] / 4 three times (sigma ~1.2 px)."""
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


@lru_cache(maxsize=2)
def _lumen_bank(m: int = 1024) -> np.ndarray:
    """Fixed (lateral, depth) field of choroidal vessel lumens in [0, 1]; scans crop it."""
    rng = np.random.default_rng(20180601)
    n = 1024
    coarse = _resize(rng.random((n // 4, m // 16), dtype=np.float32), n, m, smooth=True)
    fine = _resize(rng.random((n // 2, m // 8), dtype=np.float32), n, m, smooth=True)
    return np.clip((0.92 - coarse - 0.6 * fine) * 3.0, 0.0, 1.0).astype(np.float32)


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
