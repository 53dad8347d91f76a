"""Tests of the ``ingest`` pipeline and of ``ScanFolderDataset``."""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog, DatasetError, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.pandas import CSVDataset
from PIL import Image

from oct_vae.data import kermany
from oct_vae.data.imaging import load_scan
from oct_vae.datasets import NpyDataset, ScanFolderDataset
from oct_vae.pipelines.ingest import create_pipeline
from oct_vae.pipelines.ingest.nodes import MANIFEST_COLUMNS, decode_scans, split_scans

PARAMS: dict[str, Any] = {
    "ingest.protocol": "paper",
    "ingest.image_size": 64,
    "ingest.val_fraction": 0.1,
    "ingest.test_normals": 20,
    "ingest.test_per_disease": 10,
    "ingest.max_train_normals": None,
    "ingest.max_image_pixels": 40_000_000,
    "ingest.workers": 1,
    "seed": 11,
}


def run_ingest(raw: ScanFolderDataset, out: Path, **params: Any) -> dict[str, Any]:
    """Run the ingest pipeline on ``raw``, outputs under ``out``; return what it wrote."""
    catalog = DataCatalog(
        {
            "raw_scans": raw,
            "oct_manifest": CSVDataset(
                filepath=str(out / "oct_manifest.csv"),
                load_args={"dtype": {"patient_id": str}, "keep_default_na": False},
            ),
            "rejected_files": CSVDataset(filepath=str(out / "rejected_files.csv")),
            "scan_pixels": MemoryDataset(copy_mode="assign"),  # as in conf/base/catalog.yml
            **{f"{s}_images": NpyDataset(str(out / f"{s}_images.npy")) for s in kermany.SPLITS},
        }
    )
    for key, value in {**PARAMS, **params}.items():
        catalog[f"params:{key}"] = value
    SequentialRunner().run(create_pipeline(), catalog)
    names = ["oct_manifest", "rejected_files"] + [f"{s}_images" for s in kermany.SPLITS]
    return {name: catalog.load(name) for name in names}


def assert_consistent(result: dict[str, Any], image_size: int = 64) -> pd.DataFrame:
    """Checks every ingest output must pass; returns the manifest."""
    manifest = result["oct_manifest"]
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert set(manifest["split"]) <= set(kermany.SPLITS)
    assert set(manifest["label"]) <= set(kermany.CLASSES)
    assert set(manifest.loc[manifest["split"] != "test", "label"]) == {"NORMAL"}
    owners = manifest.groupby("patient_id")["split"].nunique()
    assert (owners == 1).all(), "a patient is in two splits"
    for split in kermany.SPLITS:
        rows = manifest[manifest["split"] == split]
        images = result[f"{split}_images"]
        assert images.shape == (len(rows), image_size, image_size)
        assert images.dtype == np.uint8
        assert sorted(rows["row"]) == list(range(len(rows)))
    assert list(result["rejected_files"].columns) == ["path", "reason"]
    return manifest


def test_ingest_on_a_tiny_phantom(tiny_phantom_dir: Path, tmp_path: Path) -> None:
    result = run_ingest(ScanFolderDataset(str(tiny_phantom_dir)), tmp_path)
    manifest = assert_consistent(result)
    test = manifest[manifest["split"] == "test"]
    assert test["label"].value_counts().to_dict() == {
        "NORMAL": 20,
        "CNV": 10,
        "DME": 10,
        "DRUSEN": 10,
    }
    assert (manifest["split"] == "val").sum() >= 1 and (manifest["split"] == "train").sum() >= 30
    assert result["rejected_files"].empty
    # Rows hold the preprocessed pixels of the file named in the manifest, whose path is
    # relative to the dataset folder (where the data sit is not recorded).
    assert not manifest["path"].str.startswith("/").any()
    for _, row in manifest.sample(5, random_state=0).iterrows():
        image = result[f"{row['split']}_images"][row["row"]]
        assert np.array_equal(image, load_scan(tiny_phantom_dir / row["path"], size=64))
    # Spectralis widths (the phantom v2 adds the wide 1536 format)
    assert {512, 768} <= set(manifest["width"]) <= {512, 768, 1536}
    assert set(manifest["height"]) == {496}
    assert manifest["patient_id"].map(type).eq(str).all()


