"""Checkpoints during training: the state snapshot, its background writer, and resume.

Every epoch (or every ``checkpoint_every``) the trainer hands a CPU snapshot of its state
(``snapshot``) to a ``CheckpointWriter``, which writes ``last.pt`` atomically from a
background thread while training goes on. ``find_resume`` finds the checkpoint a run
continues from; ``check_resumable`` refuses one written with another configuration, on
other data, or for more epochs; ``load_optimizer_state`` restores Adam's state and keeps
this run's implementation flags.

This module imports only torch (and the project's science modules).
"""

from __future__ import annotations

import copy
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from oct_vae.framework.fileio import check_writable
from oct_vae.training.config import TrainConfig
from oct_vae.training.steps import ADAM_FLAGS
from oct_vae.vae import checkpoint as checkpoints
from oct_vae.vae.checkpoint import CHECKPOINT_FORMAT, to_cpu

log = logging.getLogger(__name__)


def checkpoint_file(config: TrainConfig) -> Path | None:
    """The run's ``last.pt`` in ``config.checkpoint_dir`` (``None`` when checkpointing is off)."""
    return Path(config.checkpoint_dir) / "last.pt" if config.checkpoint_dir else None


class CheckpointWriter:
    """Writes ``last.pt`` from a background thread, one write at a time.

    A write's error is raised by the next call (``submit``, ``raise_if_failed`` or
    ``close``), with the path and the OS reason (``oct_vae.framework.fileio``).

    Args:
        path: The file to write (``None``: checkpointing off, ``submit`` does nothing).
        check: Check now that its folder is writable (fail before the first epoch).
    """

    def __init__(self, path: Path | None, check: bool = False) -> None:
        if path is not None and check:
            check_writable(path.parent, "checkpoints")
        self.path = path
        self.saved_epoch = 0  # last epoch handed to the writer (or resumed from path)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def submit(self, state: dict[str, Any], epoch: int) -> None:
        """Start writing ``state`` (after the previous write has finished)."""
        if self.path is None:
            return
        self.wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oct-vae-ckpt")
        self._pending = self._pool.submit(checkpoints.save_atomically, state, self.path)
        self.saved_epoch = epoch

    def last_good(self) -> str:
        """The last checkpoint handed to the writer, in words (for error messages)."""
        return f"{self.path or '(checkpointing disabled)'} (after epoch {self.saved_epoch})"

    def raise_if_failed(self) -> None:
        """Raise the error of a finished write, if it failed."""
        if self._pending is not None and self._pending.done() and self._pending.exception():
            self.wait()

    def wait(self) -> None:
        """Wait for the pending write; re-raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()  # re-raises a failed write

    def close(self, raise_errors: bool) -> None:
        """Finish the pending write and stop the thread; a failure is raised or logged."""
        try:
            self.wait()
        except Exception:
            if raise_errors:
                raise
            log.exception("writing the last checkpoint failed as well")
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


def snapshot(
    epoch: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, run: dict[str, Any]
) -> dict[str, Any]:
    """The training state after ``epoch``, for ``last.pt``.

    Model and optimiser tensors are copied to the CPU now, so training can go on while a
    background thread writes them.

    Args:
        epoch: The epoch just trained.
        model: The model being trained.
        optimizer: Its optimiser.
        run: ``model_config``, ``train_config`` (``resume_key``), ``data_fingerprint``,
            ``history``, ``best`` (a CPU copy, replaced, never mutated, on improvement) and
            ``fast_path`` (a resumed run keeps these settings).
    """
    return {
        "format_version": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model_config": run["model_config"],
        "train_config": run["train_config"],
        "data_fingerprint": run["data_fingerprint"],
        "model": to_cpu(model.state_dict()),
        "optimizer": to_cpu(optimizer.state_dict()),
        "history": copy.deepcopy(run["history"]),
        "best": run["best"],
        "fast_path": run["fast_path"],
    }


def resume_key(config: TrainConfig) -> dict[str, Any]:
    """The settings that must match to continue a run.

    Epochs may grow and progress may change; devices may change too, since the global
    batch (hence the trajectory) does not. The checkpoint folder may change too: a resumed
    run writes into a folder of its own. The CUDA graph changes speed only, so a run may
    resume with or without it.
    """
    skip = ("epochs", "resume", "progress", "devices", "checkpoint_every", "checkpoint_dir",
            "cuda_graph")
    return {k: v for k, v in asdict(config).items() if k not in skip}


def find_resume(
    config: TrainConfig, device: torch.device
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to continue from and its contents (``None``: start afresh).

    ``resume: true`` continues from ``last.pt`` in the checkpoint folder when there is one;
    a path (a file or a folder holding ``last.pt``) must exist.

    Raises:
        FileNotFoundError: ``resume`` names a path that holds no checkpoint.
    """
    path = checkpoint_file(config)
    if config.resume is not True:
        path = Path(str(config.resume))
    if path is not None and path.is_dir():
        path = path / "last.pt"
    if path is None or not path.exists():
        if config.resume is not True:
            raise FileNotFoundError(f"Cannot resume: no checkpoint at {path}")
        log.info("resume: no checkpoint at %s, starting from epoch 1", path)
        return None
    return path, torch.load(path, map_location=device, weights_only=True)


def check_resumable(path: Path, state: dict[str, Any], expected: dict[str, Any],
                    epochs: int) -> None:
    """Refuse to continue from ``state`` unless it matches this run.

    Args:
        path: Where ``state`` was read (for the messages).
        state: The checkpoint's contents.
        expected: This run's ``model_config``, ``train_config`` (``resume_key``) and
            ``data_fingerprint``.
        epochs: This run's ``train.epochs``.

    Raises:
        ValueError: Another model or training configuration, other data, or more epochs
            trained than ``epochs``.
    """
    if (state.get("model_config") != expected["model_config"]
            or state.get("train_config") != expected["train_config"]):
        raise ValueError(
            f"Cannot resume from {path}: it was written with a different model or "
            "training configuration. Delete it or set train.resume: false."
        )
    if state.get("data_fingerprint") != expected["data_fingerprint"]:
        raise ValueError(
            f"Cannot resume from {path}: it was trained on other data than these "
            "training and validation images (another ingest run). "
            "Set train.resume: false to train from scratch on this data."
        )
    if int(state["epoch"]) > epochs:
        raise ValueError(
            f"Cannot resume from {path}: it has already trained {state['epoch']} epochs, "
            f"more than train.epochs={epochs}. Set train.epochs to at least "
            f"{state['epoch']}, or train.resume: false to train {epochs} epochs anew."
        )


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a checkpoint's optimiser state, keeping this run's implementation flags.

    The checkpoint's groups carry the flags of the run that wrote it (fused, foreach,
    capturable): this run keeps its own, which fit this device.
    """
    flags = [{k: g[k] for k in ADAM_FLAGS if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, flags):
        group.update(own)
