"""The training step and how it is built: forward and loss, DDP wrapping, ``torch.compile``
(with a fallback to eager execution), and the Adam optimiser that fits the device.

``TrainStep`` is ``(x, eps) -> [recon, kl, total]``; ``build_steps`` returns it eagerly (DDP-
wrapped with several processes) for the short last batch of an epoch, and compiled (when
``compile`` is on) for full batches. The CUDA graph of a whole step is in
``oct_vae.training.cuda_graph``.

This module imports only torch (and the project's science modules).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import torch

from oct_vae.training.batchnorm import sync_batchnorm
from oct_vae.training.config import TrainConfig
from oct_vae.vae.losses import negative_elbo
from oct_vae.vae.model import VAE, reparameterize

log = logging.getLogger(__name__)

# Adam's implementation flags: they follow the device, not the run (see load_optimizer_state).
ADAM_FLAGS = ("fused", "foreach", "capturable")


class TrainStep(torch.nn.Module):
    """Forward pass and loss, ``(x, eps) -> [recon, kl, total]`` (batch means, float32):
    the unit that DDP wraps and ``torch.compile`` fuses, and what validation runs.

    The reparameterisation noise comes in as an argument, so that every rank can take its
    slice of the noise drawn for the whole global batch.
    """

    def __init__(self, vae: VAE, config: TrainConfig, amp: bool, device_type: str) -> None:
        super().__init__()
        self.vae = vae
        self.likelihood, self.beta = config.likelihood, config.beta
        self.sigma = config.gaussian_sigma
        self.amp, self.device_type = amp, device_type

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.amp):
            mu, logvar = self.vae.encode(x)
            # Under bf16 autocast exp() runs in float32: eps and z are cast to mu's dtype.
            z = reparameterize(mu, logvar, eps.to(mu.dtype))
            logits = self.vae.decode(z.to(mu.dtype))
        terms = negative_elbo(logits, x, mu, logvar, self.likelihood, self.beta, self.sigma)
        return torch.stack([terms["recon"], terms["kl"], terms["total"]])


def build_steps(
    forward: TrainStep, model: VAE, device: torch.device, world_size: int, compile_: bool
) -> tuple[torch.nn.Module, Callable[..., torch.Tensor]]:
    """The eager step (DDP-wrapped with several processes) and the one for full batches.

    With several processes the model's batch norm is made global in place
    (``oct_vae.training.batchnorm``) before DDP wraps the step.
    """
    step: torch.nn.Module = forward
    if world_size > 1:
        sync_batchnorm(model, device)  # in place: global-batch statistics
        on_cuda = device.type == "cuda"
        step = torch.nn.parallel.DistributedDataParallel(
            step,
            device_ids=[device.index] if on_cuda else None,
            gradient_as_bucket_view=True,
            **_no_buffer_broadcast(),  # synchronised batch norm keeps buffers equal
        )
    return step, try_compile(step) if compile_ else step


def make_optimizer(
    model: torch.nn.Module, lr: float, device: torch.device, graphed: bool = False
) -> torch.optim.Adam:
    """Adam over ``model``'s parameters: fused on CUDA (capturable when the step is replayed
    as a CUDA graph), foreach elsewhere."""
    return torch.optim.Adam(model.parameters(), lr=lr, **_adam_kwargs(device, graphed))


def try_compile(module: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """``torch.compile`` with a clean fallback to eager execution on failure."""
    try:
        compiled = torch.compile(module)
    except Exception as err:  # noqa: BLE001 - any backend failure means: run eagerly
        log.warning("torch.compile unavailable (%s); training eagerly", err)
        return module

    state: dict[str, Callable[..., torch.Tensor]] = {"fn": compiled}

    def step(*args: torch.Tensor) -> torch.Tensor:
        try:
            return state["fn"](*args)
        except Exception as err:  # noqa: BLE001
            if state["fn"] is module:
                raise
            log.warning("torch.compile failed (%s); training eagerly", err)
            state["fn"] = module
            return module(*args)

    return step


def _no_buffer_broadcast() -> dict[str, bool]:
    # torch >= 2.14 renamed DDP's broadcast_buffers to forward_sync_buffers.
    params = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    name = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return {name: False}


def _adam_kwargs(device: torch.device, graphed: bool = False) -> dict[str, Any]:
    if device.type == "cuda":
        # The fused kernel keeps its step count on the device either way: capturable
        # (needed inside a CUDA graph) changes no arithmetic.
        return {"fused": True, "capturable": graphed}
    return {"foreach": True}
