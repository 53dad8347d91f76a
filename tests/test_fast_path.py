"""The training fast path: bf16 quality, compile fallback, eager tail batch, async checkpoints."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from oct_vae.data.phantom import layered_scans
from oct_vae.training.distributed import train as train_vae
from oct_vae.training.trainer import NonFiniteLossError, TrainConfig, Trainer
from oct_vae.vae.model import VAEConfig

MODEL = VAEConfig(image_size=32, width=8, latent_dim=16, n_blocks=3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    images = layered_scans(56, size=32, seed=5)
    return images[:40], images[40:]  # 40 = 16 + 16 + a short batch of 8


def _cfg(**kw) -> TrainConfig:
    # bernoulli: the likelihood the tolerances below were measured with
    base = dict(epochs=2, batch_size=16, lr=2e-3, seed=1, device="cpu", progress=False,
                amp="off", compile="off", likelihood="bernoulli")
    base.update(kw)
    return TrainConfig(**base)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_bf16_fast_path_val_loss_within_2_percent_of_float32(data):
    train, val = data
    # long enough to learn, short of the fast-moving phase where any rounding reorders steps
    slow = dict(epochs=10, batch_size=8, lr=3e-3)
    fp32 = train_vae(train, val, MODEL, _cfg(**slow))
    bf16 = train_vae(train, val, MODEL, _cfg(**slow, amp="bf16", channels_last="on"))
    assert fp32.checkpoint["metadata"]["amp"] == "off"
    assert bf16.checkpoint["metadata"]["amp"] == "bf16"
    first, last = fp32.history[0]["val_total"], fp32.history[-1]["val_total"]
    assert last < 0.9 * first  # it learned, so the comparison means something
    fast = bf16.history[-1]["val_total"]
    assert fast != last  # bf16 really ran
    assert abs(fast - last) / last < 0.02


def test_compile_failure_falls_back_to_eager_with_the_same_result(data, monkeypatch, caplog):
    train, val = data
    eager = train_vae(train, val, MODEL, _cfg())

    def broken_compile(module, **_):
        def fails(*args):
            raise RuntimeError("no backend here")

        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    with caplog.at_level(logging.WARNING, logger="oct_vae.training.steps"):
        fallback = train_vae(train, val, MODEL, _cfg(compile="on"))
    assert "training eagerly" in caplog.text
    assert _max_diff(eager.checkpoint["state_dict"], fallback.checkpoint["state_dict"]) == 0


def test_short_last_batch_bypasses_the_compiled_step(data, monkeypatch):
    train, val = data
    shapes: list[int] = []

    def recording_compile(module, **_):
        def compiled(x, eps):
            shapes.append(x.shape[0])
            return module(x, eps)

        return compiled

    monkeypatch.setattr(torch, "compile", recording_compile)
    train_vae(train, val, MODEL, _cfg(epochs=2, compile="on"))
    assert shapes == [16, 16, 16, 16]  # the batches of 8 never reach the compiled graph


def test_resume_equals_uninterrupted_with_background_checkpoints(data, tmp_path):
    train, val = data
    full = train_vae(train, val, MODEL, _cfg(epochs=3))
    train_vae(train, val, MODEL, _cfg(epochs=2, checkpoint_dir=str(tmp_path)))
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["epoch"] == 2 and len(saved["history"]) == 2
    again = _cfg(epochs=3, checkpoint_dir=str(tmp_path), resume=True)
    resumed = train_vae(train, val, MODEL, again)
    assert _max_diff(full.checkpoint["state_dict"], resumed.checkpoint["state_dict"]) == 0
    assert [h["val_total"] for h in resumed.history] == [h["val_total"] for h in full.history]
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 3


def _poison_step(trainer: Trainer, step: int) -> None:
    """Make the loss of the trainer's ``step``-th training step (from 1) NaN."""
    original, calls = trainer.step_model, {"n": 0}

    def poison(x, eps):
        calls["n"] += 1
        terms = original(x, eps)
        return terms * float("nan") if calls["n"] == step else terms

    trainer.step_model = poison


def test_nan_guard_names_epoch_and_batch_after_the_checkpoint_is_written(data, tmp_path):
    train, val = data
    trainer = Trainer(train, val, MODEL, _cfg(epochs=3, checkpoint_dir=str(tmp_path)))
    _poison_step(trainer, 4)  # 3 batches per epoch: epoch 2, batch 2
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, batch 2/3"):
        trainer.fit()
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 1


def test_sparser_checkpoints_resume_to_the_same_weights_and_name_the_saved_epoch(data, tmp_path):
    train, val = data
    full = train_vae(train, val, MODEL, _cfg(epochs=4))
    trainer = Trainer(train, val, MODEL, _cfg(epochs=4, checkpoint_dir=str(tmp_path),
                                              checkpoint_every=2))
    _poison_step(trainer, 7)  # epoch 4, batch 1
    with pytest.raises(NonFiniteLossError, match=r"epoch 4, batch 1/3.*after epoch 2\)"):
        trainer.fit()  # epoch 3 was trained but not written
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 2
    again = _cfg(epochs=4, checkpoint_dir=str(tmp_path), resume=True, checkpoint_every=3)
    resumed = train_vae(train, val, MODEL, again)
    assert _max_diff(full.checkpoint["state_dict"], resumed.checkpoint["state_dict"]) == 0
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 4  # the last one


def test_devices_setting_is_validated():
    assert _cfg(devices="auto").devices == "auto"
    for bad in (0, -1, True, "two", 1.5):
        with pytest.raises(ValueError, match="devices"):
            _cfg(devices=bad)
