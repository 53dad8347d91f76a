"""Training loop of the VAE: device choice, fast path, validation, checkpoints, resume.

The same loop serves a 2-core laptop and an H100. The uint8 images stay resident on
the training device and are converted to float one batch at a time, so no data loader
stands between the data and the model. On CUDA the step runs under bf16 autocast with
channels-last memory, cuDNN autotuning and a fused Adam, through ``torch.compile`` (model
and loss in one graph; the short last batch of an epoch runs eagerly so it never triggers
a recompilation). On a CPU with native bf16 instructions (AVX512-BF16 or AMX) the step
also runs under bf16 autocast, which roughly halves its time (README, "Performance").

Every epoch ends with a validation pass and an atomic checkpoint (model, optimiser,
history, best weights so far), written by a background thread from a snapshot so that
the next epoch does not wait for the disk. ``resume=True`` continues from the last
completed epoch and reaches the same weights as an uninterrupted run: each epoch draws
its shuffling and its reparameterisation noise from generators seeded by ``(seed, epoch)``.

Data-parallel training (``world=(rank, world_size)``, set up by ``oct_vae.distributed``)
gives every rank a slice of every global batch, and of that batch's noise, with
batch-norm statistics synchronised over the global batch: N processes follow the same
trajectory as one process with the same ``batch_size``, up to rounding.

This module imports only numpy and torch.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oct_vae.fileio import atomic_write, check_writable
from oct_vae.lineage import data_fingerprint
from oct_vae.losses import check_likelihood, negative_elbo
from oct_vae.model import VAE, VAEConfig

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    Attributes:
        epochs: Passes over the training normals (the paper: 40).
        batch_size: Images per step.
        lr: Adam learning rate (the paper: 1e-4).
        beta: Weight of the KL term (1 = the ELBO).
        likelihood: ``bernoulli`` or ``gaussian`` pixel likelihood.
        gaussian_sigma: Pixel standard deviation of the Gaussian likelihood.
        seed: Seeds initialisation, shuffling and sampling.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        amp: ``auto`` (bf16 on CUDA and on CPUs with native bf16 instructions, off
            elsewhere), ``bf16`` or ``off``.
        compile: ``auto`` (on CUDA only), ``on`` or ``off``: ``torch.compile`` the model,
            falling back to eager execution when compilation fails.
        channels_last: ``auto`` (on CUDA), ``on`` or ``off``.
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
            visible GPU). More than one goes through ``oct_vae.distributed``.
    """

    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-4
    beta: float = 1.0
    likelihood: str = "bernoulli"
    gaussian_sigma: float = 0.1
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    compile: str = "auto"
    channels_last: str = "auto"
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
        for name in ("amp", "compile", "channels_last"):
            allowed = ("auto", "bf16", "off") if name == "amp" else ("auto", "on", "off")
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")


@dataclass
class TrainResult:
    """What training returns.

    Attributes:
        checkpoint: Best-epoch checkpoint (see ``make_checkpoint``).
        history: One dict per epoch (train/val recon, kl, total, images/s, seconds).
        model: The model holding the best weights, on the CPU, in eval mode.
    """

    checkpoint: dict[str, Any]
    history: list[dict[str, float]]
    model: VAE = field(repr=False)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped."""


def resolve_device(name: str = "auto") -> torch.device:
    """Pick the training device.

    ``auto`` takes CUDA, then Apple MPS, then the CPU. An explicit name is honoured and
    an unavailable one raises a ``RuntimeError`` that says what is available.
    """
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise RuntimeError(f"Unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from err
    available = "cpu" + (", cuda" if torch.cuda.is_available() else "")
    available += ", mps" if mps_ok else ""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device={name!r} was requested but CUDA is not available on this machine "
                f"(available: {available}); set device: auto or cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device={name!r} was requested but only {torch.cuda.device_count()} "
                "CUDA device(s) are visible"
            )
    elif device.type == "mps" and not mps_ok:
        raise RuntimeError(
            f"device={name!r} was requested but Apple MPS is not available "
            f"(available: {available}); set device: auto or cpu"
        )
    elif device.type not in ("cpu", "cuda", "mps"):
        raise RuntimeError(f"Unsupported device {name!r} (available: {available})")
    return device


def _flag(value: str, on_cuda: bool) -> bool:
    return value in ("on", "bf16") or (value == "auto" and on_cuda)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 matrix maths natively (AVX512-BF16 or AMX).

    Elsewhere oneDNN emulates bf16 and autocast would slow the step down.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def _amp_enabled(value: str, device: torch.device) -> bool:
    if device.type not in ("cuda", "cpu") or value == "off":
        return False
    return value == "bf16" or device.type == "cuda" or cpu_has_native_bf16()


def to_float_batch(images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 (B, H, W) on any device -> float32 (B, 1, H, W) in [0, 1]."""
    x = images.unsqueeze(1).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def make_checkpoint(
    model: VAE, model_config: VAEConfig, train_config: TrainConfig, metadata: dict[str, Any]
) -> dict[str, Any]:
    """A self-describing checkpoint: tensors and plain values only (``weights_only`` safe)."""
    state = {k: v.detach().to("cpu").clone() for k, v in _unwrap(model).state_dict().items()}
    return {
        "format_version": CHECKPOINT_FORMAT,
        "model_config": model_config.to_dict(),
        # Where this run kept its checkpoints is not part of the model (nor recorded).
        "train_config": {
            k: v
            for k, v in asdict(train_config).items()
            if k not in ("progress", "checkpoint_dir", "resume")
        },
        "state_dict": state,
        "metadata": metadata,
    }


