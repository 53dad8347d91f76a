"""The Model Registry on a file-backed SQLite store: ``ModelRegistryHook`` after a tiny
``kedro run`` (the version tagged, the first ``champion`` named), and
``kedro run --pipeline promote`` (the best version of the split wins; running it again
changes nothing). The same on a PostgreSQL server: tests/e2e/test_team_server.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from oct_vae.evaluation.metrics import metric_key
from oct_vae.framework import registry
from tests.e2e.conftest import run_session
from tests.helpers.project import base_flag_score, copy_project

pytestmark = pytest.mark.slow


def _client(project: Path) -> mlflow.MlflowClient:
    uri = f"sqlite:///{project / 'mlflow-tiny.db'}"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _only(pattern: str, project: Path) -> Path:
    (path,) = sorted(project.glob(pattern))
    return path


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> Path:
    """A scratch project with its own SQLite store, after one `kedro run --env tiny`."""
    project = copy_project(tmp_path_factory.mktemp("registry") / "project")
    run_session(project)
    return project


def test_a_training_run_tags_its_version_and_names_the_first_champion(registered):
    client = _client(registered)
    (version,) = client.search_model_versions(f"name = '{registry.MODEL_NAME}'")
    run = client.get_run(version.run_id)
    flag = base_flag_score()
    metric = metric_key("auc", flag, "All")
    checkpoint = torch.load(
        _only("data/tiny/06_models/vae_model.pt/*/vae_model.pt", registered), weights_only=True
    )
    manifest = pd.read_csv(
        _only("data/tiny/03_primary/oct_manifest.csv/*/oct_manifest.csv", registered)
    )
    assert version.tags == {
        registry.TAG_RUN: run.data.tags["run_id"],
        registry.TAG_ENV: "tiny",
        registry.TAG_DATA: checkpoint["metadata"]["data_fingerprint"],
        registry.TAG_AUC: repr(run.data.metrics[metric]),
        registry.TAG_FLAG: flag,
        registry.TAG_METRIC: metric,
        registry.TAG_SPLIT: registry.split_fingerprint(manifest),
    }
    assert registry.current_champion(client) == int(version.version)


def _add_version(client, like, auc: float, env: str = "tiny") -> int:
    """A new version of the registered model, tagged like ``like`` but with ``auc``."""
    version = client.create_model_version(registry.MODEL_NAME, like.source, run_id=like.run_id)
    tags = {**like.tags, registry.TAG_AUC: repr(auc), registry.TAG_ENV: env}
    registry.tag_versions(client, [int(version.version)], tags)
    return int(version.version)


def _promotions(client) -> list[dict[str, str]]:
    """The ``promote.*`` tags of the promote runs, oldest first."""
    experiment = client.get_experiment_by_name("oct-vae-tiny")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])
    return [
        {k: v for k, v in r.data.tags.items() if k.startswith("promote.")}
        for r in runs
        if "promote.version" in r.data.tags
    ]


def test_promote_moves_the_champion_to_the_best_version_once(registered, tmp_path):
    project = copy_project(tmp_path / "project")  # its own copy of the store
    shutil.copy(registered / "mlflow-tiny.db", project / "mlflow-tiny.db")
    client = _client(project)
    (first,) = client.search_model_versions(f"name = '{registry.MODEL_NAME}'")
    auc = float(first.tags[registry.TAG_AUC])
    best = _add_version(client, first, auc + 0.01)
    _add_version(client, first, auc - 0.01)  # newer, but worse
    _add_version(client, first, 1.0, env="base")  # another environment: never compared
    assert registry.current_champion(client) == int(first.version)

    run_session(project, pipeline_names=["promote"])
    assert registry.current_champion(client) == best
    run_session(project, pipeline_names=["promote"])
    assert registry.current_champion(client) == best
    moved, again = _promotions(client)
    assert moved["promote.changed"] == "true" and moved["promote.version"] == str(best)
    assert moved["promote.previous"] == str(first.version)
    assert again["promote.changed"] == "false" and again["promote.version"] == str(best)
