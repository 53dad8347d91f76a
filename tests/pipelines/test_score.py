"""The ``score`` pipeline on an in-memory catalog (heatmaps on disk), and the nodes of the
``inference`` pipeline that the MLflow model runs."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.partitions import PartitionedDataset
from mlflow.exceptions import MlflowException
from PIL import Image

from oct_vae.detector import AnomalyDetector, operating_threshold
from oct_vae.hooks import PRODUCERS
from oct_vae.imaging import load_scan
from oct_vae.lineage import LineageError, data_fingerprint
from oct_vae.model import VAE, VAEConfig
from oct_vae.pipelines.inference.nodes import score_request
from oct_vae.pipelines.score import create_pipeline
from oct_vae.pipelines.score.nodes import find_scans, score_scans
from oct_vae.pipelines.train.nodes import calibrate_model
from oct_vae.training import TrainConfig, make_checkpoint

# MatplotlibDataset at dpi 110 of plots.heatmap_figure's 9 x 3.2 inch figure.
HEATMAP_PNG_SIZE = (990, 352)
MAX_PIXELS = 40_000_000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def vae_model() -> dict:
    """A small untrained model, calibrated like the train pipeline's ``vae_model``."""
    torch.manual_seed(0)
    config = VAEConfig(image_size=128, width=2, latent_dim=8)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 255, (12, 128, 128), dtype=np.uint8)
    val = rng.integers(0, 255, (20, 128, 128), dtype=np.uint8)
    meta = {"data_fingerprint": data_fingerprint(train, val), "image_size": 128}
    ckpt = make_checkpoint(VAE(config), config, TrainConfig(seed=0, device="cpu"), meta)
    calibrated, _ = calibrate_model(ckpt, train, val, 2, 8, 5.0, 2.0, 5.0, 0, "cpu")
    return calibrated


