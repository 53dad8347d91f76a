"""Scoring scans that may be broken: request rows and files in, one result per input out.

The served MLflow model receives scans as base64 text; :func:`decode_request` turns each
row into a ``uint8`` image with :func:`oct_vae.data.imaging.load_scan` (the ingest
preprocessing) or into an error reason for that row alone. Request bytes are only ever
decoded, never opened as a file path. :func:`score_decoded` scores the decodable images
in batches, with every score that evaluation reports; a scan's scores do not depend on
the other scans of the request or folder. It returns one row per input, with the error
of each row that failed.
The served model's network is kept between requests by ``oct_vae.serving.cache``.

Used by the ``score`` and ``inference`` pipelines. Imports only numpy, torch and the
project's imaging and detector modules (no Kedro, no MLflow).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from oct_vae.data.imaging import RejectedScan, load_scan
from oct_vae.vae.config import BASELINE_SCORES, EXTRA_SCORES, PAPER_SCORES
from oct_vae.vae.detector import AnomalyDetector

# Largest decoded image accepted in one request row (bytes).
MAX_IMAGE_BYTES = 20_000_000
# Most rows scored in one request.
MAX_REQUEST_ROWS = 64
# Most base64 text in one request, all its rows together (characters, i.e. bytes of the
# request's JSON strings): two images at the MAX_IMAGE_BYTES limit (27 MB in base64) fit.
MAX_REQUEST_BYTES = 64_000_000

_DATA_URI = re.compile(r"^data:[\w.+/-]*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


class BadRequest(ValueError):
    """The request as a whole cannot be scored (no rows, too many rows or bytes, no image
    column)."""


@dataclass(frozen=True)
class Decoded:
    """Images decoded from a batch of inputs.

    Attributes:
        images: ``(N, S, S)`` uint8, one per input; zeros where the input failed.
        errors: One entry per input: ``None`` when decoded, else the reason in plain words.
    """

    images: np.ndarray
    errors: list[str | None]

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the inputs that decoded."""
        return np.array([e is None for e in self.errors], dtype=bool)


