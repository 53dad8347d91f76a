"""The whole-step CUDA graph: state restored after capture, the rule, and (on a GPU) the same
training as without it. The GPU tests skip on machines without CUDA; gpu_run.sh runs them."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from oct_vae.data.phantom import layered_scans
from oct_vae.training import fast_path
from oct_vae.training.checkpointing import resume_key
from oct_vae.training.cuda_graph import _restored
from oct_vae.training.fast_path import graph_choice
from oct_vae.training.trainer import TrainConfig, Trainer
from oct_vae.vae.model import VAEConfig

MODEL = VAEConfig(image_size=32, width=8, latent_dim=16, n_blocks=3)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    images = layered_scans(56, size=32, seed=5)
    return images[:40], images[40:]  # 40 = 16 + 16 + a short batch of 8


def _cfg(**kw) -> TrainConfig:
    # bernoulli: the likelihood the tolerances below were measured with
    base = dict(epochs=2, batch_size=16, lr=2e-3, seed=1, device="cpu", progress=False,
                amp="off", compile="off", channels_last="off", likelihood="bernoulli")
    base.update(kw)
    return TrainConfig(**base)


def _bn_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))


def _steps(model: torch.nn.Module, opt: torch.optim.Optimizer, n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        model(torch.randn(8, 4, generator=gen)).pow(2).mean().backward()
        opt.step()


def test_restored_undoes_warm_up_steps_of_a_fresh_optimiser():
    model = _bn_model()
    reference = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    with _restored(model, opt):
        _steps(model, opt, 3, seed=1)  # warm-up: moves weights, BN statistics, Adam state
    for got, want in zip(model.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(got, want)
    assert opt.state and all(  # Adam's state exists now, at its initial value (zeros)
        torch.count_nonzero(v) == 0 for s in opt.state.values() for v in s.values())
    # ... so training from here is training from scratch.
    _steps(model, opt, 2, seed=2)
    ref_opt = torch.optim.Adam(reference.parameters(), lr=0.1)
    _steps(reference, ref_opt, 2, seed=2)
    for got, want in zip(model.state_dict().values(), reference.state_dict().values()):
        assert torch.allclose(got, want, rtol=0, atol=1e-7)


def test_restored_keeps_an_existing_optimiser_state():
    model = _bn_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    _steps(model, opt, 2, seed=3)
    before = copy.deepcopy(opt.state_dict()["state"])
    weights = copy.deepcopy(model.state_dict())
    with _restored(model, opt):
        _steps(model, opt, 3, seed=4)
    for key, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            assert torch.equal(value, before[key][name]), name
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), name


def test_rule_on_needs_cuda_one_process_and_no_compile():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert not graph_choice("auto", "auto", cpu, 1)
    assert not graph_choice("off", "auto", cpu, 1)
    assert graph_choice("auto", "auto", gpu, 1)
    assert graph_choice("auto", "off", gpu, 1)
    assert not graph_choice("auto", "on", gpu, 1)  # an explicit compile wins over auto
    assert not graph_choice("auto", "auto", gpu, 2)  # DDP: never graphed
    with pytest.raises(ValueError, match="cuda_graph: on needs one process on a CUDA device"):
        graph_choice("on", "auto", cpu, 1)
    with pytest.raises(ValueError, match="2 process"):
        graph_choice("on", "auto", gpu, 2)
    with pytest.raises(ValueError, match="not combined"):
        graph_choice("on", "on", gpu, 1)


def test_compile_auto_gives_way_to_the_graph():
    gpu = torch.device("cuda")
    assert fast_path.compile_choice("auto", gpu, graphed=False)
    assert not fast_path.compile_choice("auto", gpu, graphed=True)
    assert fast_path.compile_choice("on", gpu, graphed=True)
    assert not fast_path.compile_choice("auto", torch.device("cpu"))


def test_cpu_trainer_runs_without_a_graph_and_refuses_on(data):
    trainer = Trainer(*data, MODEL, _cfg())
    assert not trainer.fast_path.cuda_graph and trainer.graphed is None
    trainer.fit()
    assert trainer.graphed is None
    with pytest.raises(ValueError, match="cuda_graph: on"):
        Trainer(*data, MODEL, _cfg(cuda_graph="on"))
    with pytest.raises(ValueError, match="cuda_graph must be one of"):
        _cfg(cuda_graph="yes")


def test_a_run_resumes_with_or_without_the_graph():
    assert resume_key(_cfg(cuda_graph="off")) == resume_key(_cfg(cuda_graph="auto"))


@pytest.fixture
def deterministic_cudnn():
    """cuDNN's deterministic algorithms: two runs of the same kernels give the same bits,
    so any difference between graphed and ungraphed training is the graph's."""
    saved = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    yield
    torch.backends.cudnn.deterministic = saved


