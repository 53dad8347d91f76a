"""Full-scale rehearsal: `kedro run --env kermany` end to end on an OCT2017-shaped tree.

    make rehearse                                    # the full tree (84,484 files), both protocols
    .venv/bin/python benchmarks/rehearse.py --tree ~/oct2017-rehearsal
    .venv/bin/python benchmarks/rehearse.py --scale 0.005 --tree /tmp/t   # a few hundred files

1. Builds (once; reused afterwards) a folder with the exact layout, file names, image
   sizes and counts of Kermany's OCT2017 download, filled with phantom scans encoded as
   JPEG (``benchmarks/oct2017_tree.py``), outside the repository.
2. Copies the project's configuration into a scratch folder (``--workdir``, outside the
   repository), so that the rehearsal never touches the user's data or MLflow stores.
3. For each protocol (``ingest.protocol=paper``, then ``official``) runs the real entry
   point, ``kedro run --env kermany --params raw_dir=<tree>,...``, in a subprocess, with
   the production configuration; only the training budget is lowered (``--epochs``,
   ``--width``: the paper's 40 epochs at width 64 take most of a day on a 2-core CPU).
4. While it runs, samples every 0.5 s the memory of the run's process tree (the Kedro
   process and its decoding workers; PSS, and the sum of RSS) and the size of the
   project's data folder (data/kermany/); reads each node's start and end from the run's
   log (``Running node`` / ``Completed node``) and every stage's rate from its last
   progress line.
5. Reports per stage (ingest, train, calibrate, score, report, finish): wall time, peak
   RSS, disk written; the rates; the MLflow run (status, AUC) and the registry (version,
   champion); and the projected time of the paper's configuration (40 epochs, width 64)
   on this CPU and on one GPU, from the training rates measured in benchmarks/RESULTS.md.

Writes ``rehearsal-<stamp>.json`` and a Markdown table to ``--out``; exits non-zero if a
run fails, so the test suite can run it on a small tree (tests/test_rehearse.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
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

# Each node of the default pipeline, by the stage the table reports it under.
STAGES = {
    "ingest": ("index_scans", "decode_scans", "split_scans", "gather_split_images",
               "collect_rejects"),
    "train": ("train_vae", "export_scorer_checkpoint"),
    "calibrate": ("calibrate_model",),
    "score": ("score_test_set", "score_real_scans"),
    "report": ("build_auc_table", "build_statistical_report", "collect_report_metrics",
               "plot_reconstructions", "plot_roc_curves", "plot_score_distributions"),
}
# Training rates of the paper's model (width 64, batch 64), images/s, from
# benchmarks/RESULTS.md; the production defaults of each device.
PAPER_RATES = {
    "one NVIDIA H200, production defaults (bf16, CUDA graph), kedro run, 2026-12-04": 14_650.0,
    "2-core AMD EPYC, float32, 2 threads, quiet machine, 2026-11-29": 17.7,
    "2-core AMD EPYC, float32, 1 thread, loaded machine, 2026-11-29": 9.5,
}
PAPER_EPOCHS, PAPER_TRAIN = 40, 25_236
TINY_OVERRIDES = "ingest.test_normals=6,ingest.test_per_disease=3,evaluate.n_bootstrap=20"
SENTINEL = ".oct-vae-rehearsal"
# Where `kedro run --env kermany` writes (data_root in conf/kermany/globals.yml).
DATA_ROOT = Path("data") / "kermany"


@dataclass
class Sampler:
    """Samples the RSS of a process tree and the size of a folder, every ``every`` s."""

    pid: int
    folder: Path
    every: float = 0.5
    # (t, PSS of the tree, bytes in the folder, RSS of the tree): PSS counts a page shared by
    # n processes (torch's libraries in the decoding workers) as 1/n, so that the sum is the
    # memory the run really holds; the sum of RSS counts shared pages once per process.
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)
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
            rss = pss = 0
            try:
                for p in [proc, *proc.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        info = p.memory_full_info()
                        rss += info.rss
                        pss += getattr(info, "pss", info.rss)
            except psutil.Error:
                break
            self.samples.append((time.time(), pss, folder_bytes(self.folder), rss))
            self._stop.wait(self.every)


def folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def node_windows(log: str, day: str) -> list[tuple[str, float, float]]:
    """(node, start, end) in epoch seconds, from the log's Running/Completed node lines
    (the log's clock has whole seconds: a node's window is widened by one second)."""
    opened: dict[str, float] = {}
    out = []
    for m in re.finditer(r"^(\d\d:\d\d:\d\d) INFO\s+kedro\.\S+: (Running|Completed) node: (\w+)",
                         log, re.M):
        t = datetime.strptime(f"{day} {m.group(1)}", "%Y-%m-%d %H:%M:%S").timestamp()
        if m.group(2) == "Running":
            opened[m.group(3)] = t
        elif m.group(3) in opened:
            out.append((m.group(3), opened.pop(m.group(3)), t + 1))
    return out


def stage_of(node: str) -> str:
    return next((stage for stage, nodes in STAGES.items() if node in nodes), "other")


def stage_table(windows: list, samples: list, exit_t: float) -> dict[str, dict]:
    """Per stage: wall time (the sum of its nodes), peak memory (PSS, and the sum of RSS)
    of the process tree inside its nodes' windows, and the bytes its nodes added to the
    project's data folder. The time after the last node (MLflow logging, the registry
    hook) is the ``finish`` stage."""
    if windows:
        windows = [*windows, ("(finish)", windows[-1][2], exit_t)]

    def bytes_at(t: float) -> int:
        before = [x[2] for x in samples if x[0] <= t]
        return before[-1] if before else (samples[0][2] if samples else 0)

    stages: dict[str, dict] = {}
    for node, start, end in windows:
        name = "finish" if node == "(finish)" else stage_of(node)
        inside = [x for x in samples if start <= x[0] <= end]
        st = stages.setdefault(name, {"wall_s": 0.0, "peak_pss_mb": 0, "peak_rss_sum_mb": 0,
                                      "disk_written_mb": 0.0})
        st["wall_s"] = round(st["wall_s"] + max(end - start - 1, 0), 1)
        st["disk_written_mb"] = round(
            st["disk_written_mb"] + (bytes_at(end) - bytes_at(start)) / 2**20, 1)
        if inside:
            st["peak_pss_mb"] = max(st["peak_pss_mb"], round(max(x[1] for x in inside) / 2**20))
            st["peak_rss_sum_mb"] = max(st["peak_rss_sum_mb"],
                                        round(max(x[3] for x in inside) / 2**20))
    order = [*STAGES, "other", "finish"]
    return {name: stages[name] for name in order if name in stages}


def rates(log: str) -> dict[str, dict]:
    """Every stage's last progress line (``oct_vae.progress``): ``<what>: <n> <unit> in
    <s> s (<rate> <unit>/s)``, by ``what``."""
    out: dict[str, dict] = {}
    for m in re.finditer(r"oct_vae\S*: ([^:\n]+): ([\d,]+) (\w+) in ([\d.]+) s \(", log):
        n, seconds = int(m.group(2).replace(",", "")), float(m.group(4))
        out[m.group(1)] = {"n": n, "unit": m.group(3), "seconds": seconds,
                           "per_s": round(n / max(seconds, 1e-9), 1)}
    return out


def prepare_project(workdir: Path) -> Path:
    """A scratch copy of the project (its conf and pyproject; the installed package) in
    ``workdir``, so that a rehearsal never writes into the user's data, checkpoints or
    MLflow stores. ``workdir`` is emptied first, when it is a rehearsal's own folder."""
    from tests.helpers.project import copy_project

    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / SENTINEL).exists():
            raise SystemExit(f"--workdir {workdir} is not empty and not a rehearsal folder")
        shutil.rmtree(workdir)
    copy_project(workdir)
    (workdir / SENTINEL).write_text("scratch project of benchmarks/rehearse.py\n")
    return workdir