@pytest.fixture()
def mixed_folder(tiny_phantom_dir: Path, tmp_path: Path) -> Path:
    """Phantom scans in nested folders, an RGB PNG of an odd size, and files that are not
    scans."""
    root = tmp_path / "to_score"
    scans = sorted(tiny_phantom_dir.rglob("*.jpeg"))
    (root / "a" / "b").mkdir(parents=True)
    for i, scan in enumerate(scans[:4]):
        shutil.copy(scan, root / ("a" if i % 2 else "a/b") / scan.name)
    rgb = np.random.default_rng(3).integers(0, 255, (211, 300, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "colour scan.png")
    (root / "notes.txt").write_text("not a scan")
    (root / "empty.jpeg").write_bytes(b"")
    (root / "a" / "truncated.jpeg").write_bytes(scans[5].read_bytes()[:400])
    return root


def _run_score(vae_model: dict, folder: Path, heatmap_dir: Path, flag_score="reconstruction"):
    catalog = DataCatalog(
        {
            "vae_model": MemoryDataset(vae_model, copy_mode="assign"),
            "params:score.input_dir": MemoryDataset(str(folder)),
            "params:ingest.max_image_pixels": MemoryDataset(MAX_PIXELS),
            "params:ingest.workers": MemoryDataset(1),
            "params:score.flag_score": MemoryDataset(flag_score),
            "params:score.specificity": MemoryDataset(0.95),
            "params:device": MemoryDataset("cpu"),
            "score_results": MemoryDataset(),
            "score_heatmaps": PartitionedDataset(
                path=str(heatmap_dir),
                dataset={"type": "matplotlib.MatplotlibDataset", "save_args": {"dpi": 110}},
            ),
        }
    )
    SequentialRunner().run(create_pipeline(), catalog)
    return catalog.load("score_results")


def _check_heatmaps(table: pd.DataFrame, heatmap_dir: Path) -> None:
    scored = table[table["error"].isna()]
    pngs = sorted(p.relative_to(heatmap_dir).as_posix() for p in heatmap_dir.rglob("*.png"))
    assert pngs == sorted(scored["heatmap"])
    for key in scored["heatmap"]:
        with Image.open(heatmap_dir / key) as png:
            assert png.size == HEATMAP_PNG_SIZE


def test_score_pipeline_scores_every_file_with_the_ingest_preprocessing(
    vae_model, mixed_folder, tmp_path
):
    heatmap_dir = tmp_path / "heatmaps"
    table = _run_score(vae_model, mixed_folder, heatmap_dir)

    files = sorted(p.relative_to(mixed_folder).as_posix() for p in mixed_folder.rglob("*")
                   if p.is_file())
    # one row per file, recursively; paths relative to score.input_dir (not recorded)
    assert sorted(table["path"]) == files
    errors = dict(zip(table["path"].map(lambda p: Path(p).name), table["error"]))
    assert errors["notes.txt"] == "not an image (unrecognised file format)"
    assert errors["empty.jpeg"] == "empty file (0 bytes)"
    assert errors["truncated.jpeg"].startswith("truncated or corrupt")
    scored = table[table["error"].isna()]
    assert len(scored) == 5  # 4 phantom JPEGs + the RGB PNG

    detector = AnomalyDetector(vae_model, "cpu")
    threshold = operating_threshold(detector.calibration["reconstruction"], 0.95)
    for row in scored.itertuples():
        expected = detector.score(load_scan(mixed_folder / row.path, 128, MAX_PIXELS)[None])
        for name in ("reconstruction", "kl", "vae"):
            assert getattr(row, name) == pytest.approx(expected[name][0], rel=1e-12)
            assert 0 <= getattr(row, f"{name}_percentile") <= 100
        assert row.threshold == threshold
        assert row.anomalous == bool(row.reconstruction > threshold)
    assert table[table["error"].notna()][["reconstruction", "heatmap"]].isna().all().all()
    _check_heatmaps(table, heatmap_dir)
    assert {Path(k).parts[0] for k in scored["heatmap"]} == {
        Path(scored["heatmap"].iloc[0]).parts[0]
    }  # one run folder, mirroring the input layout below it
    assert any(
        k.endswith("/a/b/" + Path(p).name + ".png")
        for k, p in zip(scored["heatmap"], scored["path"])
    )

    # A second run writes a new run folder and leaves the first one as it was.
    first = {p: p.read_bytes() for p in heatmap_dir.rglob("*.png")}
    again = _run_score(vae_model, mixed_folder, heatmap_dir)
    assert set(again["heatmap"].dropna()).isdisjoint(set(scored["heatmap"]))
    assert all(p.read_bytes() == b for p, b in first.items())
    assert len(list(heatmap_dir.rglob("*.png"))) == 2 * len(scored)
    pd.testing.assert_frame_equal(
        again.drop(columns="heatmap"), table.drop(columns="heatmap")
    )  # same model, same files: same numbers


def test_score_pipeline_on_the_real_kermany_sample(vae_model, kermany_sample_dir, tmp_path):
    heatmap_dir = tmp_path / "heatmaps"
    table = _run_score(vae_model, kermany_sample_dir, heatmap_dir, flag_score="vae")
    images = sorted(
        p.relative_to(kermany_sample_dir).as_posix() for p in kermany_sample_dir.rglob("*.jpeg")
    )
    assert len(images) == 32
    scored = table[table["error"].isna()]
    assert sorted(scored["path"]) == images
    # the sample's README is listed too, as a file that is not a scan
    assert table[table["error"].notna()]["error"].tolist() == [
        "not an image (unrecognised file format)"
    ]
    assert np.isfinite(scored[["reconstruction", "kl", "vae"]].to_numpy(dtype=float)).all()
    assert (table["flag_score"] == "vae").all()
    assert (scored["anomalous"] == (scored["vae"] > scored["threshold"])).all()
    _check_heatmaps(table, heatmap_dir)


def test_heatmap_shows_the_scan_its_reconstruction_and_the_error(vae_model, mixed_folder):
    files = find_scans(str(mixed_folder))
    table, heatmaps = score_scans(vae_model, files, MAX_PIXELS, 1, "reconstruction", 0.95, "cpu")
    key = table["heatmap"].dropna().iloc[0]
    path = table.loc[table["heatmap"] == key, "path"].iloc[0]
    fig = heatmaps[key]()  # drawn only when the dataset saves it
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["scan", "reconstruction", "squared error"]
    scan = load_scan(mixed_folder / path, 128, MAX_PIXELS) / 255.0
    np.testing.assert_allclose(panels[0].images[0].get_array(), scan)
    recon = panels[1].images[0].get_array()
    error = panels[2].images[1].get_array()  # overlaid on the scan
    assert recon.shape == error.shape == (128, 128)
    np.testing.assert_allclose(error, (scan - recon) ** 2, atol=1e-5)
    assert Path(path).name in fig._suptitle.get_text()


@pytest.mark.parametrize("value", [None, ""])
def test_no_input_dir_tells_the_command(value):
    with pytest.raises(ValueError, match=r"kedro run --pipeline score --params score.input_dir="):
        find_scans(value)


def test_a_missing_or_empty_input_dir_tells_the_command(tmp_path):
    with pytest.raises(ValueError, match=r"is not a folder.*--params score.input_dir="):
        find_scans(str(tmp_path / "nowhere"))
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"holds no files.*--params score.input_dir="):
        find_scans(str(tmp_path / "empty"))


