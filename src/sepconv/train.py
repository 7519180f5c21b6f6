"""A small, clear training loop (not a framework), shared by :func:`train` and :func:`distill`.

Choices, and why:

* **AdamW** (``weight_decay=1e-4``) with a **cosine** learning-rate schedule over all steps and no
  warm-up: robust for small CNNs without tuning, and the schedule ends at zero so the last epoch
  settles.
* **Distillation uses RAdam** (rectified Adam, with AdamW's decoupled weight decay) instead. Adam's
  first steps divide the gradient by its own magnitude, so each one moves *every* weight by about
  ``lr`` whatever the gradient's size: a converted student starts close to its teacher (tiny
  gradients), and one such step of 3e-4 on a ResNet-18 raised its output error from 0.016 to 1.8.
  RAdam takes plain momentum steps (proportional to the gradient) until its estimate of the
  gradient's variance is reliable, then Adam steps.
* **Determinism**: the model's initialization is the caller's; the data order is ``randperm``
  seeded with ``seed + epoch`` (what ``DistributedSampler`` draws), the same in one process and in
  many, so a ``torchrun`` run and a single-process run of the same global batch see the same
  batches.
* **Checkpoints** are written at the end of every epoch, atomically (a temporary file in the
  same directory, then ``os.replace``): an interrupted run never leaves a half-written file, and
  ``resume=True`` continues after the last finished epoch with the model, optimizer, schedule
  and random state restored.
* **Distributed**: under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialized with
  the ``gloo`` backend (CPU), the model is wrapped in ``DistributedDataParallel``, each rank takes
  an equal part (to one sample) of every global batch, the loss is weighted by the global batch
  size, BatchNorm layers use the global batch's statistics (``sync_batchnorm``), and only rank 0
  prints and writes checkpoints: see :mod:`sepconv._distributed` for why this equals one process.
* **Checks**: arguments are checked before anything runs (also that the checkpoint's folder is
  writable); every batch is checked for non-finite inputs and out-of-range labels before it can
  reach the weights; a checkpoint that is not one of ours is refused with the reason.
* **Distillation** (Hinton et al. 2015): ``alpha * T**2 * KL(softmax(t/T) || softmax(s/T))`` plus
  ``(1 - alpha) * cross_entropy(s, labels)`` when the data has labels.
"""

import math
import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torch.utils.data.dataloader import default_collate

from ._checkpoint import check_checkpoint, load_checkpoint
from ._checks import check_module, check_positive_int
from ._distributed import epoch_batches, synced_batchnorm
from ._io import write_atomic

__all__ = ["train", "distill", "evaluate", "History", "save_atomic"]


@dataclass
class History:
    """Per-epoch metrics of a run (``eval_accuracy`` only when eval data was given;
    ``train_accuracy`` None for an epoch of unlabelled data)."""

    epochs: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    train_accuracy: list = field(default_factory=list)
    eval_accuracy: list = field(default_factory=list)
    resumed_from: Optional[int] = None


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename: never a partial file.

    Args:
        obj: anything ``torch.save`` takes.
        path: the file to write (a ``str`` or ``os.PathLike``; not a directory).
    """
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
        raise TypeError(f"path: expected a file path, got {path!r} ({type(path).__name__})")
    if os.path.isdir(path):
        raise ValueError(f"path: expected a file path, got the directory {os.fspath(path)!r}")
    write_atomic(os.fspath(path), lambda f: torch.save(obj, f))


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


def _check_dataset(name: str, value: object) -> None:
    if not isinstance(value, Dataset) or isinstance(value, IterableDataset):
        raise TypeError(f"{name}: expected a torch.utils.data.Dataset, got {type(value).__name__}")
    try:
        n = len(value)
    except TypeError:
        raise TypeError(f"{name}: expected a Dataset with a length, got {type(value).__name__} "
                        "without __len__") from None
    if n < 1:
        raise ValueError(f"{name}: expected a non-empty dataset, got {n} samples")


def _check_number(name: str, value: object, what: str, ok: Callable[[float], bool]) -> float:
    """A finite real number (not a bool) for which ``ok`` holds; ``what`` describes it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected {what}, got {value!r} ({type(value).__name__})")
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return float(value)


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r} ({type(value).__name__})")


def _check_pairs(name: str, data: Dataset, purpose: str) -> None:
    """The first sample must be an ``(input, label)`` pair (checked before training, not after an epoch)."""
    if _split(data[0])[1] is None:
        raise ValueError(f"{name}: expected (input, label) pairs{purpose}, got inputs only")


