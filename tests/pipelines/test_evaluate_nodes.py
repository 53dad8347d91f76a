import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from oct_vae.detector import operating_threshold
from oct_vae.pipelines.evaluate import create_pipeline
from oct_vae.pipelines.evaluate.nodes import build_statistical_report
from oct_vae.pipelines.train.nodes import calibrate_model, train_vae

TRAIN = {
    "width": 4,
    "latent_dim": 300,
    "epochs": 1,
    "batch_size": 8,
    "checkpoint_dir": None,
    "progress": False,
}


@pytest.fixture(scope="module")
def tiny_model_and_data():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 255, (24, 128, 128), dtype=np.uint8)
    val = rng.integers(0, 255, (10, 128, 128), dtype=np.uint8)
    test = rng.integers(0, 255, (16, 128, 128), dtype=np.uint8)
    ckpt, history, metrics = train_vae(train, val, TRAIN, seed=0, device="cpu")
    assert len(history) == 1 and set(metrics) >= {"train_total", "val_total"}
    model, network = calibrate_model(ckpt, train, val, 2, 8, 5.0, 2.0, 5.0, 0, "cpu")
    assert isinstance(network, torch.nn.Module)
    labels = ["NORMAL"] * 8 + ["CNV"] * 3 + ["DME"] * 3 + ["DRUSEN"] * 2
    manifest = pd.DataFrame(
        {
            "path": [f"x/{i}.jpeg" for i in range(16)],
            "label": labels,
            "patient_id": [str(100 + i // 2) for i in range(16)],
            "split": "test",
            "row": range(16),
        }
    )
    return model, train, val, test, manifest


def test_evaluate_pipeline_runs_standalone_on_an_in_memory_catalog(tiny_model_and_data):
    model, train, val, test, manifest = tiny_model_and_data
    catalog = DataCatalog(
        {
            "vae_model": MemoryDataset(model),
            "test_images": MemoryDataset(test),
            "val_images": MemoryDataset(val),
            "oct_manifest": MemoryDataset(manifest),
            "params:device": MemoryDataset("cpu"),
            "params:seed": MemoryDataset(0),
            "params:evaluate.n_bootstrap": MemoryDataset(20),
            "params:evaluate.specificity": MemoryDataset(0.9),
            "params:evaluate.n_examples": MemoryDataset(9),
        }
    )
    out = SequentialRunner().run(create_pipeline(), catalog)
    loaded = {k: (v.load() if hasattr(v, "load") else v) for k, v in out.items()}
    assert {"auc_table", "auc_metrics", "auc_report", "roc_curves", "reconstruction_grid"} <= set(
        loaded
    )
    from oct_vae.pipelines.evaluate.nodes import score_test_set

    scores = score_test_set(model, test, manifest, "cpu")
    assert len(scores) == 16 and scores["path"].tolist() == manifest["path"].tolist()
    table = loaded["auc_table"]
    assert table["score"].tolist()[:3] == ["Reconstruction", "KL", "VAE"]
    assert np.allclose(scores["vae"], scores["reconstruction"] + scores["kl"])
    metrics = loaded["auc_metrics"]
    assert metrics["auc_reconstruction_cnv"]["value"] == pytest.approx(
        table.set_index("score").loc["Reconstruction", "CNV"]
    )
    md = loaded["auc_report_markdown"]
    assert "| Reconstruction |" in md and "Patient-level" in md


def test_a_manifest_from_another_ingest_run_is_a_clear_error(tiny_model_and_data):
    from oct_vae.pipelines.evaluate.nodes import score_test_set

    model, _, _, test, manifest = tiny_model_and_data
    with pytest.raises(ValueError, match="different ingest runs"):
        score_test_set(model, test[:10], manifest, "cpu")


def test_operating_threshold_never_reads_test_labels(tiny_model_and_data):
    model, _, _, test, manifest = tiny_model_and_data
    from oct_vae.pipelines.evaluate.nodes import score_test_set

    scores = score_test_set(model, test, manifest, "cpu")
    shuffled = scores.copy()
    shuffled["label"] = np.random.default_rng(1).permutation(scores["label"].to_numpy())
    a, _, _ = build_statistical_report(scores, model, 10, 0.95, 0)
    b, _, _ = build_statistical_report(shuffled, model, 10, 0.95, 0)
    np.testing.assert_array_equal(a["threshold"], b["threshold"])
    val_recon = model["calibration"]["reconstruction"].numpy()
    rec = a[a["score_key"] == "reconstruction"]["threshold"].iloc[0]
    assert rec == operating_threshold(val_recon, 0.95)
    assert set(a["level"]) == {"image", "patient"}
    assert (a["ci_low"] <= a["auc"] + 1e-12).all() and (a["auc"] <= a["ci_high"] + 1e-12).all()
