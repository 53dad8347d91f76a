"""Tests of ``oct_vae.data.imaging``: decoding, conversion, resizing and rejection of bad input."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from oct_vae.data.imaging import RejectedScan, content_hash, decode_scans, load_scan


def encode(array: np.ndarray, fmt: str = "PNG", mode: str | None = None, **kwargs) -> bytes:
    """Encode an array (or mode-converted image) to bytes."""
    img = Image.fromarray(array)
    if mode is not None:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height 1-bit pixels but holds almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def half_black_half_white(width: int, height: int) -> np.ndarray:
    array = np.zeros((height, width), dtype=np.uint8)
    array[:, width // 2 :] = 255
    return array


def smooth_scan(width: int = 512, height: int = 496) -> np.ndarray:
    """A smooth, B-scan-sized test image (horizontal bands and a gentle gradient)."""
    y, x = np.mgrid[0:height, 0:width]
    values = 128 + 60 * np.sin(y / 25.0) + 40 * np.cos(x / 60.0)
    return np.clip(values, 0, 255).astype(np.uint8)


def test_resize_gives_square_uint8_with_known_content() -> None:
    out = load_scan(encode(half_black_half_white(256, 200)), size=128)
    assert out.shape == (128, 128)
    assert out.dtype == np.uint8
    # Aspect ratio is not kept: every row is the same, left half black, right half white.
    assert (out[:, :60] == 0).all()
    assert (out[:, 68:] == 255).all()
    assert np.ptp(out, axis=0).max() == 0


def test_wide_scan_is_squeezed_not_cropped() -> None:
    array = np.full((496, 768), 255, dtype=np.uint8)
    array[:, :256] = 0  # the left third is black
    out = load_scan(encode(array), size=96)
    assert out.shape == (96, 96)
    assert (out[:, :28] == 0).all()  # a third of 96 is 32
    assert (out[:, 36:] == 255).all()


def test_path_and_bytes_give_the_same_pixels(tmp_path: Path) -> None:
    data = encode(smooth_scan(), "JPEG", quality=92)
    path = tmp_path / "NORMAL-1-1.jpeg"
    path.write_bytes(data)
    assert np.array_equal(load_scan(path), load_scan(data))
    assert np.array_equal(load_scan(str(path)), load_scan(data))


def test_jpeg_draft_decode_matches_full_decode() -> None:
    data = encode(smooth_scan(), "JPEG", quality=95)
    full = Image.open(io.BytesIO(data)).convert("L").resize((128, 128), Image.Resampling.LANCZOS)
    ours = load_scan(data)
    assert np.abs(ours.astype(int) - np.asarray(full, dtype=int)).mean() < 1.5


def test_rgb_and_palette_become_luminance() -> None:
    red = np.zeros((64, 64, 3), dtype=np.uint8)
    red[..., 0] = 255
    assert np.all(np.abs(load_scan(encode(red), size=32).astype(int) - 76) <= 1)
    rgba = np.dstack([red, np.full((64, 64), 7, dtype=np.uint8)])
    assert np.all(np.abs(load_scan(encode(rgba), size=32).astype(int) - 76) <= 1)
    assert np.all(np.abs(load_scan(encode(red, mode="P"), size=32).astype(int) - 76) <= 1)
    gray_alpha = encode(np.full((64, 64), 200, dtype=np.uint8), mode="LA")
    assert (load_scan(gray_alpha, size=32) == 200).all()
    color_jpeg = encode(red, "JPEG", quality=95)
    assert np.all(np.abs(load_scan(color_jpeg, size=32).astype(int) - 76) <= 3)


def test_sixteen_bit_png_is_scaled_from_the_full_range() -> None:
    eight = smooth_scan(128, 128)
    sixteen = eight.astype(np.uint16) * 257  # the same image at 16 bits
    data = encode(sixteen)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = load_scan(data, size=64)
    assert np.abs(out.astype(int) - load_scan(encode(eight), size=64).astype(int)).max() <= 1
    dim = load_scan(encode(np.full((64, 64), 1000, dtype=np.uint16)), size=32)
    assert (dim == 4).all()  # 1000 / 65535 * 255 = 3.9: full range, not min..max


def test_float_image_is_scaled_from_its_own_range(tmp_path: Path) -> None:
    values = np.tile(np.linspace(-1.0, 1.0, 64, dtype=np.float32), (64, 1))
    path = tmp_path / "scan.tiff"
    Image.fromarray(values).save(path)
    out = load_scan(path, size=64)
    assert out[:, 0].max() <= 2 and out[:, -1].min() >= 253


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"this is not an image\n" * 10, "not an image"),
        (encode(np.zeros((20, 400), dtype=np.uint8)), "too small"),
        (png_header_only(8000, 6000), "decompression bomb"),  # over our 40 Mpx limit
        (png_header_only(10_000, 10_000), "decompression bomb"),  # Pillow's warning zone
        (png_header_only(100_000, 100_000), "decompression bomb"),  # Pillow's error zone
        (encode(smooth_scan(), "JPEG")[:3000], "truncated"),
        (encode(smooth_scan())[:2000], "truncated"),
    ],
    ids=["zero-byte", "text", "tiny", "bomb", "bomb-warning", "bomb-error", "trunc-jpeg", "png"],
)
def test_bad_input_is_rejected_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(RejectedScan) as info:
        load_scan(data)
    assert reason in info.value.reason
    assert isinstance(info.value, ValueError)


def test_bomb_limit_is_a_parameter() -> None:
    data = encode(smooth_scan(512, 496), "JPEG")
    assert load_scan(data).shape == (128, 128)
    with pytest.raises(RejectedScan, match="decompression bomb"):
        load_scan(data, max_pixels=512 * 496 - 1)


def test_missing_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(RejectedScan, match="cannot read"):
        load_scan(tmp_path / "nope.jpeg")


def test_truncated_images_are_never_loaded_leniently() -> None:
    with pytest.raises(RejectedScan):
        load_scan(encode(smooth_scan(), "JPEG")[:5000])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_content_hash_sees_every_pixel_and_the_shape() -> None:
    a = smooth_scan(64, 64)
    b = a.copy()
    assert content_hash(a) == content_hash(b)
    b[31, 17] ^= 1
    assert content_hash(a) != content_hash(b)
    assert content_hash(a) != content_hash(a.reshape(32, 128))
    assert len(content_hash(a)) == 40


@pytest.mark.parametrize("workers", [1, 2])
def test_decode_scans_keeps_order_and_reports_rejects(tmp_path: Path, workers: int) -> None:
    paths = []
    for i in range(7):
        path = tmp_path / f"NORMAL-1-{i}.jpeg"
        data = encode(smooth_scan(512 + 256 * (i % 2), 496) // (i + 1), "JPEG")
        path.write_bytes(data if i != 3 else data[:1000])
        paths.append(str(path))
    pixels, results = decode_scans(paths, size=64, workers=workers, chunk_size=2, progress=False)
    assert pixels.shape == (7, 64, 64) and pixels.dtype == np.uint8
    assert [r.index for r in results] == list(range(7))
    assert [bool(r.reason) for r in results] == [i == 3 for i in range(7)]
    assert (pixels[3] == 0).all()
    for i in (0, 1, 6):
        assert np.array_equal(pixels[i], load_scan(paths[i], size=64))
        assert results[i].sha1 == content_hash(pixels[i])
        assert (results[i].width, results[i].height) == (512 + 256 * (i % 2), 496)
