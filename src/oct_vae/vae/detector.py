"""``AnomalyDetector``: a trained VAE plus what scoring needs beside the weights.

The training pipeline saves one checkpoint (``vae_model``) that holds the weights and,
computed on the healthy scans only:

* ``mean_normal``: the mean training-normal image (distance-to-mean baseline);
* ``latent_fit``: the Gaussian fitted on the training normals' encoder means
  (latent-distance score);
* ``calibration``: every score of every validation normal, from which percentiles and
  the operating threshold (e.g. 95 % specificity) are read. Test labels are never used.

The evaluate and score pipelines and the served MLflow model all score through this
class, so they agree to the last digit. Imports only numpy and torch.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from oct_vae.vae.checkpoint import load_model
from oct_vae.vae.scores import (
    LatentGaussian,
    ScoreConfig,
    encoder_means,
    fit_latent_gaussian,
    mean_image,
    score_images,
)


def calibrate_checkpoint(
    checkpoint: dict[str, Any],
    train_images: np.ndarray,
    val_images: np.ndarray,
    score_config: ScoreConfig,
    device: torch.device,
) -> dict[str, Any]:
    """Return a copy of ``checkpoint`` with the mean normal, latent fit and calibration added."""
    model = load_model(checkpoint, device)
    mu = encoder_means(model, train_images, score_config.batch_size, device)
    fit = fit_latent_gaussian(mu)
    mean_normal = mean_image(train_images)
    val = score_images(model, val_images, score_config, device, mean_normal, fit,
                       what="calibrate (validation normals)")
    out = dict(checkpoint)
    out["mean_normal"] = torch.from_numpy(mean_normal.astype(np.float32))
    out["latent_fit"] = fit.to_tensors()
    out["calibration"] = {k: torch.from_numpy(np.sort(v)) for k, v in val.items()}
    out["score_config"] = asdict(score_config)
    return out


class AnomalyDetector:
    """Scores uint8 images with a calibrated checkpoint.

    Args:
        checkpoint: A ``vae_model`` checkpoint that went through ``calibrate_checkpoint``.
        device: Where to run the model.
        score_config: Overrides the scoring settings stored in the checkpoint.
    """

    def __init__(
        self,
        checkpoint: dict[str, Any],
        device: torch.device | str = "cpu",
        score_config: ScoreConfig | None = None,
    ) -> None:
        missing = [k for k in ("mean_normal", "latent_fit", "calibration") if k not in checkpoint]
        if missing:
            raise ValueError(
                f"vae_model checkpoint lacks {missing}: it was not produced by the train "
                "pipeline's calibrate step. Run `kedro run --pipeline train` again."
            )
        self.device = torch.device(device)
        self.model = load_model(checkpoint, self.device)
        self.score_config = score_config or ScoreConfig(**checkpoint["score_config"])
        self.mean_normal = checkpoint["mean_normal"].numpy().astype(np.float64)
        self.latent_fit = LatentGaussian.from_tensors(checkpoint["latent_fit"])
        self.calibration = {k: v.numpy() for k, v in checkpoint["calibration"].items()}
        self.image_size = int(checkpoint["model_config"]["image_size"])

    def score(self, images: np.ndarray, what: str | None = None) -> dict[str, np.ndarray]:
        """Every score of uint8 images (N, S, S); ``what`` names the stage in its progress
        lines (``oct_vae.progress``; None: silent)."""
        if images.ndim != 3 or images.shape[1:] != (self.image_size, self.image_size):
            raise ValueError(
                f"expected uint8 images of shape (N, {self.image_size}, {self.image_size}), "
                f"got {images.shape}"
            )
        return score_images(self.model, images, self.score_config, self.device,
                            self.mean_normal, self.latent_fit, what=what)

    def percentile(self, name: str, values: np.ndarray) -> np.ndarray:
        """Percentage of validation normals scoring strictly below each value (0-100)."""
        ref = self.calibration[name]
        return 100.0 * np.searchsorted(ref, np.asarray(values), side="left") / max(len(ref), 1)

    def threshold(self, name: str, specificity: float = 0.95) -> float:
        """Score above which a scan is flagged, so that ``specificity`` of the validation
        normals fall at or below it."""
        return operating_threshold(self.calibration[name], specificity)


def operating_threshold(normal_scores: np.ndarray, specificity: float) -> float:
    """The ``specificity`` quantile of healthy scores (higher interpolation: conservative)."""
    if not 0 < specificity < 1:
        raise ValueError(f"specificity must be in (0, 1), got {specificity}")
    ref = np.asarray(normal_scores, dtype=np.float64)
    ref = ref[np.isfinite(ref)]
    if ref.size == 0:
        raise ValueError("no validation normals to choose a threshold on")
    return float(np.quantile(ref, specificity, method="higher"))
