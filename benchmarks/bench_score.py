"""Benchmark of the ``score`` pipeline's node on a folder of 10,000 phantom scans.

Run from the repository root (a few minutes on 2 cores; the phantom is generated once
and cached under ``benchmarks/out/score/``, which git ignores):

    .venv/bin/python benchmarks/bench_score.py
    .venv/bin/python benchmarks/bench_score.py --quick      # small folders, a short run
    .venv/bin/python benchmarks/bench_score.py --smoke --out /tmp/s   # ~150 scans, seconds

The model is an untrained VAE of the base configuration (``train.width``, ``latent_dim``
of ``conf/base/parameters_train.yml``), calibrated on 256 phantom normals like the train
pipeline's ``vae_model`` and scored with ``conf/base/parameters_evaluate.yml``'s settings
(10 posterior samples): the speed does not depend on the weights.

Each measurement runs in a child process of its own, which runs the node function
``score_scans`` (decoding, scoring, heatmap drawing) on the first ``n`` files of the folder
and then saves its heatmaps through a ``PartitionedDataset`` of
``AtomicMatplotlibDataset``, as the catalog's ``score_heatmaps`` does. It reports scans/s
(overall and per core), the child's peak RSS (``getrusage``), and the peak over the run of
the summed RSS and PSS of the child and its worker processes (sampled every 0.2 s with
psutil; the RSS sum counts pages shared by the forked workers once per process, PSS
shares them out). The old implementation (``score_scans`` and ``score_decoded`` of OLD_COMMIT,
loaded from git: whole folder decoded into memory, one scan scored at a time, a figure
built per heatmap) is measured on a smaller folder in the same run.

Prints a table and writes JSON to ``--out`` (default ``benchmarks/out/score/``, where the
phantom and the model are cached too).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
import types
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "benchmarks" / "out" / "score"
PHANTOM_DIR = OUT_DIR / "phantom"
MODEL_PATH = OUT_DIR / "model.pt"
# The last commit before the streaming score node: its node is "old" in the comparison.
OLD_COMMIT = "36293d5"
# About 10,000 scans: 2,000 patients of 2-8 scans.
PHANTOM = {"n_normal_patients": 1400, "n_patients_per_disease": 200, "seed": 11}
# --smoke: about 150 scans.
SMOKE_PHANTOM = {"n_normal_patients": 30, "n_patients_per_disease": 3, "seed": 11}


def use_out(out: Path) -> None:
    """Put the phantom, the model and the JSON results under ``out``."""
    global OUT_DIR, PHANTOM_DIR, MODEL_PATH
    OUT_DIR, PHANTOM_DIR, MODEL_PATH = out, out / "phantom", out / "model.pt"


def cpu_seconds() -> float:
    """User + system time of this process and its finished children (the worker pools)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        names = [ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln]
        return names[0] if names else platform.processor()
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()


# ------------------------------------------------------------------ set-up (parent)


def make_phantom(workers: int, config: dict) -> dict:
    from oct_vae.data.phantom import PhantomConfig, generate_phantom

    start = time.perf_counter()
    summary = generate_phantom(PHANTOM_DIR, PhantomConfig(**config), workers=workers)
    return {
        "n_files": summary["n_files"],
        "reused": summary["reused"],
        "seconds": time.perf_counter() - start,
    }


