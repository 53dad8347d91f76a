"""Where a run computes, and what the device can do. Imports only torch.

Training decides its ``auto`` fast-path settings by measurement (``oct_vae.autotune``):
CPU flags are no guide to whether bf16 pays. ``cpu_has_native_bf16`` only says whether
bf16 is worth timing at all. ``flag`` and ``amp_enabled`` are the earlier flag rule
(bf16 on CUDA and on CPUs reporting native bf16; channels-last and compile on CUDA), still
used for resuming checkpoints written before autotuning and as the benchmark's "before".
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


def flag(value: str, on_cuda: bool) -> bool:
    """An ``auto`` | ``on`` | ``off`` (or ``bf16``) switch: ``auto`` is on with CUDA only."""
    return value in ("on", "bf16") or (value == "auto" and on_cuda)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 matrix maths natively (AVX512-BF16 or AMX).

    Elsewhere oneDNN emulates bf16 and autocast would slow the step down.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def amp_enabled(value: str, device: torch.device) -> bool:
    """Whether ``train.amp`` (``auto`` | ``bf16`` | ``off``) turns bf16 autocast on."""
    if device.type not in ("cuda", "cpu") or value == "off":
        return False
    return value == "bf16" or device.type == "cuda" or cpu_has_native_bf16()


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
