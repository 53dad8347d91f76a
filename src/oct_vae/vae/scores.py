"""Anomaly scores of a trained VAE: pure functions over torch tensors and numpy arrays.

The paper's three scores (Liu & Mitrovic, Sec. 3), for an image x:

* reconstruction:  s_rec(x) = -(1/L) * sum_{i=1..L} log p(x | z_i),  z_i ~ q(z|x)
* KL:              s_KL(x)  = KL(q(z|x) || p(z))  (closed form)
* VAE:             s_VAE(x) = s_rec(x) + s_KL(x), the negative ELBO

and the scores that go beyond it (issue "Beyond the paper"):

* top-k residual: mean of the largest k% squared pixel residuals of the mean
  reconstruction (1/L) * sum_i E[x | z_i];
* filtered residual: the same top-k after a Gaussian filter (sigma in pixels) on the
  squared-residual map, which averages out speckle and keeps contiguous lesions
  (the "post-processing on the anomaly scores" the paper names as future work);
* structural residual: 1 - SSIM(x, mean reconstruction) (scikit-image's SSIM);
* latent distance: Mahalanobis distance of mu(x) to a Gaussian fitted on the
  training normals' encoder means;
* reconstruction uncertainty: per-pixel variance of E[x | z_i] across the L samples,
  averaged over the image.

Two trivial baselines are scored as well, so every table says whether the data has a
shortcut: mean intensity, and L2 distance to the mean training-normal image.

This module imports only numpy and torch (scikit-image for SSIM, imported on use), and
``oct_vae.progress`` (the standard library).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from oct_vae.progress import track
from oct_vae.vae.config import EXTRA_SCORES, ScoreConfig
from oct_vae.vae.losses import kl_divergence, reconstruction_nll
from oct_vae.vae.model import VAE, reparameterize


@dataclass
class BatchScores:
    """Per-image scores of one batch (tensors of shape (B,)) and the maps behind them."""

    reconstruction: torch.Tensor
    kl: torch.Tensor
    mean_reconstruction: torch.Tensor  # (B, 1, H, W), expected pixel values in [0, 1]
    pixel_variance: torch.Tensor  # (B, 1, H, W), across the L samples
    mu: torch.Tensor  # (B, latent_dim)

    @property
    def vae(self) -> torch.Tensor:
        return self.reconstruction + self.kl


def expected_image(logits: torch.Tensor) -> torch.Tensor:
    """E[x | z] under either likelihood: sigmoid of the decoder logits."""
    return torch.sigmoid(logits.float())


def posterior_noise(
    config: ScoreConfig, shape: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    """The L standard-normal draws eps_1..eps_L, shape (L, *shape), from ``config.seed``.

    Every image is scored with the same draws (common random numbers), so an image's
    scores do not depend on which other images share its batch, nor on the batch size.
    """
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    return torch.randn((config.n_samples, *shape), generator=gen).to(device)


@torch.no_grad()
def score_batch(model: VAE, x: torch.Tensor, config: ScoreConfig) -> BatchScores:
    """The paper's scores and the reconstruction maps for a float batch x in [0, 1].

    z_i = mu + sigma * eps_i for i = 1..L (``posterior_noise``), and
    s_rec = -(1/L) * sum_i log p(x | z_i), s_KL = KL(q(z|x) || N(0, I)).
    """
    model.eval()
    mu, logvar = model.encode(x)
    mu, logvar = mu.float(), logvar.float()
    kl = kl_divergence(mu, logvar)
    eps = posterior_noise(config, tuple(mu.shape[1:]), mu.device)
    nll = torch.zeros(x.shape[0], device=x.device)
    mean = torch.zeros(x.shape, device=x.device)
    sq = torch.zeros(x.shape, device=x.device)
    for i in range(config.n_samples):
        logits = model.decode(reparameterize(mu, logvar, eps[i])).float()
        nll += reconstruction_nll(logits, x, config.likelihood, config.gaussian_sigma)
        img = expected_image(logits)
        mean += img
        sq += img * img
    mean /= config.n_samples
    variance = (sq / config.n_samples - mean * mean).clamp_min(0.0)
    return BatchScores(
        reconstruction=nll / config.n_samples,
        kl=kl,
        mean_reconstruction=mean,
        pixel_variance=variance,
        mu=mu.flatten(1),
    )


def iter_batches(
    images: np.ndarray, batch_size: int, device: torch.device
) -> Iterator[torch.Tensor]:
    """uint8 (N, H, W) -> float (B, 1, H, W) batches in [0, 1] on ``device``."""
    for start in range(0, images.shape[0], batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
        yield chunk.to(device).unsqueeze(1).float().div_(255.0)


def top_k_residual(x: np.ndarray, recon: np.ndarray, k_percent: float = 5.0) -> np.ndarray:
    """Mean of the largest ``k_percent`` % squared residuals per image.

    Args:
        x: Images (N, ...) in [0, 1].
        recon: Reconstructions, same shape.
        k_percent: Share of pixels kept, in (0, 100].
    """
    sq = ((x - recon) ** 2).reshape(x.shape[0], -1)
    k = max(1, int(round(sq.shape[1] * k_percent / 100.0)))
    top = np.partition(sq, sq.shape[1] - k, axis=1)[:, -k:]
    return top.mean(axis=1)


def filtered_residual(
    x: np.ndarray, recon: np.ndarray, sigma: float = 2.0, k_percent: float = 5.0
) -> np.ndarray:
    """Mean of the largest ``k_percent`` % of the Gaussian-filtered squared residual map.

    Args:
        x: Images (N, H, W) in [0, 1].
        recon: Reconstructions, same shape.
        sigma: Filter standard deviation in pixels (0 = no filtering: the top-k residual).
        k_percent: Share of pixels kept, in (0, 100].
    """
    from scipy.ndimage import gaussian_filter

    sq = (x - recon) ** 2
    if sigma > 0:
        sq = gaussian_filter(sq, sigma=(0, sigma, sigma), mode="nearest")
    return top_k_residual(np.sqrt(sq), np.zeros_like(sq), k_percent)


def structural_residual(x: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """1 - SSIM(x, recon) per image (scikit-image, Gaussian-weighted as Wang et al. 2004).

    Args:
        x: Images (N, H, W) in [0, 1].
        recon: Reconstructions, same shape.
    """
    from skimage.metrics import structural_similarity

    out = np.empty(x.shape[0], dtype=np.float64)
    for i in range(x.shape[0]):
        out[i] = 1.0 - structural_similarity(
            x[i].astype(np.float64),
            recon[i].astype(np.float64),
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    return out


@dataclass(frozen=True)
class LatentGaussian:
    """N(mean, cov) fitted on training normals' encoder means; stored with the model."""

    mean: np.ndarray  # (D,)
    precision: np.ndarray  # (D, D), inverse of the (shrunk) covariance

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "mean": torch.from_numpy(self.mean.astype(np.float64)),
            "precision": torch.from_numpy(self.precision.astype(np.float64)),
        }

    @classmethod
    def from_tensors(cls, data: dict[str, torch.Tensor]) -> LatentGaussian:
        return cls(mean=data["mean"].numpy(), precision=data["precision"].numpy())


