"""A whole training step (forward, loss, backward, Adam) captured once as a CUDA graph.

At the paper's batch of 64 a step of the paper's model on an H200 is mostly host work:
Python, autograd and ~300 kernel launches, against a few milliseconds of GPU work (eager,
batch 64: 8,450 images/s; batch 256: 27,600). Replaying a captured graph launches the
whole step at once (PyTorch's "whole-network capture", ``torch.cuda.graphs``), and runs
the same kernels as the eager step: the numbers do not change.

What capture needs, and how ``GraphedStep`` provides it:

* static inputs: each call copies the batch and its noise into tensors the graph reads;
* a few warm-up steps on a side stream before capture (cuDNN algorithm choice, lazy
  allocations, Adam's state, and compilation when the step is ``torch.compile``d). They
  are real optimiser steps, so every parameter, buffer (batch-norm statistics) and
  optimiser state tensor is restored in place afterwards: training continues from exactly
  the state it had before the capture. Optimiser state that the warm-up created is reset
  to zero, which is Adam's initial state;
* ``capturable`` optimiser groups (for the fused CUDA Adam this changes no arithmetic);
* gradients that are ``None`` at capture, so the captured backward writes them afresh.

The returned loss terms live in the graph's static output and are overwritten by the
next replay: copy them before that (``Trainer``'s loss log does). Only full batches of a
single process are captured; the short last batch of an epoch runs eagerly.

This module imports only torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

WARMUP_STEPS = 3


class GraphedStep:
    """``step(x, eps) -> terms`` plus ``terms[2].backward()`` and ``optimizer.step()``,
    recorded as one CUDA graph on the first call's shapes and replayed by every call.

    Args:
        step: ``(x, eps) -> tensor`` whose element 2 is the loss to minimise.
        model: The module whose parameters and buffers the step changes.
        optimizer: The optimiser over ``model``'s parameters (Adam-like: its fresh state
            is all zeros); its groups are made ``capturable``.
        x, eps: Example inputs; the graph is specialised to their shapes and strides.
    """

    def __init__(
        self, step: Callable[..., torch.Tensor], model: torch.nn.Module,
        optimizer: torch.optim.Optimizer, x: torch.Tensor, eps: torch.Tensor,
        warmup: int = WARMUP_STEPS,
    ) -> None:
        if x.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {x.device}")
        self.static_x = torch.empty_like(x).copy_(x)
        self.static_eps = torch.empty_like(eps).copy_(eps)
        for group in optimizer.param_groups:
            group["capturable"] = True
        self.graph = torch.cuda.CUDAGraph()
        with _restored(model, optimizer):
            side = torch.cuda.Stream(x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    optimizer.zero_grad(set_to_none=True)
                    step(self.static_x, self.static_eps)[2].backward()
                    optimizer.step()
            torch.cuda.current_stream(x.device).wait_stream(side)
            optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(self.graph):
                self.static_terms = step(self.static_x, self.static_eps)
                self.static_terms[2].backward()
                optimizer.step()

    def __call__(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """One optimiser step on ``x``; returns the static ``terms`` (see the module)."""
        if x.shape != self.static_x.shape or eps.shape != self.static_eps.shape:
            raise ValueError(
                f"a captured step takes batches of shape {tuple(self.static_x.shape)}, "
                f"got {tuple(x.shape)}"
            )
        self.static_x.copy_(x)
        self.static_eps.copy_(eps)
        self.graph.replay()
        return self.static_terms


class _restored:
    """Context manager: every parameter, buffer and optimiser state tensor of ``model`` and
    ``optimizer`` holds on exit, in place, the value it held on entry; state tensors that
    did not exist on entry are zeroed (Adam's initial state)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def _state_tensors(self) -> list[torch.Tensor]:
        return [v for s in self.optimizer.state.values() for v in s.values()
                if isinstance(v, torch.Tensor)]

    def __enter__(self) -> None:
        tensors = [*self.model.parameters(), *self.model.buffers(), *self._state_tensors()]
        with torch.no_grad():
            self.saved = [(t, t.detach().clone()) for t in tensors]

    def __exit__(self, *exc: object) -> None:
        kept = {id(t) for t, _ in self.saved}
        with torch.no_grad():
            for tensor, value in self.saved:
                tensor.copy_(value)
            for tensor in self._state_tensors():
                if id(tensor) not in kept:
                    tensor.zero_()
        self.saved = []


def capture_or_none(
    step: Callable[..., torch.Tensor], model: torch.nn.Module,
    optimizer: torch.optim.Optimizer, x: torch.Tensor, eps: torch.Tensor,
) -> GraphedStep | None:
    """A ``GraphedStep``, or ``None`` (with a warning) when capture fails; the model and
    optimiser are then as they were, and training goes on without the graph."""
    try:
        return GraphedStep(step, model, optimizer, x, eps)
    except Exception as err:  # noqa: BLE001 - any capture failure means: run ungraphed
        log.warning("CUDA graph capture failed (%s: %s); training without it",
                    type(err).__name__, err)
        torch.cuda.synchronize(x.device)
        return None
