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

from oct_vae.data import imaging
from oct_vae.data.imaging import bounded_map, decode_scans, iter_decoded, load_scan
from oct_vae.data.lineage import LineageError, data_fingerprint
from oct_vae.evaluation import plots
from oct_vae.framework.hooks import PRODUCERS
from oct_vae.pipelines.inference.nodes import score_request
from oct_vae.pipelines.score import create_pipeline
from oct_vae.pipelines.score import heatmaps as heatmaps_module
from oct_vae.pipelines.score import stream as score_stream
from oct_vae.pipelines.score.nodes import find_scans, score_scans
from oct_vae.pipelines.train.nodes import calibrate_model
from oct_vae.serving import scoring as serving
from oct_vae.training.trainer import TrainConfig
from oct_vae.vae.checkpoint import make_checkpoint
from oct_vae.vae.config import BASELINE_SCORES, EXTRA_SCORES, PAPER_SCORES
from oct_vae.vae.detector import AnomalyDetector, operating_threshold
from oct_vae.vae.model import VAE, VAEConfig
from oct_vae.vae.scores import reconstruct

# train.scoring of a small test model: L = 2, batch 8, k 5 %, filter sigma 2 px, k 5 %.
SCORING = {"n_samples": 2, "batch_size": 8, "top_k_percent": 5.0, "residual_sigma": 2.0,
           "filtered_top_k_percent": 5.0}

# MatplotlibDataset at dpi 110 of plots.heatmap_figure's 9 x 3.2 inch figure.
HEATMAP_PNG_SIZE = (990, 352)
MAX_PIXELS = 40_000_000
# Every score of the answer, in its column order: the paper's, beyond it, the baselines.
SCORE_NAMES = (*PAPER_SCORES, *EXTRA_SCORES, *BASELINE_SCORES)


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
    calibrated = calibrate_model(ckpt, train, val, SCORING, 0, "cpu")
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


