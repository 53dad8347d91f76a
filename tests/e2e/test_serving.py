"""End to end on the tiny project: the ``score`` pipeline in a Kedro session, the MLflow
model ``oct_vae_scorer`` that training logs, and that model behind ``mlflow models serve``."""

from __future__ import annotations

import base64
import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from kedro.pipeline import Pipeline
from kedro_mlflow.pipeline.pipeline_ml import PipelineML
from mlflow.tracking import MlflowClient
from PIL import Image

from oct_vae.framework.hooks import MissingInputsError
from oct_vae.vae.config import BASELINE_SCORES, EXTRA_SCORES, PAPER_SCORES
from tests.conftest import KERMANY_SAMPLE
from tests.e2e.conftest import run_session, wait_for_http
from tests.helpers.project import (
    base_flag_score,
    copy_project,
    free_port,
    stop_process_group,
)

MODEL_NAME = "oct_vae_scorer"
# Every score that evaluation reports, served and tabled with its percentile.
SCORES = [*PAPER_SCORES, *EXTRA_SCORES, *BASELINE_SCORES]
# How long the model server may take to answer /health on a busy 2-core machine.
SERVER_START_S = 90


def _end_stale_mlflow_runs() -> None:
    """Empty MLflow's stack of active runs, which earlier sessions of this process leave
    holding their (already finished) run, often several times over; otherwise the next
    session logs into that run instead of opening its own."""
    for _ in range(1000):
        if mlflow.active_run() is None:
            return
        with contextlib.suppress(Exception):  # a run of another temporary project's store
            mlflow.end_run()


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def scan_folder(tiny_project, tmp_path_factory) -> Path:
    """Two real scans (a CNV and a normal; phantom scans without the sample) and a file
    that is not a scan."""
    folder = tmp_path_factory.mktemp("new_scans")
    if KERMANY_SAMPLE.is_dir():
        picks = [sorted((KERMANY_SAMPLE / c).glob("*.jpeg"))[0] for c in ("CNV", "NORMAL")]
    else:
        picks = sorted((tiny_project.path / "data/tiny/01_raw/phantom").rglob("*.jpeg"))[:2]
    (folder / "clinic").mkdir()
    for pick in picks:
        shutil.copy(pick, folder / "clinic" / pick.name)
    (folder / "notes.txt").write_text("not a scan")
    return folder


@pytest.fixture(scope="module")
def score_results(tiny_project, scan_folder) -> pd.DataFrame:
    """`kedro run --pipeline score --params score.input_dir=<scan_folder>`: its table."""
    _end_stale_mlflow_runs()
    run_session(
        tiny_project.path,
        pipeline_names=["score"],
        runtime_params={"score": {"input_dir": str(scan_folder)}},
    )
    versions = sorted(
        glob.glob(str(tiny_project.path / "data/tiny/07_model_output/score_results.csv/*"))
    )
    assert versions, "score_results was not saved as a versioned dataset"
    return pd.read_csv(f"{versions[-1]}/score_results.csv")


def _latest_scorer(tiny_project):
    client = MlflowClient(tracking_uri=tiny_project.tracking_uri)
    exp = client.get_experiment_by_name("oct-vae-tiny")
    models = [m for m in client.search_logged_models([exp.experiment_id]) if m.name == MODEL_NAME]
    assert models, f"no run logged the {MODEL_NAME} model"
    return client, max(models, key=lambda m: m.creation_timestamp)


def test_the_default_run_logged_the_scorer_model(tiny_project):
    client, model = _latest_scorer(tiny_project)
    run = client.get_run(model.source_run_id)
    assert run.info.run_name == "__default__"  # `kedro run`: ingest + train + evaluate
    mlflow.set_tracking_uri(tiny_project.tracking_uri)
    info = mlflow.models.get_model_info(f"runs:/{model.source_run_id}/{MODEL_NAME}")
    inputs = {c.name: c.required for c in info.signature.inputs.inputs}
    assert inputs == {"image_b64": True, "id": False}