def _same_training(a, b) -> None:
    for ha, hb in zip(a.history, b.history, strict=True):
        for key in ("train_total", "val_total"):
            assert hb[key] == pytest.approx(ha[key], rel=1e-6, abs=1e-6), key
    for name, value in a.model.state_dict().items():
        assert torch.allclose(b.model.state_dict()[name], value, rtol=1e-5, atol=1e-6), name


@cuda
@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_graphed_training_follows_the_ungraphed_one(data, amp, deterministic_cudnn):
    cfg = _cfg(device="cuda", epochs=3, amp=amp)
    plain = Trainer(*data, MODEL, replace(cfg, cuda_graph="off"))
    graphed = Trainer(*data, MODEL, replace(cfg, cuda_graph="on"))
    assert not graphed.fast_path.compile  # compile: auto gives way to the graph
    a, b = plain.fit(), graphed.fit()
    assert plain.graphed is None and graphed.graphed is not None  # it really replayed
    assert b.checkpoint["metadata"]["fast_path"]["cuda_graph"] is True
    _same_training(a, b)


@cuda
def test_a_compiled_step_inside_a_graph_matches_the_compiled_step(data, deterministic_cudnn):
    """Diagnostic for the combination the product refuses (graph_choice): on an H200 on
    2026-12-04 a Trainer-level comparison of the two failed, cause unknown."""
    from oct_vae.training.cuda_graph import GraphedStep

    cfg = _cfg(device="cuda", epochs=1, compile="on", cuda_graph="off")
    runs = []
    for graphed in (False, True):
        trainer = Trainer(*data, MODEL, cfg)
        x = torch.from_numpy(data[0][:16]).to("cuda").unsqueeze(1).float().div(255)
        eps = torch.randn((16, MODEL.latent_dim, 1, 1), device="cuda",
                          generator=torch.Generator("cuda").manual_seed(0))
        if graphed:
            step = GraphedStep(trainer.step_model, trainer.model, trainer.optimizer, x, eps)
            losses = [step(x, eps)[2].item() for _ in range(4)]
        else:
            losses = []
            for _ in range(4):
                trainer.optimizer.zero_grad(set_to_none=True)
                terms = trainer.step_model(x, eps)
                terms[2].backward()
                trainer.optimizer.step()
                losses.append(terms[2].item())
        runs.append((losses, {k: v.clone() for k, v in trainer.model.state_dict().items()}))
    (plain_losses, plain_state), (graph_losses, graph_state) = runs
    assert graph_losses == pytest.approx(plain_losses, rel=1e-6)
    for name, value in plain_state.items():
        assert torch.allclose(graph_state[name], value, rtol=1e-5, atol=1e-6), name


@cuda
def test_graphed_training_resumes_exactly(data, tmp_path, deterministic_cudnn):
    cfg = _cfg(device="cuda", epochs=3, checkpoint_dir=str(tmp_path), cuda_graph="on")
    whole = Trainer(*data, MODEL, replace(cfg, checkpoint_dir=None)).fit()
    Trainer(*data, MODEL, replace(cfg, epochs=2)).fit()
    resumed = Trainer(*data, MODEL, replace(cfg, resume=True))
    assert resumed.start_epoch == 3
    result = resumed.fit()
    assert result.history[-1]["val_total"] == pytest.approx(whole.history[-1]["val_total"],
                                                            rel=1e-6)