def _run_score(
    vae_model: dict,
    folder: Path,
    heatmap_dir: Path,
    flag_score="reconstruction",
    heatmaps: bool = True,
    workers: int = 1,
):
    catalog = DataCatalog(
        {
            "vae_model": MemoryDataset(vae_model, copy_mode="assign"),
            "params:score.input_dir": MemoryDataset(str(folder)),
            "params:ingest.max_image_pixels": MemoryDataset(MAX_PIXELS),
            "params:ingest.workers": MemoryDataset(workers),
            "params:score.flag_score": MemoryDataset(flag_score),
            "params:score.specificity": MemoryDataset(0.95),
            "params:device": MemoryDataset("cpu"),
            "params:score.heatmaps": MemoryDataset(heatmaps),
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

    files = sorted(
        p.relative_to(mixed_folder).as_posix() for p in mixed_folder.rglob("*") if p.is_file()
    )
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
        assert set(expected) == set(SCORE_NAMES)  # every score that evaluation reports
        for name in SCORE_NAMES:
            assert getattr(row, name) == expected[name][0]
            assert getattr(row, f"{name}_percentile") == detector.percentile(
                name, expected[name][0]
            )
        assert row.threshold == threshold
        assert row.anomalous == bool(row.reconstruction > threshold)
    assert list(table.columns) == [
        "path",
        "heatmap",
        *SCORE_NAMES,
        *(f"{n}_percentile" for n in SCORE_NAMES),
        "flag_score",
        "threshold",
        "anomalous",
        "error",
    ]
    assert table[table["error"].notna()][[*SCORE_NAMES, "heatmap"]].isna().all().all()
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
    # the sample's README is not a scan: skipped, no row
    assert table["error"].isna().all()
    assert np.isfinite(scored[["reconstruction", "kl", "vae"]].to_numpy(dtype=float)).all()
    assert (table["flag_score"] == "vae").all()
    assert (scored["anomalous"] == (scored["vae"] > scored["threshold"])).all()
    _check_heatmaps(table, heatmap_dir)


def test_heatmap_shows_the_scan_its_reconstruction_and_the_error(vae_model, mixed_folder):
    files = find_scans(str(mixed_folder))
    table, heatmaps = score_scans(vae_model, files, MAX_PIXELS, 1, "reconstruction", 0.95, "cpu")
    detector = AnomalyDetector(vae_model, "cpu")
    keys = table["heatmap"].dropna().tolist()
    assert sorted(heatmaps) == sorted(keys)
    for key in keys:
        row = table[table["heatmap"] == key].iloc[0]
        scan = load_scan(mixed_folder / row["path"], 128, MAX_PIXELS)
        recon, error = reconstruct(detector.model, scan[None], detector.score_config, "cpu")
        title = (
            f"{Path(row['path']).name}: reconstruction {row['reconstruction']:.1f} "
            f"(percentile {row['reconstruction_percentile']:.0f} of validation normals) - "
            f"{'ANOMALOUS' if row['anomalous'] else 'normal'}"
        )
        fig = plots.heatmap_figure(scan, recon[0], error[0], title)
        expected = io.BytesIO()
        fig.savefig(expected, dpi=110)
        got = io.BytesIO()
        heatmaps[key]().savefig(got, dpi=110)  # what the partitioned dataset calls
        # The figures reused by the drawing processes give a new figure's PNG, to the pixel.
        with Image.open(expected) as a, Image.open(got) as b:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_reused_figure_draws_what_a_new_one_draws(tmp_path):
    rng = np.random.default_rng(0)
    heatmaps_module._FIGURES.clear()
    for i, scale in enumerate([1.0, 0.05, 1.0, 0.002, 0.3, 0.05]):
        scan = rng.integers(0, 255, (128, 128), dtype=np.uint8)
        recon = rng.random((128, 128)).astype(np.float32)
        error = (scale * rng.random((128, 128))).astype(np.float32)
        title = f"scan {i}: {'x' * i}"
        heatmaps_module.draw_heatmap(scan, recon, error, title, str(tmp_path / f"{i}.png"), 110)
        fig = plots.heatmap_figure(scan, recon, error, title)
        fig.savefig(tmp_path / f"new{i}.png", dpi=110)
        with Image.open(tmp_path / f"{i}.png") as a, Image.open(tmp_path / f"new{i}.png") as b:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(heatmaps_module._FIGURES) < 6  # reused where the colour bar's labels match


def _scan_folder(tiny_phantom_dir: Path, root: Path, n: int) -> Path:
    """``n`` phantom scans and two files that are not scans, in two folders."""
    scans = sorted(tiny_phantom_dir.rglob("*.jpeg"))[:n]
    for i, scan in enumerate(scans):
        (root / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(scan, root / f"d{i % 2}" / f"{i:03d}_{scan.name}")
    (root / "d0" / "050_notes.txt").write_text("not a scan")
    (root / "d1" / "empty.jpeg").write_bytes(b"")
    return root


def test_streaming_gives_the_table_of_scoring_one_scan_at_a_time(
    vae_model, tiny_phantom_dir, tmp_path
):
    """Decoded on two processes in batches of score_config.batch_size (8 here: several
    batches, a short last one, failures inside batches) and scored batch by batch: every
    cell equals scoring each file on its own."""
    folder = _scan_folder(tiny_phantom_dir, tmp_path / "scans", 21)
    assert AnomalyDetector(vae_model, "cpu").score_config.batch_size == 8
    table = _run_score(vae_model, folder, tmp_path / "heatmaps", heatmaps=False, workers=2)
    detector = AnomalyDetector(vae_model, "cpu")
    files = find_scans(str(folder))
    assert table["path"].tolist() == files["key"].tolist()
    for row, path in zip(table.to_dict("records"), files["path"]):
        try:
            decoded = serving.Decoded(load_scan(path, 128, MAX_PIXELS)[None], [None])
        except imaging.RejectedScan as exc:
            decoded = serving.Decoded(np.zeros((1, 128, 128), np.uint8), [exc.reason])
        alone = serving.score_decoded(detector, decoded, "reconstruction", 0.95)
        for name, values in alone.items():
            expected = values[0]
            if expected is None:
                assert pd.isna(row[name]), name
            else:
                assert row[name] == expected, name


def test_heatmaps_off_draws_none(vae_model, tiny_phantom_dir, tmp_path, monkeypatch):
    folder = _scan_folder(tiny_phantom_dir, tmp_path / "scans", 5)

    def never(*args, **kwargs):
        raise AssertionError("no heatmap may be drawn")

    monkeypatch.setattr(heatmaps_module, "draw_heatmap", never)
    monkeypatch.setattr(score_stream, "reconstruct", never)
    heatmap_dir = tmp_path / "heatmaps"
    table = _run_score(vae_model, folder, heatmap_dir, heatmaps=False)
    assert table["heatmap"].isna().all() and table["error"].isna().sum() == 5
    assert not list(heatmap_dir.rglob("*.png"))
    files = find_scans(str(folder))
    _, drawn = score_scans(vae_model, files, MAX_PIXELS, 1, "reconstruction", 0.95, "cpu", False)
    assert drawn == {}


def test_the_decoder_holds_a_bounded_number_of_batches():
    """``bounded_map`` (behind ``iter_decoded``) reads its tasks lazily and never has more
    than ``max_in_flight`` submitted but not handed out, however slowly it is consumed."""
    from concurrent.futures import ThreadPoolExecutor

    pulled = 0

    def tasks():
        nonlocal pulled
        for i in range(50):
            pulled += 1
            yield i

    with ThreadPoolExecutor(4) as pool:
        out = []
        for result in bounded_map(lambda i: i * i, tasks(), pool, 3):
            assert pulled - len(out) <= 3 + 1  # the window, plus the task being submitted
            out.append(result)
    assert out == [i * i for i in range(50)]


def test_iter_decoded_streams_what_decode_scans_decodes(tiny_phantom_dir, tmp_path):
    folder = _scan_folder(tiny_phantom_dir, tmp_path / "scans", 13)
    paths = find_scans(str(folder))["path"].tolist()
    pixels, results = decode_scans(paths, 128, MAX_PIXELS, workers=1, progress=False)
    seen = 0
    for start, batch_results, batch in iter_decoded(paths, 128, MAX_PIXELS, 2, 4, 1):
        assert start == seen and len(batch) == len(batch_results) <= 4
        assert batch_results == results[start : start + len(batch)]
        np.testing.assert_array_equal(batch, pixels[start : start + len(batch)])
        seen += len(batch)
    assert seen == len(paths) == 15


def test_the_score_node_keeps_no_decoded_batch(vae_model, tiny_phantom_dir, tmp_path, monkeypatch):
    """Memory does not grow with the folder: once the node asks for the next batch, no
    batch before the one it is done with is still referenced (heatmaps drawn here)."""
    import gc
    import weakref

    folder = _scan_folder(tiny_phantom_dir, tmp_path / "scans", 20)
    alive: list[weakref.ref] = []
    real = imaging.iter_decoded

    def watched(*args, **kwargs):
        for batch in real(*args, **kwargs):
            gc.collect()
            assert sum(ref() is not None for ref in alive) <= 1  # the loop's last batch
            alive.append(weakref.ref(batch[2]))
            yield batch

    monkeypatch.setattr(imaging, "iter_decoded", watched)
    files = find_scans(str(folder))
    table, drawn = score_scans(vae_model, files, MAX_PIXELS, 1, "reconstruction", 0.95, "cpu")
    assert len(alive) == 3 and len(drawn) == 20  # 22 files in batches of 8


def test_heatmaps_are_drawn_with_a_bounded_number_in_flight(tmp_path):
    spool = heatmaps_module.HeatmapSpool(workers=2, max_in_flight=2)
    rng = np.random.default_rng(0)
    for i in range(6):
        image = rng.integers(0, 255, (128, 128), dtype=np.uint8)
        spool.add(f"run/{i}.png", image, image / 255.0, image / 255.0 * 0.1, f"scan {i}")
        assert len(spool._pending) <= 2
    files = spool.close()
    assert spool.peak_in_flight == 2 and sorted(files) == [f"run/{i}.png" for i in range(6)]
    out = io.BytesIO()
    files["run/3.png"]().savefig(out)
    with Image.open(out) as png:
        assert png.size == HEATMAP_PNG_SIZE


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
    # a truncated PNG header is not an image; a file path is not base64 (never opened)
    assert out["error"].iloc[3] == "not an image (unrecognised file format)"
    assert out["error"].iloc[4].startswith("malformed base64")
    assert out.loc[1:, "reconstruction"].map(lambda v: v is None).all()
