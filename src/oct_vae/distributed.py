"""Data-parallel training on several GPUs (or CPU processes) with torch.distributed DDP.

Two ways in, one training loop (``oct_vae.training.Trainer`` with ``world=(rank, size)``):

* ``train.devices: N`` (or ``auto``: every visible GPU) in a normal ``kedro run``: the
  train node calls ``train_distributed``, which spawns N processes on this machine
  (NCCL on GPUs, gloo on the CPU), hands them the images as memory-mapped ``.npy`` files,
  and returns rank 0's result.
* ``torchrun`` (one machine or several): every process runs the pipeline; the train node
  sees ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` and joins the job instead of spawning.
  Every rank returns the same result; only rank 0 writes checkpoints, and only rank 0
  should save outputs or log to MLflow (``is_main_process``).

Every rank takes its slice of every global batch and of its noise, and batch norm uses
the statistics of the whole global batch (``sync_batchnorm``), so N processes follow the
trajectory of one process with the same ``batch_size``, up to rounding.

This module imports only numpy and torch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from oct_vae.model import VAEConfig
from oct_vae.training import (
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    TrainResult,
    load_model,
    resolve_device,
)

log = logging.getLogger(__name__)

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by ``torchrun``."""
    return all(v in os.environ for v in _TORCHRUN_VARS) and int(os.environ["WORLD_SIZE"]) > 1


