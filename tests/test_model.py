import math

import pytest
import torch

from oct_vae.vae.model import VAE, VAEConfig, count_parameters, reparameterize


def test_paper_architecture_shapes():
    model = VAE(VAEConfig(width=8))
    x = torch.rand(3, 1, 128, 128)
    logits, mu, logvar = model(x)
    assert logits.shape == (3, 1, 128, 128)
    assert mu.shape == logvar.shape == (3, 300, 1, 1)


def test_five_stride2_blocks_each_way_and_conv_posterior():
    model = VAE(VAEConfig(width=8))
    enc_convs = [m for m in model.encoder.features if isinstance(m, torch.nn.Conv2d)]
    assert len(enc_convs) == 5
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in enc_convs)
    # mean and log-variance come from two separate convolutions, no linear layers anywhere
    assert isinstance(model.encoder.mu, torch.nn.Conv2d)
    assert isinstance(model.encoder.logvar, torch.nn.Conv2d)
    assert model.encoder.mu is not model.encoder.logvar
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    up = [
        m for m in model.decoder.net
        if isinstance(m, torch.nn.ConvTranspose2d) and m.stride == (2, 2)
    ]
    assert len(up) == 5


def test_sizes_come_from_config():
    cfg = VAEConfig(image_size=64, width=4, latent_dim=16, n_blocks=4)
    logits, mu, _ = VAE(cfg)(torch.rand(2, 1, 64, 64))
    assert logits.shape == (2, 1, 64, 64) and mu.shape == (2, 16, 1, 1)
    assert count_parameters(VAE(VAEConfig(width=8))) < count_parameters(VAE(VAEConfig(width=16)))


def test_paper_width_costs_about_2_2_gflop():
    from torch.utils.flop_counter import FlopCounterMode

    model = VAE(VAEConfig(width=64)).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(1, 1, 128, 128), sample=False)
    assert 2.0e9 < counter.get_total_flops() < 2.5e9


@pytest.mark.parametrize("size", [100, 4])
def test_bad_image_size_is_a_clear_error(size):
    with pytest.raises(ValueError, match="image_size"):
        VAEConfig(image_size=size)


def test_sample_false_is_deterministic():
    model = VAE(VAEConfig(width=4)).eval()
    x = torch.rand(2, 1, 128, 128)
    a, _, _ = model(x, sample=False)
    b, _, _ = model(x, sample=False)
    assert torch.equal(a, b)


def test_one_reparameterisation_for_drawn_and_given_noise():
    gen = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(4, 8, 1, 1, generator=gen), torch.randn(4, 8, 1, 1, generator=gen)
    eps = torch.randn(4, 8, 1, 1, generator=torch.Generator().manual_seed(5))
    z = reparameterize(mu, logvar, eps)
    assert torch.equal(z, mu + torch.exp(0.5 * logvar) * eps)  # sigma = exp(logvar / 2)
    # the model's sampling draws eps ~ N(0, I) of mu's shape, then reparameterises it
    drawn = VAE.reparameterize(mu, logvar, torch.Generator().manual_seed(5))
    assert torch.equal(drawn, z)
    # z ~ N(mu, exp(logvar)): over many draws the spread is sigma, not the variance
    mu1, logvar1 = torch.full((20_000,), 2.0), torch.full((20_000,), math.log(9.0))
    sample = VAE.reparameterize(mu1, logvar1, torch.Generator().manual_seed(1))
    assert abs(sample.mean().item() - 2.0) < 0.1 and abs(sample.std().item() - 3.0) < 0.1
