"""Every Kedro environment keeps its own outputs and MLflow runs (docs/environments.md):
its catalog paths and checkpoints under its own data root, its own SQLite store and
experiment, so a run of one environment never becomes what another one loads as "latest".

Checked on the configuration as a Kedro session loads it (settings.py's loader), without
running anything."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path, PurePosixPath

import pytest
from kedro.config import OmegaConfigLoader

from oct_vae.settings import CONFIG_LOADER_ARGS

REPO = Path(__file__).resolve().parents[1]
# Each environment with a SQLite store of its own: data root, store, experiment.
LOCAL = {
    "base": ("data/base", "mlflow.db", "oct-vae"),
    "tiny": ("data/tiny", "mlflow-tiny.db", "oct-vae-tiny"),
    "kermany": ("data/kermany", "mlflow-kermany.db", "oct-vae-kermany"),
}
ENVS = (*LOCAL, "team")
# Datasets with no file: in memory, MLflow's own, or read from outside the project.
NO_PATH = {"real_scans"}
MLFLOW_PATTERNS = {"mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"]}


def _loader(env: str, monkeypatch) -> OmegaConfigLoader:
    monkeypatch.chdir(REPO)  # ${project_root:} is the working directory's project
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")  # team
    return OmegaConfigLoader(
        str(REPO / "conf"), env=env, config_patterns=MLFLOW_PATTERNS, **CONFIG_LOADER_ARGS
    )


def _paths(loader: OmegaConfigLoader) -> dict[str, str]:
    """Every file or folder the environment writes or reads in the project: each catalog
    entry's filepath/path, and train.checkpoint_dir."""
    out = {}
    for name, entry in loader["catalog"].items():
        if name.startswith("_") or not isinstance(entry, dict) or name in NO_PATH:
            continue
        for key in ("filepath", "path"):
            if key in entry:
                out[name] = entry[key]
    out["params:train.checkpoint_dir"] = loader["parameters"]["train"]["checkpoint_dir"]
    return out


def _under(path: str, root: str) -> bool:
    return PurePosixPath(root) in PurePosixPath(path).parents


@pytest.mark.parametrize("env", ENVS)
def test_every_path_is_under_the_environments_data_root(env, monkeypatch):
    loader = _loader(env, monkeypatch)
    root = loader["globals"]["data_root"]
    assert root == f"data/{env}"
    paths = _paths(loader)
    # every dataset of conf/base with a file, the raw scans included
    assert {"raw_scans", "oct_manifest", "{split}_images", "vae_model", "auc_table",
            "score_heatmaps", "scorer_checkpoint"} <= set(paths)
    outside = {name: p for name, p in paths.items() if not _under(p, root)}
    assert not outside, f"{env}: not under {root}: {outside}"
    # relative: MLflow records them, and the project may move
    assert not [p for p in paths.values() if Path(p).is_absolute()]


@pytest.mark.parametrize("env", LOCAL)
def test_each_environment_has_its_own_store_and_experiment(env, monkeypatch):
    root, db, experiment = LOCAL[env]
    conf = _loader(env, monkeypatch)["mlflow"]
    project = REPO.resolve().as_posix()
    assert conf["server"]["mlflow_tracking_uri"] == f"sqlite:///{project}/{db}"
    assert conf["tracking"]["experiment"]["name"] == experiment
    location = conf["tracking"]["experiment"]["create_experiment_kwargs"]["artifact_location"]
    assert location == f"{project}/mlruns/{experiment}"
    assert _loader(env, monkeypatch)["globals"]["data_root"] == root


def test_the_team_environment_tracks_on_the_server_with_its_own_data(monkeypatch):
    loader = _loader("team", monkeypatch)
    conf = loader["mlflow"]
    assert conf["server"]["mlflow_tracking_uri"] == "http://tracking.example:5000"
    assert conf["tracking"]["experiment"]["name"] == "oct-vae"  # the team's shared one
    assert loader["globals"]["data_root"] == "data/team"


def test_roots_stores_and_experiments_are_distinct_and_paths_never_overlap(monkeypatch):
    for i in range(3):  # data roots, stores, experiments: pairwise distinct
        values = [v[i] for v in LOCAL.values()]
        assert len(set(values)) == len(values), values
    resolved = {env: set(_paths(_loader(env, monkeypatch)).values()) for env in ENVS}
    for a, b in combinations(ENVS, 2):
        for pa in resolved[a]:
            for pb in resolved[b]:
                overlap = pa == pb or _under(pa, pb) or _under(pb, pa)
                assert not overlap, f"{a} {pa} and {b} {pb} overlap"


def test_the_kermany_raw_folder_defaults_under_its_root_and_takes_raw_dir(monkeypatch):
    monkeypatch.chdir(REPO)
    default = OmegaConfigLoader(str(REPO / "conf"), env="kermany", **CONFIG_LOADER_ARGS)
    assert default["catalog"]["raw_scans"]["path"] == "data/kermany/01_raw/OCT2017"
    given = OmegaConfigLoader(
        str(REPO / "conf"), env="kermany", runtime_params={"raw_dir": "/scans/OCT2017"},
        **CONFIG_LOADER_ARGS,
    )
    assert given["catalog"]["raw_scans"]["path"] == "/scans/OCT2017"
