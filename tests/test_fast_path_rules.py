"""``auto`` fast-path settings decided by rule: the rules, explicit values, the record in the
checkpoint and metrics, and resume (``oct_vae.training.fast_path``)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from oct_vae.data.phantom import layered_scans
from oct_vae.pipelines.train import nodes
from oct_vae.training import fast_path
from oct_vae.training.distributed import train as train_vae
from oct_vae.training.fast_path import FastPath
from oct_vae.training.trainer import TrainConfig, Trainer
from oct_vae.vae.model import VAEConfig

MODEL = VAEConfig(image_size=32, width=4, latent_dim=8, n_blocks=3)
CPU, GPU, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    images = layered_scans(24, size=32, seed=5)
    return images[:16], images[16:]


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=1, batch_size=8, lr=2e-3, seed=1, device="cpu", progress=False,
                amp="auto", compile="off", channels_last="auto")
    base.update(kw)
    return TrainConfig(**base)


def test_amp_auto_is_float32_on_every_cpu_whatever_its_flags(monkeypatch):
    # A CPU reporting native bf16 (the EPYC, where bf16 was faster, and the Xeon, where it
    # was slower) trains in float32 unless asked: no flag and no stopwatch decides.
    monkeypatch.setattr("oct_vae.training.device.cpu_has_native_bf16", lambda: True)
    assert not fast_path.amp_choice("auto", CPU)
    assert fast_path.amp_choice("bf16", CPU) and not fast_path.amp_choice("off", CPU)
    assert not fast_path.amp_choice("bf16", MPS)  # no bf16 autocast there


def test_amp_auto_on_cuda_follows_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert fast_path.amp_choice("auto", GPU)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # pre-Ampere
    assert not fast_path.amp_choice("auto", GPU) and fast_path.amp_choice("bf16", GPU)


def test_layout_compile_and_graph_rules():
    assert fast_path.layout_choice("auto", GPU) and not fast_path.layout_choice("auto", CPU)
    assert fast_path.layout_choice("on", CPU) and not fast_path.layout_choice("off", GPU)
    cpu = fast_path.decide("auto", "auto", "auto", "auto", CPU)
    assert cpu == FastPath(False, False, False, False, "rule")
    ddp = fast_path.decide("off", "auto", "auto", "auto", GPU, world_size=2)
    assert (ddp.channels_last, ddp.compile, ddp.cuda_graph) == (True, True, False)
    one = fast_path.decide("off", "auto", "auto", "auto", GPU)
    assert (one.compile, one.cuda_graph) == (False, True)  # compile gives way to the graph


def test_trainer_follows_the_rules_and_honours_explicit_values(data):
    auto = Trainer(*data, MODEL, _cfg())
    assert (auto.amp, auto.channels_last, auto.fast_path.source) == (False, False, "rule")
    on = Trainer(*data, MODEL, _cfg(amp="bf16", channels_last="on"))
    assert (on.amp, on.channels_last) == (True, True)


def test_the_rule_gives_the_same_weights_as_the_explicit_settings_it_names(data):
    auto = train_vae(*data, MODEL, _cfg(epochs=1))
    assert auto.checkpoint["metadata"]["fast_path"]["source"] == "rule"
    same = train_vae(*data, MODEL, _cfg(epochs=1, amp="off", channels_last="off"))
    for k, v in auto.checkpoint["state_dict"].items():
        assert torch.equal(v, same.checkpoint["state_dict"][k]), k


def test_choice_is_logged_and_recorded_in_checkpoint_and_metrics(data, tmp_path, caplog):
    params = {"width": 4, "latent_dim": 8, "n_blocks": 3, "epochs": 1, "batch_size": 8,
              "lr": 2e-3, "progress": False, "compile": "off", "checkpoint_dir": "ckpt",
              "amp": "bf16"}
    run_info = {"project_root": str(tmp_path), "run_id": "run1"}
    with caplog.at_level(logging.INFO, logger="oct_vae.training.trainer"):
        checkpoint, _, metrics = nodes.train_vae(*data, params, 1, "cpu", run_info)
    (line,) = [r.getMessage() for r in caplog.records if "fast path" in r.getMessage()]
    assert "amp=bf16 channels_last=off compile=off cuda_graph=off (rule)" in line
    fast = checkpoint["metadata"]["fast_path"]
    assert fast == {"amp": True, "channels_last": False, "compile": False,
                    "cuda_graph": False, "source": "rule"}
    assert metrics["fast_path_amp_bf16"] == [{"value": 1.0, "step": 0}]
    assert metrics["fast_path_channels_last"] == [{"value": 0.0, "step": 0}]
    saved = torch.load(tmp_path / "ckpt" / "run1" / "last.pt", weights_only=True)
    assert saved["fast_path"] == fast


def test_resume_keeps_the_stored_precision_and_stays_exact(data, tmp_path):
    # Trained in bf16 (asked for); resumed with amp: auto, whose rule says float32 here.
    full = train_vae(*data, MODEL, _cfg(epochs=2, amp="bf16"))
    train_vae(*data, MODEL, _cfg(epochs=1, amp="bf16", checkpoint_dir=str(tmp_path)))
    again = Trainer(*data, MODEL, _cfg(epochs=2, checkpoint_dir=str(tmp_path), resume=True,
                                       amp="bf16"))
    assert again.amp and again.fast_path.source == "checkpoint"
    resumed = again.fit()
    for k, v in full.checkpoint["state_dict"].items():
        assert torch.equal(v, resumed.checkpoint["state_dict"][k]), k
    assert [h["val_total"] for h in resumed.history] == [h["val_total"] for h in full.history]


def test_resume_of_a_checkpoint_without_a_fast_path_uses_the_first_flag_rule(
        data, tmp_path, monkeypatch):
    train_vae(*data, MODEL, _cfg(epochs=1, checkpoint_dir=str(tmp_path)))
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    del state["fast_path"]  # written before fast paths were stored
    torch.save(state, tmp_path / "last.pt")
    monkeypatch.setattr("oct_vae.training.device.cpu_has_native_bf16", lambda: True)
    old = Trainer(*data, MODEL, _cfg(epochs=2, checkpoint_dir=str(tmp_path), resume=True))
    assert old.fast_path.source == "checkpoint" and old.amp and not old.channels_last


def test_fast_path_round_trips_and_reads_the_timed_records_of_earlier_versions():
    fast = FastPath(True, False, True, False, "rule")
    assert FastPath.from_dict(fast.to_dict()) == fast
    earlier = {"amp": True, "channels_last": True, "compile": False, "source": "measured",
               "step_ms": {"fp32": 2.0}, "spread_ms": {"fp32": [1.9, 2.2]}, "rounds": 5}
    assert FastPath.from_dict(earlier, "checkpoint") == FastPath(True, True, False, False,
                                                                  "checkpoint")