def decode_b64(value: Any, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """Decode one base64 image string to bytes, refusing what cannot be an image.

    Whitespace (line-wrapped base64) and a ``data:image/...;base64,`` prefix are allowed;
    the standard alphabet with padding is required. The size is checked on the text
    before anything is decoded.

    Args:
        value: The request cell.
        max_bytes: Largest decoded size accepted.

    Returns:
        The raw bytes.

    Raises:
        RejectedScan: Missing, empty, malformed or too large.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise RejectedScan("missing image_b64 (null)")
    if not isinstance(value, str):
        raise RejectedScan(f"image_b64 must be a base64 string, got {type(value).__name__}")
    text = _WHITESPACE.sub("", _DATA_URI.sub("", value.strip(), count=1))
    if not text:
        raise RejectedScan("empty image_b64 (no data)")
    if len(text) > 4 * math.ceil(max_bytes / 3):
        raise RejectedScan(
            f"image too large: about {len(text) * 3 // 4:,} bytes, the limit is {max_bytes:,}"
        )
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RejectedScan(f"malformed base64 ({exc})") from None
    if len(raw) > max_bytes:
        raise RejectedScan(f"image too large: {len(raw):,} bytes, the limit is {max_bytes:,}")
    if not raw:
        raise RejectedScan("empty image_b64 (no data)")
    return raw


def check_request(n_rows: int, max_rows: int = MAX_REQUEST_ROWS) -> None:
    """Refuse a request with no rows or more than ``max_rows``.

    Raises:
        BadRequest: With the reason.
    """
    if n_rows == 0:
        raise BadRequest(
            'empty request: send at least one row, e.g. {"dataframe_records": '
            '[{"image_b64": "<base64 of a JPEG or PNG>"}]}'
        )
    if n_rows > max_rows:
        raise BadRequest(
            f"too many rows: {n_rows}, at most {max_rows} scans per request "
            "(score.max_request_rows)"
        )


def check_payload(values: Sequence[Any], max_bytes: int = MAX_REQUEST_BYTES) -> None:
    """Refuse a request whose image cells hold more than ``max_bytes`` characters of base64
    text in all (cells that are not text count 0). Nothing is decoded.

    Raises:
        BadRequest: With the size, the limit and the parameter that sets it.
    """
    n_bytes = sum(len(v) for v in values if isinstance(v, str))
    if n_bytes > max_bytes:
        raise BadRequest(
            f"request too large: {n_bytes:,} bytes of base64 in image_b64, at most "
            f"{max_bytes:,} per request (score.max_request_bytes); send fewer or smaller "
            "scans per request"
        )


def decode_request(
    values: Sequence[Any],
    size: int,
    max_pixels: int,
    max_bytes: int = MAX_IMAGE_BYTES,
) -> Decoded:
    """Decode base64 request cells into model input, row by row.

    Args:
        values: One base64 string per row.
        size: Side of the model's images.
        max_pixels: Decompression-bomb limit of :func:`load_scan`.
        max_bytes: Largest decoded image.

    Returns:
        The images and, per row, ``None`` or why it was refused.
    """
    images = np.zeros((len(values), size, size), dtype=np.uint8)
    errors: list[str | None] = []
    for i, value in enumerate(values):
        try:
            images[i] = load_scan(decode_b64(value, max_bytes), size, max_pixels)
            errors.append(None)
        except RejectedScan as exc:
            errors.append(exc.reason)
    return Decoded(images, errors)


def check_flag_score(detector: AnomalyDetector, flag_score: str) -> None:
    """Raise ``ValueError`` unless ``flag_score`` is one of the checkpoint's calibrated scores."""
    if flag_score not in detector.calibration:
        raise ValueError(
            f"score.flag_score={flag_score!r} is not a calibrated score; "
            f"choose one of {sorted(detector.calibration)}"
        )


def score_names(detector: AnomalyDetector) -> list[str]:
    """Every score the checkpoint is calibrated on, in the order of the answer's columns:
    the paper's (``reconstruction``, ``kl``, ``vae``), the scores beyond the paper, then the
    two trivial baselines (named ``baseline_*``), as evaluation reports them."""
    known = [
        n for n in (*PAPER_SCORES, *EXTRA_SCORES, *BASELINE_SCORES) if n in detector.calibration
    ]
    return known + sorted(set(detector.calibration) - set(known))


def score_decoded(
    detector: AnomalyDetector, decoded: Decoded, flag_score: str, specificity: float
) -> dict[str, list[Any]]:
    """Score every decodable image; one row per input.

    The decodable images are scored together (``AnomalyDetector.score``, in batches of
    ``score_config.batch_size``), but each one's scores are the same whatever else is
    scored with it: every image gets the same seeded posterior draws and every score is
    computed per image (``tests/test_serving.py`` checks this to the last bit).

    Args:
        detector: The calibrated model.
        decoded: Output of :func:`decode_request` (or the same built from files).
        flag_score: Score that decides ``anomalous``.
        specificity: Share of validation normals at or below the threshold.

    Returns:
        Columns of equal length: every score of :func:`score_names`, then their
        ``<score>_percentile`` among validation normals in the same order, then
        ``flag_score``, ``threshold``, ``anomalous`` and ``error``; score cells are
        ``None`` on rows with an error.

    Raises:
        ValueError: ``flag_score`` is not a score of the checkpoint.
    """
    check_flag_score(detector, flag_score)
    threshold = detector.threshold(flag_score, specificity)
    ok = decoded.ok
    scores = detector.score(decoded.images[ok]) if ok.any() else {}
    cols = _score_columns(detector, scores, np.flatnonzero(ok), len(decoded.errors))
    n = len(decoded.errors)
    cols["flag_score"] = [flag_score] * n
    cols["threshold"] = [threshold] * n
    cols["anomalous"] = [None if v is None else bool(v > threshold) for v in cols[flag_score]]
    cols["error"] = list(decoded.errors)
    return cols


def _score_columns(
    detector: AnomalyDetector, scores: dict[str, np.ndarray], rows: np.ndarray, n: int
) -> dict[str, list[Any]]:
    """Every score of :func:`score_names`, then each one's ``<score>_percentile``, as
    columns of ``n`` cells: the scored images' values in ``rows``, ``None`` elsewhere."""
    names = score_names(detector)
    cols: dict[str, list[Any]] = {}
    for name in names:
        values: list[Any] = [None] * n
        for row, value in zip(rows, scores.get(name, ())):
            values[row] = float(value)
        cols[name] = values
    for name in names:
        percentiles: list[Any] = [None] * n
        if name in scores:
            for row, value in zip(rows, detector.percentile(name, scores[name])):
                percentiles[row] = float(value)
        cols[f"{name}_percentile"] = percentiles
    return cols
