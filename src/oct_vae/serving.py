"""Scoring scans that may be broken: request rows and files in, one result per input out.

The served MLflow model receives scans as base64 text; :func:`decode_request` turns each
row into a ``uint8`` image with :func:`oct_vae.imaging.load_scan` (the ingest
preprocessing) or into an error reason for that row alone. Request bytes are only ever
decoded, never opened as a file path. :func:`score_decoded` scores the decodable images
one at a time, so a scan's scores do not depend on the other scans of the request or
folder, and returns one row per input, with the error of each row that failed.

Used by the ``score`` and ``inference`` pipelines. Imports only numpy and the project's
imaging and detector modules (no Kedro, no MLflow).
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

from oct_vae.detector import AnomalyDetector
from oct_vae.imaging import RejectedScan, load_scan
from oct_vae.scores import PAPER_SCORES

# Largest decoded image accepted in one request row (bytes).
MAX_IMAGE_BYTES = 20_000_000
# Most rows scored in one request.
MAX_REQUEST_ROWS = 64

_DATA_URI = re.compile(r"^data:[\w.+/-]*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


class BadRequest(ValueError):
    """The request as a whole cannot be scored (no rows, too many rows, no image column)."""


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
        raise BadRequest(f"too many rows: {n_rows}, at most {max_rows} scans per request")


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


def score_decoded(
    detector: AnomalyDetector, decoded: Decoded, flag_score: str, specificity: float
) -> dict[str, list[Any]]:
    """Score every decodable image; one row per input.

    Each image is scored on its own (the posterior samples are seeded per image), so its
    scores are the same whatever else is scored with it.

    Args:
        detector: The calibrated model.
        decoded: Output of :func:`decode_request` (or the same built from files).
        flag_score: Score that decides ``anomalous``.
        specificity: Share of validation normals at or below the threshold.

    Returns:
        Columns of equal length: the paper's scores (and ``flag_score``), their
        percentiles among validation normals, ``flag_score``, ``threshold``,
        ``anomalous`` and ``error``; score cells are ``None`` on rows with an error.

    Raises:
        ValueError: ``flag_score`` is not a score of the checkpoint.
    """
    check_flag_score(detector, flag_score)
    threshold = detector.threshold(flag_score, specificity)
    names = list(dict.fromkeys((*PAPER_SCORES, flag_score)))
    cols: dict[str, list[Any]] = {k: [] for k in names}
    cols.update({f"{k}_percentile": [] for k in names})
    for image, error in zip(decoded.images, decoded.errors):
        scores = detector.score(image[None]) if error is None else {}
        for name in names:
            value = float(scores[name][0]) if scores else None
            cols[name].append(value)
            cols[f"{name}_percentile"].append(
                float(detector.percentile(name, value)) if scores else None
            )
    n = len(decoded.errors)
    cols["flag_score"] = [flag_score] * n
    cols["threshold"] = [threshold] * n
    cols["anomalous"] = [None if v is None else bool(v > threshold) for v in cols[flag_score]]
    cols["error"] = list(decoded.errors)
    return cols
