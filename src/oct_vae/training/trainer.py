"""Training loop of the VAE: validation, checkpoints, resume, and the fast path.

The same loop serves a 2-core laptop and an H100. The uint8 images stay resident on
the training device and are converted to float one batch at a time, so no data loader
stands between the data and the model. ``Trainer.fit`` is the epoch loop; each fast-path
trick sits behind one small function: resident uint8 data (``_resident``), bf16 autocast
and channels-last memory (``auto`` = by rule, ``oct_vae.training.fast_path``), ``torch.compile`` of
model and loss in one graph (``_try_compile``; the short last batch of an epoch runs eagerly
so it never triggers a recompilation), the whole step replayed as a CUDA graph
(``oct_vae.training.cuda_graph``), a NaN check every few steps without a host sync per step
(``_LossLog``), and checkpoints written by a background thread (``_CheckpointWriter``).

Every epoch ends with a validation pass and an atomic checkpoint (model, optimiser,
history, best weights so far). ``resume`` continues from the last completed epoch and
reaches the same weights as an uninterrupted run: each epoch draws its shuffling and its
reparameterisation noise from generators seeded by ``(seed, epoch)``.

Data-parallel training (``world=(rank, world_size)``, set up by ``oct_vae.training.distributed``,
the one entry point that chooses between one process and several) gives every rank a
slice of every global batch, and of that batch's noise, with batch-norm statistics
synchronised over the global batch (``oct_vae.training.batchnorm``): N processes follow the same
trajectory as one process with the same ``batch_size``, up to rounding.

This module imports only numpy and torch (and the project's science modules).
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

from oct_vae.data.lineage import data_fingerprint
from oct_vae.framework.fileio import check_writable
from oct_vae.training import fast_path
from oct_vae.training.batchnorm import sync_batchnorm
from oct_vae.training.config import TrainConfig
from oct_vae.training.cuda_graph import GraphedStep, capture_or_none
from oct_vae.training.device import resolve_device
from oct_vae.training.fast_path import FastPath
from oct_vae.vae import checkpoint as checkpoints
from oct_vae.vae.checkpoint import CHECKPOINT_FORMAT, make_checkpoint, to_cpu
from oct_vae.vae.losses import negative_elbo
from oct_vae.vae.model import VAE, VAEConfig

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What training returns.

    Attributes:
        checkpoint: Best-epoch checkpoint (see ``oct_vae.vae.checkpoint``).
        history: One dict per epoch (train/val recon, kl, total, images/s, seconds).
        model: The model holding the best weights, on the CPU, in eval mode.
    """

    checkpoint: dict[str, Any]
    history: list[dict[str, float]]
    model: VAE = field(repr=False)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped."""


def to_float_batch(images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 (B, H, W) on any device -> float32 (B, 1, H, W) in [0, 1]."""
    x = images.unsqueeze(1).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class _TrainStep(torch.nn.Module):
    """Forward pass and loss, ``(x, eps) -> [recon, kl, total]`` (batch means, float32):
    the unit that DDP wraps and ``torch.compile`` fuses, and what validation runs.

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
            ``torch.distributed`` when ``world_size > 1`` (see ``oct_vae.training.distributed``).
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
        resume_from = self._load_resume() if config.resume else None
        # amp / channels-last / compile: explicit, measured (cached), or the resumed run's.
        self.fast_path = self._choose_fast_path(resume_from)
        self.amp, self.channels_last = self.fast_path.amp, self.fast_path.channels_last
        # Whole-step CUDA graph: captured at the first full batch (after any resume).
        self.graphed: GraphedStep | None = None
        self._graph_pending = self.fast_path.cuda_graph
        # Which data this model learns from: stored in every checkpoint, checked on resume.
        self.data_fingerprint = data_fingerprint(train_images, val_images)
        self.train_data = _resident(train_images, self.device)
        self.val_data = _resident(val_images, self.device)
        self.model = self._build_model(train_images)
        self._forward = _TrainStep(self.model, config, self.amp, self.device.type)
        self.train_step, self.step_model = self._build_steps()
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=config.lr,
            **_adam_kwargs(self.device, self.fast_path.cuda_graph),
        )
        self.history: list[dict[str, float]] = []
        self.best: dict[str, Any] | None = None  # {"epoch", "val_total", "state_dict"}
        self.start_epoch, self.resumed_from = 1, None
        path = Path(config.checkpoint_dir) / "last.pt" if config.checkpoint_dir else None
        if path is not None and self.rank == 0:
            check_writable(path.parent, "checkpoints")  # fail now, not after an epoch
        self.checkpoints = _CheckpointWriter(path)
        if resume_from is not None:
            self._resume(*resume_from)

    @property
    def checkpoint_path(self) -> Path | None:
        """This run's ``last.pt`` (``None`` when checkpointing is off)."""
        return self.checkpoints.path

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        """Train for the configured epochs; return the best-epoch checkpoint."""
        cfg = self.config
        try:
            for epoch in range(self.start_epoch, cfg.epochs + 1):
                self.checkpoints.raise_if_failed()  # a failed write stops training at once
                t0 = time.perf_counter()
                train_stats, n_seen = self._train_epoch(epoch)
                seconds = time.perf_counter() - t0
                val_stats = self.validate()
                self._record(epoch, train_stats, val_stats, n_seen * self.world_size, seconds)
                last = epoch == cfg.epochs
                if self.rank == 0 and (epoch % cfg.checkpoint_every == 0 or last):
                    self.checkpoints.submit(self._state(epoch), epoch)
        finally:
            self.checkpoints.close(raise_errors=sys.exc_info()[0] is None)
        return self._result()

    def _train_epoch(self, epoch: int) -> tuple[dict[str, float], int]:
        """One pass over the training normals; the mean losses and the images seen here."""
        cfg, rank, world = self.config, self.rank, self.world_size
        self.model.train()
        n = self.train_data.shape[0]
        order = self._epoch_order(epoch).to(self.device)
        noise = self._epoch_noise(epoch, n)
        n_batches = _batch_count(n, cfg.batch_size, world)
        losses = _LossLog(n_batches, self.device, self._nan_hint(epoch, n_batches),
                          self._progress(epoch, n_batches), world)
        local = slice(rank, None, world)  # this rank's share of every global batch
        for b in range(n_batches):
            batch = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
            x = to_float_batch(self.train_data[order[batch][local]], self.channels_last)
            terms = self._optimise(x, noise[batch][local], min(n, batch.stop) - batch.start)
            losses.add(b, terms, x.shape[0])
        return losses.mean()

    def _optimise(self, x: torch.Tensor, eps: torch.Tensor, global_n: int) -> torch.Tensor:
        """One optimiser step on this rank's slice ``x`` of a global batch of ``global_n``."""
        full = len(range(self.rank, self.config.batch_size, self.world_size))
        if x.shape[0] == full and self._graph_pending:
            self._graph_pending = False  # one attempt: a failed capture falls back for good
            self.graphed = capture_or_none(self.step_model, self.model, self.optimizer, x, eps)
        if x.shape[0] == full and self.graphed is not None:
            return self.graphed(x, eps)  # forward, backward and Adam, replayed at once
        # The short last batch runs eagerly: a new shape would recompile the graph.
        step = self.step_model if x.shape[0] == full else self.train_step
        terms = step(x, eps)
        # This rank's share of the global batch mean, times the number of ranks: DDP's
        # gradient mean over ranks is then the one-process gradient of the global batch.
        loss = terms[2] * (x.shape[0] * self.world_size / global_n)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return terms

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean validation recon, KL and total over the validation normals.

        Runs the training step's forward pass with noise from a fixed generator, so the
        number is comparable across epochs. With several processes each rank scores a
        shard and the sums are all-reduced.
        """
        cfg = self.config
        self.model.eval()
        n = self.val_data.shape[0]
        idx = torch.arange(self.rank, n, self.world_size, device=self.device)
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 7919)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        for start in range(0, idx.numel(), cfg.val_batch_size):
            x = to_float_batch(self.val_data[idx[start : start + cfg.val_batch_size]],
                               self.channels_last)
            shape = (x.shape[0], self.model_config.latent_dim, 1, 1)
            eps = torch.randn(shape, generator=gen, device=self.device)
            sums += self._forward(x, eps).double() * x.shape[0]
        count = torch.tensor([float(idx.numel())], dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(count)
        self.model.train()
        if count.item() == 0:
            return {"recon": float("nan"), "kl": float("nan"), "total": float("nan")}
        recon, kl, total = (sums / count).tolist()
        return {"recon": recon, "kl": kl, "total": total}

    # ------------------------------------------------------------------- set-up
    def _build_model(self, train_images: np.ndarray) -> VAE:
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: each conv's kernel chosen once
        torch.manual_seed(self.config.seed)
        model = VAE(self.model_config).to(self.device)
        # Decoder starts at the training set's mean grey level (see VAE.init_output_bias).
        model.init_output_bias(_mean_intensity(train_images))
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _build_steps(self) -> tuple[torch.nn.Module, Callable[..., torch.Tensor]]:
        """The eager step (DDP-wrapped with several ranks) and the one for full batches."""
        step: torch.nn.Module = self._forward
        if self.world_size > 1:
            sync_batchnorm(self.model, self.device)  # in place: global-batch statistics
            on_cuda = self.device.type == "cuda"
            step = torch.nn.parallel.DistributedDataParallel(
                step,
                device_ids=[self.device.index] if on_cuda else None,
                gradient_as_bucket_view=True,
                **_no_buffer_broadcast(),  # synchronised batch norm keeps buffers equal
            )
        return step, _try_compile(step) if self.fast_path.compile else step

    def _choose_fast_path(self, resume_from: tuple[Path, dict[str, Any]] | None) -> FastPath:
        """The settings' rules (``oct_vae.training.fast_path``); a resumed run keeps the amp and
        layout it was trained with, so that resuming stays exact."""
        cfg = self.config
        fast = fast_path.decide(cfg.amp, cfg.channels_last, cfg.compile, cfg.cuda_graph,
                                self.device, self.world_size)
        if resume_from is not None:
            fast = fast_path.resumed(resume_from[1].get("fast_path"), fast, self.device)
        if self.rank == 0:
            log.info("fast path: %s", fast.describe())
        return fast

    # ------------------------------------------------------------ epoch helpers
    def _record(
        self, epoch: int, train: dict[str, float], val: dict[str, float], seen: int,
        seconds: float,
    ) -> None:
        """Append the epoch to the history, keep the best weights, log one line."""
        row = {
            "epoch": epoch,
            **{f"train_{k}": v for k, v in train.items()},
            **{f"val_{k}": v for k, v in val.items()},
            "images_per_s": seen / seconds,
            "seconds": seconds,
        }
        self.history.append(row)
        # Both numbers are reduced over ranks, so every rank picks the same best epoch.
        score = val["total"] if self.val_data.shape[0] else train["total"]
        if self.best is None or score < self.best["val_total"]:
            state = {k: v.detach().to("cpu").clone() for k, v in self.model.state_dict().items()}
            self.best = {"epoch": epoch, "val_total": score, "state_dict": state}
        if self.rank == 0:
            log.info(
                "epoch %d/%d  train %.1f (recon %.1f, kl %.1f)  val %.1f  %.0f img/s",
                epoch, self.config.epochs, train["total"], train["recon"], train["kl"],
                val["total"], row["images_per_s"],
            )

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

    def _nan_hint(self, epoch: int, n_batches: int) -> Callable[[float, int], str]:
        def message(value: float, batch: int) -> str:
            return (
                f"Non-finite loss ({value}) at epoch {epoch}, batch {batch}/{n_batches}; "
                f"training stopped. The last good checkpoint is "
                f"{self.checkpoint_path or '(checkpointing disabled)'} (after epoch "
                f"{self.checkpoints.saved_epoch}). Lower train.lr or check the input images."
            )

        return message

    def _progress(self, epoch: int, total: int):
        if not self.config.progress or self.rank != 0:
            return None
        from tqdm.auto import tqdm  # here: a bare torch box runs the benchmark without it

        return tqdm(
            total=total, desc=f"epoch {epoch}/{self.config.epochs}", unit="batch",
            leave=False, file=sys.stderr, mininterval=1.0,
            disable=None,  # off when not a TTY
        )

    # ------------------------------------------------------ checkpoints, resume
    def _state(self, epoch: int) -> dict[str, Any]:
        # A snapshot: model and optimiser tensors are copied to the CPU now, so training
        # can go on while a background thread writes them.
        return {
            "format_version": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "model_config": self.model_config.to_dict(),
            "train_config": _resume_key(self.config),
            "data_fingerprint": self.data_fingerprint,
            "model": to_cpu(self.model.state_dict()),
            "optimizer": to_cpu(self.optimizer.state_dict()),
            "history": copy.deepcopy(self.history),
            "best": self.best,  # already a CPU copy, replaced (never mutated) on improvement
            "fast_path": self.fast_path.to_dict(),  # a resumed run keeps these settings
        }

    def _load_resume(self) -> tuple[Path, dict[str, Any]] | None:
        """The checkpoint to continue from and its contents (``None``: start afresh)."""
        cfg = self.config
        path = Path(cfg.checkpoint_dir) / "last.pt" if cfg.checkpoint_dir else None
        if cfg.resume is not True:
            path = Path(str(cfg.resume))
        if path is not None and path.is_dir():
            path = path / "last.pt"
        if path is None or not path.exists():
            if cfg.resume is not True:
                raise FileNotFoundError(f"Cannot resume: no checkpoint at {path}")
            log.info("resume: no checkpoint at %s, starting from epoch 1", path)
            return None
        return path, torch.load(path, map_location=self.device, weights_only=True)

    def _resume(self, path: Path, state: dict[str, Any]) -> None:
        cfg = self.config
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
        # The checkpoint's groups carry the implementation flags of the run that wrote it
        # (fused, foreach, capturable): keep this run's, which fit this device.
        flags = [{k: g[k] for k in _ADAM_FLAGS if k in g} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, own in zip(self.optimizer.param_groups, flags):
            group.update(own)
        self.history = list(state["history"])
        self.best = state["best"]
        self.start_epoch = int(state["epoch"]) + 1
        if path == self.checkpoint_path:
            self.checkpoints.saved_epoch = int(state["epoch"])
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
            "fast_path": self.fast_path.to_dict(),
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




class _CheckpointWriter:
    """Writes ``last.pt`` from a background thread, one write at a time.

    A write's error is raised by the next call (``submit``, ``raise_if_failed`` or
    ``close``), with the path and the OS reason (``oct_vae.framework.fileio``).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.saved_epoch = 0  # last epoch handed to the writer (or resumed from path)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def submit(self, state: dict[str, Any], epoch: int) -> None:
        if self.path is None:
            return
        self.wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oct-vae-ckpt")
        self._pending = self._pool.submit(checkpoints.save_atomically, state, self.path)
        self.saved_epoch = epoch

    def raise_if_failed(self) -> None:
        if self._pending is not None and self._pending.done() and self._pending.exception():
            self.wait()

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()  # re-raises a failed write

    def close(self, raise_errors: bool) -> None:
        try:
            self.wait()
        except Exception:
            if raise_errors:
                raise
            log.exception("writing the last checkpoint failed as well")
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


