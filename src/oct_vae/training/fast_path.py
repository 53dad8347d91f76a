"""The training fast path: every ``auto`` setting decided by a written rule, never by timing.

A setting that changes the numbers a run produces is decided by the device and the
configuration alone, so two runs of one configuration on one kind of machine compute the
same thing whatever else the machine is doing (issue #22). The settings and their rules:

* ``amp`` (bf16 autocast) changes the numbers. ``auto``: bf16 on CUDA devices with native
  bf16 (compute capability 8.0 and later: Ampere, Hopper), where it is the fast path
  (H200, 2026-12-04: 21,909 against 15,810 images/s at batch 64 with the CUDA graph);
  float32 everywhere else. On CPUs bf16 is a user's choice (``amp: bf16``): it made
  training almost twice as fast on one AVX512-BF16 EPYC and slower on an AVX512-BF16
  Xeon (benchmarks/RESULTS.md), and its timing, once used to decide, moved with the load.
* ``channels_last`` changes the numbers too (other convolution kernels, another order of
  summation). ``auto``: on with CUDA (the layout tensor cores read), off elsewhere.
* ``compile`` changes the numbers (fused kernels). ``auto``: on with CUDA unless the step
  is replayed as a CUDA graph, off elsewhere (a CPU run pays 50-100 s of compilation
  for about 12%, more than a phantom run gains).
* ``cuda_graph`` does not change the numbers (the same kernels, launched at once; see
  ``oct_vae.training.cuda_graph``). ``auto``: on with CUDA and one process, unless ``compile: on``
  asks for the compiled step instead (the two are not combined: see ``graph_choice``).

Timing may choose only among settings that leave the numbers unchanged; none of the
training settings is such a choice today, so nothing is timed. Explicit values (``on``,
``off``, ``bf16``) are always honoured. A resumed run keeps the amp and layout of the run it
continues (``FastPath.from_dict``), so resuming stays exact.

This module imports only torch and the standard library (and ``oct_vae.training.device``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from oct_vae.training.device import legacy_flag_rule


@dataclass(frozen=True)
class FastPath:
    """The settings a run trains with, and where they came from.

    Attributes:
        amp: bf16 autocast on.
        channels_last: channels-last memory on.
        compile: ``torch.compile`` on.
        cuda_graph: the training step is captured and replayed as a CUDA graph.
        source: ``rule`` (the settings and this module's rules) or ``checkpoint`` (a
            resumed run keeps the amp and layout of the run it continues).
    """

    amp: bool
    channels_last: bool
    compile: bool
    cuda_graph: bool = False
    source: str = "rule"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> FastPath:
        """Read a stored fast path (also those of earlier versions, which held timings)."""
        return cls(
            amp=bool(data["amp"]), channels_last=bool(data["channels_last"]),
            compile=bool(data.get("compile", False)),
            cuda_graph=bool(data.get("cuda_graph", False)),
            source=source or str(data.get("source", "rule")),
        )

    def describe(self) -> str:
        """One line: the settings and their source."""
        def word(on: bool) -> str:
            return "on" if on else "off"

        return (f"amp={'bf16' if self.amp else 'off'} channels_last={word(self.channels_last)} "
                f"compile={word(self.compile)} cuda_graph={word(self.cuda_graph)} "
                f"({self.source})")


def amp_choice(value: str, device: torch.device) -> bool:
    """``amp``: ``bf16`` / ``off`` honoured (bf16 autocast exists on CUDA and CPUs only);
    ``auto`` is bf16 on CUDA devices with native bf16, float32 elsewhere."""
    if device.type not in ("cuda", "cpu") or value == "off":
        return False
    if value == "bf16":
        return True
    return device.type == "cuda" and bool(torch.cuda.is_bf16_supported())


def layout_choice(value: str, device: torch.device) -> bool:
    """``channels_last``: ``on`` / ``off`` honoured; ``auto`` is on with CUDA only."""
    return value == "on" or (value == "auto" and device.type == "cuda")


def compile_choice(value: str, device: torch.device, graphed: bool = False) -> bool:
    """``compile``: explicit values honoured; ``auto`` is on with CUDA only, and off where the
    training step is replayed as a CUDA graph instead."""
    return value == "on" or (value == "auto" and device.type == "cuda" and not graphed)


def graph_choice(value: str, compile_: str, device: torch.device, world_size: int) -> bool:
    """``cuda_graph``: ``auto`` is on with CUDA and one process, unless ``compile: on`` asks
    for the compiled step instead; ``on`` needs CUDA, one process and no ``compile: on``.

    A compiled step replayed as a CUDA graph is faster still (H200, batch 256: 29,899
    against 25,744 images/s), but its test of training exactly like the ungraphed compiled
    step failed on an H200 (2026-12-04, cause not found; benchmarks/RESULTS.md), so the two
    are not combined.

    Raises:
        ValueError: ``on`` where it cannot apply.
    """
    if value == "on":
        if device.type != "cuda" or world_size > 1:
            raise ValueError(
                f"cuda_graph: on needs one process on a CUDA device (here: {device.type}, "
                f"{world_size} process(es)); use auto or off"
            )
        if compile_ == "on":
            raise ValueError(
                "cuda_graph: on and compile: on are not combined: the compiled step "
                "replayed as a CUDA graph has not been shown to train like the compiled "
                "one (benchmarks/RESULTS.md, 2026-12-04); set one of them to auto or off"
            )
    return (value != "off" and compile_ != "on" and device.type == "cuda"
            and world_size == 1)


def decide(amp: str, channels_last: str, compile_: str, cuda_graph: str,
           device: torch.device, world_size: int = 1) -> FastPath:
    """The fast path of a new run, by the rules of this module (see there)."""
    graphed = graph_choice(cuda_graph, compile_, device, world_size)
    return FastPath(
        amp=amp_choice(amp, device),
        channels_last=layout_choice(channels_last, device),
        compile=compile_choice(compile_, device, graphed),
        cuda_graph=graphed,
    )


def resumed(stored: dict[str, Any] | None, fresh: FastPath, device: torch.device) -> FastPath:
    """A resumed run's fast path: the amp and layout the checkpoint was trained with, and
    this run's compile and graph. A checkpoint written before fast paths were stored was
    trained by the flag rule of that time (``oct_vae.training.device.legacy_flag_rule``)."""
    if isinstance(stored, dict):
        kept = FastPath.from_dict(stored)
        amp, layout = kept.amp, kept.channels_last
    else:
        amp, layout = legacy_flag_rule(device)
    return FastPath(amp, layout, fresh.compile, fresh.cuda_graph, "checkpoint")
