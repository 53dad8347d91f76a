"""The MLflow UI's server on the tiny project's tracking store: the run that `kedro run`
logged shows its parameters, per-epoch loss curves, AUC metrics, figures and model
(checked through the REST API the UI pages are drawn from; scripts/screenshots.py looks at
the run page in a browser)."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterator

import pytest
import requests

from tests.e2e.conftest import wait_for_http
from tests.helpers.project import free_port, make_ready, shell_env, stop_process_group

pytestmark = pytest.mark.slow

# How long the server may take to answer /health on a busy 2-core machine (~15 s idle).
SERVER_START_S = 90
LOSSES = ["train_total", "val_total", "train_recon", "val_recon", "train_kl", "val_kl"]
FIGURES = ["reconstruction_grid.png", "roc_curves.png", "score_distributions.png"]


@pytest.fixture(scope="module")
def mlflow_ui(tiny_project, tmp_path_factory) -> Iterator[str]:
    """The README's command, as written: ``make mlflow-ui`` (``kedro mlflow ui`` with the
    venv's ``bin/`` on PATH) in the tiny project, with ``KEDRO_ENV=tiny`` and a free
    ``UI_PORT``, bound to 127.0.0.1; yields its base URL."""
    project = make_ready(tiny_project.path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("mlflow_ui") / "server.log"
    env = shell_env(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1")
    cmd = ["make", "mlflow-ui", "KEDRO_ENV=tiny", f"UI_PORT={port}"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for_http(proc, f"{url}/health", log, "make mlflow-ui", SERVER_START_S)
        yield url
    finally:
        stop_process_group(proc)


def _api(url: str, endpoint: str, body: dict | None = None, **query) -> dict:
    api = f"{url}/api/2.0/mlflow/{endpoint}"
    if body is None:
        answer = requests.get(api, params=query, timeout=30)
    else:
        answer = requests.post(api, json=body, timeout=30)
    assert answer.status_code == 200, f"{endpoint}: {answer.text[:500]}"
    return answer.json()


@pytest.fixture(scope="module")
def default_run(mlflow_ui) -> dict:
    """The project's experiment and its first run: the full `kedro run --env tiny`."""
    experiment = _api(
        mlflow_ui, "experiments/get-by-name", experiment_name="oct-vae-tiny"
    )["experiment"]
    search = {"experiment_ids": [experiment["experiment_id"]], "order_by": ["start_time ASC"]}
    runs = _api(mlflow_ui, "runs/search", search)["runs"]
    assert runs, "the experiment has no run"
    return runs[0]


def test_the_ui_serves_the_project_experiment_and_its_run(mlflow_ui, default_run):
    page = requests.get(mlflow_ui, timeout=30)
    assert page.status_code == 200 and '<div id="root"' in page.text  # the React app
    info = default_run["info"]
    assert info["status"] == "FINISHED" and info["run_name"] == "__default__"
    tags = {t["key"]: t["value"] for t in default_run["data"]["tags"]}
    assert tags["env"] == "tiny" and tags["kedro_command"].startswith("kedro run")


def test_the_run_shows_parameters_loss_curves_and_auc_metrics(mlflow_ui, default_run):
    run_id = default_run["info"]["run_id"]
    params = {p["key"]: p["value"] for p in default_run["data"]["params"]}
    # the project's parameters, flattened (conf/tiny overrides width and epochs)
    assert params["train.width"] == "4" and params["train.epochs"] == "2"
    assert params["train.lr"] == "0.0001" and params["seed"] == "2024"
    assert params["ingest.test_per_disease"] == "8"

    for key in LOSSES:  # one point per epoch, step = epoch
        history = _api(mlflow_ui, "metrics/get-history", run_id=run_id, metric_key=key)["metrics"]
        assert [m["step"] for m in sorted(history, key=lambda m: m["step"])] == [1, 2], key
        assert all(math.isfinite(m["value"]) for m in history), key

    metrics = {m["key"]: m["value"] for m in default_run["data"]["metrics"]}
    for score in ("reconstruction", "kl", "vae"):
        for group in ("cnv", "dme", "drusen", "all"):
            assert 0.0 <= metrics[f"auc_{score}_{group}"] <= 1.0, (score, group)


def test_the_run_shows_its_figures_and_model(mlflow_ui, default_run):
    run_id = default_run["info"]["run_id"]
    root = _api(mlflow_ui, "artifacts/list", run_id=run_id)["files"]
    assert {"checkpoint", "evaluation", "figures", "training"} <= {f["path"] for f in root}
    figures = _api(mlflow_ui, "artifacts/list", run_id=run_id, path="figures")["files"]
    sizes = {f["path"]: int(f["file_size"]) for f in figures}
    assert set(sizes) >= {f"figures/{name}" for name in FIGURES}
    assert all(sizes[f"figures/{name}"] > 10_000 for name in FIGURES)  # real PNGs

    search = {"experiment_ids": [default_run["info"]["experiment_id"]]}
    models = _api(mlflow_ui, "logged-models/search", search)["models"]
    from_run = {m["info"]["name"] for m in models if m["info"].get("source_run_id") == run_id}
    assert from_run == {"oct_vae_scorer"}  # one servable model per run, no pickled network
