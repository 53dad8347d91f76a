"""Training throughput: a naive PyTorch-examples loop against the project's ``Trainer``.

    PYTHONPATH=src python benchmarks/bench_train.py                  # full size, this machine
    PYTHONPATH=src python benchmarks/bench_train.py --quick          # < 1 min on a 2-core CPU
    PYTHONPATH=src python benchmarks/bench_train.py --batch-sizes 64,128,256,512
    PYTHONPATH=src python benchmarks/bench_train.py --fit-epochs 2   # a real Trainer.fit run
    PYTHONPATH=src python benchmarks/bench_train.py --quality --batch-sizes 16,32,64,128
    PYTHONPATH=src python benchmarks/bench_train.py --profile        # top ops, TFLOP/s, MFU

Both loops train the paper's model (width 64, latent 300, 1x128x128) on synthetic uint8
scans, in one process on one device, their epochs interleaved so that a busy machine
slows both alike:

* ``naive``: the pytorch/examples VAE loop: float32 images in a ``TensorDataset`` behind a
  ``DataLoader``, no autocast, default ``Adam``, ``model(x)`` + BCE + KL, ``loss.item()``
  every step, cuDNN autotuning off (its default).
* ``project``: ``Trainer._train_epoch``, the code the Kedro train node runs, with the
  ``TrainConfig`` defaults for the device (``oct_vae.training.fast_path``: on CUDA bf16 autocast,
  channels-last, fused Adam and the whole step replayed as a CUDA graph; float32 on CPUs).

Reported per loop: images/s (median epoch), the projection to 40 epochs x 25,236 images
(the paper's training set; training steps only: no validation, checkpoints or
compilation), achieved TFLOP/s (forward + backward FLOPs of one training step counted by
``torch.utils.flop_counter.FlopCounterMode``), and the ratio project / naive. Results go
to ``--out`` as JSON.

``--profile`` instead runs ``torch.profiler`` over a few training steps of the project
loop (paper's size unless ``--width``/``--batch-size`` say otherwise) and writes the top
operators by self time (device time on CUDA, CPU time on the CPU) with their share of the
total, and the achieved TFLOP/s and MFU against the device's dense bf16 peak
(``PEAK_BF16_TFLOPS``; ``--peak-tflops`` for any other device, else MFU n/a), as
``profile.md`` and ``profile.json`` in the folder of ``--out``.

This module imports only numpy, torch and the standard library (``--quality --data
phantom`` also needs Pillow).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from oct_vae.data.phantom import layered_scans
from oct_vae.training.device import device_label, resolve_device
from oct_vae.training.trainer import TrainConfig, Trainer, to_float_batch
from oct_vae.vae.losses import negative_elbo
from oct_vae.vae.model import VAE, VAEConfig

PAPER_IMAGES = 25_236  # training normals of the paper (Kermany 2018 minus held-out scans)
PAPER_EPOCHS = 40
TARGET_GPU_S = 60.0
TARGET_GPU_RATIO = 5.0
TARGET_CPU_RATIO = 1.3
DEFAULT_OUT = "benchmarks/out/bench_train.json"
# Dense bf16 peaks (TFLOP/s, no sparsity) by GPU name, most specific first.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))


# ---------------------------------------------------------------------------- data
# --------------------------------------------------------------------------- flops
def step_flops_per_image(model_config: VAEConfig, likelihood: str = "bernoulli") -> float:
    """FLOPs of one training step (forward + backward) per image, by ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = VAE(model_config)
    batch = 2
    side = model_config.image_size
    x = torch.rand(batch, model_config.in_channels, side, side)
    counter = FlopCounterMode(display=False)
    with counter:
        logits, mu, logvar = model(x)
        negative_elbo(logits, x, mu, logvar, likelihood)["total"].backward()
    return counter.get_total_flops() / batch


