"""README "Guarantees", through real `kedro run` processes on the tiny phantom: concurrent
runs, an ingest killed mid-save, interrupted runs in MLflow, and what MLflow records."""

from __future__ import annotations

import getpass
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from oct_vae.vae.detector import AnomalyDetector
from tests.e2e.conftest import run_session
from tests.helpers.project import copy_project

pytestmark = pytest.mark.slow

KEDRO = [sys.executable, "-m", "kedro"]
REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    # PYTHONFAULTHANDLER: a run that hangs is sent SIGABRT (``_wait_exit``), which dumps
    # every thread's stack into its log.
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1",
           "PYTHONFAULTHANDLER": "1"}
    return env


def _default_signals() -> None:
    """In the child, before exec: Ctrl-C and SIGTERM do what they do in a terminal.

    An ignored signal stays ignored across exec, and a shell that starts a command in the
    background (``make test &``, a CI step without job control) ignores SIGINT: kedro then
    never sees the test's Ctrl-C and trains on (seen as a hang in such runs).
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _kedro(project: Path, *args: str, log: Path, fail: str | None = None) -> subprocess.Popen:
    """``kedro run --env tiny <args>`` in ``project``; ``fail``: the atomic writes that fail
    (``tests.helpers.faults``, e.g. ``kill:train_images.npy``)."""
    kedro, env = KEDRO, _env()
    if fail is not None:
        kedro = [sys.executable, "-m", "tests.helpers.faults", fail, "-m", "kedro"]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(REPO)]))
    return subprocess.Popen(
        [*kedro, "run", "--env", "tiny", *args],
        cwd=project,
        env=env,
        stdout=open(log, "w"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_default_signals,  # noqa: PLW1509 - no threads started by this test
    )


def _wait_exit(proc: subprocess.Popen, log: Path, timeout: float) -> int:
    """The exit code of ``proc``; if it hangs, its threads' stacks and log tail in the failure."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        proc.wait(timeout=30)
        pytest.fail(f"kedro did not exit within {timeout} s:\n{log.read_text()[-6000:]}")


def _client(project: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow-tiny.db'}")


def _runs(project: Path, status: str | None = None):
    client = _client(project)
    exp = client.get_experiment_by_name("oct-vae-tiny")
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id])
    return [r for r in runs if status is None or r.info.status == status]


def _project_with_data(tiny_project, dest: Path) -> Path:
    """A new project holding the tiny project's data (not its MLflow store)."""
    project = copy_project(dest)
    shutil.copytree(tiny_project.path / "data", project / "data", dirs_exist_ok=True)
    return project


def test_two_concurrent_runs_each_score_with_their_own_model(tmp_path):
    project = copy_project(tmp_path / "p")
    # Started together on a project that has no MLflow store yet: both would create and
    # migrate mlflow.db at once without the setup lock (PrivateMlflowHook).
    a = _kedro(project, "--params", "train.lr=0.001,train.epochs=3", log=tmp_path / "a.log")
    b = _kedro(project, "--params", "train.lr=0.003", log=tmp_path / "b.log")
    for proc, log in ((a, "a.log"), (b, "b.log")):
        assert proc.wait(timeout=400) == 0, (tmp_path / log).read_text()[-3000:]

    runs = _runs(project)
    assert sorted(r.data.params["train.lr"] for r in runs) == ["0.001", "0.003"]
    client, recon = _client(project), {}
    for run in runs:
        rid, kedro_run = run.info.run_id, run.data.tags["run_id"]
        ckpt = torch.load(
            client.download_artifacts(rid, "checkpoint/vae_model.pt", str(tmp_path / rid)),
            weights_only=True,
        )
        logged = pd.read_csv(
            client.download_artifacts(rid, "evaluation/test_scores.csv", str(tmp_path / rid))
        )
        test = np.load(
            project / f"data/tiny/05_model_input/test_images.npy/{kedro_run}/test_images.npy"
        )
        own = AnomalyDetector(ckpt, "cpu").score(test)
        np.testing.assert_allclose(logged["reconstruction"], own["reconstruction"], rtol=1e-6)
        np.testing.assert_allclose(logged["kl"], own["kl"], rtol=1e-6)
        recon[run.data.params["train.lr"]] = logged["reconstruction"].to_numpy()
        # the served model packs this run's checkpoint, not the other run's
        (model,) = [m for m in client.search_logged_models([run.info.experiment_id])
                    if m.source_run_id == rid and m.name == "oct_vae_scorer"]
        packed = torch.load(_scorer_file(model.artifact_location), weights_only=True)
        for k, v in ckpt["state_dict"].items():
            assert torch.equal(v, packed["state_dict"][k]), k
    assert not np.allclose(recon["0.001"], recon["0.003"])
    assert "did not match load version" not in (tmp_path / "a.log").read_text()
    assert not glob.glob(str(project / "data/tiny/06_models/scorer_checkpoint.pt/*/.*.tmp"))


def _scorer_file(artifact_location: str) -> str:
    root = artifact_location.removeprefix("file://")
    return f"{root}/artifacts/scorer_checkpoint.pt"


