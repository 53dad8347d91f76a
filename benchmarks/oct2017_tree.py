"""A folder shaped exactly like Kermany's OCT2017 download, filled with phantom B-scans.

    OCT2017/train/<CLASS>/<CLASS>-<patient>-<n>.jpeg   CNV 37,205  DME 11,348
    OCT2017/test/<CLASS>/<CLASS>-<patient>-<n>.jpeg    DRUSEN 8,616  NORMAL 26,315
                                                       (train), 250 of each class (test)

84,484 JPEG files in all, 512x496, 768x496 or 1536x496 pixels (the phantom's mix of
widths), under the original name pattern with 7-digit patient ids. Patients hold 1 to 12
scans; a few test patients also have training scans, as in OCT2017, so the `official`
protocol's exclusion of their other scans is exercised.

Rendering 84,484 phantom scans one by one would take most of an hour on 2 cores, so each
class gets ``bases`` rendered B-scans (``oct_vae.data.phantom.scan_image``, lesions
included) and every file is one of them, shifted sideways by up to 40 pixels, its
brightness moved by up to 6 grey levels and a +-1 grey-level dither added, then encoded as
JPEG at the phantom's quality (75): every file is distinct, decodes to a distinct image and
has its class's look. The tree is written once and reused: ``oct2017.json`` beside it
records what was built, and a folder holding another build is refused.

Used by ``benchmarks/rehearse.py`` and ``benchmarks/bench_ingest.py``; on its own:

    .venv/bin/python benchmarks/oct2017_tree.py ~/oct2017-rehearsal          # the full tree
    .venv/bin/python benchmarks/oct2017_tree.py /tmp/t --scale 0.004 --bases 4   # ~340 files
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import pickle
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # run as a script without PYTHONPATH=src
    sys.path.append(str(ROOT / "src"))

from oct_vae.data.kermany import CLASSES  # noqa: E402
from oct_vae.data.phantom import PhantomConfig, scan_image  # noqa: E402

# OCT2017 (Kermany, Zhang, Goldbaum 2018, Mendeley Data v3): files per class and folder.
OCT2017_COUNTS = {
    "train": {"CNV": 37_205, "DME": 11_348, "DRUSEN": 8_616, "NORMAL": 26_315},
    "test": {"CNV": 250, "DME": 250, "DRUSEN": 250, "NORMAL": 250},
}
MANIFEST = "oct2017.json"
FORMAT = 1


@dataclass(frozen=True)
class TreeSpec:
    """What to build: ``scale`` times OCT2017's counts (1.0: the full download)."""

    scale: float = 1.0
    bases: int = 240
    seed: int = 2017
    jpeg_quality: int = 75

    def counts(self) -> dict[str, dict[str, int]]:
        return {split: {c: max(2, round(n * self.scale)) for c, n in per.items()}
                for split, per in OCT2017_COUNTS.items()}


