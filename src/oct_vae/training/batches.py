"""What the training loop feeds the model: uint8 images resident on the device, converted
to float one batch at a time, in global batches that every process slices.

No data loader stands between the data and the model: the images are checked once, moved
to the training device as uint8 (4x less memory than float32), and each batch is
converted on the device.

This module imports only numpy and torch.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def to_float_batch(images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 (B, H, W) on any device -> float32 (B, 1, H, W) in [0, 1]."""
    x = images.unsqueeze(1).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def resident(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """The images on the training device, as uint8: 4x less memory than float32."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device)


def batch_count(n: int, batch_size: int, world: int) -> int:
    """Global batches of an epoch over ``n`` images.

    Every rank sees the same global batches and takes its slice of each: the global
    batch, hence the optimisation, does not depend on the number of processes. A last
    batch smaller than the number of processes is skipped (never with one process).
    """
    n_batches = math.ceil(n / batch_size)
    if world > 1 and n % batch_size and n % batch_size < world:
        n_batches -= 1
    return n_batches


def mean_intensity(images: np.ndarray, chunk: int = 4096) -> float:
    """Mean grey level of uint8 images in [0, 1], in chunks (memory-mapped arrays welcome)."""
    total = sum(
        float(images[i : i + chunk].sum(dtype=np.float64)) for i in range(0, len(images), chunk)
    )
    return total / (255.0 * max(images.size, 1))


def check_images(images: np.ndarray, size: int, name: str, allow_empty: bool) -> None:
    """Raise a clear error unless ``images`` is a uint8 array of shape (N, size, size).

    Raises:
        TypeError: Not a uint8 numpy array.
        ValueError: Another shape, or empty where ``allow_empty`` is false.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise TypeError(f"{name} must be a uint8 numpy array, got {type(images).__name__}")
    if images.ndim != 3 or images.shape[1:] != (size, size):
        raise ValueError(f"{name} must have shape (N, {size}, {size}), got {images.shape}")
    if not allow_empty and images.shape[0] == 0:
        raise ValueError(f"{name} is empty: ingest produced no training normals")
