"""Training checkpoints: the path is checked before a run, and a file is read only if it is ours.

A checkpoint is a dict with the keys :data:`CHECKPOINT_KEYS`, loaded with
``torch.load(weights_only=True)`` (only tensors, plain values and the run's history class), so a
foreign pickle never runs code. Every way a file can be wrong (unreadable, corrupt, truncated,
foreign, another model's, another optimizer's) is one ``ValueError`` naming the file and the
reason.
"""

from __future__ import annotations

import os
import re
from typing import Any, Optional

import torch
from torch import nn

from ._io import probe_writable

CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "history")


def check_checkpoint(checkpoint: object) -> Optional[str]:
    """None, or the path as a str after checking its folder can be written (before any training)."""
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, (str, os.PathLike)) or not isinstance(os.fspath(checkpoint), str):
        raise TypeError(f"checkpoint: expected None or a file path, got {checkpoint!r} ({type(checkpoint).__name__})")
    path = os.fspath(checkpoint)
    if not path:
        raise ValueError("checkpoint: expected None or a file path, got ''")
    if os.path.isdir(path):
        raise ValueError(f"checkpoint: expected a file path, got the directory {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):  # write_atomic creates missing folders
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"checkpoint: cannot write {path!r}: {folder!r} is not a directory")
    probe_writable(folder, path, "checkpoint")
    return path


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")
    return f"{type(exc).__name__}: {text[:200]}"


def _unreadable(path: str, exc: BaseException) -> ValueError:
    """One clear error for a file ``torch.load(weights_only=True)`` refused."""
    text = str(exc)
    foreign = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if foreign:
        return ValueError(f"checkpoint: {path!r} is not a training checkpoint: it holds a {foreign.group(1)} object, "
                          "which is not loaded (unpickling it could run code)")
    detail = re.search(r"WeightsUnpickler error: *\n+([^\n]+)", text)
    reason = f"{type(exc).__name__}: {detail.group(1).strip()}" if detail else _first_line(exc)
    return ValueError(f"checkpoint: cannot read {path!r}: not a file written by torch.save, or corrupt or truncated "
                      f"({reason})")


def _describe_mismatch(own: dict, theirs: dict) -> str:
    """Missing, unexpected and differently shaped keys of a state dict, a few of each."""

    def few(keys):
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    missing = [k for k in own if k not in theirs]
    unexpected = [k for k in theirs if k not in own]
    shapes = [f"{k} {tuple(getattr(theirs[k], 'shape', ()))} instead of {tuple(own[k].shape)}" for k in own
              if k in theirs and getattr(theirs[k], "shape", None) != own[k].shape]
    parts = [f"{label}: {few(keys)}" for label, keys in
             (("missing", missing), ("unexpected", unexpected), ("shapes", shapes)) if keys]
    return "; ".join(parts)


def load_checkpoint(path: str, model: nn.Module, opt: Any, sched: Any, history_type: type) -> tuple[Any, int]:
    """Restore ``model``, ``opt`` and ``sched`` from ``path``; returns (history, first epoch to run).

    Args:
        path: a file :func:`sepconv.train.train` wrote.
        model: the model of the run.
        opt: its optimizer.
        sched: its learning-rate schedule.
        history_type: the class of the saved history (allowed to be unpickled).

    Raises:
        ValueError: the file cannot be read, is not a training checkpoint, or does not fit the run.
    """
    try:
        with torch.serialization.safe_globals([history_type]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _unreadable(path, exc) from exc
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        got = (f"a dict without {[k for k in CHECKPOINT_KEYS if k not in state]}" if isinstance(state, dict)
               else f"a {type(state).__name__}")
        raise ValueError(f"checkpoint: {path!r} is not a training checkpoint: expected a dict with keys "
                         f"{list(CHECKPOINT_KEYS)}, got {got}")
    if not isinstance(state["model"], dict) or not isinstance(state["history"], history_type):
        raise ValueError(f"checkpoint: {path!r} is not a training checkpoint: 'model' or 'history' has the wrong type")
    mismatch = _describe_mismatch(model.state_dict(), state["model"])
    if mismatch:
        raise ValueError(f"checkpoint: {path!r} holds the weights of a different model ({mismatch})")
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
    except Exception as exc:
        raise ValueError(f"checkpoint: {path!r} does not match this run ({_first_line(exc)})") from exc
    history = state["history"]
    start = history.resumed_from = int(state["epoch"]) + 1
    return history, start
