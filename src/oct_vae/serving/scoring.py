"""Scoring scans that may be broken: request rows and files in, one result per input out.

The served MLflow model receives scans as base64 text; :func:`decode_request` turns each
row into a ``uint8`` image with :func:`oct_vae.data.imaging.load_scan` (the ingest
preprocessing) or into an error reason for that row alone. Request bytes are only ever
decoded, never opened as a file path. :func:`score_decoded` scores the decodable images
in batches, with every score that evaluation reports; a scan's scores do not depend on
the other scans of the request or folder. It returns one row per input, with the error
of each row that failed.
:data:`DETECTORS` keeps the served model's network between requests.

Used by the ``score`` and ``inference`` pipelines. Imports only numpy, torch and the
project's imaging and detector modules (no Kedro, no MLflow).
"""

from __future__ import annotations

import base64
import binascii
import copy
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

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
    names = score_names(detector)
    ok = decoded.ok
    scores = detector.score(decoded.images[ok]) if ok.any() else {}
    n = len(decoded.errors)
    rows = np.flatnonzero(ok)
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
    cols["flag_score"] = [flag_score] * n
    cols["threshold"] = [threshold] * n
    cols["anomalous"] = [None if v is None else bool(v > threshold) for v in cols[flag_score]]
    cols["error"] = list(decoded.errors)
    return cols


# ------------------------------------------------------------------ the served network


class DetectorCache:
    """The detector of the last checkpoint scored, built again only when the checkpoint
    changes: the served model's network is built once, not once per request.

    The checkpoint is recognised by its content, not by its identity: kedro-mlflow's
    ``KedroPipelineModel.predict`` deep-copies its whole catalog, checkpoint included, on
    every request (``runtime_catalog = deepcopy(self.loaded_catalog)`` in
    ``kedro_mlflow/mlflow/kedro_pipeline_model.py``; ``copy_mode="assign"`` does not change
    that), so each request brings a new but equal checkpoint. The cached detector is used
    when everything but the weights equals a copy kept of the checkpoint it was built from,
    and every weight equals its network's own (``torch.equal``; about 20 ms for the 148 MB of
    a width-64 model, where building the network takes 0.6 s). Thread-safe: the model server
    scores concurrent requests in threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (detector, its checkpoint without the weights)
        self._entry: tuple[AnomalyDetector, dict[str, Any]] | None = None

    def get(self, checkpoint: dict[str, Any], device: torch.device | str) -> AnomalyDetector:
        """The detector of ``checkpoint`` on ``device``, built only if not the cached one."""
        device = torch.device(device)
        with self._lock:
            if self._entry is not None:
                detector, rest = self._entry
                if detector.device == device and _same_checkpoint(checkpoint, detector, rest):
                    return detector
            detector = AnomalyDetector(checkpoint, device)
            self._entry = (detector, copy.deepcopy(_without_weights(checkpoint)))
            return detector

    def clear(self) -> None:
        with self._lock:
            self._entry = None


# The served model's detector (one per process).
DETECTORS = DetectorCache()


def _without_weights(checkpoint: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in checkpoint.items() if k != "state_dict"}


def _same_checkpoint(
    checkpoint: dict[str, Any], detector: AnomalyDetector, rest: dict[str, Any]
) -> bool:
    weights = checkpoint.get("state_dict")
    own = detector.model.state_dict()
    return (
        isinstance(weights, dict)
        and weights.keys() == own.keys()
        and _equal(_without_weights(checkpoint), rest)
        and all(_equal(v, own[k]) for k, v in weights.items())
    )


def _equal(a: Any, b: Any) -> bool:
    """Exactly equal content (NaN equals NaN), for checkpoints' tensors and plain values."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        b = b.to(a.device)
        return torch.equal(a, b) or (
            a.is_floating_point() and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)
        )
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.tobytes() == b.tobytes()
        )
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(_equal(v, b[k]) for k, v in a.items())
        )
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return type(a) is type(b) and bool(a == b)
    except (TypeError, ValueError):
        return False
