"""The training benchmark: FLOP count, report contents, and a bare torch + numpy import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from oct_vae import bench
from oct_vae.model import VAE, VAEConfig

SRC = Path(__file__).resolve().parents[1] / "src"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_step_flops_are_forward_plus_backward_of_the_paper_model():
    config = VAEConfig()  # width 64, latent 300, 128x128
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        VAE(config)(torch.rand(1, 1, 128, 128))
    forward = counter.get_total_flops()
    assert 2.0e9 < forward < 2.5e9  # the model docstring's "about 2.2 GFLOP per image"
    step = bench.step_flops_per_image(config)
    # backward costs two forwards, minus the input gradient of the first convolution
    assert 2.8 * forward < step < 3.0 * forward


def test_synthetic_scans_are_layered_and_reproducible():
    a, b = bench.synthetic_scans(8, seed=3), bench.synthetic_scans(8, seed=3)
    assert a.shape == (8, 128, 128) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, bench.synthetic_scans(8, seed=4))
    assert a[:, :16].mean() < a[:, 48:96].mean()  # dark vitreous above bright bands


def test_benchmark_reports_both_loops_ratio_projection_and_sweep(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--quick", "--device", "cpu", "--width", "4", "--batch-size", "8", "--steps", "2",
            "--rounds", "1", "--batch-sizes", "4,8", "--out", str(out)]
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["quick"] and "QUICK MODE" in report["notes"][0]
    assert report["batch_size"] == 8 and report["model"]["width"] == 4
    assert report["torch_version"] == str(torch.__version__) and report["device"]
    assert report["date"].startswith("20")
    naive, project = report["results"]["naive"], report["results"]["project"]
    for row in (naive, project):
        assert row["images_per_s"] > 0 and row["images_per_cpu_s"] > 0
        assert row["projected_40_epochs_s"] == pytest.approx(40 * 25_236 / row["images_per_s"])
        flops = report["flops_per_image_step"]
        assert row["tflops"] == pytest.approx(row["images_per_s"] * flops / 1e12)
    ratio = project["images_per_s"] / naive["images_per_s"]
    assert project["speedup_vs_naive"] == pytest.approx(ratio) == report["speedup"]
    assert report["targets"]["ratio_target"] == 1.3
    assert [r["batch_size"] for r in report["sweep"]] == [4, 8]
    assert report["project_config"]["compile"] == "off"  # quick CPU mode skips compilation


def test_fit_mode_runs_the_trainer_with_checkpoints(tmp_path):
    out = tmp_path / "fit.json"
    argv = ["--quick", "--device", "cpu", "--width", "4", "--batch-size", "8",
            "--fit-epochs", "2", "--fit-images", "16", "--out", str(out)]
    assert bench.main(argv) == 0
    fit = json.loads(out.read_text())["fit"]
    assert fit["checkpoint_written"] and len(fit["history"]) == 2
    assert fit["n_train"] == 16 and fit["wall_s"] >= fit["train_s"] > 0


def test_bench_imports_neither_kedro_nor_pandas():
    code = (
        "import sys, oct_vae.bench; "
        "bad = [m for m in ('kedro', 'pandas', 'mlflow', 'PIL') if m in sys.modules]; "
        "sys.exit(str(bad) if bad else 0)"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr + proc.stdout
