"""A small, clear training loop (not a framework), shared by :func:`train` and :func:`distill`.

Choices, and why:

* **AdamW** (``weight_decay=1e-4``) with a **cosine** learning-rate schedule over all steps and no
  warm-up: robust for small CNNs without tuning, and the schedule ends at zero so the last epoch
  settles.
* **Determinism**: the model's initialization is the caller's; data order comes from a
  ``DistributedSampler`` seeded with ``seed`` and re-shuffled per epoch with ``set_epoch``, the
  same in one process and in many, so a ``torchrun`` run and a single-process run of the same
  global batch see the same batches.
* **Checkpoints** are written at the end of every epoch, atomically (a temporary file in the
  same directory, then ``os.replace``): an interrupted run never leaves a half-written file, and
  ``resume=True`` continues after the last finished epoch with the model, optimizer, schedule
  and random state restored.
* **Distributed**: under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialized with
  the ``gloo`` backend (CPU), the model is wrapped in ``DistributedDataParallel``, each rank takes
  ``batch_size / world_size`` samples per step, and only rank 0 prints and writes checkpoints.
* **Distillation** (Hinton et al. 2015): ``alpha * T**2 * KL(softmax(t/T) || softmax(s/T))`` plus
  ``(1 - alpha) * cross_entropy(s, labels)`` when the data has labels.
"""

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ._io import write_atomic

__all__ = ["train", "distill", "evaluate", "History", "save_atomic"]


@dataclass
class History:
    """Per-epoch metrics of a run (``eval_accuracy`` only when eval data was given)."""

    epochs: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    train_accuracy: list = field(default_factory=list)
    eval_accuracy: list = field(default_factory=list)
    resumed_from: Optional[int] = None


