"""Measured ``auto`` fast-path settings: cache, key, choice, explicit values, record, resume."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from oct_vae import autotune
from oct_vae.autotune import Candidate, FastPath
from oct_vae.distributed import train as train_vae
from oct_vae.model import VAEConfig
from oct_vae.phantom import layered_scans
from oct_vae.pipelines.train import nodes
from oct_vae.training import TrainConfig, Trainer

MODEL = VAEConfig(image_size=32, width=4, latent_dim=8, n_blocks=3)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """A private autotune cache, and a CPU that reports bf16 (so bf16 is a candidate)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(autotune.CACHE_ENV, str(folder))
    monkeypatch.setattr(autotune, "cpu_has_native_bf16", lambda: True)
    return folder


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    images = layered_scans(24, size=32, seed=5)
    return images[:16], images[16:]


class FakeTimer:
    """Stands in for ``autotune.time_steps``: fixed step times, counts its calls."""

    def __init__(self, ms: dict[str, float]) -> None:
        self.ms, self.calls = ms, 0

    def __call__(self, make_step, cands, sync=lambda: None):
        self.calls += 1
        return {c.name: [self.ms[c.name] * f for f in (1.0, 0.98, 1.03)] for c in cands}


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=1, batch_size=8, lr=2e-3, seed=1, device="cpu", progress=False,
                amp="auto", compile="off", channels_last="auto")
    base.update(kw)
    return TrainConfig(**base)


BF16_FAST = {"fp32": 100.0, "fp32_cl": 120.0, "bf16": 50.0, "bf16_cl": 60.0}
FP32_FAST = {"fp32": 50.0, "fp32_cl": 60.0, "bf16": 100.0, "bf16_cl": 120.0}


def test_cache_is_written_once_and_reused(data, cache_dir, monkeypatch):
    timer = FakeTimer(BF16_FAST)
    monkeypatch.setattr(autotune, "time_steps", timer)
    first = Trainer(*data, MODEL, _cfg())
    assert timer.calls == 1 and first.fast_path.source == "measured"
    second = Trainer(*data, MODEL, _cfg())
    assert timer.calls == 1, "the second run must take the cached choice"
    assert second.fast_path.source == "cache"
    assert (second.amp, second.channels_last) == (first.amp, first.channels_last) == (True, False)
    assert second.fast_path.step_ms == first.fast_path.step_ms
    entries = json.loads((cache_dir / "autotune.json").read_text())["entries"]
    (entry,) = entries.values()
    assert entry["key"]["batch_size"] == 8 and entry["key"]["torch"] == str(torch.__version__)
    assert entry["amp"] is True and set(entry["step_ms"]) == set(BF16_FAST)
    Trainer(*data, MODEL, _cfg(batch_size=4))  # another batch size: measured anew
    assert timer.calls == 2 and len(json.loads((cache_dir / "autotune.json").read_text())[
        "entries"]) == 2


def test_unreadable_cache_is_measured_again(data, cache_dir, monkeypatch):
    cache_dir.mkdir()
    (cache_dir / "autotune.json").write_text("{not json")
    timer = FakeTimer(FP32_FAST)
    monkeypatch.setattr(autotune, "time_steps", timer)
    assert not Trainer(*data, MODEL, _cfg()).amp and timer.calls == 1
    assert json.loads((cache_dir / "autotune.json").read_text())["entries"]


def test_key_changes_with_model_batch_likelihood_threads_and_torch_version(monkeypatch):
    cpu = torch.device("cpu")
    cands = autotune.candidates("auto", "auto", cpu)
    key = autotune.cache_key(cpu, MODEL.to_dict(), 8, "bernoulli", cands)[0]
    assert key == autotune.cache_key(cpu, MODEL.to_dict(), 8, "bernoulli", cands)[0]
    wider = VAEConfig(image_size=32, width=8, latent_dim=8, n_blocks=3).to_dict()
    others = {
        autotune.cache_key(cpu, wider, 8, "bernoulli", cands)[0],
        autotune.cache_key(cpu, MODEL.to_dict(), 16, "bernoulli", cands)[0],
        autotune.cache_key(cpu, MODEL.to_dict(), 8, "gaussian", cands)[0],
        autotune.cache_key(cpu, MODEL.to_dict(), 8, "bernoulli", cands[:2])[0],
    }
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    others.add(autotune.cache_key(cpu, MODEL.to_dict(), 8, "bernoulli", cands)[0])
    monkeypatch.setattr(torch, "__version__", torch.__version__)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    others.add(autotune.cache_key(cpu, MODEL.to_dict(), 8, "bernoulli", cands)[0])
    assert key not in others and len(others) == 6


