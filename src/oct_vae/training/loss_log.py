"""The per-step losses of an epoch: the NaN guard, the epoch means and the progress bar.

The losses stay on the training device and are checked for NaN every few steps (every
step on the CPU): one host synchronisation per window, not per step. A non-finite loss
stops training with ``NonFiniteLossError``, naming the epoch, the batch and the last good
checkpoint.

This module imports only torch (tqdm for the progress bar, on use).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import torch


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped."""


class LossLog:
    """The ``[recon, kl, total]`` terms of every step of one epoch.

    Args:
        n_batches: Steps in the epoch.
        device: Where the terms are kept.
        world: Number of processes (the means are all-reduced over them).
        epoch: The epoch (for the NaN message).
        last_good: Names the last good checkpoint (for the NaN message), when asked.
        bar: A tqdm progress bar to advance, or ``None``.
    """

    def __init__(self, n_batches: int, device: torch.device, world: int, epoch: int,
                 last_good: Callable[[], str], bar: Any = None) -> None:
        self.terms = torch.zeros(n_batches, 3, device=device)
        self.counts: list[int] = []
        self.check_every = 1 if device.type == "cpu" else 25
        self.checked, self.last = 0, float("nan")
        self.epoch, self.last_good = epoch, last_good
        self.bar, self.world, self.device = bar, world, device
        self.t0 = time.perf_counter()

    def add(self, b: int, terms: torch.Tensor, count: int) -> None:
        """Record step ``b``'s terms over ``count`` images; check the window when it is full.

        Raises:
            NonFiniteLossError: A total in the checked window is NaN or infinite.
        """
        self.terms[b] = terms.detach()
        self.counts.append(count)
        if (b + 1) % self.check_every == 0 or b == len(self.terms) - 1:
            window = self.terms[self.checked : b + 1, 2].tolist()  # the window's host sync
            for offset, value in enumerate(window):
                if not math.isfinite(value):
                    raise NonFiniteLossError(self._message(value, self.checked + offset + 1))
            self.checked, self.last = b + 1, (window[-1] if window else float("nan"))
        if self.bar is not None:
            self._advance(b)

    def mean(self) -> tuple[dict[str, float], int]:
        """Image-weighted means over the epoch (all-reduced over ranks), images seen here."""
        if self.bar is not None:
            self.bar.close()
        weights = torch.tensor(self.counts, dtype=torch.float64, device=self.device)
        sums = (self.terms.double() * weights[:, None]).sum(0)
        count = weights.sum().reshape(1)
        if self.world > 1:
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(count)
        recon, kl, total = (sums / count).tolist()
        return {"recon": recon, "kl": kl, "total": total}, sum(self.counts)

    def _advance(self, b: int) -> None:
        self.bar.update(1)
        if self.checked == b + 1:
            rate = sum(self.counts) * self.world / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix(loss=f"{self.last:.1f}", img_s=f"{rate:.0f}", refresh=False)

    def _message(self, value: float, batch: int) -> str:
        return (
            f"Non-finite loss ({value}) at epoch {self.epoch}, batch {batch}/{len(self.terms)}; "
            f"training stopped. The last good checkpoint is {self.last_good()}. "
            "Lower train.lr or check the input images."
        )


def progress_bar(epoch: int, epochs: int, total: int, enabled: bool) -> Any:
    """A tqdm bar over the ``total`` batches of ``epoch`` (off when not a TTY), or ``None``."""
    if not enabled:
        return None
    from tqdm.auto import tqdm  # here: a bare torch box runs the benchmark without it

    return tqdm(
        total=total, desc=f"epoch {epoch}/{epochs}", unit="batch",
        leave=False, file=sys.stderr, mininterval=1.0,
        disable=None,  # off when not a TTY
    )
