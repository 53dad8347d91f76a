"""Thin Kedro adapters over ``oct_vae.training.trainer`` and ``oct_vae.vae.detector``."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pandas as pd

from oct_vae.framework.params import parse_train
from oct_vae.pipelines.train.run_folders import checkpoint_folders
from oct_vae.training import distributed
from oct_vae.training.config import TrainConfig
from oct_vae.training.device import resolve_device
from oct_vae.vae.detector import calibrate_checkpoint
from oct_vae.vae.model import VAEConfig
from oct_vae.vae.scores import ScoreConfig

log = logging.getLogger(__name__)


def split_train_params(
    params: dict[str, Any], image_size: int, seed: int, device: str
) -> tuple[VAEConfig, TrainConfig]:
    """Split ``params:train`` into the model's and the optimiser's settings.

    The parameter schema (``oct_vae.framework.params.TrainSettings``) checks the values and
    fills in the defaults of the keys left out; ``train.scoring`` is the calibration's.

    Raises:
        ParameterError: On a key the schema does not know (a typo in parameters_train.yml)
            or a value it refuses, each named by its full key.
    """
    settings = parse_train(params)
    return settings.vae_config(image_size), settings.train_config(seed, device)


def train_vae(
    train_images: np.ndarray,
    val_images: np.ndarray,
    params: dict[str, Any],
    seed: int,
    device: str,
    run_info: dict[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, list[dict[str, float]]]]:
    """Train the VAE on the training normals; keep the best epoch by validation loss.

    Args:
        run_info: This run's id and project root (``oct_vae.framework.hooks.RunIsolationHook``),
            for its checkpoint folder (``run_folders.checkpoint_folders``).

    Returns:
        The best-epoch checkpoint, the per-epoch history table, and the same history as
        MLflow metric histories (plus the fast path the run trained with).
    """
    model_config, config = split_train_params(params, int(train_images.shape[1]), seed, device)
    checkpoint_dir, resume = checkpoint_folders(params, run_info)
    config = dataclasses.replace(config, checkpoint_dir=checkpoint_dir, resume=resume)
    result = distributed.train(train_images, val_images, model_config, config)
    history = pd.DataFrame(result.history)
    meta = result.checkpoint["metadata"]
    log.info(
        "trained %d epochs in %.1f s on %s; best epoch %d (val loss %.2f)",
        len(history), meta["train_seconds"], meta["device"], meta["best_epoch"],
        meta["best_val_total"],
    )
    return result.checkpoint, history, _training_metrics(history, meta.get("fast_path", {}))


def _training_metrics(
    history: pd.DataFrame, fast: dict[str, Any]
) -> dict[str, list[dict[str, float]]]:
    """Every history column as an MLflow metric history (step = epoch), and the fast path
    the run trained with (``oct_vae.training.fast_path``) as 0/1 metrics at step 0."""
    metrics = {
        col: [{"value": float(v), "step": int(e)} for e, v in zip(history["epoch"], history[col])]
        for col in history.columns
        if col != "epoch"
    }
    for key in ("amp", "channels_last", "compile", "cuda_graph"):
        if key in fast:
            name = "fast_path_amp_bf16" if key == "amp" else f"fast_path_{key}"
            metrics[name] = [{"value": float(fast[key]), "step": 0}]
    return metrics


def calibrate_model(
    checkpoint: dict[str, Any],
    train_images: np.ndarray,
    val_images: np.ndarray,
    scoring: dict[str, Any],
    seed: int,
    device: str,
) -> dict[str, Any]:
    """Add what scoring needs to the checkpoint, from healthy scans only: the mean normal
    image, the latent Gaussian of the training normals, and every score of the validation
    normals (for percentiles and operating thresholds).

    Args:
        scoring: ``train.scoring`` (L, batch size, k, the filter), stored in the checkpoint.

    Returns:
        The calibrated checkpoint (``vae_model``), the one model file of a run: the
        checkpoint artifact, and what the served ``oct_vae_scorer`` packs.
    """
    tc = checkpoint["train_config"]
    score_config = ScoreConfig(
        **scoring, likelihood=tc["likelihood"], gaussian_sigma=tc["gaussian_sigma"], seed=seed
    )
    return calibrate_checkpoint(
        checkpoint, train_images, val_images, score_config, resolve_device(device)
    )