class _LossLog:
    """The per-step losses of an epoch, kept on the device and checked for NaN every few
    steps (every step on the CPU): one host sync per window, not per step."""

    def __init__(self, n_batches: int, device: torch.device,
                 message: Callable[[float, int], str], bar, world: int) -> None:
        self.terms = torch.zeros(n_batches, 3, device=device)
        self.counts: list[int] = []
        self.check_every = 1 if device.type == "cpu" else 25
        self.checked, self.last = 0, float("nan")
        self.message, self.bar, self.world, self.device = message, bar, world, device
        self.t0 = time.perf_counter()

    def add(self, b: int, terms: torch.Tensor, count: int) -> None:
        self.terms[b] = terms.detach()
        self.counts.append(count)
        if (b + 1) % self.check_every == 0 or b == len(self.terms) - 1:
            window = self.terms[self.checked : b + 1, 2].tolist()  # the window's host sync
            for offset, value in enumerate(window):
                if not math.isfinite(value):
                    raise NonFiniteLossError(self.message(value, self.checked + offset + 1))
            self.checked, self.last = b + 1, (window[-1] if window else float("nan"))
        if self.bar is not None:
            self.bar.update(1)
            if self.checked == b + 1:
                rate = sum(self.counts) * self.world / max(time.perf_counter() - self.t0, 1e-9)
                self.bar.set_postfix(loss=f"{self.last:.1f}", img_s=f"{rate:.0f}",
                                     refresh=False)

    def mean(self) -> tuple[dict[str, float], int]:
        """Image-weighted means over the epoch (all-reduced over ranks), images seen here."""
        if self.bar is not None:
            self.bar.close()
        weights = torch.tensor(self.counts, dtype=torch.float64, device=self.device)
        sums = (self.terms.double() * weights[:, None]).sum(0)
        count = weights.sum().reshape(1)
        if self.world > 1:
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(count)
        recon, kl, total = (sums / count).tolist()
        return {"recon": recon, "kl": kl, "total": total}, sum(self.counts)


