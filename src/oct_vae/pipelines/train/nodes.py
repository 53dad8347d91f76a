"""Thin Kedro adapters over ``oct_vae.training`` and ``oct_vae.detector``."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pandas as pd
import torch

from oct_vae.detector import calibrate_checkpoint
from oct_vae.distributed import launched_by_torchrun, train_distributed
from oct_vae.model import VAE, VAEConfig
from oct_vae.scores import ScoreConfig
from oct_vae.training import TrainConfig, Trainer, load_model, resolve_device

log = logging.getLogger(__name__)

_MODEL_KEYS = {f.name for f in dataclasses.fields(VAEConfig)} - {"image_size"}
_TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)} - {"seed", "device"}


def split_train_params(
    params: dict[str, Any], image_size: int, seed: int, device: str
) -> tuple[VAEConfig, TrainConfig]:
    """Split ``params:train`` into the model's and the optimiser's settings.

    Raises:
        ValueError: On a key that neither config knows (a typo in parameters_train.yml).
    """
    unknown = set(params) - _MODEL_KEYS - _TRAIN_KEYS
    if unknown:
        raise ValueError(
            f"Unknown train parameter(s) {sorted(unknown)}; "
            f"known: {sorted(_MODEL_KEYS | _TRAIN_KEYS)}"
        )
    model = VAEConfig(
        image_size=image_size, **{k: v for k, v in params.items() if k in _MODEL_KEYS}
    )
    train = TrainConfig(
        seed=seed, device=device, **{k: v for k, v in params.items() if k in _TRAIN_KEYS}
    )
    return model, train


def train_vae(
    train_images: np.ndarray,
    val_images: np.ndarray,
    params: dict[str, Any],
    seed: int,
    device: str,
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, list[dict[str, float]]]]:
    """Train the VAE on the training normals; keep the best epoch by validation loss.

    Returns:
        The best-epoch checkpoint, the per-epoch history table, and the same history as
        MLflow metric histories.
    """
    model_config, config = split_train_params(params, int(train_images.shape[1]), seed, device)
    if config.devices not in (1, "1") or launched_by_torchrun():
        result = train_distributed(train_images, val_images, model_config, config, config.devices)
    else:
        result = Trainer(train_images, val_images, model_config, config).fit()
    history = pd.DataFrame(result.history)
    meta = result.checkpoint["metadata"]
    log.info(
        "trained %d epochs in %.1f s on %s; best epoch %d (val loss %.2f)",
        len(history),
        meta["train_seconds"],
        meta["device"],
        meta["best_epoch"],
        meta["best_val_total"],
    )
    metrics = {
        col: [{"value": float(v), "step": int(e)} for e, v in zip(history["epoch"], history[col])]
        for col in history.columns
        if col != "epoch"
    }
    return result.checkpoint, history, metrics


def calibrate_model(
    checkpoint: dict[str, Any],
    train_images: np.ndarray,
    val_images: np.ndarray,
    n_samples: int,
    batch_size: int,
    top_k_percent: float,
    residual_sigma: float,
    filtered_top_k_percent: float,
    seed: int,
    device: str,
) -> tuple[dict[str, Any], torch.nn.Module]:
    """Add what scoring needs to the checkpoint, from healthy scans only: the mean normal
    image, the latent Gaussian of the training normals, and every score of the validation
    normals (for percentiles and operating thresholds).

    Returns:
        The calibrated checkpoint (``vae_model``) and the bare network for MLflow's
        PyTorch flavour.
    """
    tc = checkpoint["train_config"]
    score_config = ScoreConfig(
        n_samples=n_samples,
        batch_size=batch_size,
        likelihood=tc["likelihood"],
        gaussian_sigma=tc["gaussian_sigma"],
        top_k_percent=top_k_percent,
        residual_sigma=residual_sigma,
        filtered_top_k_percent=filtered_top_k_percent,
        seed=seed,
    )
    calibrated = calibrate_checkpoint(
        checkpoint, train_images, val_images, score_config, resolve_device(device)
    )
    network: VAE = load_model(calibrated, "cpu")
    return calibrated, network
