"""What makes a ``torchrun`` training run equal a single-process run of the same global batch.

* :func:`epoch_batches`: every step's global batch is the same slice of the epoch's shuffled order
  as in one process (the order ``DistributedSampler`` draws: ``randperm`` seeded ``seed + epoch``).
  Each process takes a contiguous part of it, sizes differing by at most one; nothing is padded,
  repeated or dropped (``DistributedSampler`` repeats samples to make the dataset divisible by the
  number of processes). A part can be empty (a last global batch smaller than the world).
* The loss of each process is the *sum* over its samples times ``world / global_batch``:
  ``DistributedDataParallel`` averages gradients over processes, so the gradient is that of the
  mean over the global batch, whatever the parts' sizes.
* :func:`synced_batchnorm`: while training, BatchNorm layers normalize with the mean and variance
  of the global batch and update their running statistics with them, as one process would
  (``torch.nn.SyncBatchNorm`` refuses CPU tensors). Two all-reduces per layer forward and two
  backward. The layers are patched in place for the run and restored after it, so the model's
  structure and ``state_dict`` keys never change.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["epoch_batches", "synced_batchnorm"]


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int,
                  world: int) -> list[tuple[list[int], list[int]]]:
    """This process's part of every global batch of an epoch, with the global batch.

    Args:
        n: dataset length.
        batch_size: global batch size.
        seed: shuffling seed; the order is ``randperm(n)`` seeded with ``seed + epoch``.
        epoch: epoch number.
        rank: this process.
        world: number of processes.

    Returns:
        ``[(indices of this rank, indices of the global batch), ...]``, one entry per step.
    """
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    order = torch.randperm(n, generator=g).tolist()
    steps = []
    for start in range(0, n, batch_size):
        batch = order[start:start + batch_size]
        m = len(batch)
        steps.append((batch[rank * m // world:(rank + 1) * m // world], batch))
    return steps


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of the sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def _global_batchnorm(self: _BatchNorm, x: Tensor) -> Tensor:
    """``_BatchNorm.forward`` with the statistics of the batch over all processes."""
    use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
    if not use_batch_stats:
        return type(self).forward(self, x)
    self._check_input_dim(x)
    factor = 0.0 if self.momentum is None else self.momentum
    update = self.training and self.track_running_stats and self.running_mean is not None
    if update and self.num_batches_tracked is not None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    local_count = x.numel() // x.shape[1] if x.shape[1] else 0
    sums = _AllReduceSum.apply(torch.cat([x.sum(dims), x.new_full((1,), local_count)]))
    count = float(sums[-1].detach())
    if count <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got {int(count)} over all "
                         f"processes (input of this process: {tuple(x.shape)})")
    mean = sums[:-1] / count
    centered = x - mean.reshape(shape)
    var = _AllReduceSum.apply((centered * centered).sum(dims)) / count
    y = centered * torch.rsqrt(var + self.eps).reshape(shape)
    if self.weight is not None:
        y = y * self.weight.reshape(shape)
    if self.bias is not None:
        y = y + self.bias.reshape(shape)
    if update:
        with torch.no_grad():
            self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
            self.running_var.mul_(1 - factor).add_(var.detach() * (count / (count - 1)), alpha=factor)
    return y


@contextmanager
def synced_batchnorm(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, ``model``'s BatchNorm layers use global-batch statistics while training.

    Args:
        model: patched in place, and restored on exit.
        enabled: False: a no-op.

    Yields:
        the number of BatchNorm layers patched.
    """
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)] if enabled else []
    for layer in layers:
        layer.forward = types.MethodType(_global_batchnorm, layer)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)

