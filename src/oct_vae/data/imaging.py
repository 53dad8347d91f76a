"""Decoding and preprocessing of OCT B-scans: the one preprocessing used everywhere.

Ingest, scoring and serving all call :func:`load_scan`, so a scan is turned into model
input the same way whether it comes from a file on disk or from bytes in a request.
The paper resizes the 512x496 (and 768x496) Spectralis B-scans to 128x128 grayscale;
the aspect ratio is not kept. :func:`decode_scans` runs :func:`load_scan` over many
files in a process pool and writes the results into one preallocated ``uint8`` array.

This module imports only Pillow, numpy, tqdm, ``oct_vae.progress`` and the standard library.
"""

from __future__ import annotations

import dataclasses
import io
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from oct_vae.data.lineage import content_hash
from oct_vae.progress import Progress, track

# Smallest side we accept: anything smaller is a thumbnail or a broken export, not a B-scan.
MIN_SIDE = 32
# Anti-aliasing filter of the final resize.
RESAMPLE = Image.Resampling.LANCZOS

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_WIDE_MODES = (*_SIXTEEN_BIT_MODES, "I", "F")

_T = TypeVar("_T")
_R = TypeVar("_R")


class RejectedScan(ValueError):
    """A file that is not a usable scan; ``reason`` says why in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def load_scan(
    source: str | os.PathLike[str] | bytes, size: int = 128, max_pixels: int = 40_000_000
) -> np.ndarray:
    """Decode one scan to a ``size`` x ``size`` 8-bit grayscale array.

    The header is read first and the image is rejected, undecoded, when it declares more
    than ``max_pixels`` pixels (decompression bomb) or a side under 32 px. JPEGs are
    decoded at a reduced DCT scale (``draft``: the largest 1/2, 1/4, 1/8 scale that keeps
    both sides >= ``size``, i.e. 256x248 for a 512x496 scan), then every image is resized
    straight to ``size`` x ``size`` with a Lanczos filter; the aspect ratio is not kept,
    as in the paper. Colour and palette images become luminance (ITU-R 601-2), alpha is
    dropped, 16-bit images (and 32-bit integer ones within 0..65535) are scaled from the
    full 0..65535 range, other integer and float images from their own min..max range.

    Args:
        source: A file path or the file's raw bytes.
        size: Side of the output square.
        max_pixels: Largest ``width * height`` decoded.

    Returns:
        A ``(size, size)`` ``uint8`` array.

    Raises:
        RejectedScan: The input is empty, not an image, truncated or corrupt, too large
            or too small.
    """
    return _decode(source, size, max_pixels)[0]


def _decode(
    source: str | os.PathLike[str] | bytes, size: int, max_pixels: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`load_scan`, also returning the original (width, height)."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must stay False")
    if isinstance(source, (bytes, bytearray, memoryview)):
        stream: BinaryIO = io.BytesIO(source)
    else:
        try:
            stream = open(source, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise RejectedScan(f"cannot read file ({exc.strerror or exc})") from None
    with stream:
        if stream.seek(0, io.SEEK_END) == 0:
            raise RejectedScan("empty file (0 bytes)")
        stream.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Image.open reads only the header; pixels are decoded in _preprocess.
            try:
                img = Image.open(stream)
            except UnidentifiedImageError:
                raise RejectedScan("not an image (unrecognised file format)") from None
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise RejectedScan(f"decompression bomb, not decoded ({exc})") from None
            except Exception as exc:  # noqa: BLE001 - any header error means a bad file
                raise RejectedScan(f"corrupt image header ({type(exc).__name__}: {exc})") from None
            with img:
                original_size = img.size  # before draft() shrinks it
                return _preprocess(img, size, max_pixels), original_size


def _preprocess(img: Image.Image, size: int, max_pixels: int) -> np.ndarray:
    width, height = img.size
    if width * height > max_pixels:
        raise RejectedScan(
            f"decompression bomb, not decoded: {width}x{height} exceeds {max_pixels} pixels"
        )
    if min(width, height) < MIN_SIDE:
        raise RejectedScan(f"too small: {width}x{height}, the minimum side is {MIN_SIDE} px")
    if img.format == "JPEG":
        # Decode at 1/2, 1/4 or 1/8 scale in the DCT domain; colour JPEGs yield only Y (luma).
        img.draft("L", (size, size))
    try:
        img.load()
        if img.mode in _WIDE_MODES:
            return _resize_wide(img, size)
        gray = img if img.mode == "L" else img.convert("L")
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad data
        raise RejectedScan(f"truncated or corrupt image data ({exc})") from None
    return np.asarray(gray.resize((size, size), RESAMPLE), dtype=np.uint8).copy()


def _resize_wide(img: Image.Image, size: int) -> np.ndarray:
    """Map a 16/32-bit or float image to 0..255 in float, resize, then round to uint8.

    16-bit data (and 32-bit integers within 0..65535, as older Pillows open 16-bit PNGs)
    is scaled from the full 0..65535 range; other data from its own min..max.
    """
    values = np.asarray(img).astype(np.float32)
    lo, hi = float(values.min()), float(values.max())
    if img.mode in _SIXTEEN_BIT_MODES or (img.mode == "I" and lo >= 0 and hi <= 65535):
        values *= 255.0 / 65535.0
    elif hi > lo:
        values = (values - lo) * (255.0 / (hi - lo))
    else:
        values = np.zeros_like(values)
    resized = Image.fromarray(values).resize((size, size), RESAMPLE)
    return np.clip(np.rint(np.asarray(resized)), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ many files, in parallel


@dataclass(frozen=True)
class DecodeResult:
    """Outcome of decoding one file of a batch: its size and hash, or why it was rejected."""

    index: int
    width: int = 0
    height: int = 0
    sha1: str = ""
    reason: str = ""


def decode_scans(
    paths: Sequence[str],
    size: int = 128,
    max_pixels: int = 40_000_000,
    workers: int = 0,
    chunk_size: int = 64,
    progress: bool | str = True,
) -> tuple[np.ndarray, list[DecodeResult]]:
    """Decode many files with :func:`load_scan` across processes.

    Results arrive chunk by chunk and are written into one preallocated array, so only
    ``len(paths)`` small images and one chunk of full-size images per worker are ever
    in memory. Rows of rejected files stay zero.

    Args:
        paths: Files to decode.
        size: Side of the output images.
        max_pixels: Decompression-bomb limit, see :func:`load_scan`.
        workers: Processes; 0 = all cores, 1 = decode in this process.
        chunk_size: Files per task.
        progress: Progress lines as "decode" (``True``), as the stage named, or none.

    Returns:
        The ``(len(paths), size, size)`` ``uint8`` array and one result per path, in order.
    """
    pixels = np.zeros((len(paths), size, size), dtype=np.uint8)
    results: list[DecodeResult] = [DecodeResult(i) for i in range(len(paths))]
    workers = resolve_workers(workers)
    tasks = _chunk_tasks(paths, size, max_pixels, chunk_size)
    bar = (Progress(progress if isinstance(progress, str) else "decode", len(paths), "scans")
           if progress else track(None, len(paths)))
    workers = min(workers, len(tasks)) if len(tasks) > 1 else 1
    for chunk_results, chunk_pixels in _run_chunks(tasks, workers, 3 * workers):
        for result, image in zip(chunk_results, chunk_pixels, strict=True):
            results[result.index] = result
            if not result.reason:
                pixels[result.index] = image
        bar.update(len(chunk_results))
    bar.close()
    return pixels, results


def _chunk_tasks(
    paths: Sequence[str], size: int, max_pixels: int, chunk_size: int
) -> list[tuple[list[str], list[int], int, int]]:
    """:func:`decode_scans`' tasks: ``chunk_size`` paths, their indices, size and limit."""
    chunks = [
        (list(range(i, min(i + chunk_size, len(paths)))), size, max_pixels)
        for i in range(0, len(paths), chunk_size)
    ]
    return [([paths[i] for i in idx], idx, s, m) for idx, s, m in chunks]