def load_model(checkpoint: dict[str, Any], device: str | torch.device = "cpu") -> VAE:
    """Rebuild the model of a checkpoint, in eval mode on ``device``."""
    if checkpoint.get("format_version") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"Unsupported checkpoint format {checkpoint.get('format_version')!r}; "
            f"this version of oct-vae reads format {CHECKPOINT_FORMAT}"
        )
    model = VAE(VAEConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DistributedDataParallel


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    model = getattr(model, "module", model)  # DistributedDataParallel
    return getattr(model, "vae", model)  # _TrainStep


def _atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _to_cpu(obj: Any) -> Any:
    """Deep copy of nested dicts / lists with every tensor cloned onto the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class _TrainStep(torch.nn.Module):
    """Training forward pass and loss: the unit that DDP wraps and ``torch.compile`` fuses.

    The reparameterisation noise comes in as an argument, so that every rank can take its
    slice of the noise drawn for the whole global batch.
    """

    def __init__(self, vae: VAE, config: TrainConfig, amp: bool, device_type: str) -> None:
        super().__init__()
        self.vae = vae
        self.likelihood, self.beta = config.likelihood, config.beta
        self.sigma = config.gaussian_sigma
        self.amp, self.device_type = amp, device_type

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Return ``[recon, kl, total]``, batch means in float32."""
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.amp):
            mu, logvar = self.vae.encode(x)
            # z = mu + sigma * eps (Kingma & Welling 2014, eq. 10), eps drawn by the caller.
            z = mu + torch.exp(0.5 * logvar) * eps.to(mu.dtype)
            logits = self.vae.decode(z.to(mu.dtype))
        terms = negative_elbo(logits, x, mu, logvar, self.likelihood, self.beta, self.sigma)
        return torch.stack([terms["recon"], terms["kl"], terms["total"]])