def test_ingest_is_reproducible_and_seeded(tiny_phantom_dir: Path, tmp_path: Path) -> None:
    raw = ScanFolderDataset(str(tiny_phantom_dir))
    a = run_ingest(raw, tmp_path / "a")["oct_manifest"]
    b = run_ingest(raw, tmp_path / "b")["oct_manifest"]
    c = run_ingest(raw, tmp_path / "c", seed=12)["oct_manifest"]
    pd.testing.assert_frame_equal(a, b)
    assert set(a.loc[a["split"] == "test", "path"]) != set(c.loc[c["split"] == "test", "path"])


def test_ingest_stops_when_normals_are_too_few(tiny_phantom_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--params ingest\.test_normals="):
        run_ingest(
            ScanFolderDataset(str(tiny_phantom_dir)), tmp_path, **{"ingest.test_normals": 200}
        )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring width x height pixels, holding almost no data (a bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def scan_bytes(width: int, height: int, fmt: str = "JPEG", mode: str = "L", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(height // 8, width // 8), dtype=np.uint8)
    img = Image.fromarray(array).resize((width, height), Image.Resampling.BILINEAR)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img).astype(np.uint16) * 257)
    elif mode != "L":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_bad_input_is_rejected_or_converted_never_crashes(
    tiny_phantom_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "raw"
    shutil.copytree(tiny_phantom_dir, root)
    normal = root / "train" / "NORMAL"
    good = {  # converted, then used: one-scan patients are never left over
        "NORMAL-9000001-1.png": scan_bytes(512, 496, "PNG", seed=1),
        "NORMAL-9000002-1.png": scan_bytes(512, 496, "PNG", mode="RGB", seed=2),
        "NORMAL-9000003-1.png": scan_bytes(512, 496, "PNG", mode="I;16", seed=3),
        "NORMAL-9000004-1.JPG": scan_bytes(1536, 496, mode="RGB", seed=4),
    }
    bad = {
        "NORMAL-9000010-1.jpeg": (scan_bytes(512, 496)[:4000], "truncated"),
        "NORMAL-9000011-1.jpeg": (b"", "empty"),
        "NORMAL-9000012-1.jpeg": (b"not an image at all\n", "not an image"),
        "NORMAL-9000013-1.png": (scan_bytes(24, 24, "PNG"), "too small"),
        "NORMAL-9000014-1.png": (png_header_only(60_000, 60_000), "decompression bomb"),
        "NORMAL-9000015.jpeg": (scan_bytes(512, 496), "unparseable"),
        "CNV-9000016-1.jpeg": (scan_bytes(512, 496), "folder"),
        "notes.txt": (b"hello", "not an image file name"),
    }
    for name, data in good.items():
        (normal / name).write_bytes(data)
    for name, (data, _) in bad.items():
        (normal / name).write_bytes(data)
    (root / "train" / "GLAUCOMA").mkdir()
    (root / "train" / "GLAUCOMA" / "GLAUCOMA-9000017-1.jpeg").write_bytes(scan_bytes(512, 496))
    (normal / ".DS_Store").write_bytes(b"\x00")

    result = run_ingest(ScanFolderDataset(str(root)), tmp_path / "out")
    manifest = assert_consistent(result)
    reasons = {Path(p).name: r for p, r in result["rejected_files"].itertuples(index=False)}
    for name, (_, reason) in bad.items():
        assert reason in reasons.pop(name), name
    assert "class" in reasons.pop("GLAUCOMA-9000017-1.jpeg")
    assert not reasons, "unexpected rejects"
    used = manifest.set_index(manifest["path"].map(lambda p: Path(p).name))
    assert set(good) <= set(used.index)
    assert used.loc["NORMAL-9000004-1.JPG", "width"] == 1536
    test = manifest[manifest["split"] == "test"]
    assert test["label"].value_counts().to_dict() == {
        "NORMAL": 20,
        "CNV": 10,
        "DME": 10,
        "DRUSEN": 10,
    }


def test_official_protocol_on_the_tiny_phantom(tiny_phantom_dir: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(tiny_phantom_dir, raw)
    # Two patients of the phantom's test folder get a normal scan in its training folder:
    # a normal test patient, and a diseased one. Both scans must stay out of training.
    normal_test = sorted((raw / "test" / "NORMAL").iterdir())[0]
    cnv_test = sorted((raw / "test" / "CNV").iterdir())[0]
    donor = sorted((raw / "train" / "NORMAL").iterdir())[0].read_bytes()
    added = []
    for test_file, n in ((normal_test, 99), (cnv_test, 1)):
        patient = test_file.name.split("-")[1]
        added.append(f"train/NORMAL/NORMAL-{patient}-{n}.jpeg")
        (raw / added[-1]).write_bytes(donor)
    result = run_ingest(
        ScanFolderDataset(str(raw)),
        tmp_path / "out",
        **{"ingest.protocol": "official", "ingest.test_normals": 10_000},  # quotas ignored
    )
    manifest = assert_consistent(result)
    test = manifest[manifest["split"] == "test"]
    folder = sorted(p.relative_to(raw).as_posix() for p in (raw / "test").rglob("*.jpeg"))
    assert sorted(test["path"]) == folder  # the dataset's own test folder, all of it
    assert manifest.loc[manifest["split"] != "test", "path"].str.startswith("train/").all()
    rejects = result["rejected_files"]
    excluded = rejects[rejects["reason"] == kermany.OFFICIAL_TEST_EXCLUSION]
    assert sorted(excluded["path"]) == sorted(added)
    assert not set(added) & set(manifest["path"])
    train_val = manifest[manifest["split"] != "test"]
    assert not set(train_val["patient_id"]) & set(test["patient_id"])
    n_val = (manifest["split"] == "val").sum()
    assert n_val >= 1 and abs(n_val - 0.1 * len(train_val)) <= 5


def test_rejected_test_candidates_are_refilled(tmp_path: Path) -> None:
    index = []
    for label, n_patients in [("NORMAL", 8), ("CNV", 10), ("DME", 10), ("DRUSEN", 10)]:
        for p in range(n_patients):
            for n in (1, 2):
                path = tmp_path / label / f"{label}-{label[0]}{p}-{n}.jpeg"
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(scan_bytes(64, 64, seed=len(index)))
                index.append((path.as_posix(), label, f"{label[0]}{p}", n))
    scan_index = pd.DataFrame(index, columns=["path", "label", "patient_id", "scan_number"])
    scans = [kermany.Scan(*row) for row in index]
    # Corrupt the first 14 DME candidates in draw order: more than the first batch (3 + 8).
    corrupt = kermany.candidates(scans, "DME", seed=5)[:14]
    for i in corrupt:
        Path(scans[i].path).write_bytes(b"\xff\xd8\xff garbage")
    decoded, pixels, rejects = decode_scans(scan_index, 4, 3, 5, 32, 40_000_000, 1)
    assert sorted(rejects["path"]) == sorted(scans[i].path for i in corrupt)
    assert (decoded["label"] == "DME").sum() >= 3
    assert pixels.shape == (int(decoded["pixel_row"].max()) + 1, 32, 32)
    manifest, _ = split_scans(decoded, 0.2, 4, 3, None, 5)
    test = manifest[manifest["split"] == "test"]
    assert test["label"].value_counts().to_dict() == {"NORMAL": 4, "CNV": 3, "DME": 3, "DRUSEN": 3}
    # The diseased scans decoded are only the candidates needed, not the whole class.
    assert (decoded["label"] == "CNV").sum() == 3 + 8


def test_test_duplicates_are_dropped_from_training() -> None:
    rows = [(f"N/NORMAL-{p}-1.jpeg", "NORMAL", str(p), 1) for p in range(12)]
    rows += [(f"{d}/{d}-{d}1-1.jpeg", d, f"{d}1", 1) for d in kermany.DISEASES]
    decoded = pd.DataFrame(rows, columns=["path", "label", "patient_id", "scan_number"])
    decoded["width"], decoded["height"], decoded["pixel_row"] = 512, 496, range(len(rows))
    decoded["sha1"] = [f"h{i}" for i in range(len(rows))]
    decoded.loc[decoded["label"] == "NORMAL", "sha1"] = "same"  # every normal is identical
    manifest, leaks = split_scans(decoded, 0.2, 2, 1, None, 0)
    assert set(manifest["split"]) == {"test"}  # all training/validation copies dropped
    test_normals = manifest[(manifest["split"] == "test") & (manifest["label"] == "NORMAL")]
    assert len(test_normals) == 2
    assert test_normals["duplicate_of"].str.len().gt(0).sum() == 1
    assert len(leaks) == 10 and leaks["reason"].str.contains("identical pixels").all()


def test_scan_folder_dataset_lists_files_and_is_read_only(tmp_path: Path) -> None:
    (tmp_path / "train" / "CNV").mkdir(parents=True)
    (tmp_path / "train" / "CNV" / "CNV-1-1.jpeg").write_bytes(b"x")
    (tmp_path / "b.txt").write_bytes(b"x")
    (tmp_path / ".hidden").write_bytes(b"x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_bytes(b"x")
    (tmp_path / "phantom.json").write_bytes(b"{}")
    dataset = ScanFolderDataset(str(tmp_path))
    paths = dataset.load()["path"].tolist()
    assert paths == [
        (tmp_path / "b.txt").as_posix(),
        (tmp_path / "train/CNV/CNV-1-1.jpeg").as_posix(),
    ]
    with pytest.raises(DatasetError, match="read-only"):
        dataset.save(pd.DataFrame({"path": []}))


@pytest.mark.parametrize("make", [False, True], ids=["missing", "empty"])
def test_scan_folder_dataset_says_where_to_put_the_data(tmp_path: Path, make: bool) -> None:
    folder = tmp_path / "OCT2017"
    if make:
        folder.mkdir()
    with pytest.raises(DatasetError, match="doi:10.17632/rscbjbr9sj") as info:
        ScanFolderDataset(str(folder)).load()
    assert folder.as_posix() in str(info.value) and "--params raw_dir=" in str(info.value)


def test_scan_folder_dataset_generates_the_phantom_once(tmp_path: Path) -> None:
    config = {"n_normal_patients": 2, "n_patients_per_disease": 1, "scans_per_patient": [1, 2]}
    paths = ScanFolderDataset(str(tmp_path), phantom=config).load()["path"]
    assert 5 <= len(paths) <= 10 and (tmp_path / "phantom.json").exists()
    stamp = Path(paths[0]).stat().st_mtime_ns
    assert ScanFolderDataset(str(tmp_path), phantom=config).load()["path"].equals(paths)
    assert Path(paths[0]).stat().st_mtime_ns == stamp  # reused, not rewritten
    stored_vs_requested = r"another phantom \(configuration stored vs requested: \{'seed': \(0, 99"
    with pytest.raises(DatasetError, match=stored_vs_requested):
        ScanFolderDataset(str(tmp_path), phantom={**config, "seed": 99}).load()
    with pytest.raises(DatasetError, match="unknown phantom option"):
        ScanFolderDataset(str(tmp_path), phantom={"n_patients": 3}).load()


def test_ingest_on_the_real_kermany_sample(kermany_sample_dir: Path, tmp_path: Path) -> None:
    result = run_ingest(
        ScanFolderDataset(str(kermany_sample_dir)),
        tmp_path,
        **{"ingest.test_normals": 2, "ingest.test_per_disease": 3, "ingest.val_fraction": 0.2},
    )
    manifest = assert_consistent(result)
    names = manifest["path"].map(lambda p: Path(p).name)
    parsed = names.str.extract(r"^([A-Z]+)-(\d+)-\d+\.jpeg$")
    assert (parsed[0] == manifest["label"]).all() and (parsed[1] == manifest["patient_id"]).all()
    assert manifest.loc[manifest["split"] == "test", "label"].value_counts().to_dict() == {
        "NORMAL": 2,
        "CNV": 3,
        "DME": 3,
        "DRUSEN": 3,
    }
    assert {(512, 496), (768, 496)} <= set(zip(manifest["width"], manifest["height"], strict=True))
    assert len(manifest[manifest["split"] != "test"]) >= 5  # 8 normals, 7 patients
    assert not result["rejected_files"]["path"].str.endswith("README.md").any()  # skipped


@pytest.mark.slow
def test_kermany_environment_on_the_real_sample(
    kermany_sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project = Path(__file__).resolve().parents[2]
    bootstrap_project(project)
    # Kedro makes the catalog's relative paths absolute under project_path, and MLflow's
    # store is that of the project holding the working directory, else the working
    # directory (settings.project_root): point both at tmp_path.
    monkeypatch.chdir(tmp_path)
    runtime_params = {
        "raw_dir": str(kermany_sample_dir),
        "ingest": {"test_normals": 2, "test_per_disease": 2, "val_fraction": 0.2, "workers": 2},
    }
    with KedroSession.create(
        tmp_path, env="kermany", runtime_params=runtime_params, conf_source=str(project / "conf")
    ) as session:
        session.run(pipeline_names=["ingest"])
    data = tmp_path / "data" / "kermany"  # the kermany environment's data root
    (manifest_csv,) = (data / "03_primary").glob("oct_manifest.csv/*/oct_manifest.csv")
    manifest = pd.read_csv(manifest_csv, dtype={"patient_id": str}, keep_default_na=False)
    # paths relative to raw_dir: the folder (which may name a patient or a site) is not kept
    assert not manifest["path"].str.contains(kermany_sample_dir.as_posix(), regex=False).any()
    assert all((kermany_sample_dir / p).is_file() for p in manifest["path"])
    test = manifest[manifest["split"] == "test"]
    assert test["label"].value_counts().to_dict() == {"NORMAL": 2, "CNV": 2, "DME": 2, "DRUSEN": 2}
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1
    (train,) = (data / "05_model_input").glob("train_images.npy/*/train_images.npy")
    assert np.load(train).shape == ((manifest["split"] == "train").sum(), 128, 128)


def test_protocol_and_real_dir_are_checked_parameters() -> None:
    from kedro.config import OmegaConfigLoader

    from oct_vae.framework.params import find_problems
    from oct_vae.settings import CONFIG_LOADER_ARGS

    conf = Path(__file__).resolve().parents[2] / "conf"
    for env in ("base", "kermany"):
        params = OmegaConfigLoader(str(conf), env=env, **CONFIG_LOADER_ARGS)["parameters"]
        assert params["ingest"]["protocol"] == "paper"
        assert find_problems({**params, "real_dir": "/data/real"}) == []
        official = {**params, "ingest": {**params["ingest"], "protocol": "official"}}
        assert find_problems(official) == []
        typo = {**params, "ingest": {**params["ingest"], "protocol": "offical"}}
        (problem,) = find_problems(typo)
        assert "ingest.protocol='offical'" in problem and "'official'" in problem
