"""Where a run computes, and what the device can do. Imports only torch.

The ``auto`` fast-path settings follow the rules of ``oct_vae.training.fast_path``;
``legacy_flag_rule`` is the first rule, kept to resume checkpoints trained by it.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch


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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 matrix maths natively (AVX512-BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def legacy_flag_rule(device: torch.device) -> tuple[bool, bool]:
    """(amp, channels_last) of the first flag rule: bf16 on CUDA and on CPUs reporting
    native bf16, channels-last on CUDA. Only for resuming checkpoints that stored no fast
    path, which were trained by it; new runs follow ``oct_vae.training.fast_path``."""
    amp = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return amp, device.type == "cuda"


def device_label(device: torch.device) -> str:
    """GPU name, or CPU model name (from /proc/cpuinfo where there is one)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name
