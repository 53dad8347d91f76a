"""Every script under benchmarks/ runs in the test suite, so none can rot unseen: the smallest
real run of each (its ``--smoke`` mode or small arguments, writing to a temporary folder),
here or in the test that SMOKES names. A new script without an entry fails
``test_every_benchmark_script_has_a_smoke_run``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
THIS = "tests/test_benchmarks_smoke.py"

# script -> the test that runs it (pytest node id). Library modules of the scripts count as
# run by the test that runs their code.
SMOKES = {
    "bench_ingest.py": f"{THIS}::test_bench_ingest_smoke_ingests_a_small_oct2017_tree",
    "bench_make_test.py": f"{THIS}::test_bench_make_test_times_a_command_in_two_clones",
    "bench_score.py": f"{THIS}::test_bench_score_smoke_scores_with_the_new_and_the_old_node",
    "bench_train.py":
        "tests/test_bench.py::test_benchmark_reports_both_loops_ratio_projection_and_sweep",
    "fit_phantom.py": "tests/test_fit_phantom.py::"
                      "test_fit_recovers_a_known_lift_and_tone_curve_and_restores_the_module",
    "gpu_run.sh": f"{THIS}::test_gpu_run_parses_and_runs_its_cpu_step",
    "oct2017_tree.py": f"{THIS}::test_oct2017_tree_builds_then_reuses_and_refuses_another_spec",
    "realism.py": f"{THIS}::test_realism_measures_a_small_real_set",
    "realism_classifiers.py": f"{THIS}::test_realism_measures_a_small_real_set",
    "rehearse.py": "tests/test_rehearse.py::test_the_rehearsal_runs_both_protocols_end_to_end",
}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def _run(args: list[str], timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=ROOT, env=kw.pop("env", _env()), capture_output=True,
                          text=True, timeout=timeout, **kw)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_every_benchmark_script_has_a_smoke_run():
    scripts = sorted(p.name for p in BENCHMARKS.iterdir()
                     if p.is_file() and p.suffix in (".py", ".sh") and p.name != "__init__.py")
    missing = [s for s in scripts if s not in SMOKES]
    assert not missing, f"benchmarks/ scripts without a smoke run (add one to SMOKES): {missing}"
    gone = [s for s in SMOKES if s not in scripts]
    assert not gone, f"SMOKES names scripts that no longer exist: {gone}"
    for script, node in SMOKES.items():
        path, name = node.split("::")
        text = (ROOT / path).read_text()
        assert f"def {name}(" in text, f"{script}: {node} does not exist"
        assert script in text or script.removesuffix(".py") in text, (
            f"{node} does not mention {script}")


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 341-file OCT2017-shaped tree, built by oct2017_tree.py's command line."""
    root = tmp_path_factory.mktemp("oct2017") / "tree"
    done = _run([sys.executable, str(BENCHMARKS / "oct2017_tree.py"), str(root), "--scale",
                 "0.004", "--bases", "4"], timeout=120)
    assert "341 files" in done.stdout and "built in" in done.stdout, done.stdout
    return root


