"""What ingest decodes first and how it splits: pure functions over ``kermany.Scan`` lists.

Framework-free (``oct_vae.data.kermany`` and the standard library); the ingest nodes turn
catalog tables into scan lists and call these.
"""

from __future__ import annotations

import logging

from oct_vae.data import kermany

log = logging.getLogger(__name__)


def decode_order(
    scans: list[kermany.Scan], protocol: str, test_normals: int, test_per_disease: int,
    seed: int,
) -> tuple[list[int], dict[str, list[int]]]:
    """The scans to decode in any case, and per disease the candidates in draw order.

    ``protocol="paper"``: every normal scan, then each disease's ``kermany.candidates``
    (decoded until its test quota is full). ``protocol="official"``: every normal scan and
    every diseased scan of the dataset's own test folder; no quotas, no queues.

    Raises:
        ValueError: An unknown protocol, or too few scans for the test quotas.
    """
    kermany.check_protocol(protocol)
    normals = [i for i, s in enumerate(scans) if s.label == "NORMAL"]
    if protocol == "official":  # the dataset's own test folder, no quotas
        first = normals + [
            i for i, s in enumerate(scans)
            if s.label != "NORMAL" and kermany.in_official_test(s.path)
        ]
        return first, {}
    kermany.check_enough_scans(scans, test_normals, test_per_disease)
    queues = {label: kermany.candidates(scans, label, seed) for label in kermany.DISEASES}
    return normals, queues


def draw_splits(
    scans: list[kermany.Scan], protocol: str, val_fraction: float, test_normals: int,
    test_per_disease: int, max_train_normals: int | None, seed: int,
) -> tuple[dict[str, list[int]], list[int]]:
    """The split of ``protocol`` and the scans it leaves out (official: test-set patients)."""
    kermany.check_protocol(protocol)
    if protocol != "official":
        splits = kermany.split_scans(
            scans, val_fraction, test_normals, test_per_disease, max_train_normals, seed
        )
        return splits, []
    splits, excluded = kermany.official_split(scans, val_fraction, max_train_normals, seed)
    log.info(
        "protocol official: test set = the dataset's own test folder (%d scans); "
        "%d normal scan(s) of %d patient(s) left out of training and validation: %s",
        len(splits["test"]), len(excluded), len({scans[i].patient_id for i in excluded}),
        kermany.OFFICIAL_TEST_EXCLUSION,
    )
    return splits, excluded
