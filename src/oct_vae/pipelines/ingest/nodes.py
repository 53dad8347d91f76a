"""Nodes of the ``ingest`` pipeline: thin adapters over ``oct_vae.data.kermany``,
``imaging`` and ``plan``."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from oct_vae.data import imaging, kermany
from oct_vae.pipelines.ingest.plan import decode_order, draw_splits

log = logging.getLogger(__name__)

REJECT_COLUMNS = ["path", "reason"]
MANIFEST_COLUMNS = [
    "path",
    "label",
    "patient_id",
    "split",
    "width",
    "height",
    "row",
    "sha1",
    "duplicate_of",
]
# Rejected files logged one by one; the rest are counted in one line.
_LOGGED_REJECTS = 20


def index_scans(raw_scans: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse class and patient from every file name; set aside what is not a scan.

    Paths are recorded relative to the dataset folder (column ``key``): folder names of
    clinical data can carry identifiers, and results must not depend on where the data sit.

    Args:
        raw_scans: Columns ``path`` (to read) and ``key`` (relative to the dataset folder),
            one row per file (``ScanFolderDataset``).

    Returns:
        ``scan_index`` (path relative to the dataset folder, file to read, label,
        patient_id, scan_number) and the rejected files.
    """
    keys = raw_scans["key" if "key" in raw_scans.columns else "path"].astype(str)
    files = dict(zip(keys, raw_scans["path"].astype(str), strict=True))
    scans, rejected = kermany.index_scans(keys)
    _warn_rejects(rejected, "indexing")
    index = pd.DataFrame(
        {
            "path": [s.path for s in scans],
            "file": [files[s.path] for s in scans],
            "label": [s.label for s in scans],
            "patient_id": pd.Series([s.patient_id for s in scans], dtype=object),
            "scan_number": pd.Series([s.number for s in scans], dtype="int64"),
        }
    )
    log.info("indexed %d scans: %s", len(index), index["label"].value_counts().to_dict())
    return index, _rejects_frame(rejected)


