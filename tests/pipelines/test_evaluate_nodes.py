import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from oct_vae.detector import operating_threshold
from oct_vae.lineage import LineageError, row_hashes
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
RUN = {"run_id": "2026-01-01T00.00.00.000Z", "project_root": ".", "versions": {}}


@pytest.fixture(scope="module")
def tiny_model_and_data():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 255, (24, 128, 128), dtype=np.uint8)
    val = rng.integers(0, 255, (10, 128, 128), dtype=np.uint8)
    test = rng.integers(0, 255, (16, 128, 128), dtype=np.uint8)
    ckpt, history, metrics = train_vae(train, val, TRAIN, seed=0, device="cpu", run_info=RUN)
    assert len(history) == 1 and set(metrics) >= {"train_total", "val_total"}
    model, network = calibrate_model(ckpt, train, val, 2, 8, 5.0, 2.0, 5.0, 0, "cpu")
    assert isinstance(network, torch.nn.Module)
    labels = ["NORMAL"] * 8 + ["CNV"] * 3 + ["DME"] * 3 + ["DRUSEN"] * 2
    test_rows = pd.DataFrame(
        {
            "path": [f"x/{i}.jpeg" for i in range(16)],
            "label": labels,
            "patient_id": [str(100 + i // 2) for i in range(16)],
            "split": "test",
            "row": range(16),
            "sha1": row_hashes(test),
        }
    )
    manifest = pd.concat([_normal_rows("train", train), _normal_rows("val", val), test_rows])
    return model, train, val, test, manifest.reset_index(drop=True)


def _normal_rows(split, images):
    n = len(images)
    return pd.DataFrame(
        {
            "path": [f"{split}/{i}.jpeg" for i in range(n)],
            "label": "NORMAL",
            "patient_id": [f"{split}{i}" for i in range(n)],
            "split": split,
            "row": range(n),
            "sha1": row_hashes(images),
        }
    )


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
            "run_info": MemoryDataset(RUN),
        }
    )
    out = SequentialRunner().run(create_pipeline(), catalog)
    loaded = {k: (v.load() if hasattr(v, "load") else v) for k, v in out.items()}
    assert {"auc_table", "auc_metrics", "auc_report", "roc_curves", "reconstruction_grid"} <= set(
        loaded
    )
    from oct_vae.pipelines.evaluate.nodes import score_test_set

    scores = score_test_set(model, test, manifest, "cpu")
    test_paths = manifest.loc[manifest["split"] == "test", "path"].tolist()
    assert len(scores) == 16 and scores["path"].tolist() == test_paths
    table = loaded["auc_table"]
    assert table["score"].tolist()[:3] == ["Reconstruction", "KL", "VAE"]
    assert np.allclose(scores["vae"], scores["reconstruction"] + scores["kl"])
    metrics = loaded["auc_metrics"]
    assert metrics["auc_reconstruction_cnv"]["value"] == pytest.approx(
        table.set_index("score").loc["Reconstruction", "CNV"]
    )
    md = loaded["auc_report_markdown"]
    assert "| Reconstruction |" in md and "Patient-level" in md
    # every result names the data and the model it was computed from
    report = loaded["auc_report"]
    assert (report["data_fingerprint"] == model["metadata"]["data_fingerprint"]).all()
    assert (report["run_id"] == RUN["run_id"]).all()
    assert f"data_fingerprint: `{model['metadata']['data_fingerprint']}`" in md


def test_a_manifest_from_another_ingest_run_is_a_clear_error(tiny_model_and_data):
    from oct_vae.pipelines.evaluate.nodes import score_test_set

    model, _, _, test, manifest = tiny_model_and_data
    with pytest.raises(ValueError, match="different ingest runs"):
        score_test_set(model, test[:10], manifest, "cpu")


def test_test_rows_that_are_not_the_manifests_scans_are_refused(tiny_model_and_data):
    from oct_vae.pipelines.evaluate.nodes import score_test_set

    model, _, _, test, manifest = tiny_model_and_data
    other = test.copy()
    other[3] ^= 1  # same count, one scan different: an array of another ingest run
    with pytest.raises(LineageError, match=r"1 of 16 rows.*x/3.jpeg.*kedro run --pipeline ingest"):
        score_test_set(model, other, manifest, "cpu")


def test_a_model_trained_on_another_split_is_refused(tiny_model_and_data):
    from oct_vae.pipelines.evaluate.nodes import score_test_set

    model, _, _, test, manifest = tiny_model_and_data
    moved = manifest.copy()
    # one training scan moved to validation: another split of the same scans
    first_train = moved.index[moved["split"] == "train"][0]
    moved.loc[first_train, "split"] = "val"
    moved.loc[first_train, "row"] = -1
    with pytest.raises(LineageError, match=r"other data.*kedro run --pipeline train"):
        score_test_set(model, test, moved, "cpu")
    legacy = {**model, "metadata": {k: v for k, v in model["metadata"].items()
                                    if k != "data_fingerprint"}}
    with pytest.raises(LineageError, match="no data fingerprint"):
        score_test_set(legacy, test, manifest, "cpu")


def test_a_model_for_another_image_size_is_refused(tiny_model_and_data):
    from oct_vae.pipelines.evaluate.nodes import check_model_matches_split

    model, _, _, test, manifest = tiny_model_and_data
    with pytest.raises(LineageError, match=r"takes 128x128 images but test_images holds 64x64"):
        check_model_matches_split(model, manifest, test[:, :64, :64])


def test_operating_threshold_never_reads_test_labels(tiny_model_and_data):
    model, _, _, test, manifest = tiny_model_and_data
    from oct_vae.pipelines.evaluate.nodes import score_test_set

    scores = score_test_set(model, test, manifest, "cpu")
    shuffled = scores.copy()
    shuffled["label"] = np.random.default_rng(1).permutation(scores["label"].to_numpy())
    a, _, _ = build_statistical_report(scores, model, 10, 0.95, 0, RUN)
    b, _, _ = build_statistical_report(shuffled, model, 10, 0.95, 0, RUN)
    np.testing.assert_array_equal(a["threshold"], b["threshold"])
    val_recon = model["calibration"]["reconstruction"].numpy()
    rec = a[a["score_key"] == "reconstruction"]["threshold"].iloc[0]
    assert rec == operating_threshold(val_recon, 0.95)
    assert set(a["level"]) == {"image", "patient"}
    assert (a["ci_low"] <= a["auc"] + 1e-12).all() and (a["auc"] <= a["ci_high"] + 1e-12).all()
