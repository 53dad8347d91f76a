"""Every long stage reports its progress (``oct_vae.progress``) through ``logging``: running
lines at a readable pace (none before 5 s, then every 10 % or at most every 30 s), and a
last line that ``benchmarks/rehearse.py`` parses into a rate."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from oct_vae.data.lineage import row_hashes
from oct_vae.datasets.scan_folder_dataset import ScanFolderDataset
from oct_vae.pipelines.evaluate.nodes import (
    build_statistical_report,
    score_real_scans,
    score_test_set,
)
from oct_vae.pipelines.ingest.nodes import decode_scans, index_scans
from oct_vae.pipelines.score.nodes import find_scans, score_scans
from oct_vae.pipelines.train.nodes import calibrate_model, train_vae
from oct_vae.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
SCORING = {"n_samples": 2, "batch_size": 8, "top_k_percent": 5.0, "residual_sigma": 2.0,
           "filtered_top_k_percent": 5.0}
TRAIN = {"width": 2, "latent_dim": 8, "epochs": 2, "batch_size": 8, "checkpoint_dir": None,
         "progress": False}
RUN = {"run_id": "2026-01-01T00.00.00.000Z", "project_root": ".", "versions": {}}
# Each wired stage: the name of its progress line, and its unit.
STAGES = {"decode": "scans", "train": "images", "calibrate (validation normals)": "images",
          "score test scans": "images", "score real scans": "images", "score files": "files",
          "bootstrap report": "resamples"}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _run(total: int | None, steps: int, dt: float, n: int) -> list[tuple[float, str]]:
    """``steps`` updates of ``n`` units, one every ``dt`` s; (time, line) of every log line."""
    clock, log = Clock(), logging.getLogger("test.stage_progress")
    records: list[tuple[float, str]] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append((clock.now, r.getMessage()))  # type: ignore[method-assign]
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with Progress("score", total, "images", log, bar=False, clock=clock) as p:
            for _ in range(steps):
                clock.now += dt
                p.update(n)
    finally:
        log.removeHandler(handler)
    return records


def test_a_big_run_gets_a_line_at_every_tenth_after_5_s_with_rate_and_eta() -> None:
    lines = _run(1000, 100, 1.0, 10)  # 10 images/s for 100 s
    times = [t for t, _ in lines]
    assert times == [5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 100.0]
    assert lines[0][1] == "score: 50/1,000 images (5%), 10 images/s, ETA 95 s"
    assert lines[1][1] == "score: 100/1,000 images (10%), 10 images/s, ETA 90 s"
    assert lines[4][1] == "score: 400/1,000 images (40%), 10 images/s, ETA 60 s"
    assert lines[-1][1] == "score: 1,000 images in 100.0 s (10 images/s)"


def test_a_slow_run_gets_a_line_at_least_every_30_s() -> None:
    lines = _run(None, 100, 1.0, 1)  # unknown total: no share, no ETA
    assert [t for t, _ in lines] == [5.0, 35.0, 65.0, 95.0, 100.0]
    assert lines[1][1] == "score: 35 images, 1.00 images/s"
    lines = _run(10_000, 200, 1.0, 1)  # a long stage that never reaches 10 %
    assert [t for t, _ in lines][:4] == [5.0, 35.0, 65.0, 95.0]
    assert lines[1][1].endswith("1.00 images/s, ETA 2.8 h")  # 9,965 left at 1/s


def test_a_tiny_run_logs_only_its_last_line() -> None:
    lines = _run(40, 40, 0.01, 1)
    assert [text for _, text in lines] == ["score: 40 images in 0.4 s (100 images/s)"]


@pytest.fixture(scope="module")
def stage_log(tiny_phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Every wired stage run once on tiny data; the oct_vae log as Kedro's file has it."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: lines.append(f"00:00:00 INFO    {r.name}: {r.getMessage()}")  # type: ignore[method-assign]
    logger = logging.getLogger("oct_vae")
    level, logger.level = logger.level, logging.INFO
    logger.addHandler(handler)
    try:
        _run_stages(tiny_phantom_dir, tmp_path_factory.mktemp("stages"))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return "\n".join(lines)


def _run_stages(phantom: Path, tmp: Path) -> None:
    index, _ = index_scans(ScanFolderDataset(str(phantom)).load())
    decode_scans(index, 2, 2, 0, 128, 40_000_000, 1)
    rng = np.random.default_rng(0)
    train, val, test = (rng.integers(0, 255, (n, 128, 128), dtype=np.uint8) for n in (16, 8, 8))
    ckpt, _, _ = train_vae(train, val, TRAIN, seed=0, device="cpu", run_info=RUN)
    model = calibrate_model(ckpt, train, val, SCORING, 0, "cpu")
    manifest = pd.concat([_rows(split, images, labels) for split, images, labels in (
        ("train", train, ["NORMAL"] * 16), ("val", val, ["NORMAL"] * 8),
        ("test", test, ["NORMAL"] * 4 + ["CNV", "DME", "DRUSEN", "CNV"]))], ignore_index=True)
    scores = score_test_set(model, test, manifest, "cpu")
    folder = tmp / "scans"
    for scan in sorted(phantom.rglob("*.jpeg"))[:6]:
        (folder / scan.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(scan, folder / scan.parent.name / scan.name)
    real = ScanFolderDataset(str(folder)).load()
    score_real_scans(real, model, manifest, 40_000_000, 1, "cpu")
    score_scans(model, find_scans(str(folder)), 40_000_000, 1, "reconstruction", 0.95, "cpu",
                heatmaps=False)
    build_statistical_report(scores, model, 20, 0.95, "reconstruction", 0, RUN)


def _rows(split: str, images: np.ndarray, labels: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"path": [f"{split}/{i}.jpeg" for i in range(len(images))],
                         "label": labels, "split": split, "row": range(len(images)),
                         "patient_id": [f"{split}{i}" for i in range(len(images))],
                         "sha1": row_hashes(images)})


def _rehearse_rates(log: str) -> dict[str, dict]:
    spec = importlib.util.spec_from_file_location("rehearse", ROOT / "benchmarks" / "rehearse.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules.setdefault("rehearse", module)  # its dataclasses look themselves up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.rates(log)


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_wired_stage_logs_its_last_line_and_rehearse_reads_its_rate(stage_log: str,
                                                                         stage: str) -> None:
    rates = _rehearse_rates(stage_log)
    assert stage in rates, stage_log
    assert rates[stage]["unit"] == STAGES[stage] and rates[stage]["n"] > 0
    assert rates[stage]["per_s"] > 0
