"""Re-check the phantom-made design choices: choose on development phantoms, then look at
the real scans once (issue #13, item 4).

The base configuration's choices were made on phantoms: the Gaussian likelihood and its
sigma, the network width and the number of epochs, the score that flags a scan
(``score.flag_score``), and the filtered top-k residual's sigma and k. This script:

1. **Development phantoms only.** For each development seed (default 7 and 8: other
   patients, anatomy, lesions, splits and training seeds than the reported phantom, 2024) it
   makes a scratch copy of the project (``scripts/select_score_settings.make_dev_project``)
   and runs the default pipeline once per candidate configuration, one setting changed at a
   time from the base configuration (``candidates``, derived from conf/base). The real-scan
   folder is pointed at an empty folder there, so no real scan is read while choosing.
2. **Selection** (``select``), from the development test splits alone (mean over seeds):
   - training configuration: the highest ``All`` AUC of the reconstruction score (the
     paper's score, and what the likelihood shapes); a candidate replaces the base setting
     only if it wins by at least ``MARGIN`` (two seeds cannot resolve smaller differences);
   - flag score: the highest ``All`` AUC among the detector scores of the chosen
     configuration, with the same margin in favour of the current ``score.flag_score``;
   - filtered top-k residual: the (sigma > 0, k) grid point with the highest ``All`` AUC.
   The selection is written before step 3 runs.
3. **One look at the real scans**: every trained model (all candidates, both seeds) scores
   the real labelled scans (default ``../shared/data``: 59 scans of the Kermany dataset,
   CC BY 4.0); the AUCs, averaged over the seeds' models, say whether each choice holds.

Writes ``recheck.md`` and ``recheck.json`` under ``--out``. Takes 15-25 minutes on 2 cores.

Usage:
    python scripts/recheck_choices.py [--seeds 7 8] [--real DIR ...] [--workdir DIR]
        [--out benchmarks/out/recheck] [--only default bernoulli ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "scripts", ROOT / "benchmarks"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))
import select_score_settings as S  # noqa: E402

from oct_vae.vae.config import BASELINE_SCORES as BASELINES  # noqa: E402


def candidates(train: dict[str, object]) -> dict[str, dict[str, object]]:
    """The base configuration and one-setting changes of it, derived from its ``train``
    parameters, so that no candidate repeats the base whatever conf/base holds: the other
    likelihood, half and double the Gaussian sigma, double the width, half and double the
    epochs. (Round 1 started from 10 epochs and chose 20; round 2 from 20 and chose 40.)"""
    other = "bernoulli" if train["likelihood"] == "gaussian" else "gaussian"
    sigma, width, epochs = float(train["gaussian_sigma"]), int(train["width"]), int(train["epochs"])
    return {
        "base": {},
        other: {"train.likelihood": other},
        f"gaussian_sigma_{sigma / 2:g}": {"train.gaussian_sigma": sigma / 2},
        f"gaussian_sigma_{sigma * 2:g}": {"train.gaussian_sigma": sigma * 2},
        f"width_{width * 2}": {"train.width": width * 2},
        f"epochs_{max(1, epochs // 2)}": {"train.epochs": max(1, epochs // 2)},
        f"epochs_{epochs * 2}": {"train.epochs": epochs * 2},
    }


def _base_train() -> dict[str, object]:
    import yaml

    return yaml.safe_load((ROOT / "conf" / "base" / "parameters_train.yml").read_text())["train"]


CANDIDATES: dict[str, dict[str, object]] = candidates(_base_train())
MARGIN = 0.01


def run_candidate(project: Path, overrides: dict[str, object], empty: Path) -> float:
    """``kedro run`` (ingest, train, evaluate) with ``overrides``; no real scans are read."""
    params = ",".join([f"real_dir={empty}"] + [f"{k}={v}" for k, v in overrides.items()])
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kedro", "run", "--params", params], cwd=project,
                   env=env, check=True)
    return time.perf_counter() - start


def auc_table(scores: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, dict[str, float]]:
    """Image-level AUC per disease (vs NORMAL) and ``All`` for every score."""
    from oct_vae.evaluation.metrics import PAPER_COLUMNS, group_auc

    return {name: {col: float(group_auc(labels, np.asarray(s, np.float64), col))
                   for col in PAPER_COLUMNS} for name, s in scores.items()}


def dev_result(checkpoint: dict, images: np.ndarray, labels: np.ndarray) -> dict:
    """Development-split AUCs of every detector score and of the filtered top-k grid."""
    from oct_vae.vae.detector import AnomalyDetector

    scores = AnomalyDetector(checkpoint, "cpu").score(images)
    return {"scores": auc_table(scores, labels), "grid": S.grid_search(checkpoint, images, labels)}


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def select(dev: dict[str, dict[int, dict]], flag_score: str) -> dict:
    """The choices from development results only (see the module docstring)."""
    seeds = sorted(next(iter(dev.values())))

    def recon(name: str) -> float:
        return _mean([dev[name][s]["scores"]["reconstruction"]["All"] for s in seeds])

    best = max(dev, key=recon)
    config = best if recon(best) >= recon("base") + MARGIN else "base"
    per_score = {n: _mean([dev[config][s]["scores"][n]["All"] for s in seeds])
                 for n in dev[config][seeds[0]]["scores"] if n not in BASELINES}
    top = max(per_score, key=per_score.get)
    flag = top if per_score[top] >= per_score[flag_score] + MARGIN else flag_score
    grid = S.average({s: dev[config][s]["grid"] for s in seeds})
    filt = S.choose(grid)
    return {"config": config, "reconstruction_all": {n: recon(n) for n in dev},
            "flag_score": flag, "score_all": per_score,
            "filtered": {"sigma": filt["sigma"], "k_percent": filt["k_percent"],
                         "All": filt["All"]}}


def real_check(models: dict[str, dict[int, Path]], real_folders: list[Path],
               choice: dict) -> dict:
    """AUCs on the real scans of every model, averaged over the development seeds, and
    paired patient-level bootstrap differences between each choice and its alternatives."""
    import realism as B
    import torch

    from oct_vae.vae.detector import AnomalyDetector

    real = B.load_real(real_folders)
    images, labels = np.stack(real.small), np.array(real.labels)
    out: dict[str, dict] = {}
    vectors: dict[str, np.ndarray] = {}  # "<config>|<seed>|<score>": per-scan scores
    for name, per_seed in models.items():
        tables, grids = [], []
        for seed, path in per_seed.items():
            ckpt = torch.load(path, weights_only=True, map_location="cpu")
            det = AnomalyDetector(ckpt, "cpu")
            scores = det.score(images)
            used = (det.score_config.residual_sigma, det.score_config.filtered_top_k_percent)
            vectors.update({f"{name}|{seed}|{n}": np.asarray(v) for n, v in scores.items()})
            tables.append(auc_table(scores, labels))
            grids.append({(r["sigma"], r["k_percent"]): r["All"]
                          for r in S.grid_search(ckpt, images, labels) if r["sigma"] > 0})
        out[name] = {
            "scores": {n: {c: _mean([t[n][c] for t in tables]) for c in tables[0][n]}
                       for n in tables[0]},
            "grid_all": {f"{s:g}/{k:g}": _mean([g[(s, k)] for g in grids]) for s, k in grids[0]},
        }
    out["_n_real"] = {c: int((labels == c).sum()) for c in sorted(set(labels.tolist()))}
    out["_filtered_settings"] = f"sigma {used[0]:g} px, k {used[1]:g} %"  # in the checkpoints
    out["_paired"] = paired_differences(vectors, labels, np.array(real.patients), choice)
    return out


def paired_differences(vectors: dict[str, np.ndarray], labels: np.ndarray, patients: np.ndarray,
                       choice: dict, n_resamples: int = 2000) -> dict[str, dict]:
    """Real-scan ``All`` AUC of each choice minus each alternative: the difference of the
    seed-averaged AUCs, with a 95 % percentile interval over the same patient-level
    resamples (``oct_vae.evaluation.metrics.bootstrap_auc_draws``) for both sides."""
    from oct_vae.evaluation.metrics import bootstrap_auc_draws, interval

    draws = bootstrap_auc_draws(labels, patients, vectors, ["All"], n_resamples, seed=0)
    seeds = sorted({k.split("|")[1] for k in vectors})
    configs = sorted({k.split("|")[0] for k in vectors})

    def mean_draws(config: str, score: str) -> np.ndarray:
        return np.mean([draws[f"{config}|{s}|{score}"]["All"] for s in seeds], axis=0)

    def mean_auc(config: str, score: str) -> float:
        return _mean([group_auc(labels, vectors[f"{config}|{s}|{score}"]) for s in seeds])

    cfg, flag = choice["config"], choice["flag_score"]
    out: dict[str, dict] = {"config": {}, "flag_score": {}}
    for other in configs:
        if other != cfg:
            d = mean_draws(cfg, "reconstruction") - mean_draws(other, "reconstruction")
            out["config"][other] = (mean_auc(cfg, "reconstruction")
                                    - mean_auc(other, "reconstruction"), *interval(d))
    names = sorted({k.split("|")[2] for k in vectors} - set(BASELINES))
    for other in names:
        if other != flag:
            d = mean_draws(cfg, flag) - mean_draws(cfg, other)
            out["flag_score"][other] = (mean_auc(cfg, flag) - mean_auc(cfg, other), *interval(d))
    return out


def group_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from oct_vae.evaluation.metrics import group_auc as auc

    return float(auc(labels, np.asarray(scores, np.float64), "All"))


def markdown(dev: dict, choice: dict, real: dict, seeds: list[int], flag_score: str) -> str:
    lines = [
        "# Design choices re-checked: chosen on development phantoms, then one look at real scans",
        "",
        f"Development phantoms: seeds {', '.join(map(str, seeds))} (phantom format "
        f"{choice['phantom_format']}); the reported phantom (2024) played no part. Real scans: "
        f"{sum(real['_n_real'].values())} ({real['_n_real']}), read once, after the selection "
        "below was written. Image-level `All` AUC, mean over the seeds (real: mean over the "
        "seeds' models).",
        "",
        "## Training configuration (reconstruction score, All)",
        "",
        "| candidate | change from base | dev phantoms | real scans | real: chosen minus this |",
        "|---|---|---|---|---|",
    ]
    paired = real["_paired"]
    for name, change in CANDIDATES.items():
        if name not in dev:
            continue
        mark = " (chosen)" if name == choice["config"] else ""
        desc = ", ".join(f"{k}={v}" for k, v in change.items()) or "conf/base"
        lines.append(f"| {name}{mark} | {desc} | {choice['reconstruction_all'][name]:.3f} | "
                     f"{real[name]['scores']['reconstruction']['All']:.3f} | "
                     f"{_delta(paired['config'].get(name))} |")
    cfg = choice["config"]
    lines += ["", f"## Scores of the chosen configuration ({cfg})", "",
              "| score | dev All | real All | real CNV | real DME | real Drusen | real: flag minus "
              "this |", "|---|---|---|---|---|---|---|"]
    rs = real[cfg]["scores"]
    dev_all = {n: _mean([dev[cfg][s]["scores"][n]["All"] for s in seeds]) for n in rs}
    for n in sorted(rs, key=lambda n: -dev_all[n]):
        mark = " (flag)" if n == choice["flag_score"] else ""
        lines.append(f"| {n}{mark} | {dev_all[n]:.3f} | {rs[n]['All']:.3f} | {rs[n]['CNV']:.3f}"
                     f" | {rs[n]['DME']:.3f} | {rs[n]['Drusen']:.3f} | "
                     f"{_delta(paired['flag_score'].get(n))} |")
    lines += ["", "`filtered_residual` here uses the settings the models were trained with "
              f"({real['_filtered_settings']}); the grid below re-chooses them."]
    f = choice["filtered"]
    key = f"{f['sigma']:g}/{f['k_percent']:g}"
    best_real = max(real[cfg]["grid_all"], key=real[cfg]["grid_all"].get)
    lines += [
        "", "## Filtered top-k residual (sigma px / k %)", "",
        f"Chosen on the development phantoms: {key} (dev All {f['All']:.3f}); on the real scans "
        f"{real[cfg]['grid_all'][key]:.3f}. The grid's best on the real scans would have been "
        f"{best_real} ({real[cfg]['grid_all'][best_real]:.3f}), a value no one may choose by.",
        "", "## Verdict", "",
    ]
    lines += verdict(choice, real, flag_score)
    return "\n".join(lines) + "\n"


def _delta(d: list | tuple | None) -> str:
    return "" if d is None else f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]"


def verdict(choice: dict, real: dict, flag_score: str) -> list[str]:
    """One line per choice: do the real scans refute it, or can they not tell?

    A choice is *refuted* when an alternative beats it on the real scans with the whole 95 %
    interval of the paired difference above 0, *supported* when it beats every alternative
    that way, and otherwise *not resolved* by the real scans (the usual case with 59 scans).
    """
    paired = real["_paired"]

    def word(diffs: dict[str, list]) -> str:
        worse = [o for o, (_, lo, hi) in diffs.items() if hi < 0]
        if worse:
            return "refuted (worse than " + ", ".join(f"`{o}`" for o in worse) + ")"
        if all(lo > 0 for _, lo, _ in diffs.values()):
            return "supported (better than every alternative)"
        return "not resolved by the real scans"

    def worst(diffs: dict[str, list]) -> str:
        other, (d, lo, hi) = min(diffs.items(), key=lambda kv: kv[1][0])
        return f"largest shortfall: {d:+.3f} [{lo:+.3f}, {hi:+.3f}] against `{other}`"

    cfg, flag = choice["config"], choice["flag_score"]
    return [
        f"- Training configuration `{cfg}`: {word(paired['config'])}; real reconstruction "
        f"All {real[cfg]['scores']['reconstruction']['All']:.3f}, {worst(paired['config'])}.",
        f"- Flag score `{flag}` (was `{flag_score}`): {word(paired['flag_score'])}; real All "
        f"{real[cfg]['scores'][flag]['All']:.3f}, {worst(paired['flag_score'])}.",
        "- Trivial baselines on the real scans: "
        + ", ".join(f"{b} {real[cfg]['scores'][b]['All']:.3f}" for b in BASELINES
                    if b in real[cfg]["scores"]) + ".",
        "",
        "Differences are paired (the same patient-level resamples of the real scans for both "
        "sides, 2,000 resamples) and averaged over the seeds' models; [95 % interval].",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8])
    parser.add_argument("--real", type=Path, nargs="+",
                        default=[ROOT.parent / "shared" / "data" / "kermany-sample",
                                 ROOT.parent / "shared" / "data" / "kermany-sample-2"])
    parser.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "recheck")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="scratch folder (default: temporary, removed at the end); finished "
                        "candidates found there are reused")
    args = parser.parse_args(argv)
    if S.BASE_PHANTOM_SEED in args.seeds:
        parser.error(f"seed {S.BASE_PHANTOM_SEED} is the reported phantom: choose another one")
    from oct_vae.data.phantom import FORMAT_VERSION
    from tests.helpers.project import base_flag_score

    flag_score = base_flag_score()
    names = args.only or list(CANDIDATES)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="oct-vae-recheck-"))
    args.out.mkdir(parents=True, exist_ok=True)
    dev: dict[str, dict[int, dict]] = {n: {} for n in names}
    models: dict[str, dict[int, Path]] = {n: {} for n in names}
    seconds: dict[str, dict[int, float]] = {n: {} for n in names}
    try:
        for seed in args.seeds:
            project = workdir / f"seed-{seed}"
            if not project.exists():
                S.make_dev_project(project, seed)
            empty = workdir / "no-real-scans"
            empty.mkdir(exist_ok=True)
            for name in names:
                done = workdir / f"{name}-seed-{seed}.json"
                model = workdir / f"{name}-seed-{seed}.pt"
                if done.exists() and model.exists():
                    dev[name][seed] = json.loads(done.read_text())
                else:
                    print(f"== seed {seed}, candidate {name}", flush=True)
                    seconds[name][seed] = round(run_candidate(project, CANDIDATES[name], empty), 1)
                    checkpoint, images, labels, _ = S.load_outputs(project)
                    dev[name][seed] = dev_result(checkpoint, images, labels)
                    import torch

                    torch.save(checkpoint, model)
                    done.write_text(json.dumps(dev[name][seed]))
                models[name][seed] = model
        choice = select(dev, flag_score)
        choice["phantom_format"] = FORMAT_VERSION
        (args.out / "selection.json").write_text(json.dumps(choice, indent=2))
        print("selection (development phantoms only):", json.dumps(choice, indent=2), flush=True)
        real = real_check(models, args.real, choice)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    text = markdown(dev, choice, real, args.seeds, flag_score)
    (args.out / "recheck.md").write_text(text)
    (args.out / "recheck.json").write_text(json.dumps(
        {"seeds": args.seeds, "candidates": {n: CANDIDATES[n] for n in names}, "dev": dev,
         "choice": choice, "real": real, "pipeline_seconds": seconds}, indent=2))
    print(text)
    print(f"wrote {args.out / 'recheck.md'} and recheck.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