def _check_common(data, epochs, lr, batch_size, eval_data, checkpoint, resume, seed, progress, weight_decay,
                  sync_batchnorm) -> Optional[str]:
    """Checks shared by :func:`train` and :func:`distill`; returns the checkpoint path."""
    _check_dataset("data", data)
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    _check_number("lr", lr, "a finite number > 0", lambda v: v > 0)
    _check_number("weight_decay", weight_decay, "a finite number >= 0", lambda v: v >= 0)
    if eval_data is not None:
        _check_dataset("eval_data", eval_data)
        _check_pairs("eval_data", eval_data, "")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed: expected an int, got {seed!r} ({type(seed).__name__})")
    if not -2**63 <= seed < 2**63:  # torch.Generator.manual_seed(seed + epoch) must take it
        raise ValueError(f"seed: expected an int in [-2**63, 2**63), got {seed!r}")
    for name, flag in (("resume", resume), ("progress", progress), ("sync_batchnorm", sync_batchnorm)):
        _check_flag(name, flag)
    return check_checkpoint(checkpoint)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on a dataset of ``(input, label)`` pairs (eval mode).

    Args:
        model: a classifier returning ``(batch, classes)`` scores; its train/eval mode is restored.
        data: a ``Dataset`` of ``(input, label)`` pairs.
        batch_size: samples per forward pass.

    Returns:
        The share of samples whose highest score is their label.

    Example:
        >>> from sepconv.data import DigitsDataset
        >>> acc = evaluate(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), DigitsDataset('test'))
        >>> 0.0 <= acc <= 1.0
        True
    """
    check_module("model", model)
    _check_dataset("data", data)
    check_positive_int("batch_size", batch_size)
    was = model.training
    model.eval()
    correct = total = 0
    try:
        for batch in DataLoader(data, batch_size=batch_size):
            x, y = _split(batch)
            if y is None:
                raise ValueError("data: expected (input, label) pairs for evaluate(), got inputs only")
            out = _check_output("model", model(x), y)
            correct += int((out.argmax(1) == y).sum())
            total += len(y)
    finally:
        model.train(was)
    return correct / max(total, 1)


def _check_output(name: str, out: object, y: Optional[Tensor]) -> Tensor:
    """The model's output must be ``(batch, classes)`` scores; integer labels must index a class."""
    if not isinstance(out, Tensor) or out.dim() != 2:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{name}: expected (batch, classes) scores from forward(), got {got}")
    if y is not None and y.numel() and not y.is_floating_point():
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= out.shape[1]:
            bad = low if low < 0 else high
            raise ValueError(f"data: expected labels in [0, {out.shape[1] - 1}] for a model with {out.shape[1]} "
                             f"outputs, got {bad}")
    return out


def _empty(batch: Any) -> Any:
    """The batch's structure with no sample in it."""
    if isinstance(batch, Tensor):
        return batch[:0]
    if isinstance(batch, Mapping):
        return {k: _empty(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        items = [_empty(b) for b in batch]
        return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)  # a namedtuple, or not
    return batch


def _take(data: Dataset, indices: list[int], fallback: int) -> Any:
    """Collate ``data[indices]``; an empty part keeps the batch's structure (shapes from ``fallback``)."""
    batch = default_collate([data[i] for i in indices]) if indices else _empty(default_collate([data[fallback]]))
    x, _ = _split(batch)
    if isinstance(x, Tensor) and x.is_floating_point() and x.numel():
        bad = ~torch.isfinite(x.reshape(len(x), -1)).all(1)
        if bad.any():
            raise ValueError(f"data: expected finite inputs, got NaN or Inf in sample {indices[int(bad.nonzero()[0])]}")
    return batch


def _together(world: int, fn: Callable, *args: Any) -> Any:
    """``fn(*args)``; under torchrun, if it fails in one process all stop (none waits in a collective)."""
    if world == 1:
        return fn(*args)
    error, result = None, None
    try:
        result = fn(*args)
    except Exception as exc:  # re-raised below, in this process, with its own traceback
        error = exc
    failed = torch.tensor([-1 if error is None else dist.get_rank()])
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    if error is not None:
        raise error
    if int(failed) >= 0:
        raise RuntimeError(f"training stopped: process {int(failed)} failed at this step (its own error says why)")
    return result


def _finite_loss(loss_fn: Callable, out: Tensor, x: Tensor, y: Optional[Tensor], where: str) -> Tensor:
    loss = loss_fn(out, x, y)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss: got {float(loss.detach())} at {where}; the weights are kept from before "
                                 "this step (a lower lr may help)")
    return loss


