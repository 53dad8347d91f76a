"""Batch norm over the global batch of a data-parallel job.

Without it each process would normalise with the statistics of its own slice of the batch,
and the result would depend on the number of processes. Imports only torch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


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
