"""The ``train`` pipeline on an in-memory catalog, with Kedro's runner."""

from __future__ import annotations

import numpy as np
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from oct_vae.data.lineage import data_fingerprint
from oct_vae.pipelines.train import create_pipeline
from oct_vae.vae.detector import AnomalyDetector

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RUN_ID = "2026-01-01T00.00.00.000Z"


def test_train_pipeline_runs_on_an_in_memory_catalog(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 255, (20, 32, 32), dtype=np.uint8)
    val = rng.integers(0, 255, (8, 32, 32), dtype=np.uint8)
    params = {"width": 2, "latent_dim": 8, "n_blocks": 3, "epochs": 2, "batch_size": 8,
              "checkpoint_dir": "ckpt", "resume": False, "progress": False, "amp": "off"}
    scoring = {"n_samples": 2, "batch_size": 8, "top_k_percent": 5.0, "residual_sigma": 1.0,
               "filtered_top_k_percent": 1.0}
    params["scoring"] = scoring  # as in conf: train.scoring lives in params:train
    catalog = DataCatalog({
        "train_images": MemoryDataset(train),
        "val_images": MemoryDataset(val),
        "run_info": MemoryDataset({"run_id": RUN_ID, "project_root": str(tmp_path)}),
        "params:train": MemoryDataset(params),
        "params:seed": MemoryDataset(0),
        "params:device": MemoryDataset("cpu"),
        "params:train.scoring": MemoryDataset(scoring),
    })
    out = SequentialRunner().run(create_pipeline(), catalog)
    loaded = {k: (v.load() if hasattr(v, "load") else v) for k, v in out.items()}
    # one model per run: the calibrated checkpoint (no separately pickled network)
    assert create_pipeline().outputs() == {"vae_model", "training_history", "training_metrics"}
    assert {"vae_model", "training_history", "training_metrics"} <= set(loaded)
    model = loaded["vae_model"]
    assert model["metadata"]["data_fingerprint"] == data_fingerprint(train, val)
    assert list(loaded["training_history"]["epoch"]) == [1, 2]
    assert [m["step"] for m in loaded["training_metrics"]["val_total"]] == [1, 2]
    # the checkpoint folder is the run's own, under the project root
    assert (tmp_path / "ckpt" / RUN_ID / "last.pt").exists()
    # the calibrated model scores
    scores = AnomalyDetector(model).score(val[:2])
    assert np.isfinite(scores["reconstruction"]).all()
