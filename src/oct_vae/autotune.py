"""``auto`` fast-path settings decided by measurement, cached per machine and configuration.

``train.amp: auto`` and ``train.channels_last: auto`` are decided by timing a few real
training steps (the training step module, the loss, backward and the run's Adam) of each
candidate on the run's model, per-rank batch size and device: float32 or bf16 autocast,
with or without channels-last memory. CPU flags are no guide: a 2-core Xeon that reports
AVX512-BF16 trains slower under bf16 autocast than in float32, an AMD EPYC with the same
flag trains almost twice as fast.

How the choice is made:

* candidates are timed interleaved (round-robin, alternating order), after one warm-up
  step each, for ``MIN_ROUNDS`` to ``MAX_ROUNDS`` rounds or until ``BUDGET_S`` is spent;
  the fastest step of each decides (best of the rounds: on a shared machine other work
  only ever adds time, so the minimum is the least disturbed estimate of a step);
* tie margin: the simplest candidate (float32, then channels-last, then bf16, then both)
  whose best step is within ``TIE_MARGIN`` of the fastest one wins, so noise never flips the
  choice towards a more complicated (and numerically different) path;
* bf16 is a candidate only where the device can run it natively (CUDA with bf16 support, a
  CPU reporting AVX512-BF16 or AMX): elsewhere oneDNN emulates it at several times the
  cost, and timing it would only lengthen the measurement;
* ``compile: auto`` is not measured: on CUDA it is on where the step is not replayed as a
  CUDA graph (``train.cuda_graph``, one process), i.e. with several processes (measured on
  an H100 and an H200: +14-16% images/s for ~16-20 s of compilation); with the CUDA graph
  it is off (H200, 2026-12-04: the graphed eager step beats the compiled one at batch 64,
  13,563 against 9,489 images/s, and is level at batch 256, without the compilation); on
  the CPU it is off (measured on a 2-core EPYC: +12% after 50-100 s of compilation, more
  than a short phantom run gains; see benchmarks/RESULTS.md);
* explicit values (``on``/``off``/``bf16``) are honoured and never measured; with a
  single candidate left nothing is measured.

The result is cached in ``$OCT_VAE_CACHE_DIR/autotune.json`` (default
``~/.cache/oct-vae``), written atomically, keyed by the device (CPU model or GPU name),
core and thread counts, torch version, model configuration, per-rank batch size, likelihood
and the candidate set: the measurement runs once per machine and configuration. A cache
that cannot be read or written is ignored (with a warning), never fatal.

With several data-parallel ranks rank 0 decides (from the cache or by measuring its own
step) and broadcasts the choice; every rank uses the same settings.

This module imports only torch and the standard library (plus ``oct_vae.fileio``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from oct_vae.device import cpu_has_native_bf16, device_label
from oct_vae.fileio import atomic_write

log = logging.getLogger(__name__)

CACHE_ENV = "OCT_VAE_CACHE_DIR"
CACHE_FILE = "autotune.json"
CACHE_VERSION = 1
TIE_MARGIN = 0.05  # a more complicated candidate must be > 5% faster than a simpler one
MIN_ROUNDS, MAX_ROUNDS = 3, 7
BUDGET_S = 4.0  # stop adding rounds (after MIN_ROUNDS) once this much time is spent


@dataclass(frozen=True)
class Candidate:
    """One combination of the measured switches."""

    amp: bool
    channels_last: bool

    @property
    def name(self) -> str:
        return ("bf16" if self.amp else "fp32") + ("_cl" if self.channels_last else "")

    @property
    def rank(self) -> int:
        """Simplicity order: float32, channels-last, bf16, bf16 + channels-last."""
        return 2 * self.amp + self.channels_last


@dataclass(frozen=True)
class FastPath:
    """The settings a run trains with, and where they came from.

    Attributes:
        amp: bf16 autocast on.
        channels_last: channels-last memory on.
        compile: ``torch.compile`` on.
        cuda_graph: the training step is captured as a CUDA graph (by rule, like
            ``compile``; set by ``Trainer``).
        source: ``explicit`` (nothing to decide), ``measured``, ``cache``, ``checkpoint``
            (a resumed run keeps its choice) or ``rule`` (a pre-autotune checkpoint:
            the old flag rule, so that resume stays exact).
        step_ms: Median step time per measured candidate, in milliseconds.
        spread_ms: ``[min, max]`` step time per measured candidate.
        rounds: Timed rounds per candidate (0 when nothing was measured).
    """

    amp: bool
    channels_last: bool
    compile: bool
    source: str
    step_ms: dict[str, float] = field(default_factory=dict)
    spread_ms: dict[str, list[float]] = field(default_factory=dict)
    rounds: int = 0
    cuda_graph: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> FastPath:
        return cls(
            amp=bool(data["amp"]), channels_last=bool(data["channels_last"]),
            compile=bool(data.get("compile", False)), source=source or str(data["source"]),
            step_ms={str(k): float(v) for k, v in dict(data.get("step_ms", {})).items()},
            spread_ms={str(k): [float(x) for x in v]
                       for k, v in dict(data.get("spread_ms", {})).items()},
            rounds=int(data.get("rounds", 0)), cuda_graph=bool(data.get("cuda_graph", False)),
        )

    def describe(self) -> str:
        """One line: the choice, its source and the measured step times."""
        text = (f"amp={'bf16' if self.amp else 'off'} channels_last="
                f"{'on' if self.channels_last else 'off'} compile="
                f"{'on' if self.compile else 'off'} cuda_graph="
                f"{'on' if self.cuda_graph else 'off'} ({self.source}")
        if self.step_ms:
            times = ", ".join(
                f"{k} {v:.1f} ms [{self.spread_ms.get(k, [v, v])[0]:.1f}-"
                f"{self.spread_ms.get(k, [v, v])[1]:.1f}]" for k, v in self.step_ms.items()
            )
            text += f"; best step over {self.rounds} rounds [min-max]: {times}"
        return text + ")"


# ----------------------------------------------------------------- candidates
def candidates(amp: str, channels_last: str, device: torch.device) -> list[Candidate]:
    """The combinations worth timing for these settings on this device, simplest first."""
    measurable = device.type in ("cpu", "cuda")
    if amp == "off" or not measurable:
        amps = [False]
    elif amp == "bf16":
        amps = [True]
    else:
        amps = [False, True] if _native_bf16(device) else [False]
    if channels_last == "on":
        layouts = [True]
    elif channels_last == "off" or not measurable:
        layouts = [False]
    else:
        layouts = [False, True]
    found = [Candidate(a, c) for a in amps for c in layouts]
    return sorted(found, key=lambda c: c.rank)


def compile_choice(value: str, device: torch.device, graphed: bool = False) -> bool:
    """``compile``: explicit values honoured; ``auto`` is on with CUDA only, and off where the
    training step is replayed as a CUDA graph instead (see module)."""
    return value == "on" or (value == "auto" and device.type == "cuda" and not graphed)


def _native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return cpu_has_native_bf16()


def pick(samples: dict[str, list[float]], cands: Iterable[Candidate],
         margin: float = TIE_MARGIN) -> Candidate:
    """The simplest candidate whose best step is within ``margin`` of the fastest one."""
    ordered = sorted(cands, key=lambda c: c.rank)
    bests = {c.name: min(samples[c.name]) for c in ordered}
    best = min(bests.values())
    return next(c for c in ordered if bests[c.name] <= best * (1 + margin))


# ---------------------------------------------------------------- measurement
def time_steps(
    make_step: Callable[[Candidate], Callable[[], None]], cands: list[Candidate],
    sync: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """Milliseconds per training step of each candidate, interleaved, after a warm-up step."""
    steps = {c.name: make_step(c) for c in cands}
    for run in steps.values():
        run()  # warm-up: allocations, oneDNN primitive / cuDNN algorithm selection
    sync()
    samples: dict[str, list[float]] = {c.name: [] for c in cands}
    start = time.perf_counter()
    for r in range(MAX_ROUNDS):
        for c in cands if r % 2 == 0 else cands[::-1]:
            t0 = time.perf_counter()
            steps[c.name]()
            sync()
            samples[c.name].append(1000.0 * (time.perf_counter() - t0))
        if r + 1 >= MIN_ROUNDS and time.perf_counter() - start > BUDGET_S:
            break
    return samples


# ---------------------------------------------------------------------- cache
def cache_path() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "oct-vae"
    return Path(root).expanduser() / CACHE_FILE


def cache_key(device: torch.device, model: dict[str, Any], batch_size: int, likelihood: str,
              cands: Iterable[Candidate]) -> tuple[str, dict[str, Any]]:
    """The cache key (a hash) and the fields it hashes."""
    fields = {
        "version": CACHE_VERSION,
        "device_type": device.type,
        "device": device_label(device),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "model": model,
        "batch_size": int(batch_size),
        "likelihood": likelihood,
        "candidates": [c.name for c in cands],
    }
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20], fields


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("autotune cache %s unreadable (%s); measuring again", path, err)
        return {}
    return data.get("entries", {}) if isinstance(data, dict) else {}


def _write_cache(path: Path, key: str, entry: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = _read_cache(path)  # re-read: another run may have added an entry
        entries[key] = entry
        text = json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1)
        atomic_write(path, lambda tmp: tmp.write_text(text))
    except OSError as err:
        log.warning("autotune cache %s not written (%s)", path, err)


# --------------------------------------------------------------------- decide
def decide(
    amp: str, channels_last: str, compile_: str, device: torch.device,
    model: dict[str, Any], batch_size: int, likelihood: str,
    make_step: Callable[[Candidate], Callable[[], None]],
    world: tuple[int, int] = (0, 1), graphed: bool = False,
) -> FastPath:
    """The fast path of a run: explicit settings, the cached choice, or a measured one.

    Args:
        amp, channels_last, compile_: The ``TrainConfig`` values.
        model: The model configuration (``VAEConfig.to_dict()``), part of the cache key.
        batch_size: Images per step on one rank.
        make_step: Builds a zero-argument callable that runs one full training step of a
            candidate (called only when measuring).
        world: ``(rank, world_size)``; with several ranks rank 0 decides and broadcasts.
        graphed: The step will be replayed as a CUDA graph (``compile: auto`` is then off).
    """
    compiled = compile_choice(compile_, device, graphed)
    cands = candidates(amp, channels_last, device)
    rank, world_size = world
    fast = None
    if len(cands) == 1 and (rank == 0 or world_size == 1):
        fast = FastPath(cands[0].amp, cands[0].channels_last, compiled, "explicit")
    elif rank == 0:
        fast = _cached_or_measured(cands, compiled, device, model, batch_size, likelihood,
                                   make_step)
        log.info("autotune: %s", fast.describe())
    if world_size > 1:  # always, so that ranks that see other candidates cannot diverge
        fast = _broadcast(fast, compiled, device)
    assert fast is not None
    return fast


def _cached_or_measured(
    cands: list[Candidate], compiled: bool, device: torch.device, model: dict[str, Any],
    batch_size: int, likelihood: str, make_step: Callable[[Candidate], Callable[[], None]],
) -> FastPath:
    key, fields = cache_key(device, model, batch_size, likelihood, cands)
    path = cache_path()
    entry = _read_cache(path).get(key)
    if isinstance(entry, dict):
        try:
            return FastPath.from_dict({**entry, "compile": compiled}, source="cache")
        except (KeyError, TypeError, ValueError):
            log.warning("autotune cache entry %s malformed; measuring again", key)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    samples = time_steps(make_step, cands, sync)
    best = pick(samples, cands)
    fast = FastPath(
        amp=best.amp, channels_last=best.channels_last, compile=compiled, source="measured",
        step_ms={k: round(min(v), 3) for k, v in samples.items()},
        spread_ms={k: [round(min(v), 3), round(max(v), 3)] for k, v in samples.items()},
        rounds=min(len(v) for v in samples.values()),
    )
    entry = {**fast.to_dict(), "key": fields,
             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    entry.pop("compile")  # decided by rule, not cached
    entry.pop("cuda_graph")
    _write_cache(path, key, entry)
    return fast


def _broadcast(fast: FastPath | None, compiled: bool, device: torch.device) -> FastPath:
    """Rank 0's choice on every rank (one small tensor: works with gloo and NCCL)."""
    flags = torch.zeros(2, dtype=torch.int64, device=device)
    if fast is not None:
        flags[0], flags[1] = int(fast.amp), int(fast.channels_last)
    torch.distributed.broadcast(flags, src=0)
    if fast is not None:
        return fast
    amp, layout = (bool(v) for v in flags.tolist())
    return FastPath(amp, layout, compiled, "rank 0")