def test_an_ingest_killed_mid_save_is_refused_by_evaluate(tiny_project, tmp_path):
    project = _project_with_data(tiny_project, tmp_path / "p")
    ingest = _kedro(
        project, "--pipeline", "ingest", "--params", "seed=1", log=tmp_path / "ingest.log",
        fail="kill:train_images.npy",
    )
    assert ingest.wait(timeout=200) == -signal.SIGKILL, (tmp_path / "ingest.log").read_text()
    manifests = sorted(glob.glob(str(project / "data/tiny/03_primary/oct_manifest.csv/*")))
    arrays = sorted(glob.glob(str(project / "data/tiny/05_model_input/test_images.npy/*")))
    assert Path(manifests[-1]).name > Path(arrays[-1]).name  # a new manifest, old arrays
    assert glob.glob(str(project / "data/tiny/05_model_input/train_images.npy/*/.*.tmp"))

    evaluate = _kedro(project, "--pipeline", "evaluate", log=tmp_path / "evaluate.log")
    assert evaluate.wait(timeout=200) != 0
    log = (tmp_path / "evaluate.log").read_text()
    assert "LineageError" in log and "kedro run --pipeline ingest" in log, log[-3000:]
    # the dead writer's temporary file was swept when the run started
    assert not glob.glob(str(project / "data/tiny/05_model_input/train_images.npy/*/.*.tmp"))
    assert not glob.glob(str(project / "data/tiny/08_reporting/auc_table.csv/*/auc_table.csv"))[
        len(glob.glob(str(tiny_project.path / "data/tiny/08_reporting/auc_table.csv/*"))):
    ]  # no new results


def _wait_for_training(proc: subprocess.Popen, log: Path, project: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"kedro exited early:\n{log.read_text()[-3000:]}")
        if "epoch 1/" in log.read_text() and _runs(project, "RUNNING"):
            return
        time.sleep(0.5)
    pytest.fail(f"training did not start:\n{log.read_text()[-3000:]}")


def test_interrupted_runs_end_killed_never_running(tiny_project, tmp_path):
    project = _project_with_data(tiny_project, tmp_path / "p")
    long_train = ("--pipeline", "train", "--params", "train.epochs=500")
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, and what a scheduler sends
        log = tmp_path / f"{sig.name}.log"
        proc = _kedro(project, *long_train, log=log)
        _wait_for_training(proc, log, project)
        proc.send_signal(sig)
        assert _wait_exit(proc, log, 60) != 0, log.read_text()[-3000:]
        assert "ending it as KILLED" in log.read_text(), log.read_text()[-3000:]
        assert not _runs(project, "RUNNING"), sig.name
    assert len(_runs(project, "KILLED")) == 2

    # SIGKILL: nothing can react; the next run on this machine ends the orphan as KILLED.
    log = tmp_path / "SIGKILL.log"
    proc = _kedro(project, *long_train, log=log)
    _wait_for_training(proc, log, project)
    proc.kill()
    proc.wait(timeout=60)
    (orphan,) = _runs(project, "RUNNING")
    run_session(project, pipeline_names=["evaluate"])
    run = _client(project).get_run(orphan.info.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["oct_vae.end_reason"].startswith("process gone")
    assert not _runs(project, "RUNNING")


def test_mlflow_records_no_absolute_path_and_no_os_user(tiny_project, tmp_path):
    scans = tmp_path / "clinic_patient_4711"  # a folder name that must not reach MLflow
    shutil.copytree(tiny_project.path / "data/tiny/01_raw/phantom/test/CNV", scans)
    run_session(tiny_project.path, pipeline_names=["score"],
                runtime_params={"score": {"input_dir": str(scans)}})
    client = _client(tiny_project.path)
    user = getpass.getuser()
    for run in _runs(tiny_project.path):
        recorded = {**run.data.params, **run.data.tags}
        for key, value in recorded.items():
            assert str(tiny_project.path) not in value, key
            assert "clinic_patient_4711" not in value, key
            assert not (user and value == user), key
        assert "project_path" not in run.data.tags
        assert run.data.tags["mlflow.user"] == "oct-vae" and run.info.user_id == "oct-vae"
        for artifact in ("evaluation/test_scores.csv", "scoring/score_results.csv"):
            try:
                table = pd.read_csv(client.download_artifacts(
                    run.info.run_id, artifact, str(tmp_path / run.info.run_id)))
            except Exception:  # noqa: BLE001 - not every run has both tables
                continue
            assert not table["path"].str.startswith("/").any(), artifact
            assert not table["path"].str.contains("clinic_patient_4711").any(), artifact
    scored = [r for r in _runs(tiny_project.path) if "score.input_dir" in r.data.params]
    assert scored and scored[0].data.params["score.input_dir"].startswith("<path sha1:")
    for mlmodel in glob.glob(str(tiny_project.path / "mlruns/**/MLmodel"), recursive=True):
        for line in Path(mlmodel).read_text().splitlines():
            if line.strip().startswith("uri:"):
                assert str(tiny_project.path) not in line, line
