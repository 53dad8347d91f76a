"""The paper's fully convolutional, DCGAN-style VAE for 1x128x128 OCT B-scans.

Liu & Mitrovic, "Learning to Identify Diseases From Healthy Medical Images": a VAE whose
encoder and decoder are DCGAN-like stacks of 4x4 (transposed) convolutions with batch
norm, and whose posterior parameters come from convolutional layers (no linear layers).

Reading chosen where the paper is silent (also in docs/model.md):

* Encoder: 5 blocks ``Conv(4x4, stride 2, pad 1) -> BatchNorm -> LeakyReLU(0.2)`` halve
  the image 128 -> 64 -> 32 -> 16 -> 8 -> 4 while the width doubles
  ``w, 2w, 4w, 8w, 16w`` (the first block has no batch norm, as in DCGAN).
* Posterior: two separate ``Conv(4x4, stride 1, pad 0)`` layers map the 16w x 4 x 4
  features to the mean and log-variance, each ``latent_dim x 1 x 1``.
* Decoder: mirror image. A ``ConvTranspose(4x4, stride 1, pad 0)`` projection lifts
  the latent to 16w x 4 x 4, then 5 transposed-convolution blocks (stride 2) double the
  size 4 -> 8 -> 16 -> 32 -> 64 -> 128; the last one outputs one channel of logits
  (no batch norm, no activation: the likelihood module decides how to read them).

At width 64 this costs about 2.2 GFLOP per image forward, matching the paper's model.
This module imports only torch.
"""

from __future__ import annotations

import torch
from torch import nn

from oct_vae.vae.config import VAEConfig

__all__ = ["VAE", "VAEConfig", "count_parameters", "reparameterize"]


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * eps (Kingma & Welling 2014, eq. 10), for given noise eps.

    The one reparameterisation of the project: the model's sampling, the training step and
    the scores all call it. It casts nothing; a caller under autocast casts ``eps`` and ``z``.
    """
    return mu + torch.exp(0.5 * logvar) * eps


def _widths(config: VAEConfig) -> list[int]:
    return [config.width * 2**i for i in range(config.n_blocks)]


class Encoder(nn.Module):
    """x -> (mu, logvar), each of shape (B, latent_dim, 1, 1)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = config.in_channels
        for i, out in enumerate(_widths(config)):
            layers.append(nn.Conv2d(channels, out, 4, stride=2, padding=1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            channels = out
        self.features = nn.Sequential(*layers)
        k = config.bottom_size
        self.mu = nn.Conv2d(channels, config.latent_dim, k)
        self.logvar = nn.Conv2d(channels, config.latent_dim, k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.mu(h), self.logvar(h)


class Decoder(nn.Module):
    """z of shape (B, latent_dim, 1, 1) -> logits of shape (B, in_channels, S, S)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        widths = _widths(config)[::-1]  # 16w, 8w, 4w, 2w, w
        k = config.bottom_size
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(config.latent_dim, widths[0], k, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        for i in range(config.n_blocks):
            last = i == config.n_blocks - 1
            out = config.in_channels if last else widths[i + 1]
            layers.append(nn.ConvTranspose2d(widths[i], out, 4, stride=2, padding=1, bias=last))
            if not last:
                layers += [nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class VAE(nn.Module):
    """The convolutional VAE.

    ``forward`` always returns ``(logits, mu, logvar)``: decoder logits for one
    reparameterised sample ``z = mu + sigma * eps`` (or ``z = mu`` with
    ``sample=False``), and the posterior parameters.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.apply(_init_weights)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior q(z|x) = N(mu, diag(exp(logvar)))."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of p(x|z)."""
        return self.decoder(z)

    @staticmethod
    def reparameterize(
        mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``reparameterize`` with fresh noise eps ~ N(0, I) of mu's shape and dtype."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return reparameterize(mu, logvar, eps)

    @torch.no_grad()
    def init_output_bias(self, mean_intensity: float) -> None:
        """Start the decoder at the data's mean grey level: output bias = logit(mean).

        With Adam at the paper's learning rate (1e-4) each weight moves about 1e-4 per
        step, so a zero bias (grey 0.5 everywhere) takes thousands of steps to reach the
        dark OCT background; starting at the mean removes that phase (data-dependent
        initialisation, as for the output bias of any classifier).
        """
        p = min(max(float(mean_intensity), 1e-3), 1 - 1e-3)
        last = self.decoder.net[-1]
        last.bias.fill_(float(torch.logit(torch.tensor(p))))

    def forward(
        self, x: torch.Tensor, sample: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar) if sample else mu
        return self.decode(z), mu, logvar


def _init_weights(module: nn.Module) -> None:
    # DCGAN initialisation (Radford et al. 2016): N(0, 0.02) convolutions, N(1, 0.02) BN scale.
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

