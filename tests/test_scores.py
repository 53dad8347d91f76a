from dataclasses import replace

import numpy as np
import pytest
import torch

from oct_vae.vae.losses import kl_divergence, reconstruction_nll
from oct_vae.vae.model import VAE, VAEConfig
from oct_vae.vae.scores import (
    ScoreConfig,
    distance_to_mean_normal,
    filtered_residual,
    fit_latent_gaussian,
    mahalanobis,
    mean_image,
    mean_intensity,
    score_batch,
    score_images,
    structural_residual,
    top_k_residual,
)

CFG = VAEConfig(image_size=32, width=4, latent_dim=8, n_blocks=3)


def _model(seed=0):
    torch.manual_seed(seed)
    return VAE(CFG).eval()


def _images(n=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32), dtype=np.uint8)


def test_paper_scores_match_a_direct_computation():
    model, imgs = _model(), _images()
    # reconstruction_nll's likelihood (bernoulli unless told), stated: not ScoreConfig's default
    config = ScoreConfig(n_samples=3, batch_size=4, seed=11, likelihood="bernoulli")
    got = score_images(model, imgs, config, torch.device("cpu"))
    # direct, one image at a time: z_i = mu + sigma * eps_i with the seeded draws eps_1..eps_L
    eps = torch.randn((3, 8, 1, 1), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        for n in range(len(imgs)):
            x = torch.from_numpy(imgs[n : n + 1]).unsqueeze(1).float() / 255
            mu, logvar = model.encode(x)
            nll = sum(
                reconstruction_nll(model.decode(mu + torch.exp(0.5 * logvar) * eps[i]), x)
                for i in range(3)
            ) / 3
            kl = kl_divergence(mu, logvar)
            assert got["reconstruction"][n] == pytest.approx(nll.item(), rel=1e-5)
            assert got["kl"][n] == pytest.approx(kl.item(), rel=1e-5)
            assert got["vae"][n] == pytest.approx(nll.item() + kl.item(), rel=1e-5)


def test_scores_do_not_depend_on_batch_composition():
    model, imgs = _model(), _images(7)
    a = score_images(model, imgs, ScoreConfig(n_samples=3, batch_size=7), torch.device("cpu"))
    b = score_images(model, imgs, ScoreConfig(n_samples=3, batch_size=2), torch.device("cpu"))
    c = score_images(model, imgs[3:4], ScoreConfig(n_samples=3), torch.device("cpu"))
    for k in ("reconstruction", "kl", "topk_residual", "structural_residual"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5)
        assert c[k][0] == pytest.approx(a[k][3], rel=1e-5)


def test_kl_score_is_zero_when_q_is_the_prior():
    model = _model()
    for conv in (model.encoder.mu, model.encoder.logvar):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    s = score_images(model, _images(), ScoreConfig(n_samples=2), torch.device("cpu"))
    np.testing.assert_allclose(s["kl"], 0.0, atol=1e-6)
    assert (s["reconstruction"] > 0).all()


def test_scores_are_reproducible_and_l_averages_samples():
    model, imgs = _model(), _images()
    a = score_images(model, imgs, ScoreConfig(n_samples=4, seed=1), torch.device("cpu"))
    b = score_images(model, imgs, ScoreConfig(n_samples=4, seed=1), torch.device("cpu"))
    np.testing.assert_array_equal(a["reconstruction"], b["reconstruction"])
    x = torch.from_numpy(imgs).unsqueeze(1).float() / 255
    one = score_batch(model, x, ScoreConfig(n_samples=1))
    many = score_batch(model, x, ScoreConfig(n_samples=8))
    assert (one.pixel_variance == 0).all() and (many.pixel_variance > 0).any()


def test_identical_reconstruction_gives_zero_residuals():
    x = np.random.default_rng(0).random((3, 32, 32))
    np.testing.assert_allclose(top_k_residual(x, x), 0.0)
    np.testing.assert_allclose(structural_residual(x, x), 0.0, atol=1e-12)


def test_planted_blob_raises_top_k_more_than_the_mean():
    rng = np.random.default_rng(1)
    x = rng.random((1, 64, 64)) * 0.5
    recon = x + rng.normal(0, 0.05, x.shape)
    blob = x.copy()
    blob[0, 30:36, 30:36] = 1.0  # a small bright lesion the model does not reconstruct
    mean_before = ((x - recon) ** 2).mean()
    mean_after = ((blob - recon) ** 2).mean()
    topk_before, topk_after = top_k_residual(x, recon, 5)[0], top_k_residual(blob, recon, 5)[0]
    assert topk_after / topk_before > mean_after / mean_before > 1
    assert structural_residual(blob, recon)[0] > structural_residual(x, recon)[0]


def test_top_k_keeps_the_right_share():
    x = np.zeros((1, 10, 10))
    recon = np.zeros((1, 10, 10))
    recon[0, 0, :5] = 1.0  # 5 of 100 pixels wrong by 1
    assert top_k_residual(x, recon, 5)[0] == pytest.approx(1.0)
    assert top_k_residual(x, recon, 10)[0] == pytest.approx(0.5)


def test_mahalanobis_is_zero_at_the_fitted_mean_and_grows_away():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(500, 5)) * np.array([1, 2, 3, 4, 5])
    fit = fit_latent_gaussian(mu)
    assert mahalanobis(fit.mean[None], fit)[0] == pytest.approx(0.0, abs=1e-9)
    far = mahalanobis(fit.mean[None] + 3, fit)[0]
    assert far > mahalanobis(fit.mean[None] + 1, fit)[0] > 0
    # a unit step along a high-variance axis is closer than along a low-variance one
    e0, e4 = np.eye(5)[0], np.eye(5)[4]
    assert mahalanobis((fit.mean + e4)[None], fit)[0] < mahalanobis((fit.mean + e0)[None], fit)[0]


