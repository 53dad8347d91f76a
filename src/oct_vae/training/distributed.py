"""Data-parallel training on several GPUs (or CPU processes) with torch.distributed DDP,
and ``train``: the one entry point that decides between one process and several.

* ``train.devices: 1`` (default) and no ``torchrun``: one ``Trainer`` in this process.
* ``train.devices: N`` (or ``auto``: every visible GPU) in a normal ``kedro run``:
  ``train`` spawns N processes on this machine (NCCL on GPUs, gloo on the CPU), hands them
  the images as memory-mapped ``.npy`` files, and returns rank 0's result.
* ``torchrun`` (one machine or several): every process runs the pipeline; ``train`` sees
  ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` and joins the job instead of spawning.
  Every rank returns the same result; only rank 0 writes checkpoints, and only rank 0
  saves outputs or logs to MLflow (``is_main_process``; ``oct_vae.framework.hooks``).

Every rank takes its slice of every global batch and of its noise, and batch norm uses
the statistics of the whole global batch (``oct_vae.training.batchnorm``), so N processes follow
the trajectory of one process with the same ``batch_size``, up to rounding.

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

from oct_vae.training.device import resolve_device
from oct_vae.training.trainer import NonFiniteLossError, TrainConfig, Trainer, TrainResult
from oct_vae.vae.checkpoint import load_model
from oct_vae.vae.model import VAEConfig

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


def train(
    train_images: np.ndarray,
    val_images: np.ndarray,
    model_config: VAEConfig,
    config: TrainConfig,
) -> TrainResult:
    """Train the VAE: in this process, or data-parallel (see the module docstring).

    Under ``torchrun`` this process joins the job and ``config.devices`` is ignored (the
    job's size wins). Otherwise ``config.devices`` processes are spawned here; one means
    no spawning. A non-finite loss in any rank is raised here as ``NonFiniteLossError``.
    """
    if launched_by_torchrun():
        return _train_torchrun(train_images, val_images, model_config, config)
    n = resolve_devices(config.devices, config.device)
    if n == 1:
        return Trainer(train_images, val_images, model_config, config).fit()
    return _train_spawned(train_images, val_images, model_config, config, n)


def _train_spawned(
    train_images: np.ndarray, val_images: np.ndarray, model_config: VAEConfig,
    config: TrainConfig, n: int,
) -> TrainResult:
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


__all__ = ["is_main_process", "launched_by_torchrun", "resolve_devices", "train"]