def resolve_workers(workers: int) -> int:
    """Number of decoding processes: ``workers``, or all usable cores when it is 0."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 = all cores), got {workers}")
    if workers:
        return workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def iter_decoded(
    paths: Sequence[str],
    size: int = 128,
    max_pixels: int = 40_000_000,
    workers: int = 0,
    batch_size: int = 64,
    max_in_flight: int | None = None,
) -> Iterator[tuple[int, list[DecodeResult], np.ndarray]]:
    """:func:`decode_scans` as a stream: batches of decoded files, in order, as they come.

    Batches of ``batch_size`` files are decoded with :func:`load_scan` on ``workers``
    processes; at most ``max_in_flight`` batches (default: 2 per worker) are submitted and
    not yet handed out, so memory stays bounded however many files there are, and however
    slowly the caller consumes them. Nothing of a batch is kept once it is handed out.

    Args:
        paths: Files to decode.
        size: Side of the output images.
        max_pixels: Decompression-bomb limit, see :func:`load_scan`.
        workers: Processes; 0 = all cores, 1 = decode in this process, batch by batch.
        batch_size: Files per batch.
        max_in_flight: Most batches decoding or decoded but not yet handed out.

    Yields:
        ``(start, results, pixels)``: the index of the batch's first file in ``paths``,
        one :class:`DecodeResult` per file (``index`` into ``paths``) and the batch's
        ``(n, size, size)`` ``uint8`` images (zero where a file was rejected).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    workers = resolve_workers(workers)
    in_flight = max_in_flight if max_in_flight is not None else 2 * workers
    tasks = _batch_tasks(paths, size, max_pixels, batch_size)
    n_batches = -(-len(paths) // batch_size)
    for results, pixels in _run_chunks(tasks, min(workers, max(n_batches, 1)), in_flight):
        yield (results[0].index if results else 0), results, pixels


def _batch_tasks(
    paths: Sequence[str], size: int, max_pixels: int, batch_size: int
) -> Iterator[tuple[list[str], list[int], int, int]]:
    """:func:`iter_decoded`'s tasks, made lazily: ``batch_size`` paths, their indices, size
    and limit."""
    return (
        (list(paths[i : i + batch_size]), list(range(i, min(i + batch_size, len(paths)))), size,
         max_pixels)
        for i in range(0, len(paths), batch_size)
    )


def bounded_map(
    fn: Callable[[_T], _R], tasks: Iterable[_T], executor: Executor | None, max_in_flight: int
) -> Iterator[_R]:
    """``map(fn, tasks)`` on ``executor``, in order, with at most ``max_in_flight`` tasks
    submitted whose results have not been handed out. ``tasks`` is read lazily, one task
    per result handed out once the window is full. ``executor=None``: in this process."""
    if executor is None:
        yield from map(fn, tasks)
        return
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    pending: deque[Future[_R]] = deque()
    for task in tasks:
        if len(pending) >= max_in_flight:
            yield pending.popleft().result()
        pending.append(executor.submit(fn, task))
    while pending:
        yield pending.popleft().result()


def _run_chunks(
    tasks: Iterable[tuple[list[str], list[int], int, int]], workers: int, max_in_flight: int
) -> Iterator[tuple[list[DecodeResult], np.ndarray]]:
    if workers <= 1:
        yield from map(_decode_chunk, tasks)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        # In order, with a bounded number of chunks in flight, so finished chunks never
        # pile up in memory when this process falls behind.
        yield from bounded_map(_decode_chunk, tasks, pool, max_in_flight)


def _decode_chunk(
    task: tuple[list[str], list[int], int, int],
) -> tuple[list[DecodeResult], np.ndarray]:
    paths, indices, size, max_pixels = task
    pixels = np.zeros((len(paths), size, size), dtype=np.uint8)
    results = []
    for row, (path, index) in enumerate(zip(paths, indices, strict=True)):
        try:
            pixels[row], (width, height) = _decode(path, size, max_pixels)
            results.append(DecodeResult(index, width, height, content_hash(pixels[row])))
        except RejectedScan as exc:
            results.append(DecodeResult(index, reason=exc.reason))
    return results, pixels


def decode_until_full(
    paths: Sequence[str], first: Sequence[int], queues: dict[str, list[int]], quota: int,
    size: int, max_pixels: int, workers: int = 0,
) -> tuple[np.ndarray, dict[int, DecodeResult]]:
    """Decode ``first`` and, from each class's ``queues`` (candidate indices in draw order),
    just enough files to fill ``quota`` decodable scans per class.

    Each queue is decoded with a margin; when rejects leave a class short, its next
    candidates are decoded (twice the shortfall plus 8), until the quota is full or the
    queue runs out, so decoding failures never shrink a quota.

    Returns:
        Every decoded image (``(N, size, size)`` uint8) and, per decoded index of
        ``paths``, its ``DecodeResult`` whose ``index`` is its row in the image array.
    """
    queues = {label: list(queue) for label, queue in queues.items()}
    wanted = {label: quota + max(8, quota // 10) for label in queues}
    valid = dict.fromkeys(queues, 0)
    label_of = {i: label for label, queue in queues.items() for i in queue}
    todo = list(first)
    decoded: dict[int, DecodeResult] = {}
    parts: list[np.ndarray] = []
    while True:
        todo += _take(queues, wanted)
        pixels, results = decode_scans([paths[i] for i in todo], size, max_pixels, workers)
        offset = sum(len(p) for p in parts)
        parts.append(pixels)
        for row, (i, result) in enumerate(zip(todo, results, strict=True)):
            decoded[i] = dataclasses.replace(result, index=row + offset)
            if not result.reason and i in label_of:
                valid[label_of[i]] += 1
        wanted = _shortfall(queues, valid, quota)
        if not any(wanted.values()):
            break
        todo = []
    return (parts[0] if len(parts) == 1 else np.concatenate(parts)), decoded


def _take(queues: dict[str, list[int]], wanted: dict[str, int]) -> list[int]:
    """Remove the first ``wanted[label]`` indices from each class's queue and return them."""
    taken: list[int] = []
    for label, queue in queues.items():
        taken += queue[: wanted[label]]
        queues[label] = queue[wanted[label] :]
    return taken


def _shortfall(queues: dict[str, list[int]], valid: dict[str, int], quota: int) -> dict[str, int]:
    """Files to decode next per class: twice its shortfall plus 8, while its queue lasts."""
    return {
        label: 2 * (quota - valid[label]) + 8 if valid[label] < quota and queues[label] else 0
        for label in queues
    }