def save_atomic(obj, path: str) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename: never a partial file."""
    write_atomic(path, lambda f: torch.save(obj, f))


def _dist() -> tuple[int, int]:
    """(rank, world size); initializes gloo under torchrun if nobody did."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _split(batch):
    if isinstance(batch, (list, tuple)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on a dataset of ``(input, label)`` pairs (eval mode).

    Example:
        >>> from sepconv.data import DigitsDataset
        >>> acc = evaluate(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), DigitsDataset('test'))
        >>> 0.0 <= acc <= 1.0
        True
    """
    was = model.training
    model.eval()
    correct = total = 0
    for x, y in DataLoader(data, batch_size=batch_size):
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    model.train(was)
    return correct / max(total, 1)


def _check(name: str, value, kind=int, minimum=1):
    if isinstance(value, bool) or not isinstance(value, kind) or value < minimum:
        raise ValueError(f"{name}: expected a {kind.__name__} >= {minimum}, got {value!r}")


def _fit(
    model: nn.Module,
    data: Dataset,
    epochs: int,
    lr: float,
    batch_size: int,
    loss_fn: Callable[[Tensor, Tensor, Optional[Tensor]], Tensor],
    eval_data: Optional[Dataset],
    checkpoint: Optional[str],
    resume: bool,
    seed: int,
    progress: bool,
    weight_decay: float,
    description: str,
) -> History:
    _check("epochs", epochs)
    _check("batch_size", batch_size)
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr: expected a positive learning rate, got {lr!r}")
    if not isinstance(data, Dataset):
        raise TypeError(f"data: expected a torch.utils.data.Dataset, got {type(data).__name__}")
    rank, world = _dist()
    if batch_size % world:
        raise ValueError(f"batch_size: expected a multiple of the {world} processes, got {batch_size}")
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    loader = DataLoader(data, batch_size=batch_size // world, sampler=sampler)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    history = History()
    start = 0
    if checkpoint and resume and os.path.exists(checkpoint):
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        history = state["history"]
        start = history.resumed_from = state["epoch"] + 1

    bar = None
    if progress and rank == 0 and start < epochs:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.3f}"), TimeRemainingColumn(),
                       transient=True)
        task = bar.add_task(description, total=(epochs - start) * len(loader), loss=0.0, acc=0.0)
        bar.start()
    try:
        for epoch in range(start, epochs):
            sampler.set_epoch(epoch)
            net.train()
            loss_sum = torch.zeros(3, dtype=torch.float64)  # loss*n, correct, n
            for batch in loader:
                x, y = _split(batch)
                out = net(x)
                loss = loss_fn(out, x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                n = x.shape[0]
                loss_sum += torch.tensor([float(loss.detach()) * n, float((out.argmax(1) == y).sum()) if y is not None else 0.0, n])
                if bar is not None:
                    bar.update(task, advance=1, loss=float(loss_sum[0] / loss_sum[2]),
                               acc=float(loss_sum[1] / loss_sum[2]))
            if world > 1:
                dist.all_reduce(loss_sum)
            history.epochs.append(epoch)
            history.train_loss.append(float(loss_sum[0] / loss_sum[2]))
            history.train_accuracy.append(float(loss_sum[1] / loss_sum[2]))
            if eval_data is not None:
                history.eval_accuracy.append(evaluate(model, eval_data))
            if checkpoint and rank == 0:
                save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                             "rng": torch.get_rng_state(), "epoch": epoch, "history": history}, checkpoint)
            if world > 1:
                dist.barrier()
    finally:
        if bar is not None:
            bar.stop()
    model.eval()
    return history


def train(model: nn.Module, data: Dataset, epochs: int = 10, lr: float = 3e-3, batch_size: int = 64,
          eval_data: Optional[Dataset] = None, checkpoint: Optional[str] = None, resume: bool = True,
          seed: int = 0, progress: bool = True, weight_decay: float = 1e-4) -> History:
    """Train a classifier with cross-entropy on ``(input, label)`` data.

    Args:
        model: trained in place; left in eval mode.
        data: a ``Dataset`` of ``(input, label)`` pairs.
        epochs: total epochs (a resumed run continues up to this many).
        lr: peak AdamW learning rate (cosine decay to zero).
        batch_size: global batch size (split across ``torchrun`` processes).
        eval_data: evaluated (top-1 accuracy) after every epoch.
        checkpoint: path of the checkpoint written atomically after every epoch.
        resume: continue from ``checkpoint`` if it exists.
        seed: data order.
        progress: a rich progress bar with loss and accuracy (rank 0 only).

    Returns:
        :class:`History`.

    Example:
        >>> from sepconv.data import DigitsDataset
        >>> h = train(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), DigitsDataset(), epochs=1, progress=False)
        >>> len(h.train_loss)
        1
    """

    def loss_fn(out, x, y):
        if y is None:
            raise ValueError("data: expected (input, label) pairs for train(), got inputs only")
        return F.cross_entropy(out, y)

    return _fit(model, data, epochs, lr, batch_size, loss_fn, eval_data, checkpoint, resume, seed, progress,
                weight_decay, "train")


def distill(student: nn.Module, teacher: nn.Module, data: Dataset, epochs: int = 1, lr: float = 3e-4,
            temperature: float = 4.0, alpha: float = 0.9, batch_size: int = 64, eval_data: Optional[Dataset] = None,
            checkpoint: Optional[str] = None, resume: bool = True, seed: int = 0, progress: bool = True,
            weight_decay: float = 0.0) -> History:
    """Knowledge distillation: train ``student`` to match ``teacher``'s soft outputs.

    Loss: ``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student,
    labels)``; with unlabeled data (inputs only) ``alpha`` is 1. The teacher runs in eval mode
    without gradients and is never modified.

    Args:
        student: e.g. the model :func:`sepconv.convert` returned; trained in place.
        teacher: the original model.
        data: a ``Dataset`` of inputs or ``(input, label)`` pairs.
        lr: peak learning rate; small by default, since a converted student starts close to its
            teacher and a large step would first undo the conversion's fit.
        temperature: T, softening both distributions.
        alpha: weight of the soft-target term.
        Others: as :func:`train`.

    Returns:
        :class:`History`.
    """
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher: expected an nn.Module, got {type(teacher).__name__}")
    if not temperature > 0:
        raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha: expected a weight in [0, 1], got {alpha!r}")
    teacher_was = teacher.training
    teacher.eval()

    def loss_fn(out, x, y):
        with torch.no_grad():
            soft = F.log_softmax(teacher(x) / temperature, 1)
        kd = F.kl_div(F.log_softmax(out / temperature, 1), soft, reduction="batchmean", log_target=True)
        kd = kd * temperature**2
        if y is None:
            return kd
        return alpha * kd + (1 - alpha) * F.cross_entropy(out, y)

    try:
        return _fit(student, data, epochs, lr, batch_size, loss_fn, eval_data, checkpoint, resume, seed, progress,
                    weight_decay, "distill")
    finally:
        teacher.train(teacher_was)