def test_default_and_train_pipelines_stay_bound_to_inference_in_a_session_run():
    """What `kedro run` and `kedro run --pipeline train` give kedro-mlflow's hook, which
    logs the model only for a PipelineML."""
    from kedro.framework.project import configure_project, pipelines

    from oct_vae.pipelines import evaluate, ingest, train

    configure_project("oct_vae")
    names = {n.name for p in (ingest, train, evaluate) for n in p.create_pipeline().nodes}
    train_names = {n.name for n in train.create_pipeline().nodes}
    for requested, expected in ((None, names), (["train"], train_names)):
        pipelines.set_requested(requested)  # as KedroSession.run does
        name = "__default__" if requested is None else requested[0]
        # KedroSession.run: Pipeline([]) + each named pipeline, then filter().
        run = (Pipeline([]) + pipelines[name]).filter()
        assert isinstance(run, PipelineML), name
        assert {n.name for n in run.nodes} == expected | {"export_scorer_checkpoint"}
        assert run.input_name == "scoring_request"
        assert run.log_model_kwargs["name"] == MODEL_NAME
        assert run.inference.outputs() == {"scoring_response"}
    pipelines.set_requested(None)
    assert "inference" not in pipelines and "score" in pipelines
    configure_project("oct_vae")


def test_score_pipeline_in_a_session_writes_versioned_results_and_heatmaps(
    tiny_project, scan_folder, score_results
):
    # paths relative to score.input_dir: where the scans sit is not recorded
    files = sorted(p.relative_to(scan_folder).as_posix() for p in scan_folder.rglob("*")
                   if p.is_file())
    assert sorted(score_results["path"]) == files
    bad = score_results[score_results["error"].notna()]
    assert bad["path"].map(lambda p: Path(p).name).tolist() == ["notes.txt"]
    good = score_results[score_results["error"].isna()]
    assert len(good) == 2 and good["anomalous"].isin([True, False]).all()
    assert np.isfinite(good[SCORES].to_numpy()).all()
    for key in good["heatmap"]:
        assert key.endswith(".png") and "/clinic/" in key
        with Image.open(tiny_project.path / "data/tiny/08_reporting/score_heatmaps" / key) as png:
            assert png.size == (990, 352)
    client = MlflowClient(tracking_uri=tiny_project.tracking_uri)
    exp = client.get_experiment_by_name("oct-vae-tiny")
    run = client.search_runs(
        [exp.experiment_id], "attributes.run_name = 'score'", order_by=["start_time DESC"]
    )[0]
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "scoring")}
    assert logged == {"scoring/score_results.csv"}


def test_logged_model_gives_the_score_pipelines_scores(tiny_project, scan_folder, score_results):
    _, model = _latest_scorer(tiny_project)
    mlflow.set_tracking_uri(tiny_project.tracking_uri)
    scorer = mlflow.pyfunc.load_model(f"runs:/{model.source_run_id}/{MODEL_NAME}")
    paths = score_results["path"].tolist()
    request = pd.DataFrame(
        {"id": paths, "image_b64": [_b64(scan_folder / p) for p in paths]}
    )
    out = scorer.predict(request)
    assert out["id"].tolist() == paths
    assert out["error"].isna().tolist() == score_results["error"].isna().tolist()
    for col in [*SCORES, *(f"{s}_percentile" for s in SCORES), "threshold"]:
        np.testing.assert_allclose(
            out[col].astype(float), score_results[col].astype(float), rtol=1e-6, equal_nan=True
        )
    assert out["anomalous"].tolist() == [
        None if pd.isna(v) else bool(v) for v in score_results["anomalous"]
    ]


