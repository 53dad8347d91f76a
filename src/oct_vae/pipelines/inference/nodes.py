"""Nodes of the ``inference`` pipeline: thin adapters over ``oct_vae.serving``."""

from __future__ import annotations

from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException

from oct_vae import serving
from oct_vae.detector import AnomalyDetector
from oct_vae.training import resolve_device

# Request columns: the scan as base64 text, and an optional id echoed back.
IMAGE_COLUMN = "image_b64"
ID_COLUMN = "id"


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
) -> pd.DataFrame:
    """Score each base64 scan of a request; a row that cannot be scored gets an ``error``.

    Returns:
        One row per request row (``id`` first when given), JSON-ready: ``None``, not NaN,
        in the score cells of failed rows.

    Raises:
        MlflowException: No ``image_b64`` column, no rows, or too many rows (the model
            server answers HTTP 400 with this reason).
    """
    try:
        if IMAGE_COLUMN not in scoring_request.columns:
            raise serving.BadRequest(f"the request has no {IMAGE_COLUMN!r} column")
        serving.check_request(len(scoring_request), max_request_rows)
    except serving.BadRequest as exc:
        raise MlflowException.invalid_parameter_value(str(exc)) from None
    detector = AnomalyDetector(scorer_checkpoint, resolve_device(device))
    decoded = serving.decode_request(
        scoring_request[IMAGE_COLUMN].tolist(),
        detector.image_size,
        max_image_pixels,
        max_image_bytes,
    )
    out = pd.DataFrame(serving.score_decoded(detector, decoded, flag_score, specificity))
    if ID_COLUMN in scoring_request.columns:
        out.insert(0, ID_COLUMN, scoring_request[ID_COLUMN].tolist())
    return out.astype(object).where(out.notna(), None)
