"""Files that are not scans (README, .DS_Store, Thumbs.db, __MACOSX/, hidden) are skipped
quietly in every listing, counted in one INFO line; anything else that is not a readable
scan still gets its rejected row with the reason."""

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from oct_vae.data import scan_files
from oct_vae.data.lineage import data_fingerprint
from oct_vae.datasets.optional_scan_folder_dataset import OptionalScanFolderDataset
from oct_vae.datasets.scan_folder_dataset import ScanFolderDataset
from oct_vae.evaluation import transfer
from oct_vae.pipelines.evaluate.nodes import score_real_scans
from oct_vae.pipelines.ingest.nodes import index_scans
from oct_vae.pipelines.score.nodes import find_scans, score_scans
from oct_vae.pipelines.train.nodes import calibrate_model
from oct_vae.training.trainer import TrainConfig
from oct_vae.vae.checkpoint import make_checkpoint
from oct_vae.vae.model import VAE, VAEConfig

SCORING = {"n_samples": 2, "batch_size": 8, "top_k_percent": 5.0, "residual_sigma": 2.0,
           "filtered_top_k_percent": 5.0}
NOT_SCANS = ("README.md", "NORMAL/.DS_Store", "Thumbs.db", "__MACOSX/")
REJECTED = ("NORMAL/NORMAL-999999-1.jpeg", "notes.txt")


@pytest.fixture(scope="module")
def model() -> dict:
    torch.manual_seed(0)
    config = VAEConfig(image_size=128, width=2, latent_dim=8)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 255, (8, 128, 128), dtype=np.uint8)
    val = rng.integers(0, 255, (8, 128, 128), dtype=np.uint8)
    meta = {"data_fingerprint": data_fingerprint(train, val), "image_size": 128}
    ckpt = make_checkpoint(VAE(config), config, TrainConfig(seed=0, device="cpu"), meta)
    return calibrate_model(ckpt, train, val, SCORING, 0, "cpu")


@pytest.fixture()
def folder(tiny_phantom_dir: Path, tmp_path: Path) -> Path:
    """Three phantom scans, the four not-scans, a corrupt .jpeg and notes.txt."""
    root = tmp_path / "scans"
    for label, n in (("NORMAL", 2), ("CNV", 1)):
        (root / label).mkdir(parents=True)
        for scan in sorted(tiny_phantom_dir.rglob(f"{label}-*.jpeg"))[:n]:
            shutil.copy(scan, root / label / scan.name)
    (root / "README.md").write_text("# scans\n")
    (root / "NORMAL" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "Thumbs.db").write_bytes(b"\x00")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._x.jpeg").write_bytes(b"\x00\x05\x16\x07")
    (root / "NORMAL" / "NORMAL-999999-1.jpeg").write_bytes(b"\xff\xd8\xff\xe0 corrupt")
    (root / "notes.txt").write_text("not a scan")
    return root


def _check_quiet(caplog: pytest.LogCaptureFixture, n: int = len(NOT_SCANS)) -> None:
    """No warning names a not-scan; exactly one INFO summary with the count."""
    for record in caplog.records:
        if record.levelno >= logging.WARNING:
            text = record.getMessage()
            assert not any(n.rstrip("/") in text for n in NOT_SCANS + ("._x",)), text
    summaries = [r for r in caplog.records if "that are not scans" in r.getMessage()]
    assert len(summaries) == 1 and summaries[0].levelno == logging.INFO
    assert f"skipped {n} file(s)" in summaries[0].getMessage()


@pytest.mark.parametrize(
    ("name", "kind"),
    [("README.md", "README"), ("a/readme.txt", "README"), ("LICENSE", "LICENSE"),
     ("x/.DS_Store", ".DS_Store"), ("Thumbs.db", "Thumbs.db"), ("desktop.ini", "desktop.ini"),
     ("CNV/._CNV-1-1.jpeg", "AppleDouble"), ("__MACOSX/CNV/CNV-1-1.jpeg", "__MACOSX"),
     (".git/config", "hidden"), ("CNV/.hidden.jpeg", "hidden"), ("CNV/CNV-1-1.jpeg", None),
     ("notes.txt", None), ("NORMAL/NORMAL-1-1.png", None)],
)
def test_not_a_scan_kinds(name: str, kind: str | None) -> None:
    assert scan_files.not_a_scan(name) == kind


def test_ingest_listing_skips_not_scans_quietly(folder, caplog) -> None:
    caplog.set_level(logging.INFO)
    raw = ScanFolderDataset(str(folder)).load()
    assert sorted(raw["key"]) == sorted(
        ["CNV/" + p.name for p in (folder / "CNV").iterdir()]
        + ["NORMAL/" + p.name for p in (folder / "NORMAL").iterdir() if p.name != ".DS_Store"]
        + ["notes.txt"])
    _, rejected = index_scans(raw)
    assert rejected["path"].tolist() == ["notes.txt"]
    assert "not an image file name" in rejected["reason"].iloc[0]
    _check_quiet(caplog)


def test_real_scan_transfer_table_rejects_only_what_looks_like_a_scan(folder, caplog) -> None:
    caplog.set_level(logging.INFO)
    real = OptionalScanFolderDataset(str(folder)).load()
    rows, _, keep = transfer.decode_real_scans(real, 128, 40_000_000, 1, (set(), set()))
    errors = dict(zip(rows["path"], rows["error"], strict=True))
    assert set(errors) == set(real["key"]) and len(keep) == 3
    assert "corrupt" in errors["NORMAL/NORMAL-999999-1.jpeg"]
    assert "not an image file name" in errors["notes.txt"]
    _check_quiet(caplog)


def test_score_pipeline_skips_not_scans_and_rejects_the_rest(folder, model, tmp_path,
                                                             caplog) -> None:
    caplog.set_level(logging.INFO)
    files = find_scans(str(folder))
    table, _ = score_scans(model, files, 40_000_000, 1, "reconstruction", 0.95, "cpu",
                           heatmaps=False)
    failed = table[table["error"].notna()].set_index("path")["error"]
    assert sorted(failed.index) == sorted(REJECTED)
    assert "not an image" in failed["notes.txt"]
    assert table["error"].isna().sum() == 3
    _check_quiet(caplog)


def test_real_scan_step_on_the_shared_folders_logs_no_warning(real_scans_root, model,
                                                              caplog) -> None:
    caplog.set_level(logging.INFO)
    real = OptionalScanFolderDataset(str(real_scans_root)).load()
    manifest = pd.DataFrame(columns=["split", "sha1", "patient_id"])
    out = score_real_scans(real, model, manifest, 40_000_000, 1, "cpu")
    assert (out["error"] == "").all() and len(out) >= 59
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    _check_quiet(caplog, n=sum(1 for p in real_scans_root.rglob("README*")))