def make_model() -> None:
    """An untrained base-width VAE, calibrated on phantom normals, saved to MODEL_PATH."""
    import torch
    import yaml

    from oct_vae.data.imaging import decode_scans
    from oct_vae.data.lineage import data_fingerprint
    from oct_vae.pipelines.train.nodes import calibrate_model
    from oct_vae.training.trainer import TrainConfig
    from oct_vae.vae.checkpoint import make_checkpoint
    from oct_vae.vae.model import VAE, VAEConfig

    train = yaml.safe_load((ROOT / "conf/base/parameters_train.yml").read_text())["train"]
    normals = sorted(str(p) for p in (PHANTOM_DIR / "train" / "NORMAL").rglob("*.jpeg"))[:256]
    pixels, _ = decode_scans(normals, 128, progress=False)
    cut = len(pixels) * 3 // 4  # 192 of 256 (fewer in a --smoke phantom)
    torch.manual_seed(0)
    config = VAEConfig(image_size=128, width=train["width"], latent_dim=train["latent_dim"])
    meta = {"data_fingerprint": data_fingerprint(pixels[:cut], pixels[cut:]), "image_size": 128}
    ckpt = make_checkpoint(VAE(config), config, TrainConfig(seed=0, device="cpu"), meta)
    calibrated = calibrate_model(
        ckpt,
        pixels[:cut],
        pixels[cut:],
        train["scoring"],
        0,
        "cpu",
    )
    torch.save(calibrated, MODEL_PATH)


# ------------------------------------------------------------------ one measurement (child)