def is_main_process() -> bool:
    """True on rank 0 of a distributed job, and in any single-process run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def resolve_devices(devices: int | str, device: str = "auto") -> int:
    """Number of training processes for ``train.devices`` and ``device``.

    ``auto`` means every visible GPU when training on CUDA, else 1. A count above 1 on
    the CPU gives that many gloo processes (useful for tests, rarely for speed).

    Raises:
        ValueError: ``devices`` is neither ``auto`` nor a positive integer, or asks for
            more GPUs than are visible, or for several processes on Apple MPS.
    """
    kind = resolve_device(device).type
    if devices == "auto":
        return max(torch.cuda.device_count(), 1) if kind == "cuda" else 1
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(f"devices must be a positive integer or 'auto', got {devices!r}")
    if devices > 1 and kind == "cuda" and devices > torch.cuda.device_count():
        raise ValueError(
            f"devices={devices} but only {torch.cuda.device_count()} GPU(s) are visible"
        )
    if devices > 1 and kind == "mps":
        raise ValueError("data-parallel training is not supported on Apple MPS; use devices: 1")
    return devices


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradient over ranks, too."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        out = grad.clone()
        dist.all_reduce(out)
        return out


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the global batch of a process group, on any backend (gloo too).

    ``torch.nn.SyncBatchNorm`` does this on GPUs only. The per-channel sums of x and x^2
    are all-reduced with a differentiable all-reduce, whose backward all-reduces the
    gradient: each rank's gradient is then its share of the one-process gradient.
    Outside training, or without a process group, it is an ordinary ``BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        count = xf.new_tensor([xf.numel() / c])
        local = torch.cat([xf.sum((0, 2, 3)), xf.square().sum((0, 2, 3)), count])
        total = _AllReduceSum.apply(local)
        n = total[-1].detach()
        mean = total[:c] / n
        var = total[c : 2 * c] / n - mean.square()  # biased, as batch norm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked
                self.running_mean.lerp_(mean.detach(), float(m))
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp(min=1), float(m))
        shape = (1, c, 1, 1)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace, in place, every ``BatchNorm2d`` of ``model`` by a synchronised one.

    CUDA gets ``torch.nn.SyncBatchNorm`` (fused kernels), other devices
    ``GlobalBatchNorm2d``. Parameters, buffers and state-dict keys are kept, so
    checkpoints load into a plain ``VAE``.
    """
    cls = nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm2d
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, GlobalBatchNorm2d):
            new = cls(child.num_features, child.eps, child.momentum, child.affine,
                      child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(model, name, new.to(device).train(child.training))
        else:
            sync_batchnorm(child, device)
    return model


def train_distributed(
    train_images: np.ndarray,
    val_images: np.ndarray,
    model_config: VAEConfig,
    config: TrainConfig,
    devices: int | str,
) -> TrainResult:
    """Train data-parallel and return rank 0's result (see the module docstring).

    Under ``torchrun`` this process joins the job and ``devices`` is ignored (the job's
    size wins). Otherwise ``devices`` processes are spawned here; one means no spawning.
    A non-finite loss in any rank is raised here as ``NonFiniteLossError``.
    """
    if launched_by_torchrun():
        return _train_torchrun(train_images, val_images, model_config, config)
    n = resolve_devices(devices, config.device)
    if n == 1:
        return Trainer(train_images, val_images, model_config, config).fit()
    use_cuda = resolve_device(config.device).type == "cuda"
    with tempfile.TemporaryDirectory(prefix="oct-vae-ddp-", dir=_scratch_dir(train_images)) as tmp:
        work = Path(tmp)
        np.save(work / "train.npy", np.ascontiguousarray(train_images))
        np.save(work / "val.npy", np.ascontiguousarray(val_images))
        log.info("training data-parallel on %d %s processes", n, "GPU" if use_cuda else "CPU")
        try:
            mp.spawn(
                _spawn_worker, args=(n, str(work), model_config, config, use_cuda),
                nprocs=n, join=True,
            )
        except mp.ProcessRaisedException as err:
            _reraise_worker_error(work, err)
        payload = torch.load(work / "result.pt", weights_only=True)
    checkpoint = payload["checkpoint"]
    return TrainResult(
        checkpoint=checkpoint, history=payload["history"], model=load_model(checkpoint)
    )


def _train_torchrun(
    train_images: np.ndarray, val_images: np.ndarray, model_config: VAEConfig, config: TrainConfig
) -> TrainResult:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = resolve_device(config.device).type == "cuda"
    device = _rank_device(local_rank, use_cuda, int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://")
    try:
        trainer = Trainer(
            train_images, val_images, model_config, config, world=(rank, world), device=device
        )
        result = trainer.fit()
    except BaseException:
        if owns_group:
            dist.destroy_process_group()  # no barrier: the other ranks may never reach it
        raise
    if owns_group:
        _leave_group()
    return result


def _spawn_worker(
    rank: int, world: int, workdir: str, model_config: VAEConfig, config: TrainConfig,
    use_cuda: bool,
) -> None:
    """One spawned rank: join the group, train, and (rank 0) write the result."""
    work = Path(workdir)
    if rank == 0 and not logging.getLogger("oct_vae").handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[rank 0] %(message)s"))
        logging.getLogger("oct_vae").addHandler(handler)
        logging.getLogger("oct_vae").setLevel(logging.INFO)
    try:
        device = _rank_device(rank, use_cuda, world)
        dist.init_process_group(
            "nccl" if use_cuda else "gloo", init_method=(work / "rendezvous").as_uri(),
            rank=rank, world_size=world,
        )
        # Copy-on-write memory maps: the page cache is shared by the ranks.
        train = np.load(work / "train.npy", mmap_mode="c")
        val = np.load(work / "val.npy", mmap_mode="c")
        result = Trainer(train, val, model_config, config, world=(rank, world), device=device).fit()
        if rank == 0:
            payload = {"checkpoint": result.checkpoint, "history": result.history}
            torch.save(payload, work / "result.pt")
    except BaseException as err:
        message = {"type": type(err).__name__, "message": str(err)}
        (work / f"error-{rank}.json").write_text(json.dumps(message))
        raise
    _leave_group()


def _leave_group() -> None:
    # Wait for every rank before tearing the group down: a rank that leaves while a peer
    # still holds its gloo connections can make that peer abort at exit (seen with torch
    # 2.14, about one run in three, when the process later joins another group).
    dist.barrier()
    dist.destroy_process_group()


def _rank_device(local_rank: int, use_cuda: bool, local_world: int) -> torch.device:
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(local_world, 1)))
    return torch.device("cpu")


def _scratch_dir(images: np.ndarray) -> str | None:
    # RAM-backed /dev/shm when it has room (containers often give it 64 MiB), else $TMPDIR.
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 3 * images.nbytes:
        return str(shm)
    return None


def _reraise_worker_error(work: Path, err: Exception) -> None:
    for path in sorted(work.glob("error-*.json")):
        info = json.loads(path.read_text())
        if info["type"] == NonFiniteLossError.__name__:
            raise NonFiniteLossError(info["message"]) from err
    raise err


__all__ = [
    "GlobalBatchNorm2d",
    "is_main_process",
    "launched_by_torchrun",
    "resolve_devices",
    "sync_batchnorm",
    "train_distributed",
]
