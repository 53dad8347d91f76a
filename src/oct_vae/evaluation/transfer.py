"""The transfer test: every score of real labelled scans that the model never saw.

The files are indexed like ingest does (``kermany.index_scans``: class from the folder and
the file name, patient id from the file name) and decoded exactly like ingest
(``imaging.decode_scans`` at the model's image size). These scans are only scored: never
used for training, thresholds or any choice.

Nothing is dropped silently (only files that are not scans at all, README or .DS_Store,
are skipped when the folder is listed: ``data/scan_files``): a file that is not a
readable scan, and a scan the model may have seen (pixels identical to a training or
validation scan, or a patient of the training or validation split), gets a row with empty
scores and the reason in ``error``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from oct_vae.data import imaging, kermany
from oct_vae.evaluation.report import ERROR_COLUMN, ID_COLUMNS, score_columns
from oct_vae.vae.detector import AnomalyDetector

# What the model saw: the SHA-1s and the patient ids of its training and validation rows.
Seen = tuple[set[str], set[str]]


def real_scan_columns(vae_model: dict[str, Any]) -> list[str]:
    """The columns of ``real_scan_scores``: path, label, patient_id, every score, error."""
    names = score_columns(pd.DataFrame(columns=list(vae_model["calibration"])))
    return [*ID_COLUMNS, *names, ERROR_COLUMN]


def seen_by_model(oct_manifest: pd.DataFrame) -> Seen:
    """SHA-1s and patient ids of the manifest's training and validation rows."""
    rows = oct_manifest[oct_manifest["split"].isin(["train", "val"])]
    return set(rows["sha1"].astype(str)), set(rows["patient_id"].astype(str))


def score_real_scans(
    real_scans: pd.DataFrame, vae_model: dict[str, Any], seen: Seen, max_pixels: int,
    workers: int, device: torch.device,
) -> pd.DataFrame:
    """One row per file of ``real_scans`` (columns ``path``: to read, ``key``: relative to
    its folder), sorted by path: ``real_scan_columns``, the scores empty where ``error``
    says why the file was not scored."""
    columns = real_scan_columns(vae_model)
    names = columns[len(ID_COLUMNS) : -1]
    size = int(vae_model["model_config"]["image_size"])
    out, pixels, keep = decode_real_scans(real_scans, size, max_pixels, workers, seen)
    for name in names:
        out[name] = np.nan
    if keep:
        detector = AnomalyDetector(vae_model, device)
        scores = detector.score(pixels[[i for _, i in keep]], what="score real scans")
        for name in names:
            out.loc[[r for r, _ in keep], name] = scores[name]
    return out[columns].sort_values("path", ignore_index=True)


def decode_real_scans(
    real_scans: pd.DataFrame, size: int, max_pixels: int, workers: int, seen: Seen
) -> tuple[pd.DataFrame, np.ndarray, list[tuple[int, int]]]:
    """Index and decode the files as ingest does; one row per file with its reason when it
    is not scored. Returns the rows, the decoded pixels, and (row, pixel row) to score."""
    keys = real_scans["key"].astype(str).tolist()
    files = dict(zip(keys, real_scans["path"].astype(str), strict=True))
    scans, rejected = kermany.index_scans(keys)
    pixels, results = imaging.decode_scans(
        [files[s.path] for s in scans], size=size, max_pixels=max_pixels, workers=workers,
        progress="decode real scans",
    )
    rows: list[dict[str, Any]] = [
        {"path": path, "label": "", "patient_id": "", ERROR_COLUMN: reason}
        for path, reason in rejected
    ]
    keep = []
    for i, (scan, result) in enumerate(zip(scans, results, strict=True)):
        reason = result.reason or _seen_reason(scan, result.sha1, seen)
        rows.append({"path": scan.path, "label": scan.label, "patient_id": scan.patient_id,
                     ERROR_COLUMN: reason})
        if not reason:
            keep.append((len(rows) - 1, i))
    return pd.DataFrame(rows, columns=[*ID_COLUMNS, ERROR_COLUMN]), pixels, keep


def _seen_reason(scan: kermany.Scan, sha1: str, seen: Seen) -> str:
    hashes, patients = seen
    if sha1 in hashes:
        return "identical pixels to a training or validation scan of the model"
    if scan.patient_id in patients:
        return f"patient {scan.patient_id} is in the model's training or validation split"
    return ""
