"""Benchmark of scan decoding and of the ingest pipeline at the Kermany dataset's scale.

Run from the repository root:

    .venv/bin/python benchmarks/bench_ingest.py                # decode speed, 2,000 scans
    .venv/bin/python benchmarks/bench_ingest.py --full-scale   # + ingest of an OCT2017-sized tree
    .venv/bin/python benchmarks/bench_ingest.py --smoke --out /tmp/b   # seconds, ~340 files

Part 1 writes ``--n`` Kermany-sized phantom JPEGs (3/4 512x496, 1/4 768x496) and times,
in the same run, a naive decode (full-size decode, ``convert("L")``, Lanczos resize) against
``oct_vae.data.imaging.load_scan`` (DCT-scaled JPEG decode, then Lanczos) on one core, then
``oct_vae.data.imaging.decode_scans`` over 1..all cores. Part 2 (``--full-scale``) builds a
folder shaped exactly like OCT2017 (84,484 files at ``--scale 1``; ``benchmarks/oct2017_tree.py``,
built once under ``--tree`` and reused) and runs the ingest pipeline on it in a child
process with the project's parameters (``conf/base`` + ``--env``, default ``kermany``: the
paper's 200/100/100/100 test set, ``ingest.protocol`` as configured or ``--protocol``),
reporting its wall time and peak RSS. Below ``--scale 1`` the test set shrinks with the tree.
To keep the set-up short, ``--bases`` distinct B-scans are rendered with
``oct_vae.data.phantom.scan_image`` and every file is a randomly shifted, brightness-jittered
copy of one, re-encoded (so each file is unique).

Prints a table and writes JSON to ``--out`` (default ``benchmarks/out/``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.oct2017_tree import TreeSpec, build  # noqa: E402
from oct_vae.data.imaging import decode_scans, load_scan, resolve_workers  # noqa: E402
from oct_vae.data.phantom import PhantomConfig, scan_image  # noqa: E402

OUT_DIR = ROOT / "benchmarks" / "out"


def render_bases(n: int, label: str, workers: int) -> list[np.ndarray]:
    """``n`` distinct phantom B-scans of one class (about a quarter of them 768 wide)."""
    config = PhantomConfig(seed=7)
    tasks = [(config, label, 1_000_000 + i, 1 + i % 3) for i in range(n)]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_render, tasks, chunksize=8))


def _render(task: tuple[PhantomConfig, str, int, int]) -> np.ndarray:
    return scan_image(*task)


def write_variants(task: tuple[list[np.ndarray], list[str], int]) -> int:
    """Write one JPEG per path: a random base, rolled sideways and brightness-jittered."""
    bases, paths, seed = task
    rng = np.random.default_rng(seed)
    for path in paths:
        base = bases[int(rng.integers(len(bases)))]
        shifted = np.roll(base, int(rng.integers(-40, 40)), axis=1).astype(np.int16)
        image = np.clip(shifted + int(rng.integers(-6, 7)), 0, 255).astype(np.uint8)
        # A unique 24-bit tag in the top-left corner keeps every decoded scan distinct.
        tag = int(rng.integers(1 << 24))
        image[:8, :96] = np.repeat([(tag >> b & 1) * 255 for b in range(24)], 4)[None, :]
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=92)
        Path(path).write_bytes(buf.getvalue())
    return len(paths)


def write_scans(paths: list[str], bases: list[np.ndarray], workers: int) -> None:
    for path in paths:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    chunks = [(bases, paths[i : i + 500], i) for i in range(0, len(paths), 500)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(write_variants, chunks))


def naive_decode(path: str, size: int = 128) -> np.ndarray:
    """What one would write first: decode everything at full size, then resize."""
    with Image.open(path) as img:
        return np.asarray(img.convert("L").resize((size, size), Image.Resampling.LANCZOS))


def cpu_seconds() -> float:
    """CPU time of this process plus its reaped children (the decoding pools)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def time_single_core(paths: list[str]) -> dict[str, float]:
    """Naive vs ours in this process; rates per wall second and per CPU second."""
    for path in paths[:50]:  # warm up caches and lazy imports
        naive_decode(path), load_scan(path)
    rates = {}
    outputs = {}
    for name, fn in (("naive", naive_decode), ("ours", load_scan)):
        wall, cpu = time.perf_counter(), cpu_seconds()
        outputs[name] = [fn(p) for p in paths]
        rates[f"{name}_images_per_s"] = len(paths) / (time.perf_counter() - wall)
        rates[f"{name}_images_per_cpu_s"] = len(paths) / (cpu_seconds() - cpu)
    pairs = zip(outputs["naive"], outputs["ours"], strict=True)
    diff = np.mean([np.abs(a.astype(int) - b.astype(int)).mean() for a, b in pairs])
    return {**rates, "mean_abs_diff_naive_vs_ours_gray_levels": float(diff)}


