"""Project settings: where MLflow's store lives, whatever the working directory."""

from pathlib import Path

from kedro.config import OmegaConfigLoader

from oct_vae.settings import CONFIG_LOADER_ARGS

REPO = Path(__file__).resolve().parents[1]


def _mlflow_conf() -> dict:
    loader = OmegaConfigLoader(
        str(REPO / "conf"), env="base", config_patterns={"mlflow": ["mlflow*"]},
        **CONFIG_LOADER_ARGS,
    )
    return loader["mlflow"]


def test_mlflow_store_is_the_project_root_one_from_any_subfolder(monkeypatch):
    expected = f"sqlite:///{REPO.resolve().as_posix()}/mlflow.db"
    for cwd in (REPO, REPO / "notebooks", REPO / "src" / "oct_vae"):
        monkeypatch.chdir(cwd)
        conf = _mlflow_conf()
        assert conf["server"]["mlflow_tracking_uri"] == expected
        location = conf["tracking"]["experiment"]["create_experiment_kwargs"]["artifact_location"]
        assert location == f"{REPO.resolve().as_posix()}/mlruns/oct-vae"


def test_outside_a_project_the_store_follows_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    uri = _mlflow_conf()["server"]["mlflow_tracking_uri"]
    assert uri == f"sqlite:///{tmp_path.resolve().as_posix()}/mlflow.db"


def test_checkpoints_go_to_the_project_data_folder_from_any_subfolder(monkeypatch, tmp_path):
    """The parameter is relative (MLflow records it; no absolute path), and the train node
    resolves it against the project root, into a folder of the run's own."""
    from oct_vae.pipelines.train.nodes import checkpoint_folders

    monkeypatch.chdir(REPO / "notebooks")
    for env in ("base", "kermany", "tiny"):
        loader = OmegaConfigLoader(str(REPO / "conf"), env=env, **CONFIG_LOADER_ARGS)
        params = loader["parameters"]["train"]
        assert not Path(params["checkpoint_dir"]).is_absolute(), env
        run = {"run_id": "2026-01-01T00.00.00.000Z", "project_root": str(tmp_path)}
        folder, resume = checkpoint_folders(params, run)
        assert Path(folder).parent.parent == tmp_path / "data" / env / "06_models", env
        assert Path(folder).name == run["run_id"] and resume is False
