"""Full-scale rehearsal: `kedro run --env kermany` end to end on an OCT2017-shaped tree.

    make rehearse                                    # the full tree (84,484 files), both protocols
    .venv/bin/python benchmarks/rehearse.py --tree ~/oct2017-rehearsal
    .venv/bin/python benchmarks/rehearse.py --scale 0.005 --tree /tmp/t   # a few hundred files

1. Builds (once; reused afterwards) a folder with the exact layout, file names, image
   sizes and counts of Kermany's OCT2017 download, filled with phantom scans encoded as
   JPEG (``benchmarks/oct2017_tree.py``), outside the repository.
2. For each protocol (``ingest.protocol=paper``, then ``official``) runs the real entry
   point, ``kedro run --env kermany --params raw_dir=<tree>,...``, in a subprocess, with
   the production configuration; only the training budget is lowered (``--epochs``,
   ``--width``: the paper's 40 epochs at width 64 take about a day on a 2-core CPU).
3. While it runs, samples every 0.5 s the resident memory of the run's process tree (the
   Kedro process and its decoding workers) and the size of the environment's data root;
   reads the stages' start and end from the run's log (``Running node`` / ``Completed
   node``) and the rates the run logs (decoding, training, scoring).
4. Reports per stage (ingest, train, evaluate): wall time, peak RSS, disk written,
   images/s; the MLflow run (status, AUCs) and the registry (version, champion); and the
   projected time of the paper's configuration (40 epochs, width 64) on this CPU and on one
   GPU, from the training rates measured in benchmarks/RESULTS.md.

Writes ``rehearsal-<stamp>.json`` and a Markdown table to ``--out``; exits non-zero if a
run fails, so the test suite can run it on a small tree (tests/test_rehearse.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from benchmarks.oct2017_tree import TreeSpec, build  # noqa: E402

STAGES = {  # the first node of each stage, in run order
    "ingest": "index_scans",
    "train": "train_vae",
    "evaluate": "score_test_set",
}
# Training rates of the paper's model (width 64, batch 64), images/s, benchmarks/RESULTS.md.
PAPER_RATES = {
    "one NVIDIA H200 (bf16 + CUDA graph, compiled, 2026-12-04)": 21_909.0,
    "one NVIDIA H200 (float32 + CUDA graph, compiled, 2026-12-04)": 15_810.0,
    "2-core AMD EPYC CPU, float32 (naive loop, 2026-11-30)": 6.5,
}
PAPER_EPOCHS, PAPER_TRAIN = 40, 25_236
TINY_OVERRIDES = "ingest.test_normals=6,ingest.test_per_disease=3,evaluate.n_bootstrap=20"


@dataclass
class Sampler:
    """Samples the RSS of a process tree and the size of a folder, every ``every`` s."""

    pid: int
    folder: Path
    every: float = 0.5
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, rss, bytes)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        import psutil

        try:
            proc = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            rss = 0
            try:
                for p in [proc, *proc.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        rss += p.memory_info().rss
            except psutil.Error:
                break
            self.samples.append((time.time(), rss, folder_bytes(self.folder)))
            self._stop.wait(self.every)


def folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def stage_windows(log: str, day: str) -> dict[str, tuple[float, float]]:
    """Start and end (epoch seconds) of each stage from the log's node lines."""
    times: list[tuple[float, str]] = []
    for m in re.finditer(r"^(\d\d:\d\d:\d\d) INFO\s+kedro\.\S+: (Running|Completed) node: (\w+)",
                         log, re.M):
        stamp = datetime.strptime(f"{day} {m.group(1)}", "%Y-%m-%d %H:%M:%S")
        times.append((stamp.replace(tzinfo=None).timestamp(), m.group(3)))
    if not times:
        return {}
    firsts = {name: next((t for t, n in times if n == node), None)
              for name, node in STAGES.items()}
    order = [n for n in STAGES if firsts[n] is not None]
    out = {}
    for i, name in enumerate(order):
        end = firsts[order[i + 1]] if i + 1 < len(order) else times[-1][0] + 1
        out[name] = (firsts[name], end)
    return out


