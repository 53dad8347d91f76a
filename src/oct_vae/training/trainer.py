"""The training loop of the VAE: ``Trainer.fit`` -> ``_train_epoch`` -> ``_optimise``.

The same loop serves a 2-core laptop and an H100. Each epoch shuffles the resident uint8
training images, takes one optimiser step per global batch, validates, and hands a
checkpoint to a background writer. Everything else is a small collaborator:

* ``oct_vae.training.batches``: images resident on the device, float batches, batch counts;
* ``oct_vae.training.steps``: the step ``(x, eps) -> [recon, kl, total]``, DDP wrapping,
  ``torch.compile`` (the short last batch of an epoch runs eagerly, so it never triggers a
  recompilation) and the optimiser;
* ``oct_vae.training.cuda_graph``: the whole step replayed as a CUDA graph;
* ``oct_vae.training.fast_path``: bf16 autocast, channels-last, compile and graph, by rule;
* ``oct_vae.training.loss_log``: the NaN guard (one host sync every few steps) and progress;
* ``oct_vae.training.checkpointing``: the state snapshot, its background writer, resume.

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
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oct_vae.data.lineage import data_fingerprint
from oct_vae.progress import Progress, track
from oct_vae.training import fast_path
from oct_vae.training.batches import (
    batch_count,
    check_images,
    mean_intensity,
    resident,
    to_float_batch,
)
from oct_vae.training.checkpointing import (
    CheckpointWriter,
    check_resumable,
    checkpoint_file,
    find_resume,
    load_optimizer_state,
    resume_key,
    snapshot,
)
from oct_vae.training.config import TrainConfig, stream_seed
from oct_vae.training.cuda_graph import GraphedStep, capture_or_none
from oct_vae.training.device import resolve_device
from oct_vae.training.fast_path import FastPath
from oct_vae.training.loss_log import LossLog, NonFiniteLossError, progress_bar
from oct_vae.training.steps import TrainStep, build_steps, make_optimizer
from oct_vae.vae.checkpoint import make_checkpoint
from oct_vae.vae.model import VAE, VAEConfig

__all__ = [
    "NonFiniteLossError", "TrainConfig", "TrainResult", "Trainer", "resolve_device",
    "to_float_batch",
]

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
        graphed: The full-batch step captured as a CUDA graph, once captured (else ``None``).
        checkpoints: The background writer of ``last.pt``.
    """

    def __init__(self, train_images: np.ndarray, val_images: np.ndarray, model_config: VAEConfig,
                 config: TrainConfig, world: tuple[int, int] = (0, 1),
                 device: torch.device | None = None) -> None:
        check_images(train_images, model_config.image_size, "train_images", allow_empty=False)
        check_images(val_images, model_config.image_size, "val_images", allow_empty=True)
        self.config, self.model_config = config, model_config
        self.rank, self.world_size = world
        self.device = device or resolve_device(config.device)
        resume_from = find_resume(config, self.device) if config.resume else None
        # amp / channels-last / compile / graph: by rule, or the resumed run's amp and layout.
        self.fast_path = self._choose_fast_path(resume_from)
        self.amp, self.channels_last = self.fast_path.amp, self.fast_path.channels_last
        # Whole-step CUDA graph: captured at the first full batch (after any resume).
        self.graphed: GraphedStep | None = None
        self._graph_pending = self.fast_path.cuda_graph
        # Which data this model learns from: stored in every checkpoint, checked on resume.
        self.data_fingerprint = data_fingerprint(train_images, val_images)
        self.train_data = resident(train_images, self.device)
        self.val_data = resident(val_images, self.device)
        self.model = self._build_model(train_images)
        self._forward = TrainStep(self.model, config, self.amp, self.device.type)
        self.train_step, self.step_model = build_steps(
            self._forward, self.model, self.device, self.world_size, self.fast_path.compile
        )
        self.optimizer = make_optimizer(self.model, config.lr, self.device,
                                        graphed=self.fast_path.cuda_graph)
        self.history: list[dict[str, float]] = []
        self.progress: Progress = track(None, None)  # set by fit
        self.best: dict[str, Any] | None = None  # {"epoch", "val_total", "state_dict"}
        self.start_epoch, self.resumed_from = 1, None
        # Rank 0 writes; it checks the folder now, not after an epoch.
        self.checkpoints = CheckpointWriter(checkpoint_file(config), check=self.rank == 0)
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
        images = (cfg.epochs - self.start_epoch + 1) * self.train_data.shape[0]
        self.progress = track("train" if self.rank == 0 else None, images)  # steps, all epochs
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
            self.progress.close()
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
        n_batches = batch_count(n, cfg.batch_size, world)
        bar = progress_bar(epoch, cfg.epochs, n_batches, cfg.progress and rank == 0)
        losses = LossLog(n_batches, self.device, world, epoch, self.checkpoints.last_good, bar)
        local = slice(rank, None, world)  # this rank's share of every global batch
        for b in range(n_batches):
            batch = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
            x = to_float_batch(self.train_data[order[batch][local]], self.channels_last)
            terms = self._optimise(x, noise[batch][local], min(n, batch.stop) - batch.start)
            losses.add(b, terms, x.shape[0])
            self.progress.update(x.shape[0] * world)
        return losses.mean()

    def _optimise(self, x: torch.Tensor, eps: torch.Tensor, global_n: int) -> torch.Tensor:
        """One optimiser step on this rank's slice ``x`` of a global batch of ``global_n``."""
        full = x.shape[0] == len(range(self.rank, self.config.batch_size, self.world_size))
        graphed = self._graph(x, eps) if full else None
        if graphed is not None:
            return graphed(x, eps)  # forward, backward and Adam, replayed at once
        # The short last batch runs eagerly: a new shape would recompile the graph.
        terms = (self.step_model if full else self.train_step)(x, eps)
        # This rank's share of the global batch mean, times the number of ranks: DDP's
        # gradient mean over ranks is then the one-process gradient of the global batch.
        loss = terms[2] * (x.shape[0] * self.world_size / global_n)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return terms

    def _graph(self, x: torch.Tensor, eps: torch.Tensor) -> GraphedStep | None:
        """The captured full-batch step: captured on the first call when the CUDA graph is
        on; one attempt only, a failed capture falls back to the ungraphed step for good."""
        if self._graph_pending:
            self._graph_pending = False
            self.graphed = capture_or_none(self.step_model, self.model, self.optimizer, x, eps)
        return self.graphed

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
        gen = torch.Generator(device=self.device).manual_seed(stream_seed(cfg.seed, "validation"))
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

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(stream_seed(self.config.seed, "order", epoch))
        return torch.randperm(self.train_data.shape[0], generator=gen)

    def _epoch_noise(self, epoch: int, n: int) -> torch.Tensor:
        # One draw per image position of the epoch, identical on every rank.
        gen = torch.Generator(device=self.device).manual_seed(
            stream_seed(self.config.seed, "noise", epoch))
        shape = (n, self.model_config.latent_dim, 1, 1)
        return torch.randn(shape, generator=gen, device=self.device)

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

    # ------------------------------------------------------------------- set-up
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

    def _build_model(self, train_images: np.ndarray) -> VAE:
        """The VAE on the device, initialised from ``seed``, its output at the data's mean."""
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: each conv's kernel chosen once
        torch.manual_seed(self.config.seed)
        model = VAE(self.model_config).to(self.device)
        # Decoder starts at the training set's mean grey level (see VAE.init_output_bias).
        model.init_output_bias(mean_intensity(train_images))
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    # ------------------------------------------------------ checkpoints, resume
    def _identity(self) -> dict[str, Any]:
        """What a checkpoint must share with this run to be resumed by it."""
        return {
            "model_config": self.model_config.to_dict(),
            "train_config": resume_key(self.config),
            "data_fingerprint": self.data_fingerprint,
        }

    def _state(self, epoch: int) -> dict[str, Any]:
        """A CPU snapshot of the training state after ``epoch`` (``checkpointing.snapshot``)."""
        run = {**self._identity(), "history": self.history, "best": self.best,
               "fast_path": self.fast_path.to_dict()}
        return snapshot(epoch, self.model, self.optimizer, run)

    def _resume(self, path: Path, state: dict[str, Any]) -> None:
        """Continue from ``state`` (read from ``path``) after checking that it fits this run."""
        check_resumable(path, state, self._identity(), self.config.epochs)
        self.model.load_state_dict(state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.history = list(state["history"])
        self.best = state["best"]
        self.start_epoch = int(state["epoch"]) + 1
        if path == self.checkpoint_path:
            self.checkpoints.saved_epoch = int(state["epoch"])
        self.resumed_from = path.parent.name  # the run folder, not the absolute path
        log.info("resume: continuing from %s after epoch %d", path, state["epoch"])

    def _result(self) -> TrainResult:
        """The best epoch's weights as a checkpoint with the run's metadata."""
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
