"""`torchrun` runs the whole Kedro session on every rank: only rank 0 saves and logs."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.helpers.project import copy_project

pytestmark = pytest.mark.slow

OUTPUTS = (
    "data/tiny/06_models/vae_model.pt",
    "data/tiny/06_models/scorer_checkpoint.pt",
    "data/tiny/07_model_output/training_history.csv",
)
# The same fast path on both sides (float32, no channels-last): the DDP trajectory then
# equals one process's up to summation order. Left on `auto`, each side measures its own
# choice (per-rank batch 8 vs 16), and a channels-last/contiguous pair differs by ~2e-4.
PARAMS = ["--params", "train.amp=\"off\",train.channels_last=\"off\",train.epochs=2"]


def _versions(project: Path) -> dict[str, list[str]]:
    return {o: sorted(glob.glob(str(project / o / "*" / Path(o).name))) for o in OUTPUTS}


def _runs(project: Path) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow-tiny.db'}")
    exp = client.get_experiment_by_name("oct-vae-tiny")
    return client.search_runs([exp.experiment_id]) if exp else []


def _run(cmd: list[str], project: Path) -> None:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def test_torchrun_job_saves_once_logs_once_and_matches_one_process(tiny_project, tmp_path):
    project = copy_project(tmp_path / "p")
    for layer in ("01_raw", "03_primary", "05_model_input"):  # the ingested data only
        shutil.copytree(tiny_project.path / "data/tiny" / layer, project / "data/tiny" / layer,
                        dirs_exist_ok=True)
    torchrun = Path(sys.executable).with_name("torchrun")
    _run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "kedro", "run",
          "--env", "tiny", "--pipeline", "train", *PARAMS], project)

    after_torchrun = _versions(project)
    assert all(len(v) == 1 for v in after_torchrun.values()), after_torchrun
    (run,) = _runs(project)
    assert run.info.status == "FINISHED" and run.data.params["train.amp"] == "off"
    assert run.data.params["train.channels_last"] == "off"
    ckpt_runs = list((project / "data/tiny/06_models/checkpoints").iterdir())
    assert len(ckpt_runs) == 1  # rank 0 alone wrote per-epoch checkpoints

    _run([sys.executable, "-m", "kedro", "run", "--env", "tiny", "--pipeline", "train",
          *PARAMS], project)
    one, ddp = (
        torch.load(_versions(project)[OUTPUTS[0]][i], weights_only=True) for i in (1, 0)
    )
    assert ddp["metadata"]["world_size"] == 2 and one["metadata"]["world_size"] == 1
    for key, value in one["state_dict"].items():
        torch.testing.assert_close(ddp["state_dict"][key], value, rtol=0, atol=1e-4)
