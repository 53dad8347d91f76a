"""Environments that alternate in one checkout never read each other's outputs
(docs/environments.md): after a tiny run, the kermany ingest of the real sample scans
writes under data/kermany/ and into its own MLflow store, and the tiny evaluate that
follows still finds the tiny manifest and model as they were (before, both environments
wrote data/03_primary/oct_manifest.csv, and evaluate refused: the model "was trained on
other data than the training and validation rows of this oct_manifest")."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.e2e.conftest import run_session
from tests.helpers.project import copy_project

pytestmark = pytest.mark.slow

# The 32 real scans (8 per class) are too few for the kermany test-set sizes.
SMALL_SPLIT = {"test_normals": 2, "test_per_disease": 2, "val_fraction": 0.2}


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: (modification time in ns, size)."""
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _runs(project: Path, store: str, experiment: str) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{project / store}")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def _versions(project: Path, dataset: str) -> list[str]:
    return sorted(p.name for p in (project / dataset).iterdir())


def test_a_kermany_ingest_between_tiny_runs_leaves_the_tiny_outputs_alone(
    tiny_project, kermany_sample_dir, tmp_path
):
    # The tiny run's data in a project of its own (the shared tiny project stays as it is).
    project = copy_project(tmp_path / "p")
    shutil.copytree(tiny_project.path / "data" / "tiny", project / "data" / "tiny")
    tiny = project / "data" / "tiny"
    before = _files(tiny)
    manifests = _versions(project, "data/tiny/03_primary/oct_manifest.csv")
    tables = _versions(project, "data/tiny/08_reporting/auc_table.csv")

    run_session(project, env="kermany", pipeline_names=["ingest"],
                runtime_params={"raw_dir": str(kermany_sample_dir), "ingest": SMALL_SPLIT})

    assert _files(tiny) == before  # not one tiny file written, touched or added
    assert sorted(p.name for p in (project / "data").iterdir()) == ["kermany", "tiny"]
    (manifest,) = (project / "data/kermany/03_primary/oct_manifest.csv").glob("*/*.csv")
    assert set(pd.read_csv(manifest)["label"]) == {"NORMAL", "CNV", "DME", "DRUSEN"}
    for split in ("train", "val", "test"):
        assert list((project / f"data/kermany/05_model_input/{split}_images.npy").glob("*/*"))
    (ingest,) = _runs(project, "mlflow-kermany.db", "oct-vae-kermany")
    assert ingest.data.tags["kedro_env"] == "kermany"
    assert not _runs(project, "mlflow-tiny.db", "oct-vae-tiny")  # no tiny store touched
    assert not (project / "mlflow.db").exists()  # nor base's

    run_session(project, env="tiny", pipeline_names=["evaluate"])

    (evaluate,) = _runs(project, "mlflow-tiny.db", "oct-vae-tiny")
    assert evaluate.info.status == "FINISHED" and evaluate.data.tags["kedro_env"] == "tiny"
    # it read the tiny manifest, and wrote its results next to the tiny run's
    assert evaluate.data.tags["input_version.oct_manifest"] == manifests[-1]
    assert _versions(project, "data/tiny/03_primary/oct_manifest.csv") == manifests
    assert len(_versions(project, "data/tiny/08_reporting/auc_table.csv")) == len(tables) + 1
    assert not (project / "data/kermany/08_reporting").exists()