def test_clearly_slower_candidate_is_not_chosen_and_ties_go_to_the_simplest():
    cands = autotune.candidates("auto", "auto", torch.device("cpu"))
    assert [c.name for c in cands] == ["fp32", "fp32_cl", "bf16", "bf16_cl"]

    def samples(ms):
        return FakeTimer(ms)(None, cands)

    assert autotune.pick(samples(BF16_FAST), cands) == Candidate(True, False)
    assert autotune.pick(samples(FP32_FAST), cands) == Candidate(False, False)
    # bf16 3% faster than float32: within the tie margin, float32 stays
    near = {"fp32": 100.0, "fp32_cl": 101.0, "bf16": 97.0, "bf16_cl": 99.0}
    assert autotune.pick(samples(near), cands) == Candidate(False, False)
    # channels-last 10% faster, bf16 no better: channels-last only
    layout = {"fp32": 100.0, "fp32_cl": 90.0, "bf16": 110.0, "bf16_cl": 92.0}
    assert autotune.pick(samples(layout), cands) == Candidate(False, True)
    # medians, not means: one slow outlier round does not count
    assert autotune.pick({"fp32": [10, 10, 500], "bf16": [12, 12, 12]},
                         cands[::2]) == Candidate(False, False)


def test_explicit_settings_are_honoured_without_measuring(data, monkeypatch):
    def never(*_):
        raise AssertionError("explicit settings must not be measured")

    monkeypatch.setattr(autotune, "time_steps", never)
    off = Trainer(*data, MODEL, _cfg(amp="off", channels_last="off"))
    assert (off.amp, off.channels_last, off.fast_path.source) == (False, False, "explicit")
    on = Trainer(*data, MODEL, _cfg(amp="bf16", channels_last="on"))
    assert (on.amp, on.channels_last, on.fast_path.source) == (True, True, "explicit")
    # bf16 is no candidate where the CPU cannot run it natively: one candidate left
    monkeypatch.setattr(autotune, "cpu_has_native_bf16", lambda: False)
    plain = Trainer(*data, MODEL, _cfg(channels_last="off"))
    assert not plain.amp and plain.fast_path.source == "explicit"
    assert not plain.fast_path.compile  # compile auto: off on the CPU, not measured


def test_real_measurement_times_every_candidate_and_leaves_training_unchanged(data):
    auto = train_vae(*data, MODEL, _cfg(epochs=1))
    fast = auto.checkpoint["metadata"]["fast_path"]
    assert fast["source"] == "measured" and set(fast["step_ms"]) == set(BF16_FAST)
    assert fast["rounds"] >= autotune.MIN_ROUNDS
    assert all(lo <= fast["step_ms"][k] <= hi for k, (lo, hi) in fast["spread_ms"].items())
    explicit = _cfg(epochs=1, amp="bf16" if fast["amp"] else "off",
                    channels_last="on" if fast["channels_last"] else "off")
    same = train_vae(*data, MODEL, explicit)
    for k, v in auto.checkpoint["state_dict"].items():
        assert torch.equal(v, same.checkpoint["state_dict"][k]), k


def test_choice_is_logged_and_recorded_in_checkpoint_and_metrics(data, tmp_path, monkeypatch,
                                                                 caplog):
    monkeypatch.setattr(autotune, "time_steps", FakeTimer(BF16_FAST))
    params = {"width": 4, "latent_dim": 8, "n_blocks": 3, "epochs": 1, "batch_size": 8,
              "lr": 2e-3, "progress": False, "compile": "off", "checkpoint_dir": "ckpt"}
    run_info = {"project_root": str(tmp_path), "run_id": "run1"}
    train, val = data
    with caplog.at_level(logging.INFO, logger="oct_vae.autotune"):
        checkpoint, _, metrics = nodes.train_vae(train, val, params, 1, "cpu", run_info)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "oct_vae.autotune"]
    assert "amp=bf16" in line and "fp32 98.0 ms" in line and "measured" in line  # best of rounds
    fast = checkpoint["metadata"]["fast_path"]
    assert fast["amp"] and not fast["channels_last"] and fast["step_ms"]["bf16"] == 49.0
    assert metrics["autotune_step_ms_bf16"] == [{"value": 49.0, "step": 0}]
    assert metrics["autotune_amp_bf16"] == [{"value": 1.0, "step": 0}]
    assert metrics["autotune_channels_last"] == [{"value": 0.0, "step": 0}]
    saved = torch.load(tmp_path / "ckpt" / "run1" / "last.pt", weights_only=True)
    assert saved["fast_path"] == fast


