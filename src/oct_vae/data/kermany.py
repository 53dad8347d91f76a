"""The Kermany OCT dataset's file names, folder layout and our patient-disjoint split.

Files are named ``<CLASS>-<patient id>-<n>.jpeg`` and sit in a folder named after their
class, at any depth: ``OCT2017/{train,test}/<CLASS>/``, ``CellData/OCT/{train,test}/<CLASS>/``
and the Kaggle copy's ``{train,val,test}/<CLASS>/`` all work. Two protocols
(``ingest.protocol``):

* ``paper`` (:func:`split_scans`): the dataset's own sub-splits are pooled and we draw
  our own patient-disjoint split, whole patients at a time (the paper's 200/100/100/100);
* ``official`` (:func:`official_split`): the test set is the dataset's own ``test``
  folder, as in published benchmarks; training and validation use the other normal
  scans of patients who have no scan in that folder.

This module imports only the standard library.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath

from oct_vae.data.scan_files import not_a_scan

CLASSES = ("NORMAL", "CNV", "DME", "DRUSEN")
DISEASES = CLASSES[1:]
SPLITS = ("train", "val", "test")
# ingest.protocol: how the test set is chosen (see the module docstring).
PROTOCOLS = ("paper", "official")
# The dataset's own test folder (``<root>/test/<CLASS>/<file>``), used by ``official``.
OFFICIAL_TEST_FOLDER = "test"
# Why a normal scan is left out of training and validation under ``official``.
OFFICIAL_TEST_EXCLUSION = "patient in the official test set"
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")

_NAME = re.compile(r"^(?P<label>[A-Z]+)-(?P<patient>[0-9A-Za-z]+)-(?P<number>\d+)\.(?:jpe?g|png)$",
                   re.IGNORECASE)


@dataclass(frozen=True)
class Scan:
    """One scan file: where it is, its class and its patient."""

    path: str
    label: str
    patient_id: str
    number: int


def parse_scan_name(name: str) -> tuple[str, str, int]:
    """Parse ``<CLASS>-<patient id>-<n>.<jpeg|jpg|png>`` (extension case-insensitive).

    Args:
        name: A file name (not a path).

    Returns:
        The class (upper case), the patient id (a string: leading zeros are kept) and n.

    Raises:
        ValueError: The name does not follow the pattern or names an unknown class.
    """
    match = _NAME.match(name)
    if match is None:
        raise ValueError(f"unparseable file name {name!r}: expected <CLASS>-<patient>-<n>.jpeg")
    label = match["label"].upper()
    if label not in CLASSES:
        raise ValueError(f"unknown class {match['label']!r} in file name {name!r}")
    return label, match["patient"], int(match["number"])


def index_scans(paths: Iterable[str]) -> tuple[list[Scan], list[tuple[str, str]]]:
    """File paths into scans; not-scans (``scan_files``) skipped, the rest rejected with a reason.

    A file is a scan when its extension is an image one, its name parses, its parent
    folder is a class name (any case) and agrees with the class in the name. A second
    file with the same name (the Kaggle copy nests the dataset twice) is rejected as a
    duplicate of the first in path order.

    Args:
        paths: File paths, in any order.

    Returns:
        The scans sorted by path, and the rejected files with the reason.
    """
    scans: list[Scan] = []
    rejected: list[tuple[str, str]] = []
    first_seen: dict[str, str] = {}
    for path in sorted(p for p in paths if not_a_scan(p) is None):  # README, .DS_Store: skipped
        scan = _scan_of(path)
        if isinstance(scan, str):
            rejected.append((path, scan))
            continue
        key = PurePath(path).name.lower()
        if key in first_seen:
            rejected.append((path, f"duplicate file name of {first_seen[key]}"))
            continue
        first_seen[key] = path
        scans.append(scan)
    return scans, rejected


def _scan_of(path: str) -> Scan | str:
    """The scan at ``path``, or why the file is not one (see :func:`index_scans`)."""
    pure = PurePath(path)
    folder = pure.parent.name
    if pure.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image file name (extension {pure.suffix!r})"
    if folder.upper() not in CLASSES:
        return f"unknown class folder {folder!r}"
    try:
        label, patient, number = parse_scan_name(pure.name)
    except ValueError as exc:
        return str(exc)
    if label != folder.upper():
        return f"file name says {label} but it is in folder {folder!r}"
    return Scan(path, label, patient, number)


def patient_order(patients: Iterable[str], seed: int) -> list[str]:
    """Patients in a seeded pseudo-random order.

    The order comes from hashing ``seed`` with each patient id, so a patient's place does
    not depend on which other patients are present: dropping a patient whose scans all
    failed to decode leaves everyone else's draw unchanged.
    """
    return sorted(set(patients), key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).digest())


def candidates(scans: Sequence[Scan], label: str, seed: int) -> list[int]:
    """Indices of ``label``'s scans in draw order: patient by patient, then by scan number."""
    by_patient = _by_patient(scans, label)
    return [i for p in patient_order(by_patient, seed) for i in by_patient[p]]