def test_model_server_scores_a_scan_and_reports_bad_rows(
    tiny_project, scan_folder, score_results, tmp_path
):
    """`python -m oct_vae.serve -m runs:/<id>/oct_vae_scorer` (MLflow's scoring server,
    hardened): HTTP 200 with one row per scan (an ``error`` on the rows that cannot be
    scored); HTTP 400 for an empty request, one over ``score.max_request_bytes`` (2 MB in
    the tiny environment), JSON nested too deeply and malformed JSON; HTTP 413 for a body
    over the server's limit; one log line per request."""
    _, model = _latest_scorer(tiny_project)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tiny_project.tracking_uri,
        "OMP_NUM_THREADS": "1",  # one scan at a time: threads only contend on a busy CPU
        # The project's plain one-line log format, as when serving from the project root.
        "KEDRO_LOGGING_CONFIG": str(tiny_project.path / "conf" / "logging.yml"),
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "oct_vae.serve",
        "-m",
        f"runs:/{model.source_run_id}/{MODEL_NAME}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for_http(proc, f"{url}/health", log, "model server", SERVER_START_S)
        good = score_results[score_results["error"].isna()].iloc[0]
        scan = scan_folder / good["path"]  # the path may be absolute
        payload = {
            "dataframe_split": {
                "columns": ["id", "image_b64"],
                "data": [
                    ["scan", _b64(scan)],
                    ["malformed", "this is not base64!"],
                    ["text", base64.b64encode(b"just some text").decode()],
                ],
            }
        }
        answer = requests.post(f"{url}/invocations", json=payload, timeout=60)
        assert answer.status_code == 200, answer.text
        rows = answer.json()["predictions"]
        assert [r["id"] for r in rows] == ["scan", "malformed", "text"]
        assert rows[0]["error"] is None and isinstance(rows[0]["anomalous"], bool)
        for name in SCORES:
            assert rows[0][name] == pytest.approx(good[name], rel=1e-6)
            assert 0 <= rows[0][f"{name}_percentile"] <= 100
        flag = base_flag_score()  # the tiny environment flags with the base setting
        assert rows[0]["flag_score"] == flag
        assert rows[0]["anomalous"] == (rows[0][flag] > rows[0]["threshold"])
        assert rows[1]["error"].startswith("malformed base64") and rows[1]["vae"] is None
        assert rows[2]["error"] == "not an image (unrecognised file format)"

        def post(data: bytes) -> requests.Response:
            return requests.post(
                f"{url}/invocations",
                data=data,
                headers={"Content-Type": "application/json"},
                timeout=60,
            )

        empty = {"dataframe_split": {"columns": ["image_b64"], "data": []}}
        refused = requests.post(f"{url}/invocations", json=empty, timeout=60)
        assert refused.status_code == 400 and "empty request" in refused.json()["message"]

        # Over score.max_request_bytes (2 MB here), under the body limit: the model says no.
        big = json.dumps({"dataframe_records": [{"image_b64": "A" * 2_500_000}]}).encode()
        refused = post(big)
        assert refused.status_code == 400, refused.text
        message = refused.json()["message"]
        assert "request too large: 2,500,000 bytes" in message
        assert "at most 2,000,000 per request (score.max_request_bytes)" in message
        # Over the body limit (1.25 x 2 MB + 1 MiB): refused unread.
        refused = post(b'{"dataframe_records": [{"image_b64": "' + b"A" * 5_000_000 + b'"}]}')
        assert refused.status_code == 413, refused.text
        assert "request body is too large" in refused.json()["message"]
        # JSON nested 100,000 deep (a RecursionError in Python's json) and malformed JSON.
        refused = post(b"[" * 100_000 + b"]" * 100_000)
        assert refused.status_code == 400, refused.text
        assert "nested too deeply" in refused.json()["message"]
        refused = post(b'{"dataframe_records": [{"image_b64": "QUJD"}' + b"x" * 50_000)
        assert refused.status_code == 400, refused.text
        assert "valid JSON" in refused.json()["message"] and len(refused.content) < 4_000

        # Still serving: two requests in a row, the same scores, one log line each.
        logged = len(log.read_text().splitlines())
        for _ in range(2):
            again = requests.post(
                f"{url}/invocations",
                json={"dataframe_records": [{"image_b64": _b64(scan)}]},
                timeout=60,
            )
            assert again.status_code == 200
            assert again.json()["predictions"][0]["vae"] == rows[0]["vae"]
        lines = log.read_text().splitlines()[logged:]
        scoring = [line for line in lines if '"POST /invocations HTTP/1.1"' not in line]
        assert len(scoring) == 2, lines
        assert all("scored a request: 1 rows, 1 scored, 0 errors" in line for line in scoring)
    finally:
        stop_process_group(proc)


def test_score_without_a_model_names_the_train_command(tmp_path, scan_folder):
    project = copy_project(tmp_path / "no_model")
    try:
        with pytest.raises(MissingInputsError, match=r"vae_model.*kedro run --pipeline train"):
            run_session(
                project,
                pipeline_names=["score"],
                runtime_params={"score": {"input_dir": str(scan_folder)}},
            )
    finally:
        _end_stale_mlflow_runs()
