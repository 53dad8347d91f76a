import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from sklearn.metrics import roc_auc_score

from oct_vae.data.lineage import LineageError, row_hashes
from oct_vae.datasets import AtomicCSVDataset
from oct_vae.datasets.optional_scan_folder_dataset import OptionalScanFolderDataset
from oct_vae.evaluation.metrics import GROUPS
from oct_vae.evaluation.report import REAL_DATASET, TEST_DATASET
from oct_vae.pipelines.evaluate import create_pipeline
from oct_vae.pipelines.evaluate.nodes import build_statistical_report, score_real_scans
from oct_vae.pipelines.train.nodes import calibrate_model, train_vae
from oct_vae.vae.detector import operating_threshold
from tests.conftest import REAL_SCANS_ROOT

# train.scoring of a small test model: L = 2, batch 8, k 5 %, filter sigma 2 px, k 5 %.
SCORING = {"n_samples": 2, "batch_size": 8, "top_k_percent": 5.0, "residual_sigma": 2.0,
           "filtered_top_k_percent": 5.0}


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
    model = calibrate_model(ckpt, train, val, SCORING, 0, "cpu")
    # calibration adds what scoring needs and keeps the trained weights
    assert {"mean_normal", "latent_fit", "calibration"} <= set(model)
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(model["state_dict"][key], value), key
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


def run_evaluate(tiny_model_and_data, real_folder: Path, out: Path) -> dict:
    """Run the evaluate pipeline on an in-memory catalog (real_scan_scores: a CSV under
    ``out``, as in conf/base/catalog.yml); return every output."""
    model, train, val, test, manifest = tiny_model_and_data
    catalog = DataCatalog(
        {
            "vae_model": MemoryDataset(model),
            "test_images": MemoryDataset(test),
            "val_images": MemoryDataset(val),
            "oct_manifest": MemoryDataset(manifest),
            "real_scans": OptionalScanFolderDataset(str(real_folder)),
            "params:device": MemoryDataset("cpu"),
            "params:seed": MemoryDataset(0),
            "params:evaluate.n_bootstrap": MemoryDataset(20),
            "params:score.specificity": MemoryDataset(0.9),
            "params:score.flag_score": MemoryDataset("reconstruction"),
            "params:evaluate.n_examples": MemoryDataset(9),
            "params:ingest.max_image_pixels": MemoryDataset(40_000_000),
            "params:ingest.workers": MemoryDataset(1),
            "run_info": MemoryDataset(RUN),
            # read by collect_report_metrics too: a file, so the runner does not release it
            "auc_report": AtomicCSVDataset(filepath=str(out / "auc_report.csv")),
            "real_scan_scores": AtomicCSVDataset(
                filepath=str(out / "real_scan_scores.csv"),
                load_args={"dtype": {"patient_id": str, "label": str, "error": str}},
            ),
        }
    )
    out = SequentialRunner().run(create_pipeline(), catalog)
    loaded = {k: (v.load() if hasattr(v, "load") else v) for k, v in out.items()}
    loaded["real_scan_scores"] = catalog.load("real_scan_scores")
    loaded["auc_report"] = catalog.load("auc_report")
    # as read back from the CSV: an empty error (scored) is NaN there
    loaded["real_scan_scores"]["error"] = loaded["real_scan_scores"]["error"].fillna("")
    return loaded


def test_evaluate_pipeline_runs_standalone_on_an_in_memory_catalog(tiny_model_and_data, tmp_path):
    model, train, val, test, manifest = tiny_model_and_data
    loaded = run_evaluate(tiny_model_and_data, tmp_path / "no_real_scans", tmp_path)
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
    a, _ = build_statistical_report(scores, model, 10, 0.95, "reconstruction", 0, RUN)
    b, _ = build_statistical_report(shuffled, model, 10, 0.95, "reconstruction", 0, RUN)
    np.testing.assert_array_equal(a["threshold"], b["threshold"])
    val_recon = model["calibration"]["reconstruction"].numpy()
    rec = a[a["score_key"] == "reconstruction"]["threshold"].iloc[0]
    assert rec == operating_threshold(val_recon, 0.95)
    assert set(a["level"]) == {"image", "patient"}
    assert (a["ci_low"] <= a["auc"] + 1e-12).all() and (a["auc"] <= a["ci_high"] + 1e-12).all()


# ------------------------------------------------------------------ transfer to real scans


@pytest.fixture(scope="module")
def real_run(tiny_model_and_data, real_scans_root, tmp_path_factory):
    """The evaluate pipeline with real_scans at both real Kermany samples (59 scans)."""
    return run_evaluate(tiny_model_and_data, real_scans_root, tmp_path_factory.mktemp("ev"))