# --------------------------------------------------------------------------- loops
class NaiveLoop:
    """The pytorch/examples VAE training loop around the same model."""

    name = "naive"

    def __init__(
        self, images: np.ndarray, model_config: VAEConfig, batch_size: int,
        device: torch.device, lr: float = 1e-4,
    ) -> None:
        torch.manual_seed(0)
        self.device = device
        self.model = VAE(model_config).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        data = torch.from_numpy(images).float().div(255.0).unsqueeze(1)
        on_cuda = device.type == "cuda"
        kwargs: dict[str, Any] = {"num_workers": 1, "pin_memory": True} if on_cuda else {}
        self.loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(data), batch_size=batch_size, shuffle=True, **kwargs
        )

    def epoch(self) -> int:
        """One pass over the images; returns how many were trained on."""
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = False  # PyTorch's default
        self.model.train()
        seen, train_loss = 0, 0.0
        try:
            for (x,) in self.loader:
                x = x.to(self.device)
                self.optimizer.zero_grad()
                logits, mu, logvar = self.model(x)
                bce = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="sum")
                kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
                loss = (bce + kld) / x.shape[0]
                loss.backward()
                train_loss += loss.item()
                self.optimizer.step()
                seen += x.shape[0]
        finally:
            torch.backends.cudnn.benchmark = benchmark
        return seen


class ProjectLoop:
    """``Trainer._train_epoch``: the train node's own step, on the given images."""

    def __init__(
        self, images: np.ndarray, model_config: VAEConfig, config: TrainConfig,
        device: torch.device, name: str = "project",
    ) -> None:
        self.name = name
        empty = np.zeros((0, *images.shape[1:]), dtype=np.uint8)
        t0 = time.perf_counter()
        self.trainer = Trainer(images, empty, model_config, config, device=device)
        self.setup_s = time.perf_counter() - t0
        self.n_epochs = 0

    def epoch(self) -> int:
        """One pass of the project's training loop; returns how many images it saw."""
        torch.backends.cudnn.benchmark = self.trainer.device.type == "cuda"
        self.n_epochs += 1
        _, seen = self.trainer._train_epoch(self.n_epochs)
        return seen


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(loop: NaiveLoop | ProjectLoop, device: torch.device) -> tuple[int, float, float]:
    """(images, wall seconds, CPU seconds of this process) of one epoch."""
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    seen = loop.epoch()
    _sync(device)
    return seen, time.perf_counter() - t0, time.process_time() - c0


def measure(
    loops: Sequence[NaiveLoop | ProjectLoop], device: torch.device, rounds: int,
    flops_per_image: float,
) -> dict[str, dict[str, Any]]:
    """Warm each loop up for one epoch, then time ``rounds`` epochs of each, interleaved.

    Besides wall-clock images/s, images per CPU-second of this process are recorded: on a
    CPU shared with other jobs they move less with the load than wall-clock rates do.
    """
    out: dict[str, dict[str, Any]] = {}
    for loop in loops:
        seen, seconds, _ = _timed(loop, device)
        out[loop.name] = {"warmup_s": seconds, "samples": [], "cpu_samples": []}
        print(f"  {loop.name}: warm-up epoch ({seen} images) {seconds:.1f} s", flush=True)
    for _ in range(rounds):
        for loop in loops:
            seen, seconds, cpu_seconds = _timed(loop, device)
            out[loop.name]["samples"].append(seen / seconds)
            out[loop.name]["cpu_samples"].append(seen / max(cpu_seconds, 1e-9))
    for row in out.values():
        row.update(_figures(statistics.median(row["samples"]), flops_per_image))
        row["images_per_cpu_s"] = statistics.median(row["cpu_samples"])
    return out


def _figures(images_per_s: float, flops_per_image: float) -> dict[str, float]:
    return {
        "images_per_s": images_per_s,
        "projected_40_epochs_s": PAPER_EPOCHS * PAPER_IMAGES / images_per_s,
        "tflops": images_per_s * flops_per_image / 1e12,
    }


# ----------------------------------------------------------------------- commands
def device_name(device: torch.device) -> str:
    """Human-readable name of the device (GPU model, or CPU model and core count)."""
    if device.type == "cuda":
        return device_label(device)
    threads = torch.get_num_threads()
    return f"{device_label(device)} ({os.cpu_count()} cores, {threads} torch threads)"


def _train_config(
    args: argparse.Namespace, batch_size: int, compile_: str, graph: str | None = None
) -> TrainConfig:
    graph = graph or ("auto" if args.cuda_graph == "both" else args.cuda_graph)
    # The Bernoulli likelihood: the naive loop's BCE and the FLOP count's, so that both
    # loops train the same objective (the project's default is the Gaussian).
    return TrainConfig(
        epochs=10_000, batch_size=batch_size, lr=args.lr, device=args.device, amp=args.amp,
        compile=compile_, channels_last=args.channels_last, progress=False, seed=0,
        cuda_graph=graph, likelihood="bernoulli",
    )