def run_protocol(tree: Path, protocol: str, args: argparse.Namespace) -> dict:
    """One `kedro run --env kermany` on ``tree`` with ``protocol``; its per-stage figures."""
    params = [f"raw_dir={tree}", f"ingest.protocol={protocol}",
              f"train.epochs={args.epochs}", f"train.width={args.width}"]
    if args.real_dir:
        params.append(f"real_dir={args.real_dir}")
    if args.tiny_test_set:
        params.append(TINY_OVERRIDES)
    cmd = [sys.executable, "-m", "kedro", "run", "--env", "kermany", "--params", ",".join(params)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    day = datetime.now().strftime("%Y-%m-%d")
    t0 = time.time()
    with open(args.out / f"rehearsal-{protocol}.log", "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=args.workdir, env=env, stdout=log_file,
                                stderr=subprocess.STDOUT, text=True)
        sampler = Sampler(proc.pid, args.workdir / DATA_ROOT)
        sampler.start()
        proc.wait()
        sampler.stop()
    wall = time.time() - t0
    log = (args.out / f"rehearsal-{protocol}.log").read_text()
    return {"protocol": protocol, "returncode": proc.returncode, "wall_s": round(wall, 1),
            "peak_pss_mb": round(max((x[1] for x in sampler.samples), default=0) / 2**20),
            "peak_rss_sum_mb": round(max((x[3] for x in sampler.samples), default=0) / 2**20),
            "disk_written_mb": round(folder_bytes(args.workdir / DATA_ROOT) / 2**20, 1),
            "stages": stage_table(node_windows(log, day), sampler.samples, time.time()),
            "rates": rates(log), "mlflow": mlflow_outcome(args.workdir, log)}


def mlflow_outcome(project: Path, log: str) -> dict:
    """The run's MLflow status and AUCs, the model version it registered and the champion,
    read from the kermany environment's own tracking store (its ``mlflow.yml``)."""
    import mlflow

    uri = tracking_uri(project, "kermany")
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


def tracking_uri(project: Path, env: str) -> str:
    """The MLflow tracking URI of ``env``, as kedro-mlflow resolves it for the project."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    # ${project_root:} is the working directory's project (oct_vae.settings)
    with contextlib.chdir(project), KedroSession.create(project_path=project, env=env) as s:
        return s.load_context().mlflow.server.mlflow_tracking_uri


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
             f"{report['epochs']} epoch(s), width {report['width']}. Machine: {report['machine']}.",
             ""]
    for run in report["runs"]:
        lines += [f"## `ingest.protocol={run['protocol']}`: exit {run['returncode']}, "
                  f"{run['wall_s']:.0f} s, peak memory {run['peak_pss_mb']:,} MB (PSS; sum of "
                  f"RSS {run['peak_rss_sum_mb']:,} MB), {run['disk_written_mb']:,.0f} MB "
                  "written", "",
                  "| stage | wall s | peak PSS MB | peak sum of RSS MB | disk written MB |",
                  "|---|---:|---:|---:|---:|"]
        for name, st in run["stages"].items():
            lines.append(f"| {name} | {st['wall_s']:.0f} | {st['peak_pss_mb']:,} | "
                         f"{st['peak_rss_sum_mb']:,} | {st['disk_written_mb']:,.1f} |")
        lines += ["", "| progress line | count | seconds | per second |", "|---|---:|---:|---:|"]
        lines += [f"| {what} | {r['n']:,} {r['unit']} | {r['seconds']:.1f} | {r['per_s']:,} |"
                  for what, r in run["rates"].items()]
        lines += ["", f"MLflow: {run['mlflow']}", ""]
    lines += ["## The paper's configuration (40 epochs x 25,236 images, width 64)", "",
              *projection(), ""]
    return "\n".join(lines)


def machine() -> str:
    import platform

    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) \
        if Path("/proc/cpuinfo").exists() else platform.processor()
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tree", type=Path, default=Path.home() / "oct2017-rehearsal",
                   help="where the OCT2017-shaped tree is built once and reused")
    p.add_argument("--workdir", type=Path, default=Path.home() / "oct2017-rehearsal-project",
                   help="the scratch copy of the project the runs write into (emptied first)")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of OCT2017's counts")
    p.add_argument("--bases", type=int, default=240, help="rendered B-scans per class")
    p.add_argument("--protocols", nargs="+", default=["paper", "official"],
                   choices=["paper", "official"])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--width", type=int, default=8)
    real = ROOT.parent / "shared" / "data"
    p.add_argument("--real-dir", type=Path, default=real if real.is_dir() else None,
                   help="real labelled scans for the transfer table (default: ../shared/data)")
    p.add_argument("--tiny-test-set", action="store_true",
                   help="test 6 normals + 3 per disease (for trees too small for 200 + 3x100)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "rehearsal")
    args = p.parse_args(argv)
    for name in ("tree", "workdir"):
        folder = getattr(args, name).resolve()
        if folder == ROOT or ROOT in folder.parents:
            p.error(f"--{name} {folder} is inside the repository; put it outside")
    args.out.mkdir(parents=True, exist_ok=True)
    tree = build(args.tree, TreeSpec(scale=args.scale, bases=args.bases))
    print(f"tree: {tree['n_files']:,} files, reused={tree['reused']}", flush=True)
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "tree": tree, "epochs": args.epochs, "width": args.width,
              "runs": []}
    prepare_project(args.workdir)
    for protocol in args.protocols:
        print(f"kedro run --env kermany, ingest.protocol={protocol} ...", flush=True)
        report["runs"].append(run_protocol(args.tree.resolve(), protocol, args))
        print(f"  exit {report['runs'][-1]['returncode']} after "
              f"{report['runs'][-1]['wall_s']:.0f} s", flush=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    (args.out / f"rehearsal-{stamp}.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (args.out / f"rehearsal-{stamp}.md").write_text(text)
    print(text)
    failed = [r["protocol"] for r in report["runs"] if r["returncode"] != 0]
    if failed:
        print(f"FAILED: {failed}; logs in {args.out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
