"""Tests of ``oct_vae.serving.scoring``: base64 request rows -> images or per-row errors, limits,
and one result row per input; and of the served model as the model server runs it (the
``inference`` pipeline in kedro-mlflow's ``KedroPipelineModel``, MLflow's scoring app
hardened by ``oct_vae.serving.server``), in process."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline
from kedro.runner import SequentialRunner
from kedro_mlflow.mlflow import KedroPipelineModel
from mlflow.exceptions import MlflowException

import oct_vae.serving.cache
import oct_vae.vae.checkpoint
from oct_vae.data.imaging import RejectedScan, load_scan
from oct_vae.datasets import TorchCheckpointDataset
from oct_vae.pipelines.inference.nodes import score_request
from oct_vae.pipelines.inference.pipeline import INPUT_NAME, SIGNATURE, bind_to_training
from oct_vae.pipelines.train.nodes import calibrate_model
from oct_vae.serving import scoring as serving
from oct_vae.serving.cache import LoadedCheckpoint, checkpoint_fingerprint
from oct_vae.training.trainer import TrainConfig
from oct_vae.vae.checkpoint import make_checkpoint
from oct_vae.vae.config import BASELINE_SCORES, EXTRA_SCORES, PAPER_SCORES
from oct_vae.vae.detector import AnomalyDetector, operating_threshold
from oct_vae.vae.model import VAE, VAEConfig
from tests.test_imaging import encode, png_header_only

# train.scoring of a small test model: L = 2, batch 8, k 5 %, filter sigma 2 px, k 5 %.
SCORING = {"n_samples": 2, "batch_size": 8, "top_k_percent": 5.0, "residual_sigma": 2.0,
           "filtered_top_k_percent": 5.0}

SIZE = 128
# Every score of an answer, in column order: the paper's, beyond it, the two baselines.
SCORE_NAMES = (*PAPER_SCORES, *EXTRA_SCORES, *BASELINE_SCORES)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def scan_bytes() -> bytes:
    """A 300x200 grayscale JPEG with structure (not constant)."""
    rng = np.random.default_rng(0)
    img = (np.linspace(0, 255, 300)[None, :] * np.ones((200, 1))).astype(np.uint8)
    img[50:120] = rng.integers(0, 255, (70, 300), dtype=np.uint8)
    return encode(img, "JPEG")


def _reason(value, **kwargs) -> str:
    decoded = serving.decode_request([value], SIZE, 40_000_000, **kwargs)
    assert decoded.errors[0] is not None, "expected this row to be refused"
    assert not decoded.images[0].any()
    return decoded.errors[0]


def test_a_valid_jpeg_decodes_exactly_as_ingest_decodes_the_file(scan_bytes, tmp_path):
    path = tmp_path / "scan.jpeg"
    path.write_bytes(scan_bytes)
    decoded = serving.decode_request([b64(scan_bytes)], SIZE, 40_000_000)
    assert decoded.errors == [None] and decoded.ok.tolist() == [True]
    assert decoded.images.shape == (1, SIZE, SIZE) and decoded.images.dtype == np.uint8
    np.testing.assert_array_equal(decoded.images[0], load_scan(path, SIZE))


def test_rgb_png_of_any_size_becomes_its_luminance():
    rgb = np.zeros((90, 150, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red: ITU-R 601-2 luma 0.299 * 255 = 76
    decoded = serving.decode_request([b64(encode(rgb))], SIZE, 40_000_000)
    assert decoded.errors == [None]
    assert decoded.images[0].shape == (SIZE, SIZE)
    assert set(np.unique(decoded.images[0])) == {76}


def test_line_wrapped_base64_and_data_uri_are_accepted(scan_bytes):
    text = b64(scan_bytes)
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))  # GNU `base64`
    values = [text, wrapped, f"data:image/jpeg;base64,{text}"]
    decoded = serving.decode_request(values, SIZE, 40_000_000)
    assert decoded.errors == [None, None, None]
    assert (decoded.images == decoded.images[0]).all()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        (None, "missing"),
        (float("nan"), "missing"),
        (12345, "must be a base64 string"),
        ("not base64 at all!", "malformed base64"),
        ("QUJD=EFH", "malformed base64"),  # padding in the middle
        (b64(b"hello, I am plain text and not a scan"), "not an image"),
        (b64(b"\x00" * 100), "not an image"),
    ],
)
def test_bad_rows_get_a_reason(value, expected):
    assert expected in _reason(value)


def test_truncated_jpeg_is_refused(scan_bytes):
    assert "truncated or corrupt" in _reason(b64(scan_bytes[: len(scan_bytes) // 2]))


def test_decompression_bombs_are_refused_without_decoding():
    # Beyond Pillow's own limit: refused when the header is read.
    assert "decompression bomb" in _reason(b64(png_header_only(100_000, 100_000)))
    # Under Pillow's limit but over ours (48 M > 40 M pixels): refused before decoding.
    assert "exceeds 40000000 pixels" in _reason(b64(png_header_only(8_000, 6_000)))


def test_oversize_images_are_refused_before_and_after_decoding():
    noise = np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)
    raw = encode(noise)  # ~4 KB of incompressible PNG
    assert "too large" in _reason(b64(raw), max_bytes=1_000)
    # The base64 text alone says it is too large: it is not decoded at all (no padding
    # error although this text is not valid base64).
    assert "too large" in _reason("A" * 5_001, max_bytes=1_000)
    assert _reason(b64(raw), max_bytes=len(raw) - 1)
    assert serving.decode_request([b64(raw)], SIZE, 40_000_000, max_bytes=len(raw)).errors == [None]


def test_a_path_in_a_request_is_never_opened(scan_bytes, tmp_path):
    path = tmp_path / "scan.jpeg"
    path.write_bytes(scan_bytes)
    for value in (str(path), path.as_uri(), "/etc/passwd", "etc/passwd"):
        reason = _reason(value)
        assert "base64" in reason or "not an image" in reason


def test_rows_keep_their_order_and_bad_rows_do_not_stop_good_ones(scan_bytes):
    values = [b64(scan_bytes), "%%%", b64(scan_bytes[:200]), b64(scan_bytes)]
    decoded = serving.decode_request(values, SIZE, 40_000_000)
    assert decoded.ok.tolist() == [True, False, False, True]
    assert decoded.errors[1].startswith("malformed base64")
    np.testing.assert_array_equal(decoded.images[0], decoded.images[3])
    assert decoded.images[0].any() and not decoded.images[1:3].any()


def test_empty_and_oversized_requests_are_refused_as_a_whole():
    with pytest.raises(serving.BadRequest, match="empty request"):
        serving.check_request(0)
    with pytest.raises(serving.BadRequest, match="too many rows: 65, at most 64"):
        serving.check_request(65, max_rows=64)
    serving.check_request(64, max_rows=64)


# ------------------------------------------------------------------------ scoring rows


@pytest.fixture(scope="module")
def checkpoint() -> dict:
    """An untrained but calibrated small model: scores are arbitrary but real."""
    torch.manual_seed(0)
    config = VAEConfig(image_size=SIZE, width=2, latent_dim=8)
    ckpt = make_checkpoint(VAE(config), config, TrainConfig(seed=0, device="cpu"), {})
    rng = np.random.default_rng(0)
    train = rng.integers(0, 255, (12, SIZE, SIZE), dtype=np.uint8)
    val = rng.integers(0, 255, (20, SIZE, SIZE), dtype=np.uint8)
    calibrated = calibrate_model(ckpt, train, val, SCORING, 0, "cpu")
    return calibrated


@pytest.fixture(scope="module")
def detector(checkpoint) -> AnomalyDetector:
    return AnomalyDetector(checkpoint, "cpu")


def test_scored_rows_have_percentiles_threshold_flag_and_null_scores_on_errors(
    detector, scan_bytes
):
    decoded = serving.decode_request([b64(scan_bytes), "bad", b64(scan_bytes)], SIZE, 40_000_000)
    cols = serving.score_decoded(detector, decoded, "vae", 0.9)
    assert {len(v) for v in cols.values()} == {3}
    expected = detector.score(decoded.images[:1])
    threshold = operating_threshold(detector.calibration["vae"], 0.9)
    # every score that evaluation reports, then their percentiles, in that order
    assert list(cols) == [
        *SCORE_NAMES,
        *(f"{n}_percentile" for n in SCORE_NAMES),
        "flag_score",
        "threshold",
        "anomalous",
        "error",
    ]
    assert set(expected) == set(SCORE_NAMES) == set(detector.calibration)
    for name in SCORE_NAMES:
        assert cols[name][0] == expected[name][0]
        assert cols[name][2] == cols[name][0]
        ref = detector.calibration[name]
        assert cols[f"{name}_percentile"][0] == pytest.approx(
            100 * np.mean(ref < expected[name][0])
        )
        assert cols[name][1] is None and cols[f"{name}_percentile"][1] is None
    assert cols["threshold"] == [threshold] * 3 and cols["flag_score"] == ["vae"] * 3
    assert cols["anomalous"][0] == bool(expected["vae"][0] > threshold)
    assert cols["anomalous"][1] is None
    assert cols["error"][0] is None and cols["error"][1].startswith("malformed base64")


def test_a_scans_scores_do_not_depend_on_the_other_rows(detector, scan_bytes):
    other = encode(np.random.default_rng(5).integers(0, 255, (200, 200), dtype=np.uint8))
    alone = serving.score_decoded(
        detector, serving.decode_request([b64(scan_bytes)], SIZE, 40_000_000), "vae", 0.95
    )
    mixed = serving.score_decoded(
        detector,
        serving.decode_request([b64(other), b64(other), b64(scan_bytes)], SIZE, 40_000_000),
        "vae",
        0.95,
    )
    for name in SCORE_NAMES:
        assert mixed[name][2] == alone[name][0]
        assert mixed[f"{name}_percentile"][2] == alone[f"{name}_percentile"][0]


def test_batch_scoring_equals_scoring_each_scan_alone(detector, scan_bytes):
    """Rows are scored together, in batches of score_config.batch_size (8 here): 11 scans
    and two bad rows give, to the last bit, each scan's scores alone, which are
    ``AnomalyDetector.score``'s (the evaluate pipeline's) for that image."""
    rng = np.random.default_rng(7)
    values = [b64(encode(rng.integers(0, 255, (150, 170), dtype=np.uint8))) for _ in range(11)]
    values[3] = b64(scan_bytes)
    values.insert(5, "bad")
    values.append(None)
    assert detector.score_config.batch_size == 8
    decoded = serving.decode_request(values, SIZE, 40_000_000)
    together = serving.score_decoded(detector, decoded, "reconstruction", 0.95)
    for i, value in enumerate(values):
        alone = serving.score_decoded(
            detector, serving.decode_request([value], SIZE, 40_000_000), "reconstruction", 0.95
        )
        assert {k: v[i] for k, v in together.items()} == {k: v[0] for k, v in alone.items()}
        if decoded.errors[i] is None:
            own = detector.score(decoded.images[i : i + 1])
            for name in SCORE_NAMES:
                assert together[name][i] == own[name][0]
                assert together[f"{name}_percentile"][i] == detector.percentile(name, own[name])[0]


def test_flag_score_beyond_the_paper_adds_its_column_and_unknown_names_are_refused(
    detector, scan_bytes
):
    decoded = serving.decode_request([b64(scan_bytes)], SIZE, 40_000_000)
    cols = serving.score_decoded(detector, decoded, "latent_distance", 0.95)
    assert "latent_distance" in cols and "latent_distance_percentile" in cols
    assert cols["anomalous"][0] == bool(
        cols["latent_distance"][0] > detector.threshold("latent_distance", 0.95)
    )
    with pytest.raises(ValueError, match="not a calibrated score.*reconstruction"):
        serving.score_decoded(detector, decoded, "recon", 0.95)


def test_decode_b64_returns_the_exact_bytes(scan_bytes):
    assert serving.decode_b64(b64(scan_bytes)) == scan_bytes
    with pytest.raises(RejectedScan):
        serving.decode_b64(b64(scan_bytes), max_bytes=10)


def test_reading_a_path_string_as_bytes_never_touches_the_disk(tmp_path, monkeypatch):
    """Even a valid-base64-looking string is only decoded, never opened."""
    opened: list[str] = []
    real_open = open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    name = "AAAAscan"  # valid base64 text, and also a file in the working directory
    (tmp_path / name).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert "not an image" in _reason(name)
    assert not [p for p in opened if Path(p).name == name]


# ------------------------------------------------- the inference node (the served model)

MAX_REQUEST_BYTES = 200_000


def _score(checkpoint, frame: pd.DataFrame, **kwargs):
    return score_request(
        checkpoint, frame, 40_000_000, 20_000_000, 64, "vae", 0.95, "cpu", **kwargs
    )


def test_the_total_base64_of_a_request_is_limited():
    serving.check_payload(["A" * 60, "B" * 40, None, 7], max_bytes=100)
    with pytest.raises(serving.BadRequest) as err:
        serving.check_payload(["A" * 60, "B" * 41], max_bytes=100)
    assert str(err.value).startswith("request too large: 101 bytes of base64 in image_b64")
    assert "at most 100 per request (score.max_request_bytes)" in str(err.value)


def test_a_request_over_max_request_bytes_is_refused_before_any_row_is_decoded(
    checkpoint, scan_bytes, monkeypatch
):
    def never(*args, **kwargs):
        raise AssertionError("a row was decoded, or the network built, for a refused request")

    for name in ("decode_b64", "load_scan", "decode_request"):
        monkeypatch.setattr(serving, name, never)
    monkeypatch.setattr(oct_vae.serving.cache, "AnomalyDetector", never)
    half = "A" * (MAX_REQUEST_BYTES // 2)
    frame = pd.DataFrame({"image_b64": [half, half, "AAAA"]})
    with pytest.raises(MlflowException, match=r"request too large: 200,004 bytes.*") as err:
        _score(checkpoint, frame, max_request_bytes=MAX_REQUEST_BYTES)
    assert err.value.get_http_status_code() == 400
    assert "at most 200,000 per request (score.max_request_bytes)" in err.value.message
    monkeypatch.undo()
    text = b64(scan_bytes)
    out = _score(checkpoint, pd.DataFrame({"image_b64": [text]}), max_request_bytes=len(text))
    assert out["error"].tolist() == [None]


class _CountingVAE(VAE):
    built = 0

    def __init__(self, *args, **kwargs):
        type(self).built += 1
        super().__init__(*args, **kwargs)


def _loaded(checkpoint: dict, path: Path) -> LoadedCheckpoint:
    """``checkpoint`` saved and loaded back, as the served model loads its checkpoint."""
    dataset = TorchCheckpointDataset(str(path))
    dataset.save(checkpoint)
    return dataset.load()


def test_the_network_is_built_once_per_loaded_checkpoint_not_per_request(
    checkpoint, scan_bytes, monkeypatch, tmp_path
):
    monkeypatch.setattr(oct_vae.vae.checkpoint, "VAE", _CountingVAE)
    monkeypatch.setattr(_CountingVAE, "built", 0)
    loaded = _loaded(checkpoint, tmp_path / "a.pt")
    frame = pd.DataFrame({"image_b64": [b64(scan_bytes), "bad"]})
    first = _score(loaded, frame)
    again = _score(loaded, frame)
    # KedroPipelineModel hands each request a deep copy of the checkpoint: the same model,
    # found without hashing or comparing a single weight.
    with monkeypatch.context() as patched:
        patched.setattr(oct_vae.serving.cache, "_feed", None)
        patched.setattr(torch, "equal", None)
        copied = _score(copy.deepcopy(loaded), frame)
    assert _CountingVAE.built == 1 and len(loaded.detectors) == 1
    fresh = AnomalyDetector(checkpoint, "cpu").score(
        serving.decode_request([b64(scan_bytes)], SIZE, 40_000_000).images
    )
    for out in (first, again, copied):
        for name in ("reconstruction", "kl", "vae"):
            assert out[name].iloc[0] == fresh[name][0]
        assert out["error"].iloc[1].startswith("malformed base64")

    # A changed checkpoint (its last weights changed, saved and loaded) gets its own
    # network and scores; the first one's network stays cached.
    other = copy.deepcopy(checkpoint)
    name = [k for k, v in other["state_dict"].items() if v.is_floating_point()][-1]
    other["state_dict"][name] = other["state_dict"][name] + 0.5
    changed_checkpoint = _loaded(other, tmp_path / "b.pt")
    assert changed_checkpoint.fingerprint != loaded.fingerprint
    changed = _score(copy.deepcopy(changed_checkpoint), frame)
    assert _CountingVAE.built == 3  # counts the fresh detector above
    assert changed["reconstruction"].iloc[0] != first["reconstruction"].iloc[0]
    _score(copy.deepcopy(loaded), frame)
    assert _CountingVAE.built == 3
    # A checkpoint that was not loaded from a file (a plain dict) is never cached.
    _score(checkpoint, frame)
    _score(checkpoint, frame)
    assert _CountingVAE.built == 5


def test_a_loaded_checkpoint_is_its_content_and_saves_as_a_plain_dict(checkpoint, tmp_path):
    loaded = _loaded(checkpoint, tmp_path / "a.pt")
    assert type(loaded) is LoadedCheckpoint and loaded.keys() == checkpoint.keys()
    assert loaded.fingerprint == checkpoint_fingerprint(checkpoint)
    for copied in (copy.copy(loaded), copy.deepcopy(loaded)):
        assert copied.fingerprint == loaded.fingerprint and copied.detectors is loaded.detectors
    TorchCheckpointDataset(str(tmp_path / "b.pt")).save(loaded)  # a weights-only file
    again = torch.load(tmp_path / "b.pt", weights_only=True)
    assert type(again) is dict and checkpoint_fingerprint(again) == loaded.fingerprint


def test_the_fingerprint_follows_the_content():
    nan = float("nan")
    a = {"x": torch.tensor([1.0, nan]), "n": [1, "a", (2.0,)], "nan": nan, "y": np.arange(3)}
    assert checkpoint_fingerprint(a) == checkpoint_fingerprint(copy.deepcopy(a))
    for b in (
        {**a, "x": torch.tensor([1.0, 2.0])},
        {**a, "x": torch.tensor([1.0, nan], dtype=torch.float64)},
        {**a, "x": torch.tensor([1.0, nan], dtype=torch.bfloat16)},
        {**a, "x": torch.tensor([[1.0, nan]])},
        {**a, "n": [1, "a", [2.0]]},
        {**a, "n": [1, "b", (2.0,)]},
        {**a, "y": np.arange(3, dtype=np.int8)},
        {k: v for k, v in a.items() if k != "nan"},
    ):
        assert checkpoint_fingerprint(a) != checkpoint_fingerprint(b)


# ------------------------------------ the served model as the model server runs it


@pytest.fixture(scope="module")
def served_model(checkpoint, tmp_path_factory):
    """The inference pipeline saved and loaded as an MLflow model the way kedro-mlflow's
    hook logs it (``bind_to_training``'s runner and copy mode), with a small
    ``score.max_request_bytes``."""
    tmp = tmp_path_factory.mktemp("served_model")
    params = {
        "ingest.max_image_pixels": 40_000_000,
        "score.max_image_bytes": 20_000_000,
        "score.max_request_rows": 64,
        "score.flag_score": "vae",
        "score.specificity": 0.95,
        "device": "cpu",
        "score.max_request_bytes": MAX_REQUEST_BYTES,
    }
    bound = bind_to_training(Pipeline([]))
    ckpt = TorchCheckpointDataset(str(tmp / "scorer_checkpoint.pt"))  # as in the catalog
    ckpt.save(checkpoint)
    catalog = DataCatalog(
        {"scorer_checkpoint": ckpt, **{f"params:{k}": MemoryDataset(v) for k, v in params.items()}}
    )
    kpm = KedroPipelineModel(bound.inference, catalog, INPUT_NAME, **bound.kpm_kwargs)
    artifacts = kpm.extract_pipeline_artifacts(tmp)
    mlflow.pyfunc.save_model(
        str(tmp / "model"),
        python_model=kpm,
        artifacts=artifacts,
        signature=SIGNATURE,
        pip_requirements=["oct-vae"],
    )
    return mlflow.pyfunc.load_model(str(tmp / "model"))


def test_the_served_model_logs_one_line_per_request_and_builds_its_network_once(
    served_model, checkpoint, scan_bytes, caplog, monkeypatch
):
    monkeypatch.setattr(oct_vae.vae.checkpoint, "VAE", _CountingVAE)
    monkeypatch.setattr(_CountingVAE, "built", 0)
    # The checkpoint kedro-mlflow loaded (TorchCheckpointDataset) and copies per request.
    loaded = served_model.unwrap_python_model().loaded_catalog.load("scorer_checkpoint")
    assert isinstance(loaded, LoadedCheckpoint)
    loaded.detectors.clear()  # another test may have scored with it already
    frame = pd.DataFrame({"id": ["a", "b"], "image_b64": [b64(scan_bytes), "bad"]})
    outputs = []
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            outputs.append(served_model.predict(frame))
        lines = [r for r in caplog.records if r.levelno >= logging.INFO]
        assert [r.name for r in lines] == ["oct_vae.pipelines.inference.nodes"]
        assert lines[0].getMessage().startswith("scored a request: 2 rows, 1 scored, 1 errors, ")
    assert _CountingVAE.built == 1
    expected = AnomalyDetector(checkpoint, "cpu").score(
        serving.decode_request([b64(scan_bytes)], SIZE, 40_000_000).images
    )
    for out in outputs:
        assert out["id"].tolist() == ["a", "b"]
        assert out["vae"].iloc[0] == expected["vae"][0] and out["vae"].iloc[1] is None

    # A refused request: one line too, and Kedro's report of the failed node is silenced.
    caplog.clear()
    with caplog.at_level(logging.DEBUG), pytest.raises(MlflowException, match="too many rows"):
        served_model.predict(pd.DataFrame({"image_b64": ["A"] * 65}))
    lines = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert [r.getMessage()[:30] for r in lines] == ["refused a request: too many ro"]
    assert "(score.max_request_rows)" in lines[0].getMessage()


def test_other_kedro_runs_in_the_process_keep_their_log(served_model, scan_bytes, caplog):
    served_model.predict(pd.DataFrame({"image_b64": [b64(scan_bytes)]}))  # filter installed
    catalog = DataCatalog({"x": MemoryDataset(1)})
    with caplog.at_level(logging.INFO):
        SequentialRunner().run(Pipeline([Node(lambda x: x, "x", "y", name="f")]), catalog)
    assert any(r.getMessage().startswith("Running node: f") for r in caplog.records)


async def _asgi(app, body: bytes, chunk: int | None = None, content_length: bool = True):
    """POST ``body`` to /invocations; ``chunk``: send it in pieces of that size."""
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)] if chunk else [body]
    received = []

    async def receive():
        if received == pieces:  # the whole body was read: the client waits for the answer
            await asyncio.sleep(3600)
        piece = pieces[len(received)]
        received.append(piece)
        return {"type": "http.request", "body": piece, "more_body": received != pieces}

    out = {"status": None, "body": b""}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        else:
            out["body"] += message.get("body", b"")

    headers = [(b"content-type", b"application/json")]
    if content_length:
        headers.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/invocations",
        "raw_path": b"/invocations",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    return out["status"], json.loads(out["body"]) if out["body"].startswith(b"{") else out["body"]


@pytest.fixture(scope="module")
def app(served_model):
    from oct_vae.serving.server import build_app

    return build_app(served_model)


def _post(app, body: bytes, **kwargs):
    return asyncio.run(_asgi(app, body, **kwargs))


def test_the_server_reads_the_body_limit_from_the_model(app, served_model):
    from oct_vae.serving.server import body_limit, model_max_request_bytes

    assert model_max_request_bytes(served_model) == MAX_REQUEST_BYTES
    assert app.max_body_bytes == body_limit(MAX_REQUEST_BYTES) == 250_000 + 2**20


def test_the_server_scores_and_refuses_what_the_model_refuses(app, scan_bytes):
    good = {"dataframe_records": [{"id": "scan", "image_b64": b64(scan_bytes)}]}
    status, answer = _post(app, json.dumps(good).encode())
    assert status == 200 and answer["predictions"][0]["error"] is None
    # Under the body limit but over score.max_request_bytes: the model's 400.
    big = {"dataframe_records": [{"image_b64": "A" * (MAX_REQUEST_BYTES + 4)}]}
    status, answer = _post(app, json.dumps(big).encode())
    assert status == 400
    assert "request too large: 200,004 bytes" in answer["message"]
    assert "(score.max_request_bytes)" in answer["message"]


@pytest.mark.parametrize("streamed", [False, True])
def test_a_body_over_the_limit_gets_413_unread(app, served_model, monkeypatch, streamed):
    def never(*args, **kwargs):
        raise AssertionError("the model ran on a body over the limit")

    monkeypatch.setattr(type(served_model), "predict", never)
    body = json.dumps({"dataframe_records": [{"image_b64": "A" * 2_000_000}]}).encode()
    status, answer = _post(app, body, chunk=65_536, content_length=not streamed)
    assert status == 413
    assert "request body is too large" in answer["message"]
    assert f"at most {app.max_body_bytes:,}" in answer["message"]
    assert "score.max_request_bytes" in answer["message"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "JSON nested too deeply"),
        (b'{"dataframe_split": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"dataframe_records": [{"image_b64": 1' + b"0" * 5000 + b"}]}", "4300 digits"),
        (b'{"dataframe_records": [{"image_b64": "QUJD"}', "valid JSON"),
        (b'{"dataframe_records": [{"image_b64": "QUJD"}' + b"x" * 100_000, "valid JSON"),
        (b"", "valid JSON"),
        (b'{"dataframe_records": [{"image_b64": "\xff"}]}', "valid JSON"),
    ],
    ids=["deep", "deep-inside", "huge-integer", "truncated", "garbage", "empty", "not-utf8"],
)
def test_json_the_server_cannot_read_gets_400_with_a_short_message(app, body, reason):
    status, answer = _post(app, body)
    assert status == 400, answer
    assert answer["error_code"] == "BAD_REQUEST" and reason in answer["message"]
    assert len(json.dumps(answer)) < 4_000  # MLflow quotes the body: cut to its two ends


def test_other_errors_of_the_server_stay_errors_of_the_server(app, scan_bytes, monkeypatch):
    """Only MLflow's parsing of the body is answered 400: a ValueError elsewhere is a 500."""
    from mlflow.pyfunc import scoring_server

    def broken(*args, **kwargs):
        raise ValueError("a bug of the server")

    monkeypatch.setattr(scoring_server, "predictions_to_json", broken)
    good = {"dataframe_records": [{"image_b64": b64(scan_bytes)}]}
    with pytest.raises(ValueError, match="a bug of the server"):  # after answering 500
        _post(app, json.dumps(good).encode())


def test_json_nested_just_too_deeply_for_mlflow_is_refused_before_it(app, monkeypatch):
    """Around the depth where ``json`` gives up, every body gets a 400, never a 500: the
    server's own check parses with less stack left than MLflow's parsing has."""
    limit = sys.getrecursionlimit()
    statuses = set()
    for depth in range(limit - 120, limit + 40, 2):
        status, answer = _post(app, b"[" * depth + b"]" * depth)
        assert status == 400, (depth, answer)
        statuses.add("ours" if "JSON nested too deeply" in answer["message"] else "mlflow")
    assert statuses == {"ours", "mlflow"}  # the sweep crosses the limit