def test_without_a_model_the_missing_inputs_hook_names_the_train_command():
    assert "vae_model" in create_pipeline().inputs()
    assert PRODUCERS["vae_model"] == "kedro run --pipeline train"


# ------------------------------------------------- inference pipeline (the served model)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_a_model_without_lineage_is_refused(vae_model, mixed_folder, tmp_path):
    legacy = {**vae_model, "metadata": {}}
    with pytest.raises(LineageError, match=r"no data fingerprint.*kedro run --pipeline train"):
        _run_score(legacy, mixed_folder, tmp_path / "heatmaps")


def _request(vae_model, frame: pd.DataFrame, max_rows: int = 64) -> pd.DataFrame:
    return score_request(
        vae_model, frame, MAX_PIXELS, 20_000_000, max_rows, "reconstruction", 0.95, "cpu"
    )


def test_inference_node_agrees_with_the_score_pipeline_and_echoes_ids(vae_model, mixed_folder):
    files = find_scans(str(mixed_folder))
    table, _ = score_scans(vae_model, files, MAX_PIXELS, 1, "reconstruction", 0.95, "cpu")
    request = pd.DataFrame(
        {
            "id": [f"scan-{i}" for i in range(len(files))],
            "image_b64": files["path"].map(lambda p: _b64(Path(p))),
        }
    )
    out = _request(vae_model, request)
    assert list(out.columns[:2]) == ["id", "reconstruction"] and out.columns[-1] == "error"
    assert out["id"].tolist() == request["id"].tolist()
    expected = table.drop(columns=["path", "heatmap"])
    got = out.drop(columns="id")
    assert list(got.columns) == list(expected.columns)
    for col in ("reconstruction", "kl", "vae", "reconstruction_percentile", "threshold"):
        np.testing.assert_allclose(got[col].astype(float), expected[col].astype(float), rtol=1e-12)
    assert got["anomalous"].tolist() == [None if pd.isna(v) else v for v in expected["anomalous"]]
    assert got["error"].isna().tolist() == expected["error"].isna().tolist()
    # JSON-ready: failed rows hold None, never NaN
    failed = out[out["error"].notna()]
    assert len(failed) == 3 and failed["reconstruction"].map(lambda v: v is None).all()


def test_inference_node_refuses_empty_too_large_or_columnless_requests(vae_model):
    with pytest.raises(MlflowException, match="empty request"):
        _request(vae_model, pd.DataFrame({"image_b64": pd.Series([], dtype=str)}))
    with pytest.raises(MlflowException, match="too many rows: 3, at most 2"):
        _request(vae_model, pd.DataFrame({"image_b64": ["a", "b", "c"]}), max_rows=2)
    with pytest.raises(MlflowException, match="no 'image_b64' column"):
        _request(vae_model, pd.DataFrame({"image": ["a"]}))


def test_inference_node_reports_bad_rows_and_scores_the_rest(vae_model, tiny_phantom_dir):
    scan = sorted(tiny_phantom_dir.rglob("*.jpeg"))[0]
    buf = io.BytesIO()
    Image.new("L", (64, 64)).save(buf, format="PNG")
    tiny_png = base64.b64encode(buf.getvalue()[:30]).decode()
    out = _request(
        vae_model, pd.DataFrame({"image_b64": [_b64(scan), "%%%", "", tiny_png, str(scan)]})
    )
    assert out["error"].iloc[0] is None and out["anomalous"].iloc[0] in (True, False)
    assert out["error"].iloc[1].startswith("malformed base64")
    assert out["error"].iloc[2].startswith("empty image_b64")
    assert out["error"].iloc[3] is not None
    assert out["error"].iloc[4] is not None  # a path is not an image
