"""Writing a phantom dataset: the patient plan, per-scan random streams, files and ``phantom.json``.

Every scan has its own random stream derived from ``(seed, patient id, scan index)``, so the
written bytes do not depend on generation order or on the number of worker processes.
Processes that generate into one folder take turns on a lock file beside it.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from oct_vae.data.kermany import CLASSES
from oct_vae.data.phantom.anatomy import Anatomy, sample_anatomy
from oct_vae.data.phantom.config import FORMAT_VERSION, REF_HEIGHT, PhantomConfig
from oct_vae.data.phantom.render import render_bscan
from oct_vae.framework.fileio import atomic_write, interprocess_lock, sweep_stale_temp_files

META_NAME = "phantom.json"
_PARTIAL_NAME = ".phantom-partial.json"


@dataclass(frozen=True)
class _Patient:
    """One patient of the plan: class, id, split (``train`` or ``test``) and number of scans."""

    label: str
    pid: int
    split: str
    n_scans: int


def _config_dict(config: PhantomConfig) -> dict:
    """``config`` as stored in ``phantom.json`` (tuples become lists)."""
    return json.loads(json.dumps(asdict(config)))


def _patient_rng(seed: int, pid: int, scan: int) -> np.random.Generator:
    """Random stream of patient ``pid``: scan 0 is the anatomy, scans 1.. the B-scans."""
    return np.random.default_rng(np.random.SeedSequence([seed, pid, scan]))


def _plan(config: PhantomConfig) -> list[_Patient]:
    """Every patient, class by class: a unique 7-digit id, the split and the number of scans."""
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
    """Where scan ``n`` of ``p`` is written, relative to the phantom's root."""
    return f"{p.split}/{p.label}/{p.label}-{p.pid}-{n}.jpeg"


def _write_atomic(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _patient_anatomy(config: PhantomConfig, pid: int) -> Anatomy:
    """Patient ``pid``'s anatomy, drawn from its stream 0 after its number of scans."""
    prng = _patient_rng(config.seed, pid, 0)
    prng.integers(config.scans_per_patient[0], config.scans_per_patient[1] + 1)
    return sample_anatomy(prng)


def _render_scan(config: PhantomConfig, label: str, anatomy: Anatomy, pid: int,
                 n: int) -> np.ndarray:
    """Scan ``n`` (1-based) of patient ``pid``: its width and pixels from its stream ``n``."""
    rng = _patient_rng(config.seed, pid, n)
    width = scan_width(rng, config)
    return render_bscan(label, anatomy, rng, width, REF_HEIGHT, config)


def scan_image(config: PhantomConfig, label: str, pid: int, n: int) -> np.ndarray:
    """Render scan ``n`` (1-based) of patient ``pid`` exactly as ``generate_phantom`` writes it."""
    return _render_scan(config, label, _patient_anatomy(config, pid), pid, n)


def scan_width(rng: np.random.Generator, config: PhantomConfig) -> int:
    """Width of the next scan: ``wide_fraction`` are wide, a fifth of them 1536 (wide field)."""
    u = rng.random()
    if u >= config.wide_fraction:
        return 512
    return 1536 if u < 0.2 * config.wide_fraction else 768


def _write_patient(args: tuple[str, PhantomConfig, _Patient, bool]) -> int:
    """Write one patient's scans as JPEG files (only the missing ones when ``skip_existing``).

    Returns:
        The number of files written.
    """
    root, config, p, skip_existing = args
    anatomy = _patient_anatomy(config, p.pid)
    written = 0
    for n in range(1, p.n_scans + 1):
        path = Path(root) / _rel_path(p, n)
        if skip_existing and path.exists():
            continue
        img = _render_scan(config, p.label, anatomy, p.pid, n)
        buf = io.BytesIO()
        _pil_image().fromarray(img, "L").save(buf, "JPEG", quality=config.jpeg_quality)
        _write_atomic(path, buf.getvalue())
        written += 1
    return written


def _has_images(root: Path) -> bool:
    """Whether ``root`` holds JPEG files under ``train/`` or ``test/``."""
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
    """``generate_phantom`` once the folder's lock is held."""
    want = _config_dict(config)
    plan = _plan(config)
    files = [(p, n) for p in plan for n in range(1, p.n_scans + 1)]
    stored, resume = _stored_phantom(root, config, files)
    if stored is not None:
        return {**stored["summary"], "reused": True}
    t0 = time.perf_counter()
    _write_files(root, config, plan, resume, workers)
    seconds = time.perf_counter() - t0
    summary = _summary(plan, len(files), seconds, want)
    meta = {"format_version": FORMAT_VERSION, "config": want, "n_files": len(files),
            "summary": summary}
    _write_atomic(root / META_NAME, json.dumps(meta, indent=2).encode())
    (root / _PARTIAL_NAME).unlink(missing_ok=True)
    return {**summary, "reused": False}


def _stored_phantom(root: Path, config: PhantomConfig,
                    files: list[tuple[_Patient, int]]) -> tuple[dict | None, bool]:
    """What ``root`` already holds for ``config``.

    Returns:
        The metadata of a complete phantom (None otherwise), and whether an earlier run of
        this configuration is to be completed.

    Raises:
        ValueError: ``root`` holds another phantom, or images but no ``phantom.json``.
    """
    meta_path, partial_path = root / META_NAME, root / _PARTIAL_NAME
    want = _config_dict(config)
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("config") != want or meta.get("format_version") != FORMAT_VERSION:
            raise _mismatch(root, meta, config)
        if all((root / _rel_path(p, n)).exists() for p, n in files):
            return meta, False
        return None, True  # a file is missing: write it
    if partial_path.exists():
        meta = json.loads(partial_path.read_text())
        if meta.get("config") != want or meta.get("format_version") != FORMAT_VERSION:
            raise _mismatch(root, meta, config)
        return None, True  # an interrupted run with this configuration: complete it
    if root.exists() and _has_images(root):
        raise ValueError(f"{root} already holds images but no {META_NAME}: it is not a phantom "
                         "folder. Choose another folder or delete this one.")
    return None, False


def _write_files(root: Path, config: PhantomConfig, plan: list[_Patient], resume: bool,
                 workers: int) -> None:
    """Mark ``root`` as a partial phantom of ``config`` and write every patient's scans.

    ``resume``: keep the files already there (an earlier run of the same configuration).
    """
    root.mkdir(parents=True, exist_ok=True)
    sweep_stale_temp_files(root)  # left by an interrupted run (never a live run's files)
    for p in plan:
        (root / p.split / p.label).mkdir(parents=True, exist_ok=True)
    _write_atomic(root / _PARTIAL_NAME, json.dumps({"config": _config_dict(config),
                                                    "format_version": FORMAT_VERSION}).encode())
    tasks = [(str(root), config, p, resume) for p in plan]
    if workers <= 1:
        for t in tasks:
            _write_patient(t)
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as ex:
            list(ex.map(_write_patient, tasks, chunksize=max(1, len(tasks) // (8 * workers))))


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


def _pil_image():
    """Pillow, imported when JPEG files are written: the renderer and ``layered_scans`` need
    only numpy (a benchmark box may have torch and numpy alone)."""
    from PIL import Image

    return Image
