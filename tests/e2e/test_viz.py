"""kedro-viz on the tiny project: ``kedro viz run`` serves the whole pipeline with its data
layers, tags and dataset previews (checked through the app's REST API, which is what the
page draws; scripts/screenshots.py looks at the page itself in a browser)."""

from __future__ import annotations

import base64
import glob
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import requests

from tests.e2e.conftest import wait_for_http
from tests.helpers.project import free_port, stop_process_group

pytestmark = pytest.mark.slow

# How long `kedro viz run` may take to answer on a busy 2-core machine (about 10 s idle).
VIZ_START_S = 90
LAYERS = ["raw", "intermediate", "primary", "model_input", "models", "model_output", "reporting"]
FIGURES = ["reconstruction_grid", "roc_curves", "score_distributions"]


def offline_env() -> dict[str, str]:
    """The environment for kedro-viz here: no telemetry, and its PyPI version check (on
    start and on every /api/version) refused at once by a closed local port instead of
    waiting for a network this machine may not have."""
    closed = "http://127.0.0.1:9"
    return {
        **os.environ,
        "KEDRO_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "HTTPS_PROXY": closed,
        "https_proxy": closed,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def _latest(project: Path, pattern: str) -> Path:
    files = sorted(glob.glob(str(project / pattern)))
    assert files, f"nothing matches {pattern}"
    return Path(files[-1])


@pytest.fixture(scope="module")
def viz(tiny_project, tmp_path_factory) -> Iterator[str]:
    """``kedro viz run --env tiny`` in the tiny project; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("viz") / "viz.log"
    cmd = [
        str(Path(sys.executable).parent / "kedro"),
        "viz",
        "run",
        "--no-browser",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--env",
        "tiny",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=tiny_project.path,
            env=offline_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_http(proc, f"{url}/api/main", log, "kedro viz", VIZ_START_S)
        yield url
    finally:
        stop_process_group(proc)


def _get(url: str) -> dict:
    answer = requests.get(url, timeout=30)
    assert answer.status_code == 200, answer.text[:500]
    return answer.json()


def test_viz_shows_every_pipeline_node_layer_and_tag(viz):
    main = _get(f"{viz}/api/main")
    assert {p["id"] for p in main["pipelines"]} == {
        "__default__",
        "ingest",
        "train",
        "evaluate",
        "score",
        "promote",
    }
    assert main["selected_pipeline"] == "__default__"
    assert main["layers"] == LAYERS  # in the order of the data's flow
    assert {"ingest", "train", "training", "evaluate", "score"} <= {t["id"] for t in main["tags"]}

    nodes = {n["name"]: n for n in main["nodes"]}
    tasks = {name for name, n in nodes.items() if n["type"] == "task"}
    # the whole default pipeline, named by its (readable, verb) node names
    assert {
        "index_scans",
        "decode_scans",
        "split_scans",
        "gather_split_images",
        "train_vae",
        "calibrate_model",
        "export_scorer_checkpoint",
        "score_test_set",
        "build_auc_table",
        "build_statistical_report",
        "plot_reconstructions",
        "plot_roc_curves",
        "plot_score_distributions",
    } <= tasks
    assert {"train", "training"} <= set(nodes["train_vae"]["tags"])
    assert nodes["build_auc_table"]["tags"] == ["evaluate"]
    assert set(nodes["score_test_set"]["pipelines"]) == {"__default__", "evaluate"}

    layer_of = {name: n["layer"] for name, n in nodes.items() if n["type"] == "data"}
    assert {
        "raw_scans": "raw",
        "rejected_files": "intermediate",
        "oct_manifest": "primary",
        "train_images": "model_input",
        "test_images": "model_input",
        "vae_model": "models",
        "training_history": "model_output",
        "test_scores": "model_output",
        "auc_table": "reporting",
        "roc_curves": "reporting",
        "reconstruction_grid": "reporting",
        "score_distributions": "reporting",
    }.items() <= layer_of.items()
    assert "vae_pytorch_model" not in nodes  # one model per run: vae_model (and the scorer)
    # every dataset written to disk sits in a layer (in-memory and MLflow metrics need none)
    unlayered = [
        n["name"]
        for n in main["nodes"]
        if n["type"] == "data"
        and not n["layer"]
        and not n["dataset_type"].endswith(("MemoryDataset", "MlflowMetricsBatchDataset"))
    ]
    assert unlayered == []

    # and it is one connected graph: the model trained by `train` feeds `evaluate`
    ids = {name: n["id"] for name, n in nodes.items()}
    edges = {(e["source"], e["target"]) for e in main["edges"]}
    assert (ids["calibrate_model"], ids["vae_model"]) in edges
    assert (ids["vae_model"], ids["score_test_set"]) in edges

    score = _get(f"{viz}/api/pipelines/score")
    assert {n["name"] for n in score["nodes"] if n["type"] == "task"} == {
        "find_scans",
        "score_scans",
    }
    assert {n["name"]: n.get("layer") for n in score["nodes"]}["score_results"] == "model_output"


def test_viz_previews_the_auc_table_and_the_figures(viz, tiny_project):
    ids = {n["name"]: n["id"] for n in _get(f"{viz}/api/main")["nodes"]}

    table = _get(f"{viz}/api/nodes/{ids['auc_table']}")
    assert table["preview_type"] == "TablePreview"
    saved = pd.read_csv(_latest(tiny_project.path, "data/tiny/08_reporting/auc_table.csv/*/*.csv"))
    assert table["preview"]["columns"] == ["score", "CNV", "DME", "Drusen", "All"]
    # every row (preview_args nrows: 20 in the catalog, more than the table has)
    assert [row[0] for row in table["preview"]["data"]] == saved["score"].tolist()

    for name in FIGURES:
        figure = _get(f"{viz}/api/nodes/{ids[name]}")
        assert figure["preview_type"] == "ImagePreview", name
        png = base64.b64decode(figure["preview"])
        latest = _latest(tiny_project.path, f"data/tiny/08_reporting/{name}.png/*/{name}.png")
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == latest.read_bytes(), name