def decode_scans(
    scan_index: pd.DataFrame,
    test_normals: int,
    test_per_disease: int,
    seed: int,
    image_size: int,
    max_image_pixels: int,
    workers: int,
    protocol: str = "paper",
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Decode every normal scan and just enough diseased scans to fill the test quotas.

    Diseased scans are decoded in draw order (``plan.decode_order``) with a margin;
    when rejects leave a quota short, the next candidates are decoded, until it is full
    or the class runs out, so decoding failures never shrink the test set. With
    ``protocol="official"`` the quotas do not apply: every normal scan and every
    diseased scan of the dataset's own test folder is decoded.

    Returns:
        ``decoded_scans`` (the index of the decodable scans plus width, height, sha1 of
        the decoded pixels and ``pixel_row``), ``scan_pixels`` (N x S x S uint8) and the
        rejected files.
    """
    scans = _to_scans(scan_index)
    files = scan_index["file" if "file" in scan_index.columns else "path"].astype(str).tolist()
    first, queues = decode_order(scans, protocol, test_normals, test_per_disease, seed)
    pixels, decoded = imaging.decode_until_full(
        files, first, queues, test_per_disease, image_size, max_image_pixels, workers
    )
    table, rejected = _decoded_table(scan_index, scans, decoded)
    _warn_rejects(rejected, "decoding")
    return table, pixels, _rejects_frame(rejected)


def _decoded_table(
    scan_index: pd.DataFrame, scans: list[kermany.Scan], decoded: dict[int, imaging.DecodeResult]
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """The decodable scans' index rows (sorted by path) with width, height, sha1 and
    ``pixel_row``, and the (path, reason) of every scan that was not decodable."""
    valid = sorted((i for i, r in decoded.items() if not r.reason), key=lambda i: scans[i].path)
    table = scan_index.iloc[valid].reset_index(drop=True)
    table["width"] = [decoded[i].width for i in valid]
    table["height"] = [decoded[i].height for i in valid]
    table["sha1"] = [decoded[i].sha1 for i in valid]
    table["pixel_row"] = [decoded[i].index for i in valid]
    rejected = [(scans[i].path, r.reason) for i, r in sorted(decoded.items()) if r.reason]
    return table, rejected


def split_scans(
    decoded_scans: pd.DataFrame,
    val_fraction: float,
    test_normals: int,
    test_per_disease: int,
    max_train_normals: int | None,
    seed: int,
    protocol: str = "paper",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split patient-disjointly (``plan.draw_splits``) and remove test duplicates.

    ``protocol="paper"``: our own draw, with the test quotas. ``protocol="official"``: the
    dataset's own test folder; normal scans of its patients are left out of training and
    validation, counted in the log and listed in the rejects with the reason
    ``kermany.OFFICIAL_TEST_EXCLUSION``. A training or validation scan whose decoded
    pixels are identical to a test scan's (same SHA-1) is dropped and named in the test
    row's ``duplicate_of``.

    Returns:
        ``oct_manifest`` (MANIFEST_COLUMNS, rows grouped by split in train, val, test
        order; ``row`` indexes the split's image array) and the dropped files (test
        duplicates; under ``official`` also the excluded test-set patients' scans).
    """
    scans = _to_scans(decoded_scans)
    splits, excluded = draw_splits(
        scans, protocol, val_fraction, test_normals, test_per_disease, max_train_normals, seed
    )
    duplicates = kermany.find_test_duplicates(splits, decoded_scans["sha1"].tolist())
    dropped = {i: t for t, copies in duplicates.items() for i in copies}
    manifest = _manifest(decoded_scans, scans, splits, duplicates, dropped)
    kermany.check_patient_disjoint(
        {s: manifest.loc[manifest["split"] == s, "patient_id"] for s in kermany.SPLITS}
    )
    leaks = _leak_rejects(scans, dropped, excluded)
    log.info("split (patient-disjoint): %s", manifest.groupby(["split", "label"]).size().to_dict())
    return manifest, _rejects_frame(leaks)


def _leak_rejects(
    scans: list[kermany.Scan], dropped: dict[int, int], excluded: list[int]
) -> list[tuple[str, str]]:
    """The dropped test duplicates (each logged) and the excluded test-set patients' scans
    (counted in one log line by ``plan.draw_splits``: this is the protocol)."""
    leaks = [
        (scans[i].path, f"identical pixels to test scan {scans[t].path}; dropped from training")
        for i, t in sorted(dropped.items())
    ]
    _warn_rejects(leaks, "leakage check")
    return leaks + [(scans[i].path, kermany.OFFICIAL_TEST_EXCLUSION) for i in excluded]


def _manifest(
    decoded_scans: pd.DataFrame, scans: list[kermany.Scan], splits: dict[str, list[int]],
    duplicates: dict[int, list[int]], dropped: dict[int, int],
) -> pd.DataFrame:
    """One row per kept scan, grouped by split in train, val, test order."""
    rows = []
    for split in kermany.SPLITS:
        kept = [i for i in splits[split] if i not in dropped]
        for row, i in enumerate(kept):
            copies = duplicates.get(i, [])
            rows.append((i, split, row, ";".join(scans[c].path for c in copies)))
    index, split_col, row_col, dup_col = zip(*rows, strict=True)
    manifest = decoded_scans.iloc[list(index)].reset_index(drop=True)
    manifest["split"], manifest["row"], manifest["duplicate_of"] = split_col, row_col, dup_col
    return manifest[MANIFEST_COLUMNS]


def gather_split_images(
    oct_manifest: pd.DataFrame, decoded_scans: pd.DataFrame, scan_pixels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Copy each split's images, in manifest order, into its own N x S x S uint8 array."""
    pixel_row = dict(zip(decoded_scans["path"], decoded_scans["pixel_row"], strict=True))
    arrays = []
    for split in kermany.SPLITS:
        paths = oct_manifest.loc[oct_manifest["split"] == split].sort_values("row")["path"]
        arrays.append(scan_pixels[[pixel_row[p] for p in paths]])
    return arrays[0], arrays[1], arrays[2]


def collect_rejects(
    index_rejects: pd.DataFrame, decode_rejects: pd.DataFrame, leak_rejects: pd.DataFrame
) -> pd.DataFrame:
    """All rejected files with their reason, sorted by path (empty table if none)."""
    frames = [r for r in (index_rejects, decode_rejects, leak_rejects) if len(r)]
    if not frames:
        return _rejects_frame([])
    return pd.concat(frames, ignore_index=True).sort_values("path", ignore_index=True)


def _to_scans(table: pd.DataFrame) -> list[kermany.Scan]:
    columns = ["path", "label", "patient_id", "scan_number"]
    return [
        kermany.Scan(str(path), str(label), str(patient), int(number))
        for path, label, patient, number in table[columns].itertuples(index=False)
    ]


def _rejects_frame(rejected: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rejected, columns=REJECT_COLUMNS).astype(object)


def _warn_rejects(rejected: list[tuple[str, str]], stage: str) -> None:
    for path, reason in rejected[:_LOGGED_REJECTS]:
        log.warning("skipped %s (%s): %s", path, stage, reason)
    if len(rejected) > _LOGGED_REJECTS:
        log.warning(
            "skipped %d more files during %s; all are listed in rejected_files",
            len(rejected) - _LOGGED_REJECTS,
            stage,
        )