def fit_latent_gaussian(mu: np.ndarray, shrinkage: float = 1e-3) -> LatentGaussian:
    """Fit a Gaussian to encoder means (N, D).

    The covariance is shrunk towards its mean diagonal, ``(1 - a) * S + a * tr(S)/D * I``,
    so it stays invertible when N is close to D (300 latents, a few thousand scans).
    """
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim != 2 or mu.shape[0] < 2:
        raise ValueError(f"need at least 2 latent vectors of shape (N, D), got {mu.shape}")
    mean = mu.mean(axis=0)
    cov = np.cov(mu, rowvar=False).reshape(mu.shape[1], mu.shape[1])
    d = cov.shape[0]
    cov = (1 - shrinkage) * cov + shrinkage * (np.trace(cov) / d + 1e-12) * np.eye(d)
    return LatentGaussian(mean=mean, precision=np.linalg.inv(cov))


def mahalanobis(mu: np.ndarray, fit: LatentGaussian) -> np.ndarray:
    """Mahalanobis distance sqrt((mu - m)^T P (mu - m)) of each row of ``mu``."""
    diff = np.asarray(mu, dtype=np.float64) - fit.mean
    d2 = np.einsum("nd,de,ne->n", diff, fit.precision, diff)
    return np.sqrt(np.clip(d2, 0.0, None))


# Images converted to float64 at a time by the baselines: their memory stays that of a chunk
# (64 x 128 x 128 x 8 bytes = 8 MiB, a scoring batch), whatever the number of images.
CHUNK = 64


def mean_intensity(images: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """Baseline: mean grey level of each uint8 image, in [0, 1] (row by row, in chunks)."""
    out = np.empty(images.shape[0], dtype=np.float64)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk]
        out[start : start + len(part)] = part.reshape(len(part), -1).astype(np.float64).mean(
            axis=1) / 255.0
    return out


def distance_to_mean_normal(images: np.ndarray, mean_normal: np.ndarray,
                            chunk: int = CHUNK) -> np.ndarray:
    """Baseline: L2 distance of each image to the mean training-normal image (both in [0, 1]),
    row by row, in chunks."""
    out = np.empty(images.shape[0], dtype=np.float64)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk]
        flat = part.reshape(len(part), -1).astype(np.float64) / 255.0
        out[start : start + len(part)] = np.linalg.norm(flat - mean_normal.reshape(1, -1), axis=1)
    return out