def _project_variants(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(row name, compile, cuda_graph) of each project loop, the plainest first."""
    compiles = [("eager", "off"), ("compiled", "on")] if args.compile == "both" else [
        ("", args.compile)]
    graphs = [("", "off"), ("graph", "on")] if args.cuda_graph == "both" else [
        ("", args.cuda_graph)]
    rows = []
    for graph_name, graph in graphs:
        for compile_name, compile_ in compiles:
            if graph == "on" and compile_ == "on":
                continue  # not combined by the product (oct_vae.training.fast_path.graph_choice)
            name = "_".join(p for p in ("project", compile_name, graph_name) if p)
            rows.append((name, compile_, graph))
    return rows


def run_benchmark(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Naive vs project at ``args.batch_size`` (and the optional batch-size sweep)."""
    model_config = VAEConfig(width=args.width, latent_dim=args.latent_dim)
    flops = step_flops_per_image(model_config)
    n = args.images or args.batch_size * args.steps
    sizes = _parse_sizes(args.batch_sizes) if args.batch_sizes else []
    images = layered_scans(max([n, *(max(n, 2 * b) for b in sizes)]), seed=1)
    print(f"{flops / 1e9:.2f} GFLOP per image per training step; {n} images per epoch", flush=True)
    report: dict[str, Any] = {
        "flops_per_image_step": flops,
        "images_per_epoch": n,
        "results": {},
        "sweep": [],
    }
    if not args.skip_naive:
        loops: list[NaiveLoop | ProjectLoop] = [
            NaiveLoop(images[:n], model_config, args.batch_size, device, args.lr)
        ]
    else:
        loops = []
    for name, compile_, graph in _project_variants(args):
        config = _train_config(args, args.batch_size, compile_, graph)
        loops.append(ProjectLoop(images[:n], model_config, config, device, name))
        report["project_config"] = {**asdict(config), "amp_active": loops[-1].trainer.amp,
                                    "channels_last_active": loops[-1].trainer.channels_last}
    report["results"] = measure(loops, device, args.rounds, flops)
    results = report["results"]
    for loop in loops:
        if isinstance(loop, ProjectLoop):
            results[loop.name]["setup_s"] = loop.setup_s
            results[loop.name]["fast_path"] = loop.trainer.fast_path.to_dict()
    if "naive" in results:
        for name, row in results.items():
            if name != "naive":
                naive = results["naive"]
                row["speedup_vs_naive"] = row["images_per_s"] / naive["images_per_s"]
                row["cpu_speedup_vs_naive"] = row["images_per_cpu_s"] / naive["images_per_cpu_s"]
    # The sweep runs the last variant: graphed (eager) when both are given.
    _, sweep_compile, sweep_graph = _project_variants(args)[-1]
    for b in sizes:
        m = max(n, 2 * b)
        config = _train_config(args, b, sweep_compile, sweep_graph)
        loop = ProjectLoop(images[:m], model_config, config, device)
        try:
            row = measure([loop], device, max(2, args.rounds - 1), flops)["project"]
        except torch.cuda.OutOfMemoryError:
            print(f"  batch {b}: out of memory", flush=True)
            report["sweep"].append({"batch_size": b, "error": "out of memory"})
            continue
        finally:
            del loop
            if device.type == "cuda":
                torch.cuda.empty_cache()
        report["sweep"].append({"batch_size": b, "compile": sweep_compile,
                                "cuda_graph": loop_graph(config, device), **row})
    return report


def loop_graph(config: TrainConfig, device: torch.device) -> bool:
    """Whether a one-process loop with ``config`` replays a CUDA graph."""
    from oct_vae.training.fast_path import graph_choice

    return graph_choice(config.cuda_graph, config.compile, device, 1)


def run_fit(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """A real ``Trainer.fit`` on synthetic data, with checkpoints, timed end to end."""
    model_config = VAEConfig(width=args.width, latent_dim=args.latent_dim)
    n_train = args.fit_images
    n_val = max(1, round(n_train * 0.05))
    images = layered_scans(n_train + n_val, seed=2)
    # "both" means the product's own choice here: one fit, with the defaults.
    compile_ = "auto" if args.compile == "both" else args.compile
    graph = "auto" if args.cuda_graph == "both" else args.cuda_graph
    with tempfile.TemporaryDirectory(prefix="oct-vae-bench-") as tmp:
        config = replace(
            _train_config(args, args.batch_size, compile_, graph),
            epochs=args.fit_epochs, checkpoint_dir=tmp, progress=False,
            checkpoint_every=args.checkpoint_every,
        )
        _sync(device)
        t0 = time.perf_counter()
        trainer = Trainer(images[:n_train], images[n_train:], model_config, config, device=device)
        result = trainer.fit()
        _sync(device)
        wall = time.perf_counter() - t0
        checkpoint_ok = (Path(tmp) / "last.pt").exists()
    history = result.history
    steady = [h["images_per_s"] for h in history[1:]] or [history[0]["images_per_s"]]
    return {
        "fit": {
            "epochs": args.fit_epochs,
            "n_train": n_train,
            "n_val": n_val,
            "compile": result.checkpoint["metadata"]["fast_path"].get("compile"),
            "cuda_graph": result.checkpoint["metadata"]["fast_path"].get("cuda_graph", False),
            "batch_size": args.batch_size,
            "checkpoint_every": args.checkpoint_every,
            "wall_s": wall,
            "train_s": sum(h["seconds"] for h in history),
            "first_epoch_s": history[0]["seconds"],
            "steady_images_per_s": statistics.median(steady),
            "projected_40_epochs_s": PAPER_EPOCHS * PAPER_IMAGES / statistics.median(steady),
            "final_val_total": history[-1]["val_total"],
            "checkpoint_written": checkpoint_ok,
            "amp": result.checkpoint["metadata"]["amp"],
            "history": history,
        }
    }


def run_quality(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Final validation loss against batch size (and amp), at equal epochs."""
    model_config = VAEConfig(width=args.width, latent_dim=args.latent_dim)
    n_val = max(64, args.quality_images // 8)
    if args.data == "phantom":
        train, val = phantom_normals(args.quality_images, n_val)
    else:
        data = layered_scans(args.quality_images + n_val, seed=3)
        train, val = data[: args.quality_images], data[args.quality_images :]
    rows = []
    combos = [(b, amp, graph) for b in _parse_sizes(args.batch_sizes or "16,32,64,128")
              for amp in args.quality_amp.split(",") for graph in args.quality_graph.split(",")]
    for b, amp, graph in combos:
        lr = args.lr * (b / args.lr_reference_batch if args.lr_scaling == "linear" else 1.0)
        config = replace(
            _train_config(args, b, "off", graph), epochs=args.quality_epochs, amp=amp, lr=lr
        )
        t0 = time.perf_counter()
        result = Trainer(train, val, model_config, config, device=device).fit()
        row = {
            "batch_size": b, "amp": result.checkpoint["metadata"]["amp"], "lr": lr,
            "cuda_graph": result.checkpoint["metadata"]["fast_path"].get("cuda_graph"),
            "final_val_total": result.history[-1]["val_total"],
            "best_val_total": min(h["val_total"] for h in result.history),
            "seconds": time.perf_counter() - t0,
        }
        rows.append(row)
        print(
            f"  batch {b:4d} amp {row['amp']:4s} graph {row['cuda_graph']!s:5s} "
            f"lr {lr:.1e}: final val "
            f"{row['final_val_total']:.2f} (best {row['best_val_total']:.2f}), "
            f"{row['seconds']:.0f} s", flush=True,
        )
    return {
        "quality": {
            "data": args.data, "n_train": len(train), "n_val": len(val),
            "epochs": args.quality_epochs, "rows": rows,
        }
    }


def peak_tflops(name: str, given: float | None = None) -> float | None:
    """The dense bf16 peak of a device by name (``given`` wins); ``None`` when unknown."""
    if given:
        return given
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def run_profile(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """``torch.profiler`` over a few project-loop steps: top ops by self time, TFLOP/s, MFU."""
    from torch.profiler import ProfilerActivity, profile

    model_config = VAEConfig(width=args.width, latent_dim=args.latent_dim)
    flops = step_flops_per_image(model_config)
    steps, b = args.profile_steps, args.batch_size
    images = layered_scans(b * 2, seed=1)
    compile_ = "off" if args.compile == "both" else args.compile
    # A replayed CUDA graph hides its kernels from the operator table: profile without it
    # unless --cuda-graph on is given.
    graph = "on" if args.cuda_graph == "on" else "off"
    loop = ProjectLoop(images, model_config, _train_config(args, b, compile_, graph), device)
    trainer = loop.trainer
    gen = torch.Generator().manual_seed(0)
    eps = torch.randn((b, model_config.latent_dim, 1, 1), generator=gen).to(device)
    x = to_float_batch(trainer.train_data[:b], trainer.channels_last)

    def step() -> None:
        trainer._optimise(x, eps, b)

    step()  # warm-up (and compilation, if any)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):  # timed without the profiler's overhead
        step()
    _sync(device)
    step_s = (time.perf_counter() - t0) / steps
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    on_device = device.type == "cuda"
    with profile(activities=activities, record_shapes=on_device) as prof:
        for _ in range(steps):
            step()
        _sync(device)

    def self_us(event: Any) -> float:
        if on_device:
            return float(getattr(event, "self_device_time_total",
                                 getattr(event, "self_cuda_time_total", 0.0)))
        return float(event.self_cpu_time_total)

    by_shape = [e for e in prof.key_averages(group_by_input_shape=True)
                if e.key.startswith("aten::") and float(getattr(
                    e, "device_time_total", getattr(e, "cuda_time_total", 0.0)) or 0) > 0]
    events = [e for e in prof.key_averages() if self_us(e) > 0]
    total = sum(self_us(e) for e in events)
    events.sort(key=self_us, reverse=True)
    rows = [
        {"op": e.key, "calls": int(e.count), "self_ms": self_us(e) / 1e3 / steps,
         "share_percent": 100.0 * self_us(e) / total}
        for e in events[: args.profile_top]
    ]
    name = device_name(device)
    tflops = b * flops / step_s / 1e12
    peak = peak_tflops(name if on_device else "", args.peak_tflops)
    profile_report = {
        "device": name, "width": args.width, "batch_size": b, "steps": steps,
        "amp": "bf16" if trainer.amp else "off", "channels_last": trainer.channels_last,
        "compile": trainer.fast_path.compile, "time_kind": "device" if on_device else "cpu",
        "step_ms": 1e3 * step_s, "images_per_s": b / step_s, "tflops": tflops,
        "peak_tflops": peak, "mfu_percent": 100.0 * tflops / peak if peak else None,
        "total_self_ms_per_step": total / 1e3 / steps, "top": rows,
        "by_shape": _by_shape(by_shape, steps, args.profile_top) if on_device else [],
    }
    folder = Path(args.out).parent
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "profile.json").write_text(json.dumps(profile_report, indent=2))
    (folder / "profile.md").write_text(profile_markdown(profile_report))
    print(profile_markdown(profile_report), flush=True)
    return {"profile": profile_report}


def _by_shape(events: list[Any], steps: int, top: int) -> list[dict[str, Any]]:
    """Convolutions (and other aten ops) by input shape: which layer spends the time."""
    def device_us(e: Any) -> float:
        return float(getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0.0)))

    wanted = ("convolution_backward", "cudnn_convolution", "_convolution", "convolution")
    rows = [e for e in events if any(e.key.endswith(w) for w in wanted)]
    rows.sort(key=device_us, reverse=True)
    return [{"op": e.key, "shapes": str(e.input_shapes)[:160], "calls": int(e.count),
             "device_ms": device_us(e) / 1e3 / steps} for e in rows[:top]]


def profile_markdown(r: dict[str, Any]) -> str:
    """The profile as a markdown table with a header of the headline figures."""
    mfu = f"{r['mfu_percent']:.1f}% of {r['peak_tflops']:.0f}" if r["peak_tflops"] else "n/a"
    lines = [
        f"## Profile: {r['device']}", "",
        f"width {r['width']}, batch {r['batch_size']}, {r['steps']} profiled steps; amp "
        f"{r['amp']}, channels-last {r['channels_last']}, compile {r['compile']}.", "",
        f"step {r['step_ms']:.1f} ms ({r['images_per_s']:.1f} images/s, unprofiled), "
        f"{r['tflops']:.3f} TFLOP/s, MFU {mfu} (dense bf16 peak, TFLOP/s).", "",
        f"Top ops by self {r['time_kind']} time (share of all ops' self time):", "",
        "| op | calls | self ms / step | share |", "|---|---:|---:|---:|",
    ]
    lines += [f"| `{row['op']}` | {row['calls']} | {row['self_ms']:.2f} | "
              f"{row['share_percent']:.1f}% |" for row in r["top"]]
    if r.get("by_shape"):
        lines += ["", "Convolutions by input shape (device time incl. children, ms per step):",
                  "", "| op | input shapes | calls | ms / step |", "|---|---|---:|---:|"]
        lines += [f"| `{row['op']}` | `{row['shapes']}` | {row['calls']} | "
                  f"{row['device_ms']:.2f} |" for row in r["by_shape"]]
    return "\n".join(lines) + "\n"


def phantom_normals(n_train: int, n_val: int, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Healthy phantom B-scans resized to ``size``; validation patients are disjoint."""
    from PIL import Image

    from oct_vae.data.phantom import PhantomConfig, scan_image

    config = PhantomConfig()

    def render(count: int, first_pid: int) -> np.ndarray:
        out = np.empty((count, size, size), dtype=np.uint8)
        for i in range(count):
            pid, scan = first_pid + i // 4, 1 + i % 4  # 4 scans per patient
            img = Image.fromarray(scan_image(config, "NORMAL", pid, scan))
            out[i] = np.asarray(img.resize((size, size), Image.Resampling.LANCZOS))
        return out

    return render(n_train, 1), render(n_val, 1 + math.ceil(n_train / 4))


def _parse_sizes(text: str) -> list[int]:
    sizes = [int(s) for s in text.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--batch-sizes needs positive integers, got {text!r}")
    return sizes


# ---------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """Command-line options (``python benchmarks/bench_train.py --help``)."""
    p = argparse.ArgumentParser(prog="benchmarks/bench_train.py",
                                description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--quick", action="store_true",
                   help="small model and few steps: under a minute on a 2-core CPU")
    p.add_argument("--batch-size", type=int, default=None,
                   help="batch of the naive/project comparison (default 256 on CUDA, 64 on CPU)")
    p.add_argument("--batch-sizes", default="",
                   help="comma-separated sweep of the project loop, e.g. 64,128,256,512")
    p.add_argument("--width", type=int, default=None, help="model width (paper: 64)")
    p.add_argument("--latent-dim", type=int, default=300)
    p.add_argument("--images", type=int, default=None, help="images per timed epoch")
    p.add_argument("--steps", type=int, default=None, help="steps per epoch when --images is unset")
    p.add_argument("--rounds", type=int, default=None, help="timed epochs per loop")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"))
    p.add_argument("--compile", default="auto", choices=("auto", "on", "off", "both"),
                   help="project loop: torch.compile setting; both = one row each")
    p.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--cuda-graph", default="auto", choices=("auto", "on", "off", "both"),
                   help="project loop: whole-step CUDA graph; both = one row each")
    p.add_argument("--skip-naive", action="store_true", help="time the project loop only")
    p.add_argument("--fit-epochs", type=int, default=0,
                   help="instead: run Trainer.fit for this many epochs on synthetic data")
    p.add_argument("--fit-images", type=int, default=PAPER_IMAGES)
    p.add_argument("--checkpoint-every", type=int, default=1,
                   help="fit runs: write the checkpoint every this many epochs")
    p.add_argument("--quality", action="store_true",
                   help="instead: final val loss per batch size (--batch-sizes) and amp")
    p.add_argument("--data", default="synthetic", choices=("synthetic", "phantom"))
    p.add_argument("--quality-images", type=int, default=2048)
    p.add_argument("--quality-epochs", type=int, default=10)
    p.add_argument("--quality-amp", default="off,bf16")
    p.add_argument("--quality-graph", default="auto",
                   help="comma-separated cuda_graph settings of --quality, e.g. off,on")
    p.add_argument("--lr-scaling", default="none", choices=("none", "linear"))
    p.add_argument("--lr-reference-batch", type=int, default=64)
    p.add_argument("--profile", action="store_true",
                   help="instead: torch.profiler top ops, TFLOP/s and MFU of a few steps")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--profile-top", type=int, default=15)
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense bf16 peak for MFU where the device is not in the table")
    p.add_argument("--out", default=DEFAULT_OUT, help="JSON output path")
    return p


def _defaults(args: argparse.Namespace, device: torch.device) -> list[str]:
    notes = []
    on_cuda = device.type == "cuda"
    if args.quick:
        args.width = args.width or 16
        args.batch_size = args.batch_size or 32
        args.steps = args.steps or 3
        args.rounds = args.rounds or 3
        if args.compile == "auto" and not on_cuda:
            args.compile = "off"
        notes.append(
            f"QUICK MODE: width {args.width} (paper 64), batch {args.batch_size}, "
            f"{args.steps} steps per epoch; not the paper's model size"
        )
    args.width = args.width or 64
    args.batch_size = args.batch_size or (256 if on_cuda else 64)
    args.steps = args.steps or (40 if on_cuda else 3)
    args.rounds = args.rounds or 3
    if args.width != 64 and not args.quick:
        notes.append(f"width {args.width}, not the paper's 64")
    return notes


def _print_table(report: dict[str, Any]) -> None:
    results = report.get("results", {})
    if results:
        head = f"{'images/s':>10s} {'40 ep. (s)':>11s} {'TFLOP/s':>8s} {'x naive':>8s}"
        print(f"\n{'loop':18s} {head} {'img/CPU-s':>10s}")
        for name, r in results.items():
            ratio = f"{r['speedup_vs_naive']:.2f}" if "speedup_vs_naive" in r else "-"
            print(f"{name:18s} {r['images_per_s']:10.1f} {r['projected_40_epochs_s']:11.0f} "
                  f"{r['tflops']:8.2f} {ratio:>8s} {r['images_per_cpu_s']:10.2f}")
    for r in report.get("sweep", []):
        if "error" in r:
            print(f"batch {r['batch_size']:5d}: {r['error']}")
        else:
            print(f"batch {r['batch_size']:5d} ({r['compile']}): {r['images_per_s']:10.1f} img/s, "
                  f"40 epochs {r['projected_40_epochs_s']:.0f} s, {r['tflops']:.2f} TFLOP/s")
    if "fit" in report:
        f = report["fit"]
        print(f"fit: {f['epochs']} epochs x {f['n_train']} images in {f['wall_s']:.1f} s wall "
              f"({f['train_s']:.1f} s training, first epoch {f['first_epoch_s']:.1f} s), "
              f"steady {f['steady_images_per_s']:.0f} img/s -> 40 epochs "
              f"{f['projected_40_epochs_s']:.0f} s; final val {f['final_val_total']:.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write its JSON; returns the process exit status."""
    args = build_parser().parse_args(argv)
    # Each loop is compiled for its own fixed batch, as in a training run (where only full
    # batches reach the compiled step): no dynamic-shape recompilation across the sweep.
    torch._dynamo.config.automatic_dynamic_shapes = False
    # Per-epoch lines of fit runs, and any torch.compile fallback warning, on stderr.
    level = logging.INFO if (args.fit_epochs or args.quality) else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s")
    device = resolve_device(args.device)
    notes = _defaults(args, device)
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "device_type": device.type,
        "torch_version": str(torch.__version__),
        "quick": bool(args.quick),
        "notes": notes,
        "batch_size": args.batch_size,
        "model": {"width": args.width, "latent_dim": args.latent_dim, "image_size": 128},
        "paper_workload": {"epochs": PAPER_EPOCHS, "images": PAPER_IMAGES},
    }
    for note in notes:
        print(note)
    print(f"device: {report['device']}; torch {report['torch_version']}", flush=True)
    command: Callable[[argparse.Namespace, torch.device], dict[str, Any]]
    if args.profile:
        command = run_profile
    elif args.quality:
        command = run_quality
    elif args.fit_epochs:
        command = run_fit
    else:
        command = run_benchmark
    report.update(command(args, device))
    results = report.get("results", {})
    if "naive" in results and len(results) > 1:
        fast = [r for k, r in results.items() if k != "naive"]
        best = max(fast, key=lambda r: r["images_per_s"])
        target = TARGET_GPU_RATIO if device.type == "cuda" else TARGET_CPU_RATIO
        report["speedup"] = best["speedup_vs_naive"]
        report["targets"] = {
            "ratio_target": target, "ratio_met": best["speedup_vs_naive"] >= target
        }
        if device.type == "cuda":
            report["targets"].update(
                seconds_target=TARGET_GPU_S,
                seconds_met=best["projected_40_epochs_s"] <= TARGET_GPU_S,
            )
    _print_table(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