def split_scans(scans: Sequence[Scan], val_fraction: float, test_normals: int,
                test_per_disease: int, max_train_normals: int | None,
                seed: int) -> dict[str, list[int]]:
    """Split scans patient-disjointly into training and validation normals and a test set.

    The test set takes ``test_per_disease`` scans of each disease and ``test_normals``
    normals, whole patients at a time in :func:`patient_order` (:func:`_paper_test`). Any
    patient with a test scan (of any class) is excluded from training and validation.
    Validation takes whole normal patients, training the rest (:func:`_train_val`).
    Diseased scans are only ever test scans.

    Args:
        scans: Decodable scans.
        val_fraction: Fraction of training + validation normals held out for validation.
        test_normals: Normal scans in the test set.
        test_per_disease: Scans of each disease in the test set.
        max_train_normals: Cap on training scans (None = no cap).
        seed: Seed of the patient draw.

    Returns:
        Indices into ``scans`` for ``train``, ``val`` and ``test``, each sorted by path.

    Raises:
        ValueError: Too few scans or patients for the requested sizes; the message says
            which parameter to lower.
    """
    _check_val_fraction(val_fraction)
    check_enough_scans(scans, test_normals, test_per_disease)
    test, test_patients = _paper_test(scans, test_normals, test_per_disease, seed)
    pool = _by_patient(scans, "NORMAL")
    order = [p for p in patient_order(pool, seed) if p not in test_patients]
    advice = f"lower --params ingest.test_normals={test_normals} (or ingest.val_fraction)"
    train, val = _train_val(order, pool, val_fraction, max_train_normals, advice)
    return _sorted_splits(scans, train, val, test)


def _paper_test(scans: Sequence[Scan], test_normals: int, test_per_disease: int,
                seed: int) -> tuple[list[int], set[str]]:
    """The test set of :func:`split_scans` and its patients.

    Per class, patients are drawn in :func:`patient_order` and all their scans taken until
    the quota is reached; the last patient drawn is truncated. Truncating keeps the paper's
    exact test composition (200 + 3 x 100) while every patient still belongs to one split:
    the truncated patient's other scans are left out, not moved to training.
    """
    test: list[int] = []
    test_patients: set[str] = set()
    for label in DISEASES + ("NORMAL",):
        quota = test_normals if label == "NORMAL" else test_per_disease
        taken = candidates(scans, label, seed)[:quota]
        test += taken
        test_patients |= {scans[i].patient_id for i in taken}
    return test, test_patients


def _check_val_fraction(val_fraction: float) -> None:
    """Raise ``ValueError`` unless ``val_fraction`` lies in [0, 1)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"ingest.val_fraction must be in [0, 1), got {val_fraction}")


def _sorted_splits(scans: Sequence[Scan], train: list[int], val: list[int],
                   test: list[int]) -> dict[str, list[int]]:
    """The splits, each sorted by path, after checking that no patient is in two."""
    splits = {
        name: sorted(idx, key=lambda i: scans[i].path)
        for name, idx in (("train", train), ("val", val), ("test", test))
    }
    check_patient_disjoint({k: [scans[i].patient_id for i in v] for k, v in splits.items()})
    return splits


def check_protocol(protocol: str) -> None:
    """Raise ``ValueError`` unless ``protocol`` is one of :data:`PROTOCOLS`."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"ingest.protocol={protocol!r}: must be one of "
                         f"{', '.join(map(repr, PROTOCOLS))}")