def time_real_sample(repeats: int = 20) -> dict[str, float] | None:
    """load_scan on the 32 real Kermany scans (if present), from memory, per CPU second."""
    sample = Path(__file__).resolve().parents[2] / "shared" / "data" / "kermany-sample"
    data = [p.read_bytes() for p in sorted(sample.glob("*/*.jpeg"))]
    if not data:
        return None
    cpu = cpu_seconds()
    for _ in range(repeats):
        for blob in data:
            load_scan(blob)
    return {
        "n_images": len(data) * repeats,
        "images_per_cpu_s": len(data) * repeats / (cpu_seconds() - cpu),
    }


def time_scaling(paths: list[str], max_workers: int) -> list[dict[str, float]]:
    """decode_scans over 1..max_workers processes: wall rate, and rate per CPU second."""
    rows = []
    for workers in range(1, max_workers + 1):
        wall, cpu = time.perf_counter(), cpu_seconds()
        _, results = decode_scans(paths, workers=workers, progress=False)
        seconds, cpu_used = time.perf_counter() - wall, cpu_seconds() - cpu
        assert not any(r.reason for r in results)
        rate = len(paths) / seconds
        rows.append(
            {
                "workers": workers,
                "images_per_s": rate,
                "per_core": rate / workers,
                "images_per_cpu_s": len(paths) / cpu_used,
                "load_average_1min": os.getloadavg()[0],
            }
        )
    return rows


def ingest_params(env: str, scale: float, protocol: str | None) -> dict:
    """Every ``params:`` input of the ingest pipeline, from the project's configuration
    (``conf/base`` + ``env``), as ``kedro run --env <env>`` would pass them. Below scale 1
    the paper's test set shrinks with the tree (at least 6 normals and 3 per disease)."""
    from kedro.config import OmegaConfigLoader

    from oct_vae.pipelines.ingest import create_pipeline
    from oct_vae.settings import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader(str(ROOT / "conf"), env=env, **CONFIG_LOADER_ARGS)
    parameters = loader["parameters"]
    if protocol:
        parameters["ingest"]["protocol"] = protocol
    if scale < 1:
        ingest = parameters["ingest"]
        ingest["test_normals"] = max(6, round(ingest["test_normals"] * scale))
        ingest["test_per_disease"] = max(3, round(ingest["test_per_disease"] * scale))
    params = {}
    for name in sorted(create_pipeline().inputs()):
        if name.startswith("params:"):
            value = parameters
            for part in name[len("params:"):].split("."):
                value = value[part]
            params[name] = value
    return params


def run_ingest_child(raw_dir: str, out_dir: str, env: str, scale: str, protocol: str) -> None:
    """Run the ingest pipeline with ``ingest_params`` and print timing and memory as JSON
    (the parameters are read here, so that the parent never imports Kedro)."""
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.runner import SequentialRunner
    from kedro_datasets.pandas import CSVDataset

    from oct_vae.datasets import NpyDataset, ScanFolderDataset
    from oct_vae.pipelines.ingest import create_pipeline

    out = Path(out_dir)
    catalog = DataCatalog(
        {
            "raw_scans": ScanFolderDataset(raw_dir),
            "oct_manifest": CSVDataset(filepath=str(out / "oct_manifest.csv")),
            "rejected_files": CSVDataset(filepath=str(out / "rejected_files.csv")),
            "scan_pixels": MemoryDataset(copy_mode="assign"),  # as in conf/base/catalog.yml
            **{
                f"{s}_images": NpyDataset(str(out / f"{s}_images.npy"))
                for s in ("train", "val", "test")
            },
        }
    )
    params = ingest_params(env, float(scale), protocol or None)
    for name, value in params.items():
        catalog[name] = value
    t0 = time.perf_counter()
    SequentialRunner().run(create_pipeline(), catalog)
    seconds = time.perf_counter() - t0
    sizes = {
        s: int(np.load(out / f"{s}_images.npy", mmap_mode="r").shape[0])
        for s in ("train", "val", "test")
    }
    print(
        "RESULT "
        + json.dumps(
            {
                "seconds": seconds,
                "params": params,
                "split_sizes": sizes,
                "peak_rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_rss_largest_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                / 1024,
            }
        )
    )


