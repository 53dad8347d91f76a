import math

import pytest
import torch
import torch.nn.functional as F

from oct_vae.vae.losses import kl_divergence, negative_elbo, reconstruction_nll


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    mu, logvar = torch.zeros(4, 300, 1, 1), torch.zeros(4, 300, 1, 1)
    assert torch.allclose(kl_divergence(mu, logvar), torch.zeros(4))
    assert (kl_divergence(mu + 0.5, logvar) > 0).all()
    assert (kl_divergence(mu, logvar - 1.0) > 0).all()


def test_kl_matches_torch_distributions():
    mu, logvar = torch.randn(3, 5), torch.randn(3, 5)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(3, 5), torch.ones(3, 5))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    assert torch.allclose(kl_divergence(mu, logvar), expected, atol=1e-5)


def test_bernoulli_nll_is_summed_bce():
    logits, x = torch.randn(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    expected = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / 2
    assert torch.isclose(reconstruction_nll(logits, x).mean(), expected)


def test_gaussian_nll_matches_normal_log_prob():
    logits, x = torch.randn(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    dist = torch.distributions.Normal(torch.sigmoid(logits), 0.2)
    expected = -dist.log_prob(x).flatten(1).sum(1)
    got = reconstruction_nll(logits, x, "gaussian", gaussian_sigma=0.2)
    assert torch.allclose(got, expected, atol=1e-4)


def test_elbo_total_is_recon_plus_beta_kl():
    logits, x = torch.randn(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    mu, logvar = torch.randn(2, 3), torch.randn(2, 3)
    t = negative_elbo(logits, x, mu, logvar, beta=2.5)
    assert math.isclose(t["total"].item(), t["recon"].item() + 2.5 * t["kl"].item(), rel_tol=1e-6)


def test_unknown_likelihood_is_rejected():
    with pytest.raises(ValueError, match="likelihood"):
        reconstruction_nll(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), "poisson")