def plan(spec: TreeSpec) -> list[tuple[str, str]]:
    """(relative path, class) of every file, patients drawn as in OCT2017."""
    rng = np.random.default_rng([spec.seed, 1])
    used: set[int] = set()
    files: list[tuple[str, str]] = []
    counts = spec.counts()
    for label in CLASSES:
        train_patients = _fill(files, rng, used, label, "train", counts["train"][label])
        # about one test patient in twenty also has training scans (their scan numbers go on)
        shared = rng.choice(len(train_patients), size=max(1, counts["test"][label] // 40),
                            replace=False)
        reuse = [train_patients[i] for i in shared]
        _fill(files, rng, used, label, "test", counts["test"][label], reuse)
    return files


def _fill(files: list, rng: np.random.Generator, used: set[int], label: str, split: str,
          total: int, reuse: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """Add ``total`` files of new (and ``reuse``d) patients; (patient, scans) of each."""
    patients: list[tuple[int, int]] = []
    queue = list(reuse or [])
    written = 0
    while written < total:
        if queue:
            pid, first = queue.pop()
            first += 100  # scan numbers of OCT2017 test files differ from the train ones
        else:
            pid = int(rng.integers(1_000_000, 10_000_000))
            while pid in used:
                pid = int(rng.integers(1_000_000, 10_000_000))
            used.add(pid)
            first = 0
        n = min(int(rng.integers(1, 13)), total - written)
        for k in range(1, n + 1):
            files.append((f"OCT2017/{split}/{label}/{label}-{pid}-{first + k}.jpeg", label))
        patients.append((pid, n))
        written += n
    return patients


def build(root: Path, spec: TreeSpec = TreeSpec(), workers: int = 0) -> dict:
    """Write the tree under ``root`` (or reuse a complete one of the same ``spec``).

    Returns:
        The build record: spec, counts, files, bytes, seconds, ``reused``.

    Raises:
        ValueError: ``root`` holds a tree of another spec, or other files.
    """
    root = Path(root)
    record_path = root / MANIFEST
    want = {"format": FORMAT, **asdict(spec)}
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if {k: record.get(k) for k in want} != want:
            raise ValueError(f"{root} holds another tree ({record_path}); use another folder")
        return {**record, "reused": True}
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} is not empty and has no {MANIFEST}; use an empty folder")
    t0 = time.perf_counter()
    files = plan(spec)
    workers = workers or os.cpu_count() or 1
    cache = root / ".bases"
    cache.mkdir(parents=True, exist_ok=True)
    tasks = []
    for label in CLASSES:
        bases = _render_bases(spec, label, workers)
        (cache / f"{label}.pkl").write_bytes(pickle.dumps(bases))
        mine = [rel for rel, lab in files if lab == label]
        tasks += [(str(cache / f"{label}.pkl"), str(root), mine[i:i + 400], spec,
                   CLASSES.index(label), i) for i in range(0, len(mine), 400)]
    with ProcessPoolExecutor(workers) as pool:
        n_bytes = sum(pool.map(_write_chunk, tasks))
    shutil.rmtree(cache)
    record = {**want, "counts": spec.counts(), "n_files": len(files), "bytes": n_bytes,
              "seconds": round(time.perf_counter() - t0, 1)}
    record_path.write_text(json.dumps(record, indent=1))  # last: marks the tree complete
    return {**record, "reused": False}


def _render_bases(spec: TreeSpec, label: str, workers: int) -> list[np.ndarray]:
    config = PhantomConfig(seed=spec.seed)
    tasks = [(config, label, 1_000_000 + i, 1 + i % 5) for i in range(spec.bases)]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_render, tasks, chunksize=8))


def _render(task: tuple) -> np.ndarray:
    return scan_image(*task)


@functools.lru_cache(maxsize=4)
def _bases(path: str) -> list[np.ndarray]:
    return pickle.loads(Path(path).read_bytes())


def _write_chunk(task: tuple) -> int:
    """Write one chunk of one class's files; returns the bytes written."""
    bases_path, root, chunk, spec, label_index, start = task
    bases = _bases(bases_path)
    rng = np.random.default_rng([spec.seed, 2, label_index, start])
    n_bytes = 0
    for rel in chunk:
        base = bases[int(rng.integers(len(bases)))]
        image = np.roll(base, int(rng.integers(-40, 41)), axis=1).astype(np.int16)
        image += int(rng.integers(-6, 7)) + rng.integers(-1, 2, size=image.shape, dtype=np.int16)
        buf = io.BytesIO()
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
            buf, format="JPEG", quality=spec.jpeg_quality)
        path = Path(root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
        n_bytes += buf.tell()
    return n_bytes


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="folder of the tree (made; reused if complete)")
    p.add_argument("--scale", type=float, default=TreeSpec.scale,
                   help="fraction of OCT2017's counts (1: 84,484 files; 0.004: ~340)")
    p.add_argument("--bases", type=int, default=TreeSpec.bases,
                   help="rendered B-scans per class")
    p.add_argument("--seed", type=int, default=TreeSpec.seed)
    p.add_argument("--workers", type=int, default=0, help="processes (0: all cores)")
    args = p.parse_args(argv)
    spec = TreeSpec(scale=args.scale, bases=args.bases, seed=args.seed)
    try:
        record = build(args.root, spec, args.workers)
    except ValueError as err:
        p.exit(2, f"error: {err}\n")
    state = "reused" if record["reused"] else f"built in {record['seconds']} s"
    print(f"{record['n_files']} files, {record['bytes'] / 2**20:.1f} MiB, {state}: {args.root}")
    return record


if __name__ == "__main__":
    main()