def mean_image(images: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """Mean of uint8 images (N, H, W) in [0, 1], accumulated in float64 over chunks (works on
    memory-mapped arrays). The sums are of integers, exact in float64: the same mean
    whatever the chunk."""
    total = np.zeros(images.shape[1:], dtype=np.float64)
    for start in range(0, images.shape[0], chunk):
        total += images[start : start + chunk].sum(axis=0, dtype=np.float64)
    return total / (255.0 * max(images.shape[0], 1))


def score_images(
    model: VAE,
    images: np.ndarray,
    config: ScoreConfig,
    device: torch.device,
    mean_normal: np.ndarray | None = None,
    latent_fit: LatentGaussian | None = None,
    what: str | None = None,
) -> dict[str, np.ndarray]:
    """Every score of every image, batched on ``device``; uint8 until a batch is taken.

    Args:
        model: Trained VAE (moved to ``device``, eval mode).
        images: uint8 (N, H, W).
        config: Scoring settings.
        device: Where to run the model.
        mean_normal: Mean training-normal image for the distance baseline (skipped if None).
        latent_fit: Latent Gaussian for the Mahalanobis score (skipped if None).
        what: The stage, for its progress lines (``oct_vae.progress``); None: silent.

    Returns:
        A dict of (N,) float arrays keyed by score name.
    """
    model = model.to(device).eval()
    cols: dict[str, list[np.ndarray]] = {
        k: [] for k in ("reconstruction", "kl", "vae", *EXTRA_SCORES)
    }
    with track(what, images.shape[0]) as progress:
        for x in iter_batches(images, config.batch_size, device):
            for name, values in _batch_scores(model, x, config, latent_fit).items():
                cols[name].append(values)
            progress.update(x.shape[0])
    out = {k: np.concatenate(v).astype(np.float64) if v else np.zeros(0) for k, v in cols.items()}
    out["baseline_mean_intensity"] = mean_intensity(images)
    if mean_normal is not None:
        out["baseline_distance_to_mean_normal"] = distance_to_mean_normal(images, mean_normal)
    return out


def _batch_scores(
    model: VAE, x: torch.Tensor, config: ScoreConfig, latent_fit: LatentGaussian | None
) -> dict[str, np.ndarray]:
    """The model's scores of one float batch (B, 1, H, W), keyed by score name."""
    s = score_batch(model, x, config)
    xs = x[:, 0].cpu().numpy().astype(np.float64)
    recon = s.mean_reconstruction[:, 0].cpu().numpy().astype(np.float64)
    mu = s.mu.cpu().numpy()
    return {
        "reconstruction": s.reconstruction.cpu().numpy(),
        "kl": s.kl.cpu().numpy(),
        "vae": s.vae.cpu().numpy(),
        "topk_residual": top_k_residual(xs, recon, config.top_k_percent),
        "filtered_residual": filtered_residual(
            xs, recon, config.residual_sigma, config.filtered_top_k_percent
        ),
        "structural_residual": structural_residual(xs, recon),
        "latent_distance": (
            mahalanobis(mu, latent_fit) if latent_fit is not None else np.full(len(mu), np.nan)
        ),
        "recon_uncertainty": s.pixel_variance.flatten(1).mean(1).cpu().numpy(),
    }


@torch.no_grad()
def encoder_means(
    model: VAE, images: np.ndarray, batch_size: int, device: torch.device
) -> np.ndarray:
    """mu(x) of every image, (N, latent_dim)."""
    model = model.to(device).eval()
    out = [
        model.encode(x)[0].flatten(1).float().cpu().numpy()
        for x in iter_batches(images, batch_size, device)
    ]
    return np.concatenate(out) if out else np.zeros((0, model.config.latent_dim))


@torch.no_grad()
def reconstruct(
    model: VAE, images: np.ndarray, config: ScoreConfig, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Mean reconstructions and squared-error maps (N, H, W), float32 in [0, 1]."""
    model = model.to(device).eval()
    recons, errors = [], []
    for x in iter_batches(images, config.batch_size, device):
        r = score_batch(model, x, config).mean_reconstruction
        recons.append(r[:, 0].cpu().numpy())
        errors.append(((x - r) ** 2)[:, 0].cpu().numpy())
    if not recons:
        empty = np.zeros((0, *images.shape[1:]), dtype=np.float32)
        return empty, empty
    return np.concatenate(recons).astype(np.float32), np.concatenate(errors).astype(np.float32)
