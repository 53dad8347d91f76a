"""Tests of ``oct_vae.serving``: base64 request rows -> images or per-row errors, limits,
and one result row per input."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
import torch

from oct_vae import serving
from oct_vae.detector import AnomalyDetector, operating_threshold
from oct_vae.imaging import RejectedScan, load_scan
from oct_vae.model import VAE, VAEConfig
from oct_vae.pipelines.train.nodes import calibrate_model
from oct_vae.training import TrainConfig, make_checkpoint
from tests.test_imaging import encode, png_header_only

SIZE = 128


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
def detector() -> AnomalyDetector:
    """An untrained but calibrated small model: scores are arbitrary but real."""
    torch.manual_seed(0)
    config = VAEConfig(image_size=SIZE, width=2, latent_dim=8)
    ckpt = make_checkpoint(VAE(config), config, TrainConfig(seed=0, device="cpu"), {})
    rng = np.random.default_rng(0)
    train = rng.integers(0, 255, (12, SIZE, SIZE), dtype=np.uint8)
    val = rng.integers(0, 255, (20, SIZE, SIZE), dtype=np.uint8)
    calibrated, _ = calibrate_model(ckpt, train, val, 2, 8, 5.0, 2.0, 5.0, 0, "cpu")
    return AnomalyDetector(calibrated, "cpu")


def test_scored_rows_have_percentiles_threshold_flag_and_null_scores_on_errors(
    detector, scan_bytes
):
    decoded = serving.decode_request([b64(scan_bytes), "bad", b64(scan_bytes)], SIZE, 40_000_000)
    cols = serving.score_decoded(detector, decoded, "vae", 0.9)
    assert {len(v) for v in cols.values()} == {3}
    expected = detector.score(decoded.images[:1])
    threshold = operating_threshold(detector.calibration["vae"], 0.9)
    for name in ("reconstruction", "kl", "vae"):
        assert cols[name][0] == pytest.approx(expected[name][0], rel=1e-12)
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
    for name in ("reconstruction", "kl", "vae"):
        assert mixed[name][2] == alone[name][0]


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