class MemorySampler(threading.Thread):
    """Peak summed RSS and PSS of this process and its children, sampled."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss = 0
        self._done = threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._done.is_set():
            rss = pss = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    info = proc.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()


# OLD_COMMIT's imports, as the package is laid out now (the same functions, moved).
OLD_IMPORTS = {
    "from oct_vae import imaging, lineage, plots, serving":
        "from oct_vae import serving\nfrom oct_vae.data import imaging, lineage\n"
        "from oct_vae.evaluation import plots",
    "from oct_vae.datasets.scan_folder_dataset import list_files":
        "from oct_vae.datasets.scan_folder_dataset import list_files as _list_files\n"
        "list_files = lambda root: _list_files(root, 'scans')  # noqa: E731",
    "from oct_vae.detector import": "from oct_vae.vae.detector import",
    "from oct_vae.scores import": "from oct_vae.vae.scores import",
    "from oct_vae.imaging import": "from oct_vae.data.imaging import",
    "from oct_vae.vae.scores import PAPER_SCORES": "from oct_vae.vae.config import PAPER_SCORES",
    "from oct_vae.training import resolve_device":
        "from oct_vae.training.device import resolve_device",
}


def old_node():
    """OLD_COMMIT's score_scans, with its serving.score_decoded (one scan at a time)."""

    def load(path: str, name: str) -> types.ModuleType:
        source = subprocess.run(
            ["git", "show", f"{OLD_COMMIT}:{path}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for old, new in OLD_IMPORTS.items():
            source = source.replace(old, new)
        module = types.ModuleType(name)
        module.__dict__["__name__"] = name
        sys.modules[name] = module
        exec(compile(source, path, "exec"), module.__dict__)  # noqa: S102 - the project's own code
        return module

    old_serving = load("src/oct_vae/serving.py", "old_serving")
    old_nodes = load("src/oct_vae/pipelines/score/nodes.py", "old_score_nodes")
    old_nodes.serving = old_serving
    return old_nodes.score_scans


def child(spec: dict) -> dict:
    import torch
    from kedro_datasets.partitions import PartitionedDataset

    from oct_vae.pipelines.score.nodes import find_scans, score_scans

    use_out(Path(spec.pop("out")))
    sampler = MemorySampler()
    sampler.start()
    vae_model = torch.load(MODEL_PATH, weights_only=False)
    files = find_scans(str(PHANTOM_DIR)).iloc[: spec["n"]].reset_index(drop=True)
    args = (vae_model, files, 40_000_000, spec["workers"], "reconstruction", 0.95, "cpu")
    fn = old_node() if spec["impl"] == "old" else score_scans
    start, cpu_start = time.perf_counter(), cpu_seconds()
    if spec["impl"] == "old":
        table, heatmaps = fn(*args)
        if not spec["heatmaps"]:
            heatmaps = {}  # the old node always drew them; here only their save is skipped
    else:
        table, heatmaps = fn(*args, heatmaps=spec["heatmaps"])
    node_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="bench_score_") as out:
        dataset = PartitionedDataset(
            path=out,
            dataset={"type": "oct_vae.datasets.AtomicMatplotlibDataset", "save_args": {"dpi": 110}},
        )
        dataset.save(heatmaps)
        n_png = sum(1 for _ in Path(out).rglob("*.png"))
    total_s = time.perf_counter() - start
    cpu_s = cpu_seconds() - cpu_start
    sampler.stop()
    scored = int(table["error"].isna().sum())
    return {
        **spec,
        "files": len(files),
        "scored": scored,
        "heatmaps_written": n_png,
        "node_seconds": round(node_s, 2),
        "seconds": round(total_s, 2),
        "scans_per_s": round(len(files) / total_s, 1),
        "scans_per_s_per_core": round(len(files) / total_s / cores(), 1),
        "cpu_seconds": round(cpu_s, 1),
        "scans_per_cpu_s": round(len(files) / cpu_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_children_rss_mb": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        ),
        "peak_tree_rss_mb": round(sampler.peak_rss / 2**20),
        "peak_tree_pss_mb": round(sampler.peak_pss / 2**20),
        "columns": len(table.columns),
    }


def measure(spec: dict) -> dict:
    """Run ``child(spec)`` in a fresh process (its own peak RSS); returns its result."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps({**spec, "out": str(OUT_DIR)})],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{spec} failed:\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    name = f"{result['impl']}_{'heatmaps' if result['heatmaps'] else 'no_heatmaps'}_{result['n']}"
    (OUT_DIR / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(
        f"{result['impl']:>3} heatmaps={str(result['heatmaps']):5} n={result['n']:>6}: "
        f"{result['scans_per_s']:7.1f} scans/s ({result['scans_per_s_per_core']:.1f}/core), "
        f"{result['seconds']:6.1f} s, {result['scans_per_cpu_s']:.1f}/CPU-s; "
        f"peak RSS main {result['peak_rss_mb']} MB, "
        f"largest worker {result['peak_children_rss_mb']} MB, tree RSS "
        f"{result['peak_tree_rss_mb']} MB, tree PSS {result['peak_tree_pss_mb']} MB",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="small folders (a short run)")
    parser.add_argument("--smoke", action="store_true",
                        help="a ~150-scan phantom, two measurements (new and old): seconds")
    parser.add_argument("--workers", type=int, default=0, help="ingest.workers (0: all cores)")
    parser.add_argument("--out", type=Path, default=OUT_DIR,
                        help="folder of the phantom, the model and the results")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}

    use_out(args.out)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    phantom = make_phantom(cores(), SMOKE_PHANTOM if args.smoke else PHANTOM)
    print(
        f"phantom: {phantom['n_files']} files ({'reused' if phantom['reused'] else 'made'}, "
        f"{phantom['seconds']:.0f} s)",
        flush=True,
    )
    if not MODEL_PATH.exists():
        make_model()
    n_all = phantom["n_files"]
    if args.smoke:
        plan = [("new", True, 6), ("old", False, 2)]
    elif args.quick:
        plan = [
            ("new", False, 200),
            ("new", False, 600),
            ("new", True, 100),
            ("new", True, 300),
            ("old", False, 50),
            ("old", True, 50),
        ]
    else:
        plan = [
            ("new", False, 2000),
            ("new", False, n_all),
            ("new", True, 400),
            ("new", True, 1600),
            ("old", False, 200),
            ("old", True, 100),
        ]
    load_before = os.getloadavg()
    results = [
        measure({"impl": impl, "heatmaps": hm, "n": n, "workers": args.workers})
        for impl, hm, n in plan
    ]
    summary = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "cores": cores(),
        "load_average_1min": [round(load_before[0], 1), round(os.getloadavg()[0], 1)],
        "phantom": {**(SMOKE_PHANTOM if args.smoke else PHANTOM), "n_files": n_all},
        "model": "untrained VAE of conf/base (width 8, latent 300), calibrated on 256 phantom "
        "normals; 10 posterior samples (conf/base evaluate)",
        "results": results,
    }
    (OUT_DIR / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"{summary['machine']}, {summary['cores']} cores, {summary['date']}")
    return summary


if __name__ == "__main__":
    main()
