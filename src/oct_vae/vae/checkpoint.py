"""Checkpoints: what a trained model is on disk, and how it comes back.

A checkpoint is a plain dict of tensors and Python values (safe to load with
``torch.load(..., weights_only=True)``; it never holds pickled code):
``format_version``, ``model_config`` (``VAEConfig`` as a dict), ``train_config`` (the
optimisation settings), ``state_dict`` and ``metadata`` (best epoch, data fingerprint,
image size, ...). The train pipeline's calibrate step adds what scoring needs
(``oct_vae.vae.detector``). Imports only torch and the project's model and file modules.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from oct_vae.framework.fileio import atomic_write
from oct_vae.vae.model import VAE, VAEConfig

CHECKPOINT_FORMAT = 1
# Where a run kept its checkpoints is not part of the model (nor recorded).
_NOT_RECORDED = ("progress", "checkpoint_dir", "resume")


def make_checkpoint(
    model: torch.nn.Module, model_config: VAEConfig, train_config: Any, metadata: dict[str, Any]
) -> dict[str, Any]:
    """A self-describing checkpoint of ``model`` (a ``VAE``, possibly compiled or wrapped).

    Args:
        train_config: The ``TrainConfig`` dataclass it was trained with.
    """
    state = {k: v.detach().to("cpu").clone() for k, v in unwrap(model).state_dict().items()}
    return {
        "format_version": CHECKPOINT_FORMAT,
        "model_config": model_config.to_dict(),
        "train_config": {
            k: v for k, v in asdict(train_config).items() if k not in _NOT_RECORDED
        },
        "state_dict": state,
        "metadata": metadata,
    }


def load_model(checkpoint: dict[str, Any], device: str | torch.device = "cpu") -> VAE:
    """Rebuild the model of a checkpoint, in eval mode on ``device``."""
    if checkpoint.get("format_version") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"Unsupported checkpoint format {checkpoint.get('format_version')!r}; "
            f"this version of oct-vae reads format {CHECKPOINT_FORMAT}"
        )
    model = VAE(VAEConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The ``VAE`` inside ``torch.compile``, ``DistributedDataParallel`` and the train step."""
    model = getattr(model, "_orig_mod", model)  # torch.compile
    model = getattr(model, "module", model)  # DistributedDataParallel
    return getattr(model, "vae", model)  # the training step module


def to_cpu(obj: Any) -> Any:
    """Deep copy of nested dicts / lists with every tensor cloned onto the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def save_atomically(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file, fsync, rename: never a partial checkpoint."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))
