"""The optimisation settings of a training run: a plain dataclass and its choices.

Imports nothing beyond the standard library (and ``oct_vae.vae.config``), so a parameter
check can build and validate it without loading torch (``oct_vae.framework.params``).
"""

from __future__ import annotations

from dataclasses import dataclass

from oct_vae.vae.config import check_likelihood

# The values of the fast-path switches (oct_vae.training.fast_path decides "auto").
AMP_MODES = ("auto", "bf16", "off")
SWITCHES = ("auto", "on", "off")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    The defaults are the project's (``oct_vae.framework.params.OptimiserParams``, the
    schema of ``train``, and conf/base/parameters_train.yml); a test keeps them equal.

    Attributes:
        epochs: Passes over the training normals (the paper: 40).
        batch_size: Images per step (the paper gives none; conf/kermany: 64).
        lr: Adam learning rate (the paper: 1e-4).
        beta: Weight of the KL term (1 = the ELBO).
        likelihood: ``gaussian`` or ``bernoulli`` pixel likelihood (docs/model.md).
        gaussian_sigma: Pixel standard deviation of the Gaussian likelihood.
        seed: Seeds initialisation, shuffling and sampling.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        amp: ``auto`` (bf16 on CUDA devices with native bf16, float32 elsewhere; see
            ``oct_vae.training.fast_path``), ``bf16`` or ``off``.
        compile: ``auto`` (on CUDA without the CUDA graph), ``on`` or ``off``:
            ``torch.compile`` the model, falling back to eager execution when compilation
            fails.
        channels_last: ``auto`` (on with CUDA), ``on`` or ``off``.
        cuda_graph: ``auto`` (on with CUDA and one process), ``on`` (CUDA only) or
            ``off``: capture the whole training step of a full batch (forward, loss,
            backward, Adam) as one CUDA graph and replay it (``oct_vae.training.cuda_graph``). It
            runs the same kernels, so it changes speed, not the numbers.
        val_batch_size: Images per validation batch.
        checkpoint_dir: Folder of this run's per-epoch checkpoint ``last.pt``; ``None``
            disables it. The Kedro train node gives every run a folder of its own.
        checkpoint_every: Write ``last.pt`` every this many epochs and after the last one
            (1 = every epoch). On a fast GPU, where an epoch takes about a second, writing
            the ~600 MB checkpoint of the paper's model slows the next epoch down.
        resume: ``False``; ``True`` to continue from ``checkpoint_dir/last.pt`` when it
            exists; or the path of a ``last.pt`` (another run's) to continue from. The
            checkpoint must match the model, the training settings and the data, and must
            not hold more epochs than ``epochs``.
        progress: Show a progress bar.
        devices: Processes for data-parallel training: ``1``, a count, or ``auto`` (every
            visible GPU). More than one goes through ``oct_vae.training.distributed``.
    """

    epochs: int = 40
    batch_size: int = 16
    lr: float = 1e-4
    beta: float = 1.0
    likelihood: str = "gaussian"
    gaussian_sigma: float = 0.1
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    compile: str = "auto"
    channels_last: str = "auto"
    cuda_graph: str = "auto"
    val_batch_size: int = 256
    checkpoint_dir: str | None = None
    checkpoint_every: int = 1
    resume: bool | str = False
    progress: bool = True
    devices: int | str = 1

    def __post_init__(self) -> None:
        check_likelihood(self.likelihood)
        count_ok = isinstance(self.devices, int) and not isinstance(self.devices, bool)
        if self.devices != "auto" and not (count_ok and self.devices >= 1):
            raise ValueError(f"devices must be a positive integer or 'auto', got {self.devices!r}")
        if min(self.epochs, self.batch_size, self.val_batch_size, self.checkpoint_every) < 1:
            raise ValueError(
                "epochs, batch_size, val_batch_size and checkpoint_every must be positive"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not isinstance(self.resume, (bool, str)):
            raise ValueError(f"resume must be a bool or a checkpoint path, got {self.resume!r}")
        for name in ("amp", "compile", "channels_last", "cuda_graph"):
            allowed = AMP_MODES if name == "amp" else SWITCHES
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")


# The random streams a training run derives from its one seed. Each stream has one formula,
# kept as first written so that every published table stays reproducible to the last digit
# (new streams should derive from ``numpy.random.SeedSequence([seed, ...])`` instead).
_STREAMS = {
    "order": lambda seed, epoch: seed * 100_003 + epoch,           # the epoch's shuffle
    "noise": lambda seed, epoch: seed * 7_919 + epoch * 104_729,   # the epoch's eps draws
    "validation": lambda seed, epoch: seed + 7_919,                # fixed validation noise
}


def stream_seed(seed: int, stream: str, epoch: int = 0) -> int:
    """The seed of one named random stream (``order``, ``noise``, ``validation``) of a run."""
    if stream not in _STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; known: {sorted(_STREAMS)}")
    return _STREAMS[stream](seed, epoch)