def full_scale(workdir: Path, tree: Path | None, spec: TreeSpec, workers: int, env: str,
               protocol: str | None) -> dict:
    """Build (or reuse) the OCT2017-shaped tree and ingest it in a child process."""
    root = tree or workdir / "oct2017"
    t0 = time.perf_counter()
    record = build(root, spec, workers)
    setup = time.perf_counter() - t0
    out = workdir / "ingest_out"
    out.mkdir(exist_ok=True)
    child = subprocess.run(
        [sys.executable, __file__, "--ingest-child", str(root / "OCT2017"), str(out), env,
         str(spec.scale), protocol or ""],
        capture_output=True,
        text=True,
    )
    if child.returncode != 0:
        raise RuntimeError(f"the ingest child failed:\n{child.stderr[-4000:]}")
    line = next(x for x in child.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    n_decoded = sum(result["split_sizes"].values())
    return {"n_files": record["n_files"], "tree": str(root), "tree_reused": record["reused"],
            "setup_seconds": setup, **result,
            "images_in_splits": n_decoded}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="scans for the decode benchmark")
    parser.add_argument("--bases", type=int, default=192, help="distinct rendered B-scans")
    parser.add_argument(
        "--full-scale", action="store_true", help="also ingest an OCT2017-shaped tree"
    )
    parser.add_argument("--scale", type=float, default=1.0,
                        help="the tree's size, a fraction of OCT2017's 84,484 files (0.004: ~340)")
    parser.add_argument("--tree", type=Path, default=None,
                        help="where the tree is built once and reused (default: in --workdir); "
                             "~/oct2017-rehearsal reuses make rehearse's tree")
    parser.add_argument("--tree-bases", type=int, default=240,
                        help="rendered B-scans per class of the tree (240: rehearse.py's)")
    parser.add_argument("--env", default="kermany", help="Kedro environment of the parameters")
    parser.add_argument("--protocol", choices=("paper", "official"), default=None,
                        help="ingest.protocol (default: the environment's)")
    parser.add_argument("--smoke", action="store_true",
                        help="a run of seconds: --n 40 --bases 4 --full-scale --scale 0.004 "
                             "--tree-bases 4")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: tmp)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder of the JSON report")
    parser.add_argument("--ingest-child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ingest_child:
        run_ingest_child(*args.ingest_child)
        return {}
    if args.smoke:
        args.n, args.bases, args.full_scale = 40, 4, True
        args.scale, args.tree_bases = 0.004, 4

    cores = resolve_workers(0)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        bases = render_bases(min(args.bases, args.n), "NORMAL", cores)
        paths = [str(workdir / "decode" / "NORMAL" / f"NORMAL-{i}-1.jpeg") for i in range(args.n)]
        write_scans(paths, bases, cores)
        report = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.processor() or platform.machine()}, {cores} cores",
            "n_images": args.n,
            "single_core": time_single_core(paths),
            "scaling": time_scaling(paths, cores),
            "real_sample": time_real_sample(),
        }
        if args.full_scale:
            spec = TreeSpec(scale=args.scale, bases=args.tree_bases)
            report["full_scale"] = full_scale(workdir, args.tree, spec, cores, args.env,
                                              args.protocol)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    single = report["single_core"]
    print(f"\nIngest benchmark, {report['machine']}, {args.n} Kermany-sized phantom JPEGs")
    print("  1 core                      images/s  images/CPU-s")
    for name, label in (
        ("naive", "naive full decode + resize"),
        ("ours", "load_scan (draft + resize)"),
    ):
        wall, cpu = single[f"{name}_images_per_s"], single[f"{name}_images_per_cpu_s"]
        print(f"  {label:26s}  {wall:8.0f}  {cpu:12.0f}")
    diff = single["mean_abs_diff_naive_vs_ours_gray_levels"]
    print(f"  mean |naive - ours|: {diff:.2f} gray levels")
    if report["real_sample"]:
        real = report["real_sample"]["images_per_cpu_s"]
        print(f"  load_scan on the 32 real Kermany scans (in memory): {real:.0f} images/CPU-s")
    print("  workers  images/s  per core  images/CPU-s  efficiency  load avg")
    base = report["scaling"][0]["images_per_s"]
    for row in report["scaling"]:
        eff = row["images_per_s"] / (base * row["workers"])
        print(
            f"  {row['workers']:7d}  {row['images_per_s']:8.0f}  {row['per_core']:8.0f}"
            f"  {row['images_per_cpu_s']:12.0f}  {eff:10.0%}  {row['load_average_1min']:8.1f}"
        )
    if "full_scale" in report:
        fs = report["full_scale"]
        print(
            f"  full scale: {fs['n_files']} files, ingest {fs['seconds']:.1f} s, splits "
            f"{fs['split_sizes']}, peak RSS main {fs['peak_rss_main_mb']:.0f} MB, "
            f"largest worker {fs['peak_rss_largest_worker_mb']:.0f} MB"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    target = args.out / f"ingest-{stamp}.json"
    target.write_text(json.dumps(report, indent=2))
    print(f"  written to {target}")
    return report


if __name__ == "__main__":
    main()