def in_official_test(path: str) -> bool:
    """Whether a scan sits in the dataset's own test folder: ``.../test/<CLASS>/<file>``
    (the folder name in any case), as in ``OCT2017/test/CNV/CNV-123-1.jpeg``."""
    parts = PurePath(path).parts
    return len(parts) >= 3 and parts[-3].lower() == OFFICIAL_TEST_FOLDER


def official_split(scans: Sequence[Scan], val_fraction: float, max_train_normals: int | None,
                   seed: int) -> tuple[dict[str, list[int]], list[int]]:
    """The literature's protocol: the dataset's own ``test`` folder is the test set.

    Every scan under a ``test/<CLASS>/`` folder (:func:`in_official_test`) is a test scan,
    whatever the count per class (OCT2017: 250 per class), so results can be set beside
    published tables. Normal scans outside that folder of patients who have a scan in it
    are left out (:func:`_official_pool`). Validation takes whole normal patients of the rest
    (as in :func:`split_scans`), training the others, capped at ``max_train_normals``.
    Diseased scans outside the test folder are not used.

    Args:
        scans: Decodable scans.
        val_fraction: Fraction of training + validation normals held out for validation.
        max_train_normals: Cap on training scans (None = no cap).
        seed: Seed of the validation draw.

    Returns:
        Indices into ``scans`` for ``train``, ``val`` and ``test`` (each sorted by path),
        and the indices of the normal scans excluded because their patient is in the test
        folder (sorted by path).

    Raises:
        ValueError: No test folder, no normal or no diseased test scan, or too few normal
            patients left for training and validation.
    """
    _check_val_fraction(val_fraction)
    test = _official_test(scans)
    pool, excluded = _official_pool(scans, test)
    order = patient_order(pool, seed)
    advice = (f"the official test set's patients leave {len(order)} normal patient(s); lower "
              "--params ingest.val_fraction, or use ingest.protocol=paper")
    train, val = _train_val(order, pool, val_fraction, max_train_normals, advice)
    return _sorted_splits(scans, train, val, test), sorted(excluded, key=lambda i: scans[i].path)


def _official_test(scans: Sequence[Scan]) -> list[int]:
    """The scans of the dataset's own test folder; it must hold normal and diseased scans."""
    test = [i for i, s in enumerate(scans) if in_official_test(s.path)]
    test_labels = {scans[i].label for i in test}
    if "NORMAL" not in test_labels or not test_labels & set(DISEASES):
        found = ", ".join(sorted(test_labels)) or "no scans"
        raise ValueError(
            "ingest.protocol=official takes the test set from the dataset's own test folder "
            f"(<raw_dir>/.../{OFFICIAL_TEST_FOLDER}/<CLASS>/), which must hold normal and "
            f"diseased scans; found {found} there. Point raw_dir at the folder that holds "
            "OCT2017/test, or use --params ingest.protocol=paper"
        )
    return test


def _official_pool(scans: Sequence[Scan],
                   test: list[int]) -> tuple[dict[str, list[int]], list[int]]:
    """Normal scans outside the test folder, by patient, and those left out of them.

    Kermany's own division is not documented to be patient-disjoint, so the normal scans of
    any patient who has a scan in the test folder (of any class) are left out of training
    and validation, and returned for the record (:data:`OFFICIAL_TEST_EXCLUSION`).
    """
    test_patients = {scans[i].patient_id for i in test}
    outside = set(range(len(scans))) - set(test)
    pool_all = _by_patient(scans, "NORMAL", outside)
    excluded = [i for p in pool_all if p in test_patients for i in pool_all[p]]
    pool = {p: idx for p, idx in pool_all.items() if p not in test_patients}
    return pool, excluded