def test_baselines():
    imgs = np.stack([np.full((4, 4), 0, np.uint8), np.full((4, 4), 255, np.uint8)])
    np.testing.assert_allclose(mean_intensity(imgs), [0.0, 1.0])
    m = mean_image(imgs, chunk=1)
    np.testing.assert_allclose(m, 0.5)
    np.testing.assert_allclose(distance_to_mean_normal(imgs, m), [2.0, 2.0])


def test_filtered_residual_favours_contiguous_lesions_over_speckle():
    rng = np.random.default_rng(2)
    x = np.full((2, 64, 64), 0.3)
    speckle = x + rng.normal(0, 0.1, x.shape)  # scattered pixel errors
    lesion = x.copy()
    lesion[:, 20:28, 20:28] += 0.25  # one contiguous blob, less total squared error
    assert ((lesion - x) ** 2).sum() < ((speckle - x) ** 2).sum()
    assert (filtered_residual(lesion, x, 2.0, 2) > filtered_residual(speckle, x, 2.0, 2)).all()
    np.testing.assert_allclose(filtered_residual(x, x, 2.0), 0.0)
    # sigma 0 is the plain top-k residual
    np.testing.assert_allclose(filtered_residual(speckle, x, 0.0, 5), top_k_residual(speckle, x, 5))


def test_filtered_score_has_its_own_k():
    model, images = _model(), _images(4)
    base = ScoreConfig(n_samples=2, batch_size=4, likelihood="bernoulli", seed=1,
                       filtered_top_k_percent=5.0)
    a = score_images(model, images, base, torch.device("cpu"))
    b = score_images(model, images, replace(base, filtered_top_k_percent=1.0),
                     torch.device("cpu"))
    np.testing.assert_array_equal(a["topk_residual"], b["topk_residual"])
    assert (b["filtered_residual"] > a["filtered_residual"]).all()  # fewer, larger pixels
    for bad in (dict(filtered_top_k_percent=0.0), dict(top_k_percent=101.0),
                dict(residual_sigma=-1.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ScoreConfig(**bad)