class Trainer:
    """Owns the model, optimiser and data of one training run.

    Args:
        train_images: uint8 array (N, S, S) of training normals.
        val_images: uint8 array (M, S, S) of validation normals (may be empty).
        model_config: Model sizes; ``image_size`` must equal S.
        config: Optimisation settings.
        world: ``(rank, world_size)`` for data-parallel training; the caller has set up
            ``torch.distributed`` when ``world_size > 1`` (see ``oct_vae.distributed``).
        device: Overrides ``config.device`` (each rank passes its own GPU).

    Attributes:
        model: The VAE being trained (on the device; synchronised batch norm with DDP).
        train_step: Eager ``(x, eps) -> [recon, kl, total]`` module (DDP-wrapped when
            ``world_size > 1``); used for the short last batch of an epoch.
        step_model: The same step for full batches, compiled when ``compile`` is on.
    """

    def __init__(
        self,
        train_images: np.ndarray,
        val_images: np.ndarray,
        model_config: VAEConfig,
        config: TrainConfig,
        world: tuple[int, int] = (0, 1),
        device: torch.device | None = None,
    ) -> None:
        _check_images(train_images, model_config.image_size, "train_images", allow_empty=False)
        _check_images(val_images, model_config.image_size, "val_images", allow_empty=True)
        self.config, self.model_config = config, model_config
        self.rank, self.world_size = world
        self.device = device or resolve_device(config.device)
        on_cuda = self.device.type == "cuda"
        self.amp = _amp_enabled(config.amp, self.device)
        self.channels_last = _flag(config.channels_last, on_cuda)
        if on_cuda:
            torch.backends.cudnn.benchmark = True  # fixed shapes: autotune each conv once
        # Data resident on the device, as uint8: 4x less memory than float32.
        # Which data this model learns from: stored in every checkpoint, checked on resume.
        self.data_fingerprint = data_fingerprint(train_images, val_images)
        self.train_data = torch.from_numpy(np.ascontiguousarray(train_images)).to(self.device)
        self.val_data = torch.from_numpy(np.ascontiguousarray(val_images)).to(self.device)

        torch.manual_seed(config.seed)
        self.model = VAE(model_config).to(self.device)
        # Decoder starts at the training set's mean grey level (see VAE.init_output_bias).
        self.model.init_output_bias(_mean_intensity(train_images))
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        step: torch.nn.Module = _TrainStep(self.model, config, self.amp, self.device.type)
        if self.world_size > 1:
            from oct_vae.distributed import sync_batchnorm

            sync_batchnorm(self.model, self.device)  # in place: global-batch statistics
            step = torch.nn.parallel.DistributedDataParallel(
                step,
                device_ids=[self.device.index] if on_cuda else None,
                gradient_as_bucket_view=True,
                **_no_buffer_broadcast(),  # synchronised batch norm keeps buffers equal
            )
        self.train_step: torch.nn.Module = step
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=config.lr, **_adam_kwargs(self.device)
        )
        self.step_model: Callable[..., torch.Tensor] = step
        if _flag(config.compile, on_cuda):
            self.step_model = _try_compile(step)

        self.history: list[dict[str, float]] = []
        self.best: dict[str, Any] | None = None  # {"epoch", "val_total", "state_dict"}
        self.start_epoch = 1
        self.checkpoint_path = (
            Path(config.checkpoint_dir) / "last.pt" if config.checkpoint_dir else None
        )
        if self.checkpoint_path is not None and self.rank == 0:
            check_writable(self.checkpoint_path.parent, "checkpoints")  # now, not later
        self.resumed_from: str | None = None
        self.saved_epoch = 0  # last epoch written to checkpoint_path
        self._saver: ThreadPoolExecutor | None = None
        self._pending_save: Future | None = None
        if config.resume:
            self._resume()

    # ------------------------------------------------------------------ public
    def fit(self) -> TrainResult:
        """Train for the configured epochs; return the best-epoch checkpoint."""
        cfg = self.config
        try:
            for epoch in range(self.start_epoch, cfg.epochs + 1):
                self._fit_epoch(epoch)
        finally:
            self._finish_saves(raise_errors=sys.exc_info()[0] is None)
        return self._result()

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean validation recon, KL and total over the validation normals.

        Uses a fixed noise generator so the number is comparable across epochs. With
        several processes each rank scores a shard and the sums are all-reduced.
        """
        model = self.model
        model.eval()
        cfg = self.config
        n = self.val_data.shape[0]
        idx = torch.arange(self.rank, n, self.world_size, device=self.device)
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 7919)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        for start in range(0, idx.numel(), cfg.val_batch_size):
            batch = self.val_data[idx[start : start + cfg.val_batch_size]]
            x = to_float_batch(batch, self.channels_last)
            with self._autocast():
                mu, logvar = model.encode(x)
                z = VAE.reparameterize(mu.float(), logvar.float(), generator=gen)
                logits = model.decode(z.to(mu.dtype))
            terms = negative_elbo(
                logits, x, mu, logvar, cfg.likelihood, cfg.beta, cfg.gaussian_sigma
            )
            b = x.shape[0]
            sums += torch.stack([terms["recon"] * b, terms["kl"] * b, terms["total"] * b]).double()
        count = torch.tensor([float(idx.numel())], dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(count)
        model.train()
        if count.item() == 0:
            return {"recon": float("nan"), "kl": float("nan"), "total": float("nan")}
        recon, kl, total = (sums / count).tolist()
        return {"recon": recon, "kl": kl, "total": total}

    # ----------------------------------------------------------------- private
    def _fit_epoch(self, epoch: int) -> None:
        cfg = self.config
        self._raise_failed_save()  # a failed checkpoint write stops training at once
        t0 = time.perf_counter()
        train_stats, n_seen = self._train_epoch(epoch)
        seconds = time.perf_counter() - t0
        val_stats = self.validate()
        row = {
            "epoch": epoch,
            **{f"train_{k}": v for k, v in train_stats.items()},
            **{f"val_{k}": v for k, v in val_stats.items()},
            "images_per_s": n_seen * self.world_size / seconds,
            "seconds": seconds,
        }
        self.history.append(row)
        # Both numbers are reduced over ranks, so every rank picks the same best epoch.
        score = val_stats["total"] if self.val_data.shape[0] else train_stats["total"]
        if self.best is None or score < self.best["val_total"]:
            self.best = {
                "epoch": epoch,
                "val_total": score,
                "state_dict": {
                    k: v.detach().to("cpu").clone() for k, v in self.model.state_dict().items()
                },
            }
        if self.rank == 0:
            log.info(
                "epoch %d/%d  train %.1f (recon %.1f, kl %.1f)  val %.1f  %.0f img/s",
                epoch,
                cfg.epochs,
                train_stats["total"],
                train_stats["recon"],
                train_stats["kl"],
                val_stats["total"],
                row["images_per_s"],
            )
            if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
                self._save_last(epoch)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        return torch.randperm(self.train_data.shape[0], generator=gen)

    def _epoch_noise(self, epoch: int, n: int) -> torch.Tensor:
        # One draw per image position of the epoch, identical on every rank.
        gen = torch.Generator(device=self.device).manual_seed(
            self.config.seed * 7_919 + epoch * 104_729
        )
        shape = (n, self.model_config.latent_dim, 1, 1)
        return torch.randn(shape, generator=gen, device=self.device)

    def _train_epoch(self, epoch: int) -> tuple[dict[str, float], int]:
        cfg = self.config
        rank, world = self.rank, self.world_size
        self.model.train()
        n = self.train_data.shape[0]
        order = self._epoch_order(epoch).to(self.device)
        noise = self._epoch_noise(epoch, n)
        # Every rank sees the same global batches and takes its slice of each: the global
        # batch, hence the optimisation, does not depend on the number of processes. A
        # last batch smaller than the number of processes is skipped (never with one).
        n_batches = math.ceil(n / cfg.batch_size)
        if world > 1 and n % cfg.batch_size and n % cfg.batch_size < world:
            n_batches -= 1
        full_local = len(range(rank, cfg.batch_size, world))
        step_terms = torch.zeros(n_batches, 3, device=self.device)
        counts: list[int] = []
        # Losses stay on the device and are checked every few steps: no host sync per step.
        check_every = 1 if self.device.type == "cpu" else 25
        checked, last_loss = 0, float("nan")
        bar = self._progress(epoch, n_batches)
        t0 = time.perf_counter()
        for b in range(n_batches):
            batch = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
            global_n = min(n, batch.stop) - batch.start
            local = slice(rank, None, world)
            x = to_float_batch(self.train_data[order[batch][local]], self.channels_last)
            # The short last batch runs eagerly: a new shape would recompile the graph.
            step = self.step_model if x.shape[0] == full_local else self.train_step
            terms = step(x, noise[batch][local])
            # This rank's share of the global batch mean, times the number of ranks: DDP's
            # gradient mean over ranks is then the one-process gradient of the global batch.
            loss = terms[2] * (x.shape[0] * world / global_n)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            step_terms[b] = terms.detach()
            counts.append(x.shape[0])
            if (b + 1) % check_every == 0 or b == n_batches - 1:
                last_loss = self._check_finite(step_terms[:, 2], checked, b + 1, epoch, n_batches)
                checked = b + 1
            if bar is not None:
                bar.update(1)
                if checked == b + 1:
                    rate = sum(counts) * world / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{last_loss:.1f}", img_s=f"{rate:.0f}", refresh=False)
        if bar is not None:
            bar.close()
        weights = torch.tensor(counts, dtype=torch.float64, device=self.device)
        sums = (step_terms.double() * weights[:, None]).sum(0)
        count = weights.sum().reshape(1)
        if world > 1:
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(count)
        recon, kl, total = (sums / count).tolist()
        return {"recon": recon, "kl": kl, "total": total}, sum(counts)

    def _check_finite(
        self, step_losses: torch.Tensor, start: int, stop: int, epoch: int, n_batches: int
    ) -> float:
        window = step_losses[start:stop].tolist()  # the only host sync of the window
        for offset, value in enumerate(window):
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"Non-finite loss ({value}) at epoch {epoch}, batch {start + offset + 1}"
                    f"/{n_batches}; training stopped. The last good checkpoint is "
                    f"{self.checkpoint_path or '(checkpointing disabled)'} (after epoch "
                    f"{self.saved_epoch}). Lower train.lr or check the input images."
                )
        return window[-1] if window else float("nan")

    def _progress(self, epoch: int, total: int):
        if not self.config.progress or self.rank != 0:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm is optional for a bare benchmark box
            return None
        return tqdm(
            total=total,
            desc=f"epoch {epoch}/{self.config.epochs}",
            unit="batch",
            leave=False,
            file=sys.stderr,
            mininterval=1.0,
            disable=None,  # off when not a TTY
        )

    def _state(self, epoch: int) -> dict[str, Any]:
        # A snapshot: model and optimiser tensors are copied to the CPU now, so training
        # can go on while a background thread writes them.
        return {
            "format_version": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "model_config": self.model_config.to_dict(),
            "train_config": _resume_key(self.config),
            "data_fingerprint": self.data_fingerprint,
            "model": _to_cpu(self.model.state_dict()),
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "history": copy.deepcopy(self.history),
            "best": self.best,  # already a CPU copy, replaced (never mutated) on improvement
        }

    def _save_last(self, epoch: int) -> None:
        if self.checkpoint_path is None:
            return
        state = self._state(epoch)
        self._wait_for_save()
        if self._saver is None:
            self._saver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oct-vae-ckpt")
        self._pending_save = self._saver.submit(_atomic_torch_save, state, self.checkpoint_path)
        self.saved_epoch = epoch

    def _raise_failed_save(self) -> None:
        pending = self._pending_save
        if pending is not None and pending.done() and pending.exception() is not None:
            self._wait_for_save()  # re-raises the write error (path and OS reason)

    def _wait_for_save(self) -> None:
        pending, self._pending_save = self._pending_save, None
        if pending is not None:
            pending.result()  # re-raises a failed write

    def _finish_saves(self, raise_errors: bool) -> None:
        try:
            self._wait_for_save()
        except Exception:
            if raise_errors:
                raise
            log.exception("writing the last checkpoint failed as well")
        finally:
            if self._saver is not None:
                self._saver.shutdown(wait=True)
                self._saver = None

    def _resume(self) -> None:
        cfg = self.config
        path = self.checkpoint_path if cfg.resume is True else Path(str(cfg.resume))
        if path is not None and path.is_dir():
            path = path / "last.pt"
        if path is None or not path.exists():
            if cfg.resume is not True:
                raise FileNotFoundError(f"Cannot resume: no checkpoint at {path}")
            log.info("resume: no checkpoint at %s, starting from epoch 1", path)
            return
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state.get("model_config") != self.model_config.to_dict() or state.get(
            "train_config"
        ) != _resume_key(self.config):
            raise ValueError(
                f"Cannot resume from {path}: it was written with a different model or "
                "training configuration. Delete it or set train.resume: false."
            )
        if state.get("data_fingerprint") != self.data_fingerprint:
            raise ValueError(
                f"Cannot resume from {path}: it was trained on other data than these "
                "training and validation images (another ingest run). "
                "Set train.resume: false to train from scratch on this data."
            )
        if int(state["epoch"]) > cfg.epochs:
            raise ValueError(
                f"Cannot resume from {path}: it has already trained {state['epoch']} epochs, "
                f"more than train.epochs={cfg.epochs}. Set train.epochs to at least "
                f"{state['epoch']}, or train.resume: false to train {cfg.epochs} epochs anew."
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = list(state["history"])
        self.best = state["best"]
        self.start_epoch = int(state["epoch"]) + 1
        self.saved_epoch = int(state["epoch"]) if path == self.checkpoint_path else 0
        self.resumed_from = path.parent.name  # the run folder, not the absolute path
        log.info("resume: continuing from %s after epoch %d", path, state["epoch"])

    def _result(self) -> TrainResult:
        if self.best is None:  # resumed a run that had already finished
            raise RuntimeError("No epoch was trained and no best weights were recorded")
        model = VAE(self.model_config)
        model.load_state_dict(self.best["state_dict"])
        model.eval()
        metadata = {
            "best_epoch": int(self.best["epoch"]),
            "best_val_total": float(self.best["val_total"]),
            "epochs": int(self.config.epochs),
            "n_train": int(self.train_data.shape[0]),
            "n_val": int(self.val_data.shape[0]),
            "device": str(self.device),
            "world_size": int(self.world_size),
            "amp": "bf16" if self.amp else "off",
            "torch_version": str(torch.__version__),  # TorchVersion is not weights_only safe
            "train_seconds": float(sum(h["seconds"] for h in self.history)),
            "image_size": int(self.model_config.image_size),
            "data_fingerprint": self.data_fingerprint,
        }
        if self.resumed_from is not None:
            metadata["resumed_from"] = self.resumed_from
        return TrainResult(
            checkpoint=make_checkpoint(model, self.model_config, self.config, metadata),
            history=copy.deepcopy(self.history),
            model=model,
        )


def _resume_key(config: TrainConfig) -> dict[str, Any]:
    # Settings that must match to continue a run. Epochs may grow and progress may change;
    # devices may change too, since the global batch (hence the trajectory) does not.
    # The checkpoint folder may change too: a resumed run writes into a folder of its own.
    skip = ("epochs", "resume", "progress", "devices", "checkpoint_every", "checkpoint_dir")
    return {k: v for k, v in asdict(config).items() if k not in skip}


def _no_buffer_broadcast() -> dict[str, bool]:
    # torch >= 2.14 renamed DDP's broadcast_buffers to forward_sync_buffers.
    params = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    name = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return {name: False}


def _adam_kwargs(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"fused": True}
    return {"foreach": True}


def _try_compile(module: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """``torch.compile`` with a clean fallback to eager execution on failure."""
    try:
        compiled = torch.compile(module)
    except Exception as err:  # noqa: BLE001 - any backend failure means: run eagerly
        log.warning("torch.compile unavailable (%s); training eagerly", err)
        return module

    state: dict[str, Callable[..., torch.Tensor]] = {"fn": compiled}

    def step(*args: torch.Tensor) -> torch.Tensor:
        try:
            return state["fn"](*args)
        except Exception as err:  # noqa: BLE001
            if state["fn"] is module:
                raise
            log.warning("torch.compile failed (%s); training eagerly", err)
            state["fn"] = module
            return module(*args)

    return step


def _mean_intensity(images: np.ndarray, chunk: int = 4096) -> float:
    """Mean grey level of uint8 images in [0, 1], in chunks (memory-mapped arrays welcome)."""
    total = sum(
        float(images[i : i + chunk].sum(dtype=np.float64)) for i in range(0, len(images), chunk)
    )
    return total / (255.0 * max(images.size, 1))


def _check_images(images: np.ndarray, size: int, name: str, allow_empty: bool) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise TypeError(f"{name} must be a uint8 numpy array, got {type(images).__name__}")
    if images.ndim != 3 or images.shape[1:] != (size, size):
        raise ValueError(f"{name} must have shape (N, {size}, {size}), got {images.shape}")
    if not allow_empty and images.shape[0] == 0:
        raise ValueError(f"{name} is empty: ingest produced no training normals")


def train_vae(
    train_images: np.ndarray,
    val_images: np.ndarray,
    model_config: VAEConfig,
    config: TrainConfig,
) -> TrainResult:
    """Train the VAE: in this process, or data-parallel when ``config.devices != 1`` or
    when launched by ``torchrun`` (see ``oct_vae.distributed.train_distributed``)."""
    from oct_vae.distributed import launched_by_torchrun, resolve_devices

    if launched_by_torchrun() or resolve_devices(config.devices, config.device) > 1:
        from oct_vae.distributed import train_distributed

        return train_distributed(train_images, val_images, model_config, config, config.devices)
    return Trainer(train_images, val_images, model_config, config).fit()
