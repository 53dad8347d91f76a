"""End to end: `kedro run` on a tiny phantom, MLflow pointed at a temporary folder."""

from __future__ import annotations

import glob
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from oct_vae.framework.hooks import MissingInputsError
from oct_vae.vae.checkpoint import load_model
from tests.e2e.conftest import run_session
from tests.helpers.project import copy_project


def _latest(project, pattern):
    files = sorted(glob.glob(str(project.path / pattern)))
    assert files, f"nothing matches {pattern}"
    return files[-1]


def _run(project):
    client = MlflowClient(tracking_uri=project.tracking_uri)
    exp = client.get_experiment_by_name("oct-vae-tiny")
    assert exp is not None, "the experiment is named after the environment (conf/tiny/globals.yml)"
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    assert runs
    return client, runs[-1]  # the first run: the full `kedro run`


def test_mlflow_run_has_params_loss_history_metrics_and_model(tiny_project):
    client, run = _run(tiny_project)
    params = run.data.params
    assert params["train.width"] == "4" and params["train.latent_dim"] == "300"
    assert params["train.lr"] == "0.0001" and params["seed"] == "2024"
    assert run.data.tags["kedro_env"] == "tiny"
    history = client.get_metric_history(run.info.run_id, "val_total")
    assert [m.step for m in history] == [1, 2]
    assert all(np.isfinite(m.value) for m in history)
    assert "train_recon" in run.data.metrics and "val_kl" in run.data.metrics
    # every logged AUC is scikit-learn's AUC of the run's own logged test scores
    from sklearn.metrics import roc_auc_score

    scores = pd.read_csv(client.download_artifacts(
        run.info.run_id, "evaluation/test_scores.csv", str(tiny_project.path / "dl")))
    for key, column, diseases in (
        ("auc_reconstruction_cnv", "reconstruction", ["CNV"]),
        ("auc_kl_all", "kl", ["CNV", "DME", "DRUSEN"]),
        ("auc_vae_drusen", "vae", ["DRUSEN"]),
        ("auc_baseline_mean_intensity_all", "baseline_mean_intensity", ["CNV", "DME", "DRUSEN"]),
    ):
        keep = scores["label"].isin(["NORMAL", *diseases])
        expected = roc_auc_score(scores.loc[keep, "label"] != "NORMAL", scores.loc[keep, column])
        assert run.data.metrics[key] == pytest.approx(expected, abs=1e-12), key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoint", "evaluation", "figures", "training"} <= artifacts
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {
        "figures/reconstruction_grid.png",
        "figures/roc_curves.png",
        "figures/score_distributions.png",
    } <= figures
    # one model per run: the servable scorer (beside the checkpoint artifact), no pickled
    # network; the checkpoint artifact rebuilds the trained network
    models = client.search_logged_models([run.info.experiment_id])
    assert [m.name for m in models if m.source_run_id == run.info.run_id] == ["oct_vae_scorer"]
    (artifact,) = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")]
    local = client.download_artifacts(run.info.run_id, artifact, str(tiny_project.path / "dl"))
    net = load_model(torch.load(local, weights_only=True), "cpu")
    logits, mu, _ = net(torch.rand(1, 1, 128, 128), sample=False)
    assert logits.shape == (1, 1, 128, 128) and mu.shape == (1, 300, 1, 1)


def test_vae_model_loads_from_the_catalog_and_auc_table_is_complete(tiny_project):
    from kedro.io import Version

    from oct_vae.datasets import TorchCheckpointDataset

    ckpt = TorchCheckpointDataset(
        str(tiny_project.path / "data/tiny/06_models/vae_model.pt"), version=Version(None, None)
    ).load()
    assert ckpt["model_config"]["latent_dim"] == 300
    assert {"state_dict", "calibration", "latent_fit", "mean_normal"} <= set(ckpt)

    table = pd.read_csv(
        _latest(tiny_project, "data/tiny/08_reporting/auc_table.csv/*/auc_table.csv")
    )
    assert list(table.columns) == ["score", "CNV", "DME", "Drusen", "All"]
    rows = table["score"].tolist()
    assert rows[:5] == [
        "Reconstruction",
        "KL",
        "VAE",
        "Baseline: mean intensity",
        "Baseline: distance to mean normal",
    ]
    scores = pd.read_csv(
        _latest(tiny_project, "data/tiny/07_model_output/test_scores.csv/*/test_scores.csv")
    )
    # the table is scikit-learn's AUC of the saved scores
    from sklearn.metrics import roc_auc_score

    keep = scores["label"].isin(["NORMAL", "DME"])
    expected = roc_auc_score(scores.loc[keep, "label"] == "DME", scores.loc[keep, "reconstruction"])
    assert table.set_index("score").loc["Reconstruction", "DME"] == pytest.approx(expected)
    for fig in ("reconstruction_grid", "roc_curves", "score_distributions"):
        assert _latest(tiny_project, f"data/tiny/08_reporting/{fig}.png/*/{fig}.png")


def test_evaluate_reruns_on_its_own_with_the_latest_model(tiny_project):
    before = sorted(glob.glob(str(tiny_project.path / "data/tiny/08_reporting/auc_table.csv/*")))
    run_session(tiny_project.path, pipeline_names=["evaluate"])
    after = sorted(glob.glob(str(tiny_project.path / "data/tiny/08_reporting/auc_table.csv/*")))
    assert len(after) == len(before) + 1
    old = pd.read_csv(f"{before[-1]}/auc_table.csv")
    new = pd.read_csv(f"{after[-1]}/auc_table.csv")
    pd.testing.assert_frame_equal(old, new)  # same model, same seeds: same numbers


def test_evaluate_without_a_model_names_the_command_to_run(tmp_path):
    project = copy_project(tmp_path / "empty")
    with pytest.raises(MissingInputsError, match="kedro run --pipeline ingest"):
        run_session(project, pipeline_names=["evaluate"])
    run_session(project, pipeline_names=["ingest"])
    with pytest.raises(MissingInputsError, match=r"vae_model.*kedro run --pipeline train"):
        run_session(project, pipeline_names=["evaluate"])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"evaluate": {"n_samples": 2}}, "it is now train.scoring.n_samples (read by the train"),
        ({"train": {"scoring": {"n_samples": 2}}}, "it is read by the train pipeline"),
        ({"score": {"heatmaps": False}}, "it is read by the score pipeline"),
    ],
)
def test_evaluate_refuses_parameters_it_does_not_read_before_any_node(tiny_project, overrides,
                                                                      expected):
    from oct_vae.framework.params import ParameterError

    with pytest.raises(ParameterError, match=re.escape(expected)):
        run_session(tiny_project.path, pipeline_names=["evaluate"], runtime_params=overrides)


def test_a_run_beside_a_cpu_heavy_process_gives_the_same_auc_table(tiny_project, tmp_path):
    """The numbers of a run do not depend on how busy the machine is: no setting that
    changes them is timed (oct_vae.training.fast_path). A second full tiny run, from scratch, with a
    busy-looping process beside it, must give the first run's AUC table."""
    project = copy_project(tmp_path / "loaded")
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        run_session(project)
    finally:
        burner.kill()
        burner.wait()
    first = sorted(glob.glob(str(tiny_project.path / "data/tiny/08_reporting/auc_table.csv/*")))[0]
    quiet = pd.read_csv(f"{first}/auc_table.csv").set_index("score")
    (table,) = glob.glob(str(project / "data/tiny/08_reporting/auc_table.csv/*/auc_table.csv"))
    loaded = pd.read_csv(table)
    pd.testing.assert_frame_equal(quiet.round(3), loaded.set_index("score").round(3))
