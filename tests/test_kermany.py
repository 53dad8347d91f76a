"""Tests of ``oct_vae.data.kermany``: file names, folder indexing and the patient-disjoint split."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from oct_vae.data.kermany import (
    OFFICIAL_TEST_EXCLUSION,
    Scan,
    candidates,
    check_patient_disjoint,
    find_test_duplicates,
    in_official_test,
    index_scans,
    official_split,
    parse_scan_name,
    patient_order,
    split_scans,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("CNV-1016042-1.jpeg", ("CNV", "1016042", 1)),
        ("NORMAL-0012-17.JPG", ("NORMAL", "0012", 17)),
        ("DRUSEN-9894035-2.PNG", ("DRUSEN", "9894035", 2)),
        ("dme-A1b2-3.jpeg", ("DME", "A1b2", 3)),
    ],
)
def test_parse_good_names(name: str, expected: tuple[str, str, int]) -> None:
    assert parse_scan_name(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "CNV_1016042_1.jpeg",
        "CNV-1016042.jpeg",
        "CNV-1016042-1",
        "CNV-1016042-x.jpeg",
        "GLAUCOMA-1-1.jpeg",
        "CNV-1-1.gif",
        "CNV--1.jpeg",
        "README.md",
    ],
)
def test_parse_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="file name"):
        parse_scan_name(name)


def test_index_pools_every_layout_and_rejects_with_reasons() -> None:
    paths = [
        "OCT2017/train/NORMAL/NORMAL-1-1.jpeg",
        "OCT2017/test/CNV/CNV-2-1.jpeg",
        "CellData/OCT/train/DME/DME-3-1.jpeg",
        "kaggle/val/DRUSEN/DRUSEN-4-1.jpeg",
        "kaggle/train/normal/NORMAL-5-1.jpg",  # lower-case folder is fine
        "OCT2017/train/DME/CNV-6-1.jpeg",  # wrong folder
        "OCT2017/train/OTHER/CNV-7-1.jpeg",  # unknown class folder
        "OCT2017/train/CNV/notes.txt",
        "OCT2017/train/CNV/CNV-8.jpeg",
        "copy/OCT2017/train/NORMAL/NORMAL-1-1.jpeg",  # the same file twice
    ]
    not_scans = ["OCT2017/README.md", "OCT2017/train/CNV/.DS_Store", "__MACOSX/CNV/._CNV-9-1.jpeg"]
    scans, rejected = index_scans(paths + not_scans)  # not-scans: skipped, not rejected
    assert {(s.label, s.patient_id) for s in scans} == {
        ("NORMAL", "1"),
        ("CNV", "2"),
        ("DME", "3"),
        ("DRUSEN", "4"),
        ("NORMAL", "5"),
    }
    assert [s.path for s in scans] == sorted(s.path for s in scans)
    reasons = dict(rejected)
    assert set(reasons) == set(paths) - {s.path for s in scans}
    assert "folder" in reasons["OCT2017/train/DME/CNV-6-1.jpeg"]
    assert "unknown class folder" in reasons["OCT2017/train/OTHER/CNV-7-1.jpeg"]
    assert "not an image" in reasons["OCT2017/train/CNV/notes.txt"]
    assert "unparseable" in reasons["OCT2017/train/CNV/CNV-8.jpeg"]
    assert "duplicate" in reasons["copy/OCT2017/train/NORMAL/NORMAL-1-1.jpeg"]


def synthetic_scans(
    n_normal: int = 80, n_disease: int = 12, seed: int = 0, max_scans: int = 6
) -> list[Scan]:
    """Patients with 1..max_scans scans each; ids are unique across classes."""
    rng = random.Random(seed)
    scans = []
    pid = 1000
    for label, n_patients in [("NORMAL", n_normal)] + [
        (d, n_disease) for d in ("CNV", "DME", "DRUSEN")
    ]:
        for _ in range(n_patients):
            pid += 1
            for n in range(1, rng.randint(1, max_scans) + 1):
                scans.append(Scan(f"{label}/{label}-{pid}-{n}.jpeg", label, str(pid), n))
    return scans


def labels_of(scans: list[Scan], idx: list[int]) -> Counter[str]:
    return Counter(scans[i].label for i in idx)


def test_split_sizes_are_exact_and_patients_disjoint() -> None:
    scans = synthetic_scans()
    splits = split_scans(scans, 0.1, 40, 15, None, seed=1)
    assert labels_of(scans, splits["test"]) == {"NORMAL": 40, "CNV": 15, "DME": 15, "DRUSEN": 15}
    assert set(labels_of(scans, splits["train"])) == {"NORMAL"}
    assert set(labels_of(scans, splits["val"])) == {"NORMAL"}
    patients = {k: {scans[i].patient_id for i in v} for k, v in splits.items()}
    assert not patients["train"] & patients["val"]
    assert not (patients["train"] | patients["val"]) & patients["test"]
    used = [i for v in splits.values() for i in v]
    assert len(used) == len(set(used))
    # Everything not in the test set, except the truncated patient's leftovers, is used.
    test_normal_patients = {
        scans[i].patient_id for i in splits["test"] if scans[i].label == "NORMAL"
    }
    pool = [
        i
        for i, s in enumerate(scans)
        if s.label == "NORMAL" and s.patient_id not in test_normal_patients
    ]
    assert sorted(splits["train"] + splits["val"]) == sorted(pool)
    # Validation is about 10% of the training + validation scans (whole patients).
    assert abs(len(splits["val"]) - 0.1 * len(pool)) <= 3


def test_split_is_seeded() -> None:
    scans = synthetic_scans()
    a = split_scans(scans, 0.1, 40, 15, None, seed=1)
    assert a == split_scans(list(scans), 0.1, 40, 15, None, seed=1)
    assert a["test"] != split_scans(scans, 0.1, 40, 15, None, seed=2)["test"]


def test_test_patients_are_drawn_whole_and_the_last_one_truncated() -> None:
    scans = synthetic_scans(seed=3)
    splits = split_scans(scans, 0.05, 41, 15, None, seed=5)
    normal_test = [i for i in splits["test"] if scans[i].label == "NORMAL"]
    per_patient = Counter(scans[i].patient_id for i in normal_test)
    order = [p for p in patient_order({scans[i].patient_id for i in normal_test}, 5)]
    full = Counter(s.patient_id for s in scans if s.label == "NORMAL")
    # All drawn patients but at most one are complete; that one has its first scans.
    incomplete = [p for p in order if per_patient[p] < full[p]]
    assert len(incomplete) <= 1
    for p in incomplete:
        numbers = sorted(scans[i].number for i in normal_test if scans[i].patient_id == p)
        assert numbers == list(range(1, per_patient[p] + 1))


def test_patient_order_does_not_depend_on_who_else_is_there() -> None:
    patients = [str(p) for p in range(100)]
    full = patient_order(patients, seed=9)
    dropped = patient_order(patients[::2], seed=9)
    assert dropped == [p for p in full if p in set(patients[::2])]
    assert full != sorted(patients)


def test_a_patient_with_a_diseased_test_scan_is_kept_out_of_training() -> None:
    scans = synthetic_scans(n_normal=30, n_disease=4)
    cnv = candidates(scans, "CNV", seed=4)
    shared = scans[cnv[0]].patient_id  # the first CNV patient drawn for the test set
    scans += [Scan(f"NORMAL/NORMAL-{shared}-{n}.jpeg", "NORMAL", shared, n) for n in (1, 2)]
    splits = split_scans(scans, 0.1, 5, 3, None, seed=4)
    train_val = {scans[i].patient_id for i in splits["train"] + splits["val"]}
    assert shared not in train_val


def test_max_train_normals_caps_training_and_scales_validation() -> None:
    scans = synthetic_scans(n_normal=200)
    splits = split_scans(scans, 0.1, 20, 5, 100, seed=0)
    assert len(splits["train"]) == 100
    assert 6 <= len(splits["val"]) <= 16  # about 100 / 0.9 * 0.1 = 11


def test_too_few_normals_stops_with_advice() -> None:
    scans = synthetic_scans(n_normal=5, max_scans=2)
    with pytest.raises(ValueError, match=r"--params ingest\.test_normals="):
        split_scans(scans, 0.05, 200, 1, None, seed=0)


def test_too_few_patients_left_stops_with_advice() -> None:
    scans = [
        Scan(f"N/NORMAL-{p}-{n}.jpeg", "NORMAL", str(p), n) for p in (1, 2) for n in range(1, 6)
    ]
    scans += [
        Scan(f"C/{d}-9{i}-1.jpeg", d, f"9{i}", 1) for i, d in enumerate(["CNV", "DME", "DRUSEN"])
    ]
    with pytest.raises(ValueError, match="normal patient.*ingest.test_normals"):
        split_scans(scans, 0.2, 6, 1, None, seed=0)


def test_too_few_diseased_scans_stops_with_advice() -> None:
    scans = synthetic_scans(n_disease=2, max_scans=2)
    with pytest.raises(ValueError, match=r"--params ingest\.test_per_disease="):
        split_scans(scans, 0.05, 10, 100, None, seed=0)


def test_check_patient_disjoint_fails_loudly() -> None:
    check_patient_disjoint({"train": ["1", "2"], "val": ["3"], "test": ["4", "4"]})
    with pytest.raises(ValueError, match="2 \\(train, test\\)"):
        check_patient_disjoint({"train": ["1", "2"], "val": ["3"], "test": ["2"]})


def test_find_test_duplicates() -> None:
    hashes = ["a", "b", "c", "a", "d", "b", "b"]
    splits = {"train": [0, 1], "val": [4, 5], "test": [2, 3, 6]}
    assert find_test_duplicates(splits, hashes) == {3: [0], 6: [1, 5]}


# ---------------------------------------------------------------- protocol: official


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("OCT2017/test/CNV/CNV-1-1.jpeg", True),
        ("CellData/OCT/test/NORMAL/NORMAL-1-1.jpeg", True),
        ("test/DME/DME-1-1.jpeg", True),
        ("TEST/drusen/DRUSEN-1-1.jpeg", True),
        ("OCT2017/train/CNV/CNV-1-1.jpeg", False),
        ("val/CNV/CNV-1-1.jpeg", False),
        ("CNV/CNV-1-1.jpeg", False),
        ("test/CNV-1-1.jpeg", False),
        ("test/CNV/extra/CNV-1-1.jpeg", False),
    ],
)
def test_in_official_test_recognises_the_layouts(path: str, expected: bool) -> None:
    assert in_official_test(path) is expected


def official_scans() -> list[Scan]:
    """OCT2017-like: train/ and test/ class folders; some test patients also in train/."""
    rng = random.Random(3)
    scans = []

    def add(folder: str, label: str, pid: int, n_scans: int) -> None:
        for n in range(1, n_scans + 1):
            path = f"OCT2017/{folder}/{label}/{label}-{pid}-{n}.jpeg"
            scans.append(Scan(path, label, str(pid), n))

    for pid in range(1, 41):  # training-folder normals
        add("train", "NORMAL", pid, rng.randint(1, 4))
    for pid in range(100, 110):  # test-folder normals
        add("test", "NORMAL", pid, 2)
    add("test", "NORMAL", 1, 1)  # patient 1: normals in both folders
    add("test", "NORMAL", 2, 2)  # patient 2 too
    add("test", "CNV", 3, 1)  # patient 3: a normal training scan, a CNV test scan
    for label in ("CNV", "DME", "DRUSEN"):
        for pid in range(200, 205):
            add("test", label, pid + 10 * len(label), 2)
            add("train", label, pid + 100 + 10 * len(label), 3)  # unused
    return scans


def test_official_split_takes_the_test_folder_and_excludes_its_patients() -> None:
    scans = official_scans()
    splits, excluded = official_split(scans, 0.1, None, seed=4)
    in_test_folder = sorted(
        (i for i, s in enumerate(scans) if "/test/" in s.path), key=lambda i: scans[i].path
    )
    assert splits["test"] == in_test_folder  # all of it, no quota
    assert {scans[i].patient_id for i in excluded} == {"1", "2", "3"}
    assert all(scans[i].label == "NORMAL" and "/train/" in scans[i].path for i in excluded)
    pool = [
        i
        for i, s in enumerate(scans)
        if s.label == "NORMAL" and "/train/" in s.path and s.patient_id not in {"1", "2", "3"}
    ]
    assert sorted(splits["train"] + splits["val"]) == sorted(pool)
    assert set(labels_of(scans, splits["train"])) == {"NORMAL"}
    patients = {k: {scans[i].patient_id for i in v} for k, v in splits.items()}
    assert not patients["train"] & patients["val"]
    assert not (patients["train"] | patients["val"]) & patients["test"]
    check_patient_disjoint(patients)
    assert abs(len(splits["val"]) - 0.1 * len(pool)) <= 3 and splits["val"]
    assert official_split(scans, 0.1, None, seed=4) == (splits, excluded)
    assert official_split(scans, 0.1, 20, seed=4)[0]["train"].__len__() == 20
    assert OFFICIAL_TEST_EXCLUSION == "patient in the official test set"


def test_official_split_needs_the_datasets_test_folder() -> None:
    scans = synthetic_scans()  # CLASS/<file>: no test folder
    with pytest.raises(ValueError, match=r"own test folder.*ingest\.protocol=paper"):
        official_split(scans, 0.1, None, seed=0)
    only_normals = [s for s in official_scans() if s.label == "NORMAL"]
    with pytest.raises(ValueError, match="found NORMAL there"):
        official_split(only_normals, 0.1, None, seed=0)
