"""Nodes of the ``inference`` pipeline: thin adapters over ``oct_vae.serving.scoring``."""

from __future__ import annotations

import logging
import time
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException

from oct_vae.serving import scoring as serving
from oct_vae.serving.cache import detector_for
from oct_vae.training.device import resolve_device

# Request columns: the scan as base64 text, and an optional id echoed back.
IMAGE_COLUMN = "image_b64"
ID_COLUMN = "id"

# One line per request (the served model's runner silences Kedro's own lines).
_logger = logging.getLogger(__name__)


def export_checkpoint(vae_model: dict[str, Any]) -> dict[str, Any]:
    """The calibrated checkpoint of this run, as the one file the served model packs."""
    return vae_model


def score_request(
    scorer_checkpoint: dict[str, Any],
    scoring_request: pd.DataFrame,
    max_image_pixels: int,
    max_image_bytes: int,
    max_request_rows: int,
    flag_score: str,
    specificity: float,
    device: str,
    max_request_bytes: int = serving.MAX_REQUEST_BYTES,
) -> pd.DataFrame:
    """Score each base64 scan of a request; a row that cannot be scored gets an ``error``.

    The request as a whole is checked before any row is decoded (``_checked_request``);
    the network is built once per checkpoint, not per request (``oct_vae.serving.cache``).
    Logs one line per request: rows, scored, errors and seconds, or why it was refused.

    Returns:
        One row per request row (``id`` first when given), JSON-ready: ``None``, not NaN,
        in the score cells of failed rows.

    Raises:
        MlflowException: The request as a whole is refused (HTTP 400, with the reason).
    """
    start = time.perf_counter()
    values = _checked_request(scoring_request, max_request_rows, max_request_bytes)
    try:
        detector = detector_for(scorer_checkpoint, resolve_device(device))
        decoded = serving.decode_request(
            values, detector.image_size, max_image_pixels, max_image_bytes
        )
        out = pd.DataFrame(serving.score_decoded(detector, decoded, flag_score, specificity))
    except Exception:
        # Kedro's own report of a failed node is silenced in the served model.
        _logger.exception("scoring a request of %d rows failed", len(values))
        raise
    if ID_COLUMN in scoring_request.columns:
        out.insert(0, ID_COLUMN, scoring_request[ID_COLUMN].tolist())
    _log_scored(len(values), int(decoded.ok.sum()), start)
    return out.astype(object).where(out.notna(), None)


def _log_scored(n_rows: int, n_ok: int, start: float) -> None:
    _logger.info("scored a request: %d rows, %d scored, %d errors, %.2f s",
                 n_rows, n_ok, n_rows - n_ok, time.perf_counter() - start)


def _checked_request(
    scoring_request: pd.DataFrame, max_request_rows: int, max_request_bytes: int
) -> list[Any]:
    """The request's base64 cells, once the request as a whole passed its checks: an
    ``image_b64`` column, at least one and at most ``max_request_rows`` rows, at most
    ``max_request_bytes`` of base64 text in all.

    Raises:
        MlflowException: What is wrong with the request (HTTP 400).
    """
    try:
        if IMAGE_COLUMN not in scoring_request.columns:
            raise serving.BadRequest(f"the request has no {IMAGE_COLUMN!r} column")
        serving.check_request(len(scoring_request), max_request_rows)
        values = scoring_request[IMAGE_COLUMN].tolist()
        # Bounds what one request makes the model hold and decode. `mlflow models serve`
        # has no body-size setting (MLflow's scoring server reads the whole body and
        # uvicorn has no limit), so there the body has been read and parsed by now;
        # `python -m oct_vae.serve` also refuses an oversized body before reading it.
        serving.check_payload(values, max_request_bytes)
    except serving.BadRequest as exc:
        _logger.info("refused a request: %s", exc)
        raise MlflowException.invalid_parameter_value(str(exc)) from None
    return values
