"""Data-parallel training: 2 gloo processes on the CPU follow the 1-process trajectory."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from oct_vae.data.phantom import layered_scans
from oct_vae.training.batchnorm import GlobalBatchNorm2d, sync_batchnorm
from oct_vae.training.distributed import is_main_process, launched_by_torchrun, resolve_devices
from oct_vae.training.distributed import train as train_vae
from oct_vae.training.trainer import TrainConfig, Trainer
from oct_vae.vae.model import VAE, VAEConfig
from tests.helpers.project import free_port

MODEL = VAEConfig(image_size=32, width=4, latent_dim=8, n_blocks=3)
# Tight enough to catch unsynchronised batch norm (differences ~1e-2 after two epochs) or
# per-rank noise; loose enough for the different summation order of the all-reduces.
ATOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data() -> tuple[np.ndarray, np.ndarray]:
    images = layered_scans(52, size=32, seed=11)
    return images[:41], images[41:]  # batches of 16, 16 and 9: the last one is uneven


def _cfg(**kw) -> TrainConfig:
    # One fast path on every side: left on auto, one process (batch 16) and each rank
    # (batch 8) could measure different channels_last choices, which differ beyond ATOL.
    # bernoulli: the likelihood ATOL was measured with.
    base = dict(epochs=2, batch_size=16, lr=2e-3, seed=4, device="cpu", progress=False,
                amp="off", compile="off", channels_last="off", likelihood="bernoulli")
    base.update(kw)
    return TrainConfig(**base)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def single() -> dict:
    train, val = _data()
    result = train_vae(train, val, MODEL, _cfg())
    trainer = Trainer(train[:16], val, MODEL, _cfg())
    return {"result": result, "grads": _first_step_grads(trainer)}


def _first_step_grads(trainer: Trainer) -> list[torch.Tensor]:
    grads: list[torch.Tensor] = []

    def capture(optimizer, args, kwargs) -> None:
        if not grads:
            grads.extend(p.grad.detach().clone() for p in trainer.model.parameters())

    trainer.optimizer.register_step_pre_hook(capture)
    trainer._train_epoch(1)
    return grads


def test_two_spawned_gloo_processes_reach_the_one_process_weights(single, tmp_path):
    train, val = _data()
    ddp = train_vae(train, val, MODEL, _cfg(devices=2, checkpoint_dir=str(tmp_path)))
    one = single["result"]
    assert ddp.checkpoint["metadata"]["world_size"] == 2
    assert _max_diff(one.checkpoint["state_dict"], ddp.checkpoint["state_dict"]) < ATOL
    for a, b in zip(one.history, ddp.history, strict=True):
        assert a["train_total"] == pytest.approx(b["train_total"], rel=1e-5)
        assert a["val_total"] == pytest.approx(b["val_total"], rel=1e-5)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)  # written by rank 0
    assert saved["epoch"] == 2
    assert not ddp.model.training and next(ddp.model.parameters()).device.type == "cpu"


def _torchrun_worker(rank: int, port: int, out: str) -> None:
    """What ``torchrun --nproc-per-node 2`` would start: env vars, then the train node."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    train, val = _data()
    result = train_vae(train, val, MODEL, _cfg(devices=1))  # the job's size wins
    torch.save(result.checkpoint["state_dict"], Path(out) / f"weights-{rank}.pt")


def _grads_worker(rank: int, out: str) -> None:
    """The first step's gradients of one rank of a two-process job."""
    train, val = _data()
    dist.init_process_group("gloo", init_method=(Path(out) / "rdv").as_uri(), rank=rank,
                            world_size=2)
    trainer = Trainer(train[:16], val, MODEL, _cfg(), world=(rank, 2))
    torch.save(_first_step_grads(trainer), Path(out) / f"grads-{rank}.pt")
    dist.barrier()  # no rank tears the group down while its peer still uses it
    dist.destroy_process_group()


def test_torchrun_ranks_join_one_job_and_match_one_process(single, tmp_path):
    # Not a port from the kernel's ephemeral range (bind to 0): until rank 0 binds it, any
    # outgoing connection on the machine (another test's HTTP client) may take it as its
    # local port, and the job's store cannot start.
    port = free_port()
    mp.spawn(_torchrun_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    # The DDP gradient of one global batch equals the one-process gradient. New processes,
    # as under torchrun each process joins one group: a gloo process that joined a second
    # group after leaving the first aborted at exit now and then ("terminate called
    # without an active exception", torch 2.14), after all its work was done.
    mp.spawn(_grads_worker, args=(str(tmp_path),), nprocs=2, join=True)
    w0, w1 = (torch.load(tmp_path / f"weights-{r}.pt", weights_only=True) for r in (0, 1))
    assert _max_diff(w0, w1) == 0  # every rank returns the same model
    assert _max_diff(single["result"].checkpoint["state_dict"], w0) < ATOL
    for rank in (0, 1):
        grads = torch.load(tmp_path / f"grads-{rank}.pt", weights_only=True)
        for g_ddp, g_one in zip(grads, single["grads"], strict=True):
            torch.testing.assert_close(g_ddp, g_one, rtol=1e-4, atol=1e-6)


def test_global_batchnorm_is_plain_batchnorm_without_a_process_group():
    torch.manual_seed(0)
    plain, synced = nn.BatchNorm2d(3), GlobalBatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(plain(x), synced(x))
    torch.testing.assert_close(plain.running_var, synced.running_var)


def test_sync_batchnorm_keeps_checkpoint_keys():
    model = VAE(MODEL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sync_batchnorm(model, torch.device("cpu"))
    assert any(isinstance(m, GlobalBatchNorm2d) for m in model.modules())
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    assert _max_diff(before, model.state_dict()) == 0
    VAE(MODEL).load_state_dict(model.state_dict())  # loads into a plain VAE


def test_device_count_and_launch_detection(monkeypatch):
    assert resolve_devices(1, "cpu") == 1
    assert resolve_devices("auto", "cpu") == 1
    assert resolve_devices(3, "cpu") == 3
    with pytest.raises(ValueError, match="devices"):
        resolve_devices(0, "cpu")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert not launched_by_torchrun() and is_main_process()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_by_torchrun() and not is_main_process()


def test_one_device_trains_in_this_process(monkeypatch):
    train, val = _data()
    monkeypatch.setattr(mp, "spawn", lambda *a, **k: pytest.fail("spawned for one device"))
    result = train_vae(train, val, MODEL, replace(_cfg(), epochs=1, devices=1))
    assert result.checkpoint["metadata"]["world_size"] == 1
