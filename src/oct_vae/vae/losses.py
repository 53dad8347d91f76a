"""The VAE objective: minus the evidence lower bound (ELBO), per image.

    -ELBO(x) = E_q(z|x)[-log p(x|z)] + beta * KL(q(z|x) || N(0, I))

estimated with one reparameterised sample of z (Kingma & Welling 2014, eq. 10).
Reconstruction terms are summed over pixels, so they are negative log-likelihoods of
the whole image. This module imports only torch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from oct_vae.vae.config import LIKELIHOODS, check_likelihood

__all__ = ["LIKELIHOODS", "check_likelihood", "kl_divergence", "negative_elbo",
           "reconstruction_nll"]



def reconstruction_nll(
    logits: torch.Tensor,
    x: torch.Tensor,
    likelihood: str = "bernoulli",
    gaussian_sigma: float = 0.1,
) -> torch.Tensor:
    """-log p(x|z) per image, summed over pixels.

    Args:
        logits: Decoder output, shape (B, C, H, W).
        x: Targets in [0, 1], same shape.
        likelihood: ``bernoulli``: pixels are Bernoulli with p = sigmoid(logits) (binary
            cross-entropy, read on grey levels as in the paper's DCGAN-VAE lineage);
            ``gaussian``: pixels are N(sigmoid(logits), gaussian_sigma**2).
        gaussian_sigma: Fixed pixel standard deviation of the Gaussian likelihood.

    Returns:
        Tensor of shape (B,), in nats, computed in float32.
    """
    logits, x = logits.float(), x.float()
    if check_likelihood(likelihood) == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    else:
        mean = torch.sigmoid(logits)
        nll = 0.5 * ((x - mean) / gaussian_sigma) ** 2 + math.log(
            gaussian_sigma * math.sqrt(2 * math.pi)
        )
    return nll.flatten(1).sum(1)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Closed-form KL(N(mu, diag(exp(logvar))) || N(0, I)) per image, shape (B,).

    KL = 1/2 * sum_j (mu_j^2 + sigma_j^2 - log sigma_j^2 - 1)  (Kingma & Welling 2014, App. B).
    """
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).flatten(1).sum(1)


def negative_elbo(
    logits: torch.Tensor,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    likelihood: str = "bernoulli",
    beta: float = 1.0,
    gaussian_sigma: float = 0.1,
) -> dict[str, torch.Tensor]:
    """Batch means of the reconstruction NLL, the KL and their sum ``recon + beta * kl``.

    Returns:
        ``{"total": ..., "recon": ..., "kl": ...}``, scalar tensors; ``total`` is the loss
        to minimise.
    """
    recon = reconstruction_nll(logits, x, likelihood, gaussian_sigma).mean()
    kl = kl_divergence(mu, logvar).mean()
    return {"total": recon + beta * kl, "recon": recon, "kl": kl}