def _epoch(net: nn.Module, data: Dataset, steps: list, world: int, loss_fn, opt, sched, bar, task,
           epoch: int) -> Tensor:
    """One epoch; returns (summed loss, correct, samples, labelled samples) of this process."""
    totals = torch.zeros(4, dtype=torch.float64)
    for step, (indices, batch_indices) in enumerate(steps):
        x, y = _split(_together(world, _take, data, indices, batch_indices[0]))
        out = net(x)
        # summed over this process's samples
        loss = _together(world, _finite_loss, loss_fn, out, x, y, f"epoch {epoch}, step {step}")
        opt.zero_grad(set_to_none=True)
        (loss * (world / len(batch_indices))).backward()  # DDP averages: the global batch's mean
        opt.step()
        sched.step()
        correct = float((out.argmax(1) == y).sum()) if y is not None else 0.0
        labelled = len(indices) if y is not None else 0
        totals += torch.tensor([float(loss.detach()), correct, len(indices), labelled], dtype=torch.float64)
        if bar is not None:
            bar.update(task, advance=1, loss=float(totals[0] / max(totals[2], 1)),
                       acc=f" acc {float(totals[1] / totals[3]):.3f}" if totals[3] > 0 else "")
    return totals


def _progress(enabled: bool, description: str, total: int):
    if not enabled:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}{task.fields[acc]}"), TimeRemainingColumn(),
                   transient=True)
    task = bar.add_task(description, total=total, loss=0.0, acc="")
    bar.start()
    return bar, task


def _fit(model: nn.Module, data: Dataset, epochs: int, lr: float, batch_size: int,
         loss_fn: Callable[[Tensor, Tensor, Optional[Tensor]], Tensor], eval_data: Optional[Dataset],
         checkpoint: Optional[str], resume: bool, seed: int, progress: bool, weight_decay: float,
         sync_batchnorm: bool, description: str, rectified: bool = False) -> History:
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"model: expected trainable parameters, got none in {type(model).__name__}")
    rank, world = _dist()
    per_epoch = math.ceil(len(data) / batch_size)
    if rectified:  # see the module's docstring: no sign-like first steps
        opt = torch.optim.RAdam(model.parameters(), lr=lr, weight_decay=weight_decay, decoupled_weight_decay=True)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    history, start = History(), 0
    if checkpoint and resume and os.path.exists(checkpoint):
        history, start = load_checkpoint(checkpoint, model, opt, sched, History)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    bar, task = _progress(progress and rank == 0 and start < epochs, description, (epochs - start) * per_epoch)
    try:
        with synced_batchnorm(model, enabled=sync_batchnorm and world > 1):
            for epoch in range(start, epochs):
                net.train()
                batches = epoch_batches(len(data), batch_size, seed, epoch, rank, world)
                totals = _epoch(net, data, batches, world, loss_fn, opt, sched, bar, task, epoch)
                if world > 1:
                    dist.all_reduce(totals)
                history.epochs.append(epoch)
                history.train_loss.append(float(totals[0] / totals[2]))
                # unlabelled data (distillation without labels): no accuracy, not 0%
                history.train_accuracy.append(float(totals[1] / totals[3]) if totals[3] > 0 else None)
                if eval_data is not None:
                    history.eval_accuracy.append(evaluate(model, eval_data))
                if checkpoint and rank == 0:
                    save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                 "scheduler": sched.state_dict(), "rng": torch.get_rng_state(), "epoch": epoch,
                                 "history": history}, checkpoint)
                if world > 1:
                    dist.barrier()
    finally:
        if bar is not None:
            bar.stop()
    model.eval()
    return history


