"""The sizes of the model and how a trained model scores: plain dataclasses.

They import nothing beyond the standard library, so a parameter check can build and
validate them without loading torch (``oct_vae.framework.params``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

LIKELIHOODS = ("bernoulli", "gaussian")
# Column names of the score table, in the order the report shows them.
PAPER_SCORES = ("reconstruction", "kl", "vae")
BASELINE_SCORES = ("baseline_mean_intensity", "baseline_distance_to_mean_normal")
EXTRA_SCORES = (
    "topk_residual",
    "filtered_residual",
    "structural_residual",
    "latent_distance",
    "recon_uncertainty",
)


def check_likelihood(likelihood: str) -> str:
    """Return ``likelihood`` if supported, else raise a clear ``ValueError``."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    return likelihood


@dataclass(frozen=True)
class VAEConfig:
    """Every size of the model.

    The defaults are the project's (``oct_vae.framework.params.ModelParams`` and
    conf/base); a test keeps them equal.

    Attributes:
        image_size: Side of the square input: a multiple of ``2**n_blocks`` (32 for the
            paper's 5 blocks), at least 8; e.g. 32, 64, 96, 128.
        in_channels: Image channels (OCT is grayscale: 1).
        width: Channels of the first encoder block (the paper: 64, conf/kermany; the
            narrower 8 is conf/base's, for a CPU).
        latent_dim: Size of the latent code (the paper: 300).
        n_blocks: Stride-2 blocks in the encoder and in the decoder (the paper: 5).
    """

    image_size: int = 128
    in_channels: int = 1
    width: int = 8
    latent_dim: int = 300
    n_blocks: int = 5

    def __post_init__(self) -> None:
        bottom = self.image_size / 2**self.n_blocks
        if self.image_size < 8 or bottom < 1 or bottom != int(bottom):
            step = 2**self.n_blocks
            raise ValueError(
                f"image_size={self.image_size} cannot be halved {self.n_blocks} times "
                f"to a whole number of pixels; use a multiple of {step} (at least "
                f"{max(step, 8)}), such as 128"
            )
        for name in ("in_channels", "width", "latent_dim", "n_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")

    @property
    def bottom_size(self) -> int:
        """Spatial side of the deepest feature map (4 for 128 / 2**5)."""
        return self.image_size // 2**self.n_blocks

    def to_dict(self) -> dict[str, int]:
        """Plain dict, suitable for checkpoints and logging."""
        return asdict(self)


@dataclass(frozen=True)
class ScoreConfig:
    """How to score.

    The defaults are the project's (``oct_vae.framework.params.ScoringParams`` and, for
    the likelihood and its sigma, ``OptimiserParams``); a test keeps them equal.

    Attributes:
        n_samples: L, posterior samples per image (the paper: 10).
        batch_size: Images per forward pass.
        likelihood: Pixel likelihood the model was trained with.
        gaussian_sigma: Pixel standard deviation of the Gaussian likelihood.
        top_k_percent: k of the top-k residual score.
        residual_sigma: Gaussian filter width (pixels) of the filtered residual score.
        filtered_top_k_percent: k of the filtered residual score, chosen apart from
            ``top_k_percent`` (the project's value is in conf/base/parameters_evaluate.yml).
        seed: Seeds the posterior samples, so scores are reproducible.
    """

    n_samples: int = 10
    batch_size: int = 64
    likelihood: str = "gaussian"
    gaussian_sigma: float = 0.1
    top_k_percent: float = 5.0
    residual_sigma: float = 1.0
    filtered_top_k_percent: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_samples < 1 or self.batch_size < 1:
            raise ValueError("n_samples and batch_size must be positive")
        for name in ("top_k_percent", "filtered_top_k_percent"):
            if not 0 < getattr(self, name) <= 100:
                raise ValueError(f"{name} must be in (0, 100], got {getattr(self, name)}")
        if self.residual_sigma < 0:
            raise ValueError(f"residual_sigma must be >= 0, got {self.residual_sigma}")