def _train_val(order: Sequence[str], pool: Mapping[str, Sequence[int]], val_fraction: float,
               max_train_normals: int | None, advice: str) -> tuple[list[int], list[int]]:
    """Validation: whole patients of ``order`` nearest ``val_fraction`` of the scans;
    training: the other patients' scans, capped at ``max_train_normals``."""
    n_pool = sum(len(pool[p]) for p in order)
    if max_train_normals is not None:
        n_pool = min(n_pool, math.ceil(max_train_normals / (1.0 - val_fraction)))
    val_patients = _choose_val_patients(order, pool, round(val_fraction * n_pool))
    if val_fraction > 0 and not val_patients and order:
        val_patients = [order[0]]
    val = [i for p in val_patients for i in pool[p]]
    train = [i for p in order if p not in set(val_patients) for i in pool[p]]
    train = train[:max_train_normals] if max_train_normals is not None else train
    if not train or (val_fraction > 0 and not val):
        raise ValueError(f"only {len(order)} normal patient(s) remain after the test set, too few "
                         f"for training{' and validation' if val_fraction > 0 else ''}: {advice}, "
                         "or add normal scans")
    return train, val


def check_enough_scans(scans: Sequence[Scan], test_normals: int, test_per_disease: int) -> None:
    """Fail with advice when a class has too few scans for the requested test set.

    Normals need the test quota plus at least two more scans (training and validation).

    Raises:
        ValueError: Naming the class, the counts and the parameter to lower.
    """
    counts = {label: 0 for label in CLASSES}
    for scan in scans:
        counts[scan.label] += 1
    for label in DISEASES:
        if counts[label] < test_per_disease:
            raise ValueError(
                f"only {counts[label]} usable {label} scan(s), but the test set needs "
                f"{test_per_disease} of each disease: lower --params "
                f"ingest.test_per_disease={counts[label]} or add {label} scans"
            )
    if counts["NORMAL"] < test_normals + 2:
        raise ValueError(
            f"only {counts['NORMAL']} usable NORMAL scan(s), but the test set needs "
            f"{test_normals} plus at least 2 for training and validation: lower --params "
            f"ingest.test_normals={max(counts['NORMAL'] - 2, 0)} or add normal scans"
        )


def check_patient_disjoint(patients_by_split: Mapping[str, Iterable[str]]) -> None:
    """Fail loudly when a patient appears in more than one split.

    Raises:
        ValueError: Listing (up to ten of) the shared patients.
    """
    seen: dict[str, str] = {}
    shared: set[str] = set()
    for split, patients in patients_by_split.items():
        for patient in set(patients):
            if patient in seen and seen[patient] != split:
                shared.add(f"{patient} ({seen[patient]}, {split})")
            seen.setdefault(patient, split)
    if shared:
        raise ValueError(f"patients in two splits (leakage): {', '.join(sorted(shared)[:10])}")


def find_test_duplicates(splits: Mapping[str, Sequence[int]],
                         hashes: Sequence[str]) -> dict[int, list[int]]:
    """Training/validation scans whose pixels are identical to a test scan's.

    Args:
        splits: Indices per split, as returned by :func:`split_scans`.
        hashes: Content hash of every scan (see ``oct_vae.data.imaging.content_hash``).

    Returns:
        For each test index with duplicates, the training/validation indices sharing its hash.
    """
    test_by_hash: dict[str, int] = {}
    for i in splits["test"]:
        test_by_hash.setdefault(hashes[i], i)
    duplicates: dict[int, list[int]] = defaultdict(list)
    for split in ("train", "val"):
        for i in splits[split]:
            if hashes[i] in test_by_hash:
                duplicates[test_by_hash[hashes[i]]].append(i)
    return dict(duplicates)


def _by_patient(scans: Sequence[Scan], label: str,
                keep: set[int] | None = None) -> dict[str, list[int]]:
    """``label``'s scan indices by patient (only those in ``keep``), by number then path."""
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, scan in enumerate(scans):
        if scan.label == label and (keep is None or i in keep):
            by_patient[scan.patient_id].append(i)
    return {p: sorted(idx, key=lambda i: (scans[i].number, scans[i].path))
            for p, idx in by_patient.items()}


def _choose_val_patients(order: Sequence[str], pool: Mapping[str, Sequence[int]],
                         target: int) -> list[str]:
    """Whole patients, in order, each added only if it brings the total closer to target."""
    chosen: list[str] = []
    total = 0
    for patient in order[:-1]:  # the last patient always stays for training
        n = len(pool[patient])
        if abs(total + n - target) < abs(total - target):
            chosen.append(patient)
            total += n
        if total >= target:
            break
    return chosen