def test_oct2017_tree_builds_then_reuses_and_refuses_another_spec(small_tree: Path):
    script = str(BENCHMARKS / "oct2017_tree.py")
    files = sorted(small_tree.rglob("*.jpeg"))
    assert len(files) == 341 and {p.parent.parent.name for p in files} == {"train", "test"}
    assert "reused" in _run([sys.executable, script, str(small_tree), "--scale", "0.004",
                             "--bases", "4"]).stdout
    other = subprocess.run([sys.executable, script, str(small_tree), "--scale", "0.005"],
                           cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
    assert other.returncode == 2 and "holds another tree" in other.stderr


def test_bench_ingest_smoke_ingests_a_small_oct2017_tree(small_tree: Path, tmp_path: Path):
    """--smoke with the tree above (reused): the decode timings, then the ingest pipeline
    fed every parameter it needs (ingest.protocol included) from the project's conf."""
    out = tmp_path / "out"
    _run([sys.executable, str(BENCHMARKS / "bench_ingest.py"), "--smoke", "--tree",
          str(small_tree), "--out", str(out), "--workdir", str(tmp_path / "work")])
    report = json.loads(next(out.glob("ingest-*.json")).read_text())
    assert report["n_images"] == 40 and report["single_core"]["ours_images_per_s"] > 0
    full = report["full_scale"]
    assert full["n_files"] == 341 and full["tree_reused"]
    assert full["params"]["params:ingest.protocol"] == "paper"
    assert full["params"]["params:ingest.test_normals"] == 6
    assert full["split_sizes"]["test"] == 6 + 3 * 3 and full["split_sizes"]["train"] > 50


@pytest.mark.slow
def test_bench_score_smoke_scores_with_the_new_and_the_old_node(tmp_path: Path):
    _run([sys.executable, str(BENCHMARKS / "bench_score.py"), "--smoke", "--workers", "1",
          "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "results.json").read_text())
    rows = {r["impl"]: r for r in summary["results"]}
    assert rows["new"]["scored"] == rows["new"]["files"] == 6
    assert rows["new"]["heatmaps_written"] == 6
    assert rows["old"]["scored"] == rows["old"]["files"] == 2


def test_bench_make_test_times_a_command_in_two_clones(tmp_path: Path):
    command = (f"{sys.executable} -m pytest -p no:cacheprovider --noconftest "
               "tests/test_docs.py::test_architecture_names_every_module")
    out = tmp_path / "make_test.json"
    env = {k: v for k, v in _env().items() if not k.startswith("PYTEST_")}
    _run([sys.executable, str(BENCHMARKS / "bench_make_test.py"), "--baseline", "HEAD",
          "--candidate", "HEAD", "--parent", str(tmp_path), "--out", str(out), "--command",
          command], env=env)
    result = json.loads(out.read_text())
    assert [r["exit_code"] for r in result["runs"]] == [0, 0]
    assert all(r["pytest_summary"].startswith("1 passed") for r in result["runs"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("bench-make-test-")]


def test_gpu_run_parses_and_runs_its_cpu_step(tmp_path: Path):
    """gpu_run.sh: bash -n, then its step 0 (the CUDA-graph tests) on the CPU with the
    device info and the packed results; the other steps need a GPU to run in seconds."""
    script = str(BENCHMARKS / "gpu_run.sh")
    _run(["bash", "-n", script])
    env = {**_env(), "DEVICE": "cpu", "QUICK": "1", "STEPS": "0", "OUT": str(tmp_path),
           "PYTHON": sys.executable}
    env = {k: v for k, v in env.items() if not k.startswith("PYTEST_")}
    done = _run(["bash", script], env=env)
    assert "0. the CUDA-graph tests" in done.stdout and "=== " in done.stdout
    assert "exit 0" in done.stdout, done.stdout
    assert "passed" in (tmp_path / "tests.log").read_text()
    assert (tmp_path / "versions.txt").read_text().startswith("torch ")
    assert (tmp_path / "gpu_run.tar.gz").stat().st_size > 0


def test_realism_measures_a_small_real_set(tmp_path: Path):
    """benchmarks/realism.py (and realism_classifiers.py) on a "real" set that is itself a
    phantom sample: one draw, the logistic regression only."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import realism_classifiers as R

    real = tmp_path / "real"
    sample = R.phantom_sample({"NORMAL": 10, "CNV": 5, "DME": 5, "DRUSEN": 5}, seed=50)
    for image, label, name in zip(sample.full, sample.labels, sample.names, strict=True):
        (real / label).mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(image, "L").save(buf, "JPEG", quality=95)
        (real / label / name).write_bytes(buf.getvalue())
    out = tmp_path / "out"
    done = _run([sys.executable, str(BENCHMARKS / "realism.py"), "--real", str(real),
                 "--draws", "1", "--no-cnn", "--no-stats", "--ratio", "1", "--out", str(out)])
    assert "realism: classifier AUC overall logistic" in done.stdout
    result = json.loads((out / "realism.json").read_text())
    assert result["n_real"] == {"NORMAL": 10, "CNV": 5, "DME": 5, "DRUSEN": 5}
    assert 0 <= result["auc"]["logistic"]["overall"]["mean"] <= 1
    assert (out / "realism.md").exists() and (out / "realism.png").exists()