def test_resume_uses_the_stored_choice_and_stays_exact(data, tmp_path, cache_dir, monkeypatch):
    monkeypatch.setattr(autotune, "time_steps", FakeTimer(BF16_FAST))
    full = train_vae(*data, MODEL, _cfg(epochs=2))
    assert full.checkpoint["metadata"]["fast_path"]["amp"]
    train_vae(*data, MODEL, _cfg(epochs=1, checkpoint_dir=str(tmp_path)))
    # the machine now measures float32 faster (another machine, a new cache):
    (cache_dir / "autotune.json").unlink()
    timer = FakeTimer(FP32_FAST)
    monkeypatch.setattr(autotune, "time_steps", timer)
    again = Trainer(*data, MODEL, _cfg(epochs=2, checkpoint_dir=str(tmp_path), resume=True))
    assert again.amp and again.fast_path.source == "checkpoint" and timer.calls == 0
    resumed = again.fit()
    for k, v in full.checkpoint["state_dict"].items():
        assert torch.equal(v, resumed.checkpoint["state_dict"][k]), k
    assert [h["val_total"] for h in resumed.history] == [h["val_total"] for h in full.history]


def test_resume_of_a_checkpoint_without_a_choice_uses_the_old_flag_rule(data, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setattr(autotune, "time_steps", FakeTimer(FP32_FAST))
    train_vae(*data, MODEL, _cfg(epochs=1, checkpoint_dir=str(tmp_path)))
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    del state["fast_path"]  # written before autotuning existed
    torch.save(state, tmp_path / "last.pt")
    monkeypatch.setattr("oct_vae.device.cpu_has_native_bf16", lambda: True)
    old = Trainer(*data, MODEL, _cfg(epochs=2, checkpoint_dir=str(tmp_path), resume=True))
    assert old.fast_path.source == "rule" and old.amp and not old.channels_last


def test_fast_path_round_trips_through_a_dict():
    fast = FastPath(True, False, True, "measured", {"fp32": 2.0, "bf16": 1.0},
                    {"fp32": [1.9, 2.2], "bf16": [0.9, 1.1]}, 5)
    assert FastPath.from_dict(fast.to_dict()) == fast
    assert FastPath.from_dict(fast.to_dict(), source="cache").source == "cache"


def _ddp_worker(rank: int, folder: str) -> None:
    """One of two gloo ranks: both decide; only rank 0 may measure."""
    import os

    os.environ[autotune.CACHE_ENV] = os.path.join(folder, f"cache-{rank}")
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2
    )
    calls = []

    def fake(make_step, cands, sync=lambda: None):
        calls.append(rank)
        return FakeTimer(BF16_FAST)(make_step, cands)

    autotune.time_steps = fake
    autotune.cpu_has_native_bf16 = lambda: True
    try:
        fast = autotune.decide("auto", "auto", "auto", torch.device("cpu"), MODEL.to_dict(), 4,
                               "bernoulli", lambda c: lambda: None, world=(rank, 2))
    finally:
        torch.distributed.destroy_process_group()
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
        json.dump({**fast.to_dict(), "calls": calls}, f)


@pytest.mark.slow  # spawns two processes (~15 s on a busy 2-core machine)
def test_with_several_ranks_rank_0_decides_and_every_rank_uses_its_choice(tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(str(tmp_path),), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["calls"] == [0] and r1["calls"] == []  # rank 1 never measured
    assert (r0["amp"], r0["channels_last"]) == (r1["amp"], r1["channels_last"]) == (True, False)
    assert r0["source"] == "measured" and r1["source"] == "rank 0"