def train(model: nn.Module, data: Dataset, epochs: int = 10, lr: float = 3e-3, batch_size: int = 64,
          eval_data: Optional[Dataset] = None, checkpoint: Optional[str] = None, resume: bool = True,
          seed: int = 0, progress: bool = True, weight_decay: float = 1e-4, sync_batchnorm: bool = True) -> History:
    """Train a classifier with cross-entropy on ``(input, label)`` data.

    Args:
        model: returns ``(batch, classes)`` scores; trained in place; left in eval mode.
        data: a ``Dataset`` of ``(input, label)`` pairs, labels in ``[0, classes)``; inputs must be
            finite.
        epochs: total epochs (a resumed run continues up to this many).
        lr: peak AdamW learning rate (cosine decay to zero).
        batch_size: global batch size (split across ``torchrun`` processes, to one sample).
        eval_data: evaluated (top-1 accuracy) after every epoch.
        checkpoint: path of the checkpoint written atomically after every epoch; its folder must be
            writable (checked before training starts).
        resume: continue from ``checkpoint`` if it exists.
        seed: data order.
        progress: a rich progress bar with loss and accuracy (rank 0 only).
        weight_decay: AdamW's decoupled weight decay.
        sync_batchnorm: under ``torchrun``, BatchNorm layers normalize with the statistics of the
            whole global batch, as in one process (two all-reduces per layer and pass); False keeps
            each process's own statistics. No effect in one process.

    Returns:
        :class:`History`.

    Raises:
        TypeError, ValueError: a bad argument, a checkpoint that cannot be written or read, a
            non-finite input, a label out of range, or outputs that are not ``(batch, classes)``.

    Example:
        >>> from sepconv.data import DigitsDataset
        >>> h = train(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), DigitsDataset(), epochs=1, progress=False)
        >>> len(h.train_loss)
        1
    """
    check_module("model", model)
    checkpoint = _check_common(data, epochs, lr, batch_size, eval_data, checkpoint, resume, seed, progress,
                               weight_decay, sync_batchnorm)
    _check_pairs("data", data, " for train()")

    def loss_fn(out, x, y):
        if y is None:
            raise ValueError("data: expected (input, label) pairs for train(), got inputs only")
        return F.cross_entropy(_check_output("model", out, y), y, reduction="sum")

    return _fit(model, data, epochs, lr, batch_size, loss_fn, eval_data, checkpoint, resume, seed, progress,
                weight_decay, sync_batchnorm, "train")


def distill(student: nn.Module, teacher: nn.Module, data: Dataset, epochs: int = 1, lr: float = 3e-4,
            temperature: float = 4.0, alpha: float = 0.9, batch_size: int = 64, eval_data: Optional[Dataset] = None,
            checkpoint: Optional[str] = None, resume: bool = True, seed: int = 0, progress: bool = True,
            weight_decay: float = 0.0, sync_batchnorm: bool = True) -> History:
    """Knowledge distillation: train ``student`` to match ``teacher``'s soft outputs.

    Loss: ``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student,
    labels)``; with unlabeled data (inputs only) ``alpha`` is 1. The teacher runs in eval mode
    without gradients and is never modified.

    Args:
        student: e.g. the model :func:`sepconv.convert` returned; trained in place. Its outputs
            must have the teacher's shape ``(batch, classes)`` (checked on every batch).
        teacher: the original model.
        data: a ``Dataset`` of inputs or ``(input, label)`` pairs.
        lr: peak RAdam learning rate (cosine decay to zero); small by default, since a converted
            student starts close to its teacher and a large step would first undo the conversion's
            fit. The first steps are momentum steps proportional to the gradient (RAdam), so they
            do not move every weight by ``lr`` as Adam's first steps do.
        temperature: T > 0, softening both distributions.
        alpha: weight of the soft-target term, in [0, 1].
        Others: as :func:`train`.

    Returns:
        :class:`History`.

    Raises:
        TypeError, ValueError: as :func:`train`, and when the student's and the teacher's outputs
            differ in shape.
    """
    check_module("student", student)
    check_module("teacher", teacher)
    checkpoint = _check_common(data, epochs, lr, batch_size, eval_data, checkpoint, resume, seed, progress,
                               weight_decay, sync_batchnorm)
    temperature = _check_number("temperature", temperature, "a finite number > 0", lambda v: v > 0)
    alpha = _check_number("alpha", alpha, "a weight in [0, 1]", lambda v: 0 <= v <= 1)
    teacher_was = teacher.training
    teacher.eval()

    def loss_fn(out, x, y):
        with torch.no_grad():
            target = _check_output("teacher", teacher(x), None)
        if not torch.isfinite(target).all():
            raise ValueError("teacher: expected finite outputs, got NaN or Inf (are its weights finite?)")
        if not isinstance(out, Tensor) or out.shape != target.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"student: expected outputs shaped like the teacher's {tuple(target.shape)}, got {got}")
        _check_output("student", out, y)
        soft = F.log_softmax(target / temperature, 1)
        kd = F.kl_div(F.log_softmax(out / temperature, 1), soft, reduction="sum", log_target=True)
        kd = kd * temperature**2
        if y is None:
            return kd
        return alpha * kd + (1 - alpha) * F.cross_entropy(out, y, reduction="sum")

    try:
        return _fit(student, data, epochs, lr, batch_size, loss_fn, eval_data, checkpoint, resume, seed, progress,
                    weight_decay, sync_batchnorm, "distill", rectified=True)
    finally:
        teacher.train(teacher_was)