def _batch_count(n: int, batch_size: int, world: int) -> int:
    # Every rank sees the same global batches and takes its slice of each: the global
    # batch, hence the optimisation, does not depend on the number of processes. A last
    # batch smaller than the number of processes is skipped (never with one process).
    n_batches = math.ceil(n / batch_size)
    if world > 1 and n % batch_size and n % batch_size < world:
        n_batches -= 1
    return n_batches


def _resident(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """The images on the training device, as uint8: 4x less memory than float32."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device)


def _resume_key(config: TrainConfig) -> dict[str, Any]:
    # Settings that must match to continue a run. Epochs may grow and progress may change;
    # devices may change too, since the global batch (hence the trajectory) does not.
    # The checkpoint folder may change too: a resumed run writes into a folder of its own.
    # The CUDA graph changes speed only, so a run may resume with or without it.
    skip = ("epochs", "resume", "progress", "devices", "checkpoint_every", "checkpoint_dir",
            "cuda_graph")
    return {k: v for k, v in asdict(config).items() if k not in skip}


def _no_buffer_broadcast() -> dict[str, bool]:
    # torch >= 2.14 renamed DDP's broadcast_buffers to forward_sync_buffers.
    params = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    name = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return {name: False}


_ADAM_FLAGS = ("fused", "foreach", "capturable")


def _adam_kwargs(device: torch.device, graphed: bool = False) -> dict[str, Any]:
    if device.type == "cuda":
        # The fused kernel keeps its step count on the device either way: capturable
        # (needed inside a CUDA graph) changes no arithmetic.
        return {"fused": True, "capturable": graphed}
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
