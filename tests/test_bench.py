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

from benchmarks import bench_train as bench
from oct_vae.data.phantom import layered_scans
from oct_vae.vae.model import VAE, VAEConfig

SRC = Path(__file__).resolve().parents[1] / "src"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_step_flops_are_forward_plus_backward_of_the_paper_model():
    config = VAEConfig(width=64)  # the paper's: width 64, latent 300, 128x128
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        VAE(config)(torch.rand(1, 1, 128, 128))
    forward = counter.get_total_flops()
    assert 2.0e9 < forward < 2.5e9  # the model docstring's "about 2.2 GFLOP per image"
    step = bench.step_flops_per_image(config)
    # backward costs two forwards, minus the input gradient of the first convolution
    assert 2.8 * forward < step < 3.0 * forward


def test_layered_scans_are_layered_and_reproducible():
    a, b = layered_scans(8, seed=3), layered_scans(8, seed=3)
    assert a.shape == (8, 128, 128) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, layered_scans(8, seed=4))
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
        # the figures are the medians of the timed rounds (one round here), not estimates
        assert row["images_per_s"] == pytest.approx(np.median(row["samples"]))
        assert row["images_per_cpu_s"] == pytest.approx(np.median(row["cpu_samples"]))
        assert len(row["samples"]) == 1 and row["warmup_s"] > 0
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


def test_profile_mode_writes_top_ops_with_shares_and_mfu(tmp_path):
    out = tmp_path / "prof" / "bench.json"
    argv = ["--profile", "--device", "cpu", "--width", "4", "--batch-size", "4",
            "--profile-steps", "2", "--amp", "off", "--channels-last", "off", "--out", str(out)]
    assert bench.main(argv) == 0
    prof = json.loads((out.parent / "profile.json").read_text())
    assert prof == json.loads(out.read_text())["profile"]
    shares = [row["share_percent"] for row in prof["top"]]
    assert 0 < sum(shares) <= 100.0 + 1e-6 and shares == sorted(shares, reverse=True)
    aten = [row["op"] for row in prof["top"] if row["op"].startswith("aten::")]
    assert aten and prof["top"][0]["op"] in aten  # the top op is an ATen operator...
    for op in aten:  # ...and every ATen name is a real operator
        assert hasattr(torch.ops.aten, op.split("::", 1)[1]), op
    assert any("convolution" in op for op in aten[:5])
    assert prof["tflops"] > 0 and prof["mfu_percent"] is None  # CPU: no known peak
    table = (out.parent / "profile.md").read_text()
    assert "| op | calls |" in table and prof["top"][0]["op"] in table and "MFU n/a" in table


def test_peak_table_gives_mfu_only_for_known_devices():
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench.peak_tflops("NVIDIA H200") == 989.0
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench.peak_tflops("AMD EPYC 7B13") is None
    assert bench.peak_tflops("AMD EPYC 7B13", given=2.0) == 2.0


def test_bench_imports_neither_kedro_nor_pandas():
    code = (
        "import sys, runpy; runpy.run_path('benchmarks/bench_train.py', run_name='bench'); "
        "bad = [m for m in ('kedro', 'pandas', 'mlflow', 'PIL') if m in sys.modules]; "
        "sys.exit(str(bad) if bad else 0)"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=SRC.parent,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr + proc.stdout
