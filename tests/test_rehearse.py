"""`make rehearse` cannot rot: benchmarks/rehearse.py, run as a user runs it, on a small
OCT2017-shaped tree, through `kedro run --env kermany` for both protocols."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_the_rehearsal_runs_both_protocols_end_to_end(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "rehearse.py"), "--scale", "0.004",
           "--bases", "6", "--tree", str(tmp_path / "tree"), "--workdir",
           str(tmp_path / "project"), "--out", str(out), "--tiny-test-set"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(next(out.glob("rehearsal-*.json")).read_text())
    tree = report["tree"]
    assert tree["n_files"] == len(list((tmp_path / "tree").rglob("*.jpeg")))
    assert {r["protocol"] for r in report["runs"]} == {"paper", "official"}
    for run in report["runs"]:
        assert run["returncode"] == 0
        # every stage of the default pipeline was seen in the log, with its memory and disk
        assert list(run["stages"]) == ["ingest", "train", "calibrate", "score", "report",
                                       "finish"]
        assert all(st["peak_pss_mb"] > 100 for st in run["stages"].values())
        assert run["stages"]["train"]["disk_written_mb"] > 0
        assert run["disk_written_mb"] > 0
        # the run, its registered version, in the kermany environment's own store
        ml = run["mlflow"]
        assert ml["status"] == "FINISHED" and len(ml["registered_versions"]) == 1
        assert 0 <= ml["auc_reconstruction_all"] <= 1
        assert ml["champion"] is not None
    # the user's project is untouched: the runs wrote into the scratch copy
    assert (tmp_path / "project" / "data").is_dir()
    assert "## The paper's configuration" in next(out.glob("rehearsal-*.md")).read_text()


def test_a_tree_inside_the_repository_is_refused(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "rehearse.py"), "--tree",
         str(ROOT / "data" / "tree"), "--workdir", str(tmp_path / "p")],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "inside the repository" in done.stderr
    assert not (ROOT / "data" / "tree").exists()