def test_real_scans_get_a_transfer_table_with_cis_and_baselines(real_run):
    per_scan = real_run["real_scan_scores"]
    # every file but the READMEs (not scans: skipped) has a row; paths relative to the folder
    assert not per_scan["path"].str.startswith("/").any()
    files = [p for p in REAL_SCANS_ROOT.rglob("*") if p.is_file()]
    assert len(per_scan) == sum(1 for p in files if not p.name.startswith("README"))
    scored = per_scan[per_scan["error"] == ""]
    assert len(scored) >= 59 and scored["label"].value_counts().min() >= 13
    not_scored = per_scan[per_scan["error"] != ""]
    assert not_scored["reconstruction"].isna().all() and scored["reconstruction"].notna().all()
    assert (scored["patient_id"] == scored["path"].str.extract(r"-(\d+)-\d+\.jpeg$")[0]).all()

    report = real_run["auc_report"]
    assert set(report["dataset"]) == {TEST_DATASET, REAL_DATASET}
    real = report[report["dataset"] == REAL_DATASET]
    assert {"baseline_mean_intensity", "baseline_distance_to_mean_normal", "reconstruction"} <= set(
        real["score_key"]
    )
    cells = real[real["column"] == "All"]
    assert np.isfinite(cells[["auc", "ci_low", "ci_high"]].to_numpy()).all()
    assert (cells["ci_low"] <= cells["auc"] + 1e-12).all()
    assert (cells["auc"] <= cells["ci_high"] + 1e-12).all()
    n_normal = int((scored["label"] == "NORMAL").sum())
    assert (cells.loc[cells["level"] == "image", "n_normal"] == n_normal).all()
    # the test split's rows are as before, with the same columns
    test_rows = report[report["dataset"] == TEST_DATASET]
    assert len(test_rows) == len(real)
    md = real_run["auc_report_markdown"]
    assert "## Transfer to real scans" in md and "Baseline: mean intensity" in md
    assert md.index("## Transfer to real scans") < md.index("## Provenance")
    metrics = real_run["report_metrics"]
    row = cells[cells["level"] == "image"].set_index("score_key").loc["reconstruction"]
    assert metrics["real_auc_reconstruction_all"]["value"] == pytest.approx(row["auc"])
    assert metrics["real_auc_reconstruction_all_ci_low"]["value"] == pytest.approx(row["ci_low"])
    assert "real_auc_baseline_mean_intensity_all" in metrics
    assert "auc_reconstruction_all" in metrics  # the test split's keys are unchanged


def test_transfer_aucs_equal_sklearn_on_the_per_scan_scores(real_run):
    per_scan = real_run["real_scan_scores"]
    scored = per_scan[per_scan["error"] == ""]
    report = real_run["auc_report"]
    real = report[(report["dataset"] == REAL_DATASET) & (report["level"] == "image")]
    for r in real.itertuples():
        keep = scored["label"].isin(("NORMAL", *GROUPS[r.column]))
        y = scored.loc[keep, "label"] != "NORMAL"
        expected = roc_auc_score(y, scored.loc[keep, r.score_key])
        assert r.auc == pytest.approx(expected, abs=1e-12), (r.score_key, r.column)


def test_an_absent_real_folder_is_a_clean_skip_with_one_log_line(
    tiny_model_and_data, tmp_path, caplog
):
    with caplog.at_level(logging.INFO, logger="oct_vae"):
        out = run_evaluate(tiny_model_and_data, tmp_path / "absent", tmp_path)
    lines = [r for r in caplog.records if "real scan" in r.getMessage().lower()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO, [r.getMessage() for r in lines]
    assert "skipped" in lines[0].getMessage() and "real_dir" in lines[0].getMessage()
    assert out["real_scan_scores"].empty
    assert set(out["auc_report"]["dataset"]) == {TEST_DATASET}
    assert "Transfer to real scans" not in out["auc_report_markdown"]
    assert not [k for k in out["report_metrics"] if k.startswith("real_")]


def test_real_scans_the_model_may_have_seen_are_not_scored(tiny_model_and_data, tmp_path):
    model, _, _, _, manifest = tiny_model_and_data
    folder = tmp_path / "real"
    (folder / "CNV").mkdir(parents=True)
    (folder / "NORMAL").mkdir()
    rng = np.random.default_rng(3)
    from PIL import Image

    for name in ("CNV/CNV-11-1.png", "NORMAL/NORMAL-12-1.png", "NORMAL/NORMAL-train0-1.png"):
        Image.fromarray(rng.integers(0, 255, (128, 128), dtype=np.uint8)).save(folder / name)
    (folder / "NORMAL" / "NORMAL-13-1.jpeg").write_bytes(b"not an image")
    out = score_real_scans(
        OptionalScanFolderDataset(str(folder)).load(), model, manifest, 40_000_000, 1, "cpu"
    ).set_index("path")
    assert out.loc["CNV/CNV-11-1.png", "error"] == ""
    assert "training or validation split" in out.loc["NORMAL/NORMAL-train0-1.png", "error"]
    assert "not an image" in out.loc["NORMAL/NORMAL-13-1.jpeg", "error"]
    assert out.loc[out["error"] != "", "reconstruction"].isna().all()
