"""The latency section of ``sepconv demo``: every model timed eager and after
``optimize_for_inference``, interleaved, and each row explained in one sentence from what was
measured.

Why the demo times as it does:

- **Batch size.** One 16x16 digit is ~0.7-3 million MACs, microseconds of arithmetic: at batch 1
  the time is mostly the per-call overhead of each layer, which a converted model (more, smaller
  convolutions) has more of. The table's main columns use a batch of test images, where the MACs
  matter; batch 1 is shown next to it, and its overhead is said in words.
- **One thread.** A model this small is split by torch's thread pool into tiny parallel regions; on a
  machine shared with other work, every region waits for the slowest thread, and a descheduled
  thread costs a whole scheduler time slice (ten times the work itself, measured). Timing on one
  thread measures the models, not the machine's load; the report says so and gives the load.
"""

import copy
import os
from contextlib import contextmanager
from typing import Optional

import torch
from torch import Tensor, nn

from ._timing import interleaved
from .optimize import optimize_for_inference


SLOWER = 1.1  # a converted layer is named as the cause only if it is clearly (10%) slower than the dense one


@contextmanager
def threads(n: int):
    """Run the block on ``n`` torch threads, then restore the previous count."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def load_average() -> Optional[float]:
    """The machine's 1-minute load average, or ``None`` where the OS does not give it."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def conv_count(model: nn.Module) -> int:
    """How many convolutions a forward pass calls (each is at least one kernel launch)."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


def grouped_stage(module: nn.Module) -> str:
    """Why a converted layer's grouped convolution is slow, or ``''`` if it has none but plain
    depthwise ones (one input and one output channel per group, PyTorch's fast kernel)."""
    for c in module.modules():
        if not isinstance(c, nn.Conv2d) or c.groups == 1:
            continue
        per_in, per_out = c.in_channels // c.groups, c.out_channels // c.groups
        if per_in > 1:
            return (f"its {c.in_channels}->{c.out_channels} stage is a grouped convolution summing {per_in} channels "
                    "per group, for which PyTorch has no fast kernel on this CPU")
        if per_out > 1:
            return (f"its depthwise stage makes {per_out} outputs per channel (depth multiplier {per_out}), "
                    "a grouped convolution PyTorch runs more slowly than a plain depthwise one")
    return ""


def measure(entries: list, x: Tensor, batch: int, rounds: int) -> list:
    """Time every model at ``batch`` (eager and optimized) and at batch 1 (optimized), interleaved.

    Args:
        entries: dicts with ``model`` (name), ``module``, ``macs`` and, for a converted model,
            ``layers`` (its report rows as dicts with ``name``, ``structure``, ``rank``).
        x: test images, at least ``batch`` of them.
        batch: the batch size of the main columns.
        rounds: interleaved rounds (batch 1 runs five times as many: it is cheap).

    Returns:
        One row per entry: the entry's fields plus ``eager``, ``optimized``, ``backend``,
        ``batch1``, ``convs`` (ms are medians).
    """
    xb, x1 = x[:batch], x[:1]
    eager, fast, fast1 = {}, {}, {}
    for e in entries:
        eager[e["model"]] = copy.deepcopy(e["module"]).eval()
        fast[e["model"]] = optimize_for_inference(e["module"], xb, rounds=3)
        fast1[e["model"]] = optimize_for_inference(e["module"], x1, rounds=3)
    calls = {f"{k} eager": (lambda m=m: m(xb)) for k, m in eager.items()}
    calls.update({f"{k} optimized": (lambda m=m: m(xb)) for k, m in fast.items()})
    t = interleaved(calls, rounds, warmup=1)
    t1 = interleaved({k: (lambda m=m: m(x1)) for k, m in fast1.items()}, 5 * rounds, warmup=2)
    rows = []
    for e in entries:
        k = e["model"]
        rows.append(dict(e, eager=t[f"{k} eager"], optimized=t[f"{k} optimized"], backend=fast[k].backend,
                         batch1=t1[k], convs=conv_count(e["module"])))
    return rows


def slowest_layer(original: nn.Module, converted: nn.Module, layers: list, x: Tensor, rounds: int) -> Optional[dict]:
    """Each converted layer timed alone against the dense conv it replaced, on the original
    model's own input to that layer (eager, channels_last, interleaved); the layer losing most,
    or ``None`` if none is more than 10% slower than the dense conv it replaced."""
    names = [r["name"] for r in layers if r["structure"] != "dense"]
    inputs: dict = {}
    hooks = [original.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: inputs.__setitem__(n, a[0]))
             for n in names]
    try:
        with torch.inference_mode():
            original.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    calls = {}
    for n in names:
        xi = inputs[n].contiguous(memory_format=torch.channels_last)
        for tag, root in (("dense", original), ("new", converted)):
            m = copy.deepcopy(root.get_submodule(n)).eval().to(memory_format=torch.channels_last)
            calls[(n, tag)] = lambda m=m, xi=xi: m(xi)
    t = interleaved(calls, rounds, warmup=1)
    worst = max(names, key=lambda n: t[(n, "new")] - t[(n, "dense")], default=None)
    if worst is None or t[(worst, "new")] <= SLOWER * t[(worst, "dense")]:
        return None
    row = next(r for r in layers if r["name"] == worst)
    return dict(row, dense_ms=t[(worst, "dense")], new_ms=t[(worst, "new")],
                why=grouped_stage(converted.get_submodule(worst)))


def explain(row: dict, original: dict, batch: int) -> str:
    """One sentence on a latency row: what it is and why it is as fast (or slow) as it is."""
    if row is original:
        per_image = row["batch1"] / (row["optimized"] / batch)
        return (f"The reference: {row['convs']} dense convolutions, {row['macs']:,} MACs per image, "
                f"{row['optimized']:.2f} ms per batch of {batch} on the {row['backend']} path; at batch 1 one image "
                f"costs {per_image:.1f}x its share of a batch, the rest being per-call overhead.")
    speedup, fewer = original["optimized"] / row["optimized"], original["macs"] / row["macs"]
    if speedup >= 1:
        text = f"{speedup:.2f}x faster than the optimized original with {fewer:.1f}x fewer MACs ({row['backend']} path)"
    else:
        text = f"{1 / speedup:.2f}x slower than the optimized original despite {fewer:.1f}x fewer MACs"
        slow = row.get("slowest")
        if slow:
            rank = "" if slow["rank"] is None else f"@{slow['rank']}"
            text += (f": {slow['name']} ({slow['structure']}{rank}) alone takes {slow['new_ms']:.2f} ms (eager) against "
                     f"{slow['dense_ms']:.2f} ms for the dense convolution it replaced")
            text += f", because {slow['why']}" if slow["why"] else ""
        else:
            text += (f": its {row['convs']} convolutions (the original: {original['convs']}) and the tensors between "
                     "the factors cost more than the saved MACs at this batch size")
    ratio1 = row["batch1"] / original["batch1"]
    if ratio1 > 1:
        text += (f"; at batch 1 it takes {ratio1:.2f}x the original's time: one 16x16 image is so little arithmetic "
                 f"that its {row['convs']} convolution calls (the original: {original['convs']}) dominate")
    return text + "."
