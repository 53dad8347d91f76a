"""Thin Kedro adapters over ``oct_vae.training.trainer`` and ``oct_vae.vae.detector``."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from oct_vae.framework.params import parse_train
from oct_vae.training import distributed
from oct_vae.training.config import TrainConfig
from oct_vae.training.device import resolve_device
from oct_vae.vae.checkpoint import load_model
from oct_vae.vae.detector import calibrate_checkpoint
from oct_vae.vae.model import VAE, VAEConfig
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


def checkpoint_folders(
    params: dict[str, Any], run_info: dict[str, Any]
) -> tuple[str | None, bool | str]:
    """This run's checkpoint folder, and what to resume from.

    Every run writes its per-epoch ``last.pt`` to ``<train.checkpoint_dir>/<run id>/``, so
    two runs never share a file. ``train.checkpoint_dir`` is relative to the project root.
    ``train.resume`` is ``false``, ``true`` (the most recent earlier run that left a
    ``last.pt``) or the id of the run to continue (a folder name under checkpoint_dir).

    Returns:
        The folder for ``TrainConfig.checkpoint_dir`` (``None`` when checkpointing is off)
        and the value for ``TrainConfig.resume`` (``False`` or the ``last.pt`` to continue).

    Raises:
        FileNotFoundError: ``train.resume`` names a run that left no checkpoint.
    """
    base = params.get("checkpoint_dir")
    if not base:
        return None, False
    root = Path(str(base)).expanduser()
    if not root.is_absolute():
        root = Path(run_info["project_root"]) / root
    run_id = str(run_info["run_id"])
    resume = params.get("resume", False)
    source: bool | str = False
    earlier = sorted(
        (p.parent for p in root.glob("*/last.pt") if p.parent.name != run_id),
        key=lambda p: p.name,
    )
    if resume is True or resume == "latest":
        if earlier:
            source = str(earlier[-1] / "last.pt")
        else:
            log.info("train.resume: no earlier run left a checkpoint under %s", base)
    elif resume:
        path = root / str(resume) / "last.pt"
        if not path.exists():
            known = ", ".join(p.name for p in earlier[-5:]) or "none"
            raise FileNotFoundError(
                f"train.resume={resume!r}: no checkpoint {base}/{resume}/last.pt. "
                f"Runs with a checkpoint (latest last): {known}."
            )
        source = str(path)
    if source:
        log.info("train.resume: run %s continues run %s", run_id, Path(source).parent.name)
    return str(root / run_id), source


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
        run_info: This run's id and project root (``oct_vae.framework.hooks.RunIsolationHook``).

    Returns:
        The best-epoch checkpoint, the per-epoch history table, and the same history as
        MLflow metric histories.
    """
    model_config, config = split_train_params(params, int(train_images.shape[1]), seed, device)
    checkpoint_dir, resume = checkpoint_folders(params, run_info)
    config = dataclasses.replace(config, checkpoint_dir=checkpoint_dir, resume=resume)
    result = distributed.train(train_images, val_images, model_config, config)
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
    # The fast path this run trained with (oct_vae.training.fast_path).
    fast = meta.get("fast_path", {})
    for key in ("amp", "channels_last", "compile", "cuda_graph"):
        if key in fast:
            name = "fast_path_amp_bf16" if key == "amp" else f"fast_path_{key}"
            metrics[name] = [{"value": float(fast[key]), "step": 0}]
    return result.checkpoint, history, metrics


def calibrate_model(
    checkpoint: dict[str, Any],
    train_images: np.ndarray,
    val_images: np.ndarray,
    scoring: dict[str, Any],
    seed: int,
    device: str,
) -> tuple[dict[str, Any], torch.nn.Module]:
    """Add what scoring needs to the checkpoint, from healthy scans only: the mean normal
    image, the latent Gaussian of the training normals, and every score of the validation
    normals (for percentiles and operating thresholds).

    Args:
        scoring: ``train.scoring`` (L, batch size, k, the filter), stored in the checkpoint.

    Returns:
        The calibrated checkpoint (``vae_model``) and the bare network for MLflow's
        PyTorch flavour.
    """
    tc = checkpoint["train_config"]
    score_config = ScoreConfig(
        **scoring, likelihood=tc["likelihood"], gaussian_sigma=tc["gaussian_sigma"], seed=seed
    )
    calibrated = calibrate_checkpoint(
        checkpoint, train_images, val_images, score_config, resolve_device(device)
    )
    network: VAE = load_model(calibrated, "cpu")
    return calibrated, network