def rates(log: str) -> dict[str, float]:
    """The rates the run logs: decoding, training (median of the epochs), scoring."""
    out: dict[str, float] = {}
    decode = re.findall(r"decoded (\d+) scans? in ([\d.]+) s", log)
    if decode:
        n, s = decode[-1]
        out["ingest_images_per_s"] = int(n) / max(float(s), 1e-9)
    epochs = [float(x) for x in re.findall(r"epoch \d+/\d+ .* ([\d.]+) img/s", log)]
    if epochs:
        out["train_images_per_s"] = sorted(epochs)[len(epochs) // 2]
    scored = re.findall(r"scored (\d+) (?:test )?scans? in ([\d.]+) s", log)
    if scored:
        n, s = scored[-1]
        out["evaluate_images_per_s"] = int(n) / max(float(s), 1e-9)
    return out


def run_protocol(tree: Path, protocol: str, args: argparse.Namespace) -> dict:
    """One `kedro run --env kermany` on ``tree`` with ``protocol``; its per-stage figures."""
    params = [f"raw_dir={tree}", f"ingest.protocol={protocol}",
              f"train.epochs={args.epochs}", f"train.width={args.width}"]
    if args.tiny_test_set:
        params.append(TINY_OVERRIDES)
    cmd = [sys.executable, "-m", "kedro", "run", "--env", "kermany", "--params", ",".join(params)]
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    data_root = ROOT / "data"
    day = datetime.now().strftime("%Y-%m-%d")
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(proc.pid, data_root)
    sampler.start()
    log = proc.communicate()[0]
    sampler.stop()
    wall = time.time() - t0
    (args.out / f"rehearsal-{protocol}.log").write_text(log)
    windows = stage_windows(log, day)
    stages = {}
    for name, (start, end) in windows.items():
        inside = [s for s in sampler.samples if start - 1 <= s[0] <= end + 1] or sampler.samples
        stages[name] = {
            "wall_s": round(end - start, 1),
            "peak_rss_mb": round(max(s[1] for s in inside) / 2**20),
            "disk_written_mb": round((inside[-1][2] - inside[0][2]) / 2**20, 1),
        }
    figures = rates(log)
    for name in stages:
        if f"{name}_images_per_s" in figures:
            stages[name]["images_per_s"] = round(figures[f"{name}_images_per_s"], 1)
    peak = max((s[1] for s in sampler.samples), default=0)
    return {"protocol": protocol, "returncode": proc.returncode, "wall_s": round(wall, 1),
            "peak_rss_mb": round(peak / 2**20), "stages": stages,
            "mlflow": mlflow_outcome(log)}


def mlflow_outcome(log: str) -> dict:
    """The run's MLflow status and AUCs, the registered version and the champion, from the
    tracking store of the kermany environment."""
    import mlflow

    uri = f"sqlite:///{ROOT / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, uri)
    match = re.search(r"Mlflow run '[^']*' - '(\w+)' has started", log)
    if not match:
        return {"error": "no MLflow run in the log"}
    run = client.get_run(match.group(1))
    versions = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    out = {
        "run_id": run.info.run_id, "status": run.info.status,
        "experiment": client.get_experiment(run.info.experiment_id).name,
        "auc_reconstruction_all": run.data.metrics.get("auc_reconstruction_all"),
        "registered_versions": [v.version for v in versions],
    }
    try:
        out["champion"] = client.get_model_version_by_alias("oct_vae_scorer", "champion").version
    except mlflow.exceptions.MlflowException:
        out["champion"] = None
    return out


def projection() -> list[str]:
    images = PAPER_EPOCHS * PAPER_TRAIN
    lines = []
    for device, rate in PAPER_RATES.items():
        seconds = images / rate
        text = f"{seconds / 3600:.1f} h" if seconds > 5400 else f"{seconds / 60:.1f} min"
        lines.append(f"- {device}: {rate:,.0f} images/s -> {text} of training steps")
    return lines


def markdown(report: dict) -> str:
    tree = report["tree"]
    lines = [f"# Rehearsal, {report['date']}", "",
             f"Tree: {tree['n_files']:,} files ({tree['bytes'] / 2**30:.2f} GiB; built in "
             f"{tree['seconds']:.0f} s, reused: {tree['reused']}). Training budget: "
             f"{report['epochs']} epoch(s), width {report['width']}.", ""]
    for run in report["runs"]:
        ml = run["mlflow"]
        lines += [f"## `ingest.protocol={run['protocol']}`: exit {run['returncode']}, "
                  f"{run['wall_s']:.0f} s, peak RSS {run['peak_rss_mb']:,} MB", "",
                  "| stage | wall s | peak RSS MB | disk written MB | images/s |",
                  "|---|---:|---:|---:|---:|"]
        for name, st in run["stages"].items():
            lines.append(f"| {name} | {st['wall_s']:.0f} | {st['peak_rss_mb']:,} | "
                         f"{st['disk_written_mb']:,.1f} | {st.get('images_per_s', '')} |")
        lines += ["", f"MLflow: {ml}", ""]
    lines += ["## The paper's configuration (40 epochs x 25,236 images, width 64)", "",
              *projection(), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tree", type=Path, default=Path.home() / "oct2017-rehearsal",
                   help="where the OCT2017-shaped tree is built once and reused")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of OCT2017's counts")
    p.add_argument("--bases", type=int, default=240, help="rendered B-scans per class")
    p.add_argument("--protocols", nargs="+", default=["paper", "official"])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--tiny-test-set", action="store_true",
                   help="test 6 normals + 3 per disease (for trees too small for 200 + 3x100)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "rehearsal")
    args = p.parse_args(argv)
    if ROOT in args.tree.resolve().parents:
        p.error(f"--tree {args.tree} is inside the repository; put it outside")
    args.out.mkdir(parents=True, exist_ok=True)
    tree = build(args.tree, TreeSpec(scale=args.scale, bases=args.bases))
    print(f"tree: {tree['n_files']:,} files, reused={tree['reused']}", flush=True)
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "tree": tree, "epochs": args.epochs, "width": args.width, "runs": []}
    for protocol in args.protocols:
        print(f"kedro run --env kermany, ingest.protocol={protocol} ...", flush=True)
        report["runs"].append(run_protocol(args.tree, protocol, args))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    (args.out / f"rehearsal-{stamp}.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (args.out / f"rehearsal-{stamp}.md").write_text(text)
    print(text)
    return max((r["returncode"] for r in report["runs"]), default=0) != 0


if __name__ == "__main__":
    sys.exit(main())
