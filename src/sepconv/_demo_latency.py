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
DISPATCH_ROUNDS = 7  # optimize_for_inference's timing rounds: with fewer, a loaded machine made it pick a slow path


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


# the fused kernels optimize_for_inference can put in a model (as modules, or as ops in a TorchScript
# graph), as a reader knows them
KERNELS = {"fused_dwpw": ("FusedSeparableConv2d", "fused depthwise + pointwise kernel"),
           "blueprint_pwdw": ("FusedBlueprintConv2d", "fused blueprint kernel"),
           "conv2d_gemm": ("FusedConv2d", "fused stem-conv kernel"),
           "linear_gemm": ("FusedLinear", "prepacked linear kernel")}


def fused_layers(model: nn.Module) -> dict:
    """How many layers of ``model`` (an optimized one: modules, or a TorchScript graph) run on each
    fused kernel, by kernel name (:data:`KERNELS`)."""
    counts: dict = {}
    if isinstance(model, torch.jit.ScriptModule):
        graph = str(model.graph)
        found = {name: graph.count(f"sepconv::{op}(") for op, (_, name) in KERNELS.items()}
    else:
        by_class = {cls: name for cls, name in KERNELS.values()}
        found = {}
        for m in model.modules():
            name = by_class.get(type(m).__name__)
            if name:
                found[name] = found.get(name, 0) + 1
    for _, name in KERNELS.values():  # in a fixed order
        if found.get(name):
            counts[name] = found[name]
    return counts


SEPARABLE_KERNELS = ("fused depthwise + pointwise kernel", "fused blueprint kernel")


def kernels_phrase(counts: dict) -> str:
    """The separable layers' kernels of ``counts`` (:func:`fused_layers`) in words, e.g.
    ``', 2 layers on the fused blueprint kernel'`` (the stem and classifier kernels, which the
    original can use too, are left out)."""
    parts = [f"{n} layer{'s' if n > 1 else ''} on the {name}" for name, n in counts.items() if name in SEPARABLE_KERNELS]
    return f", {' and '.join(parts)}" if parts else ""


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
        ``batch1``, ``convs``, ``kernels`` and ``densified`` (the layers the optimized model runs as
        their dense convolution; ms are medians).
    """
    xb, x1 = x[:batch], x[:1]
    eager, fast, fast1 = {}, {}, {}
    for e in entries:
        eager[e["model"]] = copy.deepcopy(e["module"]).eval()
        fast[e["model"]] = optimize_for_inference(e["module"], xb, rounds=DISPATCH_ROUNDS)
        fast1[e["model"]] = optimize_for_inference(e["module"], x1, rounds=DISPATCH_ROUNDS)
    calls = {f"{k} eager": (lambda m=m: m(xb)) for k, m in eager.items()}
    calls.update({f"{k} optimized": (lambda m=m: m(xb)) for k, m in fast.items()})
    t = interleaved(calls, rounds, warmup=1)
    t1 = interleaved({k: (lambda m=m: m(x1)) for k, m in fast1.items()}, 5 * rounds, warmup=2)
    rows = []
    for e in entries:
        k = e["model"]
        rows.append(dict(e, eager=t[f"{k} eager"], optimized=t[f"{k} optimized"], backend=fast[k].backend,
                         batch1=t1[k], convs=conv_count(e["module"]), kernels=fused_layers(fast[k].module),
                         densified=list(fast[k].densified)))
    return rows


def layer_macs(module: nn.Module, x: Tensor) -> int:
    """Multiply-accumulates per image of the convolutions in ``module`` on the input ``x``."""
    total = 0

    def count(m: nn.Module, args: tuple, out: Tensor) -> None:
        nonlocal total
        total += out[0].numel() * m.weight[0].numel()

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.inference_mode():
            module(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return total


def slow_reason(row: dict, layer: nn.Module, fast: nn.Module, share: float) -> str:
    """Why a converted layer (report row ``row``) runs slower than the dense conv it replaced, after
    optimization (``fast``), keeping ``share`` of its MACs."""
    kept = f"at {row['structure']}@{row['rank']} it keeps {share:.0%} of the dense convolution's MACs"
    kernels = fused_layers(fast)
    if kernels:
        return (f"{kept}, and on the {next(iter(kernels))} its depthwise stage, which reads memory for every few "
                "multiply-adds, runs less efficiently per MAC than the dense convolution")
    grouped = grouped_stage(layer)
    if grouped:
        return f"{kept}, and {grouped}"
    return f"{kept}, in {conv_count(layer)} convolution calls instead of one"


def slowest_layer(original: nn.Module, converted: nn.Module, layers: list, x: Tensor, rounds: int) -> Optional[dict]:
    """Each converted layer against the dense conv it replaced, both after ``optimize_for_inference``
    on the original model's own input to that layer (as the optimized rows run them; interleaved):
    the layer losing most (or gaining least), with its times, MAC share and the reason, or ``None``
    if no layer was converted."""
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
    calls, fast = {}, {}
    for n in names:
        xi = inputs[n].contiguous(memory_format=torch.channels_last)
        for tag, root in (("dense", original), ("new", converted)):
            fast[(n, tag)] = m = optimize_for_inference(root.get_submodule(n), xi, rounds=DISPATCH_ROUNDS)
            calls[(n, tag)] = lambda m=m, xi=xi: m(xi)
    t = interleaved(calls, rounds, warmup=1)
    worst = max(names, key=lambda n: t[(n, "new")] - t[(n, "dense")], default=None)
    if worst is None:
        return None
    row = next(r for r in layers if r["name"] == worst)
    layer, xi = converted.get_submodule(worst), inputs[worst]
    share = layer_macs(layer, xi) / max(1, layer_macs(original.get_submodule(worst), xi))
    return dict(row, dense_ms=t[(worst, "dense")], new_ms=t[(worst, "new")],
                why=slow_reason(row, layer, fast[(worst, "new")].module, share))


def explain(row: dict, original: dict, batch: int) -> str:
    """One sentence on a latency row: what it is and why it is as fast (or slow) as it is."""
    if row is original:
        per_image = row["batch1"] / (row["optimized"] / batch)
        return (f"The reference: {row['convs']} dense convolutions, {row['macs']:,} MACs per image, "
                f"{row['optimized']:.2f} ms per batch of {batch} on the {row['backend']} path; at batch 1 one image "
                f"costs {per_image:.1f}x its share of a batch, the rest being per-call overhead.")
    speedup, fewer = original["optimized"] / row["optimized"], original["macs"] / row["macs"]
    if speedup >= 1:
        text = (f"{speedup:.2f}x faster than the optimized original with {fewer:.1f}x fewer MACs ({row['backend']} path"
                f"{kernels_phrase(row.get('kernels', {}))})")
    else:
        text = f"{1 / speedup:.2f}x slower than the optimized original despite {fewer:.1f}x fewer MACs"
        slow = row.get("slowest")
        rank = "" if not slow or slow["rank"] is None else f"@{slow['rank']}"
        if slow and slow["new_ms"] > SLOWER * slow["dense_ms"]:
            text += (f": {slow['name']} ({slow['structure']}{rank}) alone takes {slow['new_ms']:.2f} ms (optimized) against "
                     f"{slow['dense_ms']:.2f} ms for the dense convolution it replaced")
            text += f", because {slow['why']}" if slow["why"] else ""
        elif slow:  # each layer alone saves little or nothing: the loss is between the layers
            text += (f": no converted layer alone is clearly slower than the dense one it replaced, and the one saving "
                     f"least, {slow['name']} ({slow['structure']}{rank}), takes {slow['new_ms']:.2f} ms (optimized) against "
                     f"{slow['dense_ms']:.2f} ms" + (f" ({slow['why']})" if slow["why"] else "") +
                     f"; the rest is lost between the layers: its {row['convs']} convolutions (the original: "
                     f"{original['convs']}) and the tensors between the factors cost more than the saved MACs at this "
                     "batch size")
        else:
            text += (f": its {row['convs']} convolutions (the original: {original['convs']}) and the tensors between "
                     "the factors cost more than the saved MACs at this batch size")
    if row.get("densified"):
        n = len(row["densified"])
        text += (f"; {n} of its separable layers {'runs' if n == 1 else 'run'} as the dense convolution its factors "
                 f"compose to ({', '.join(row['densified'])}: the same outputs, measured faster here than the factors)")
    ratio1 = row["batch1"] / original["batch1"]
    if ratio1 > 1:
        text += (f"; at batch 1 it takes {ratio1:.2f}x the original's time: one 16x16 image is so little arithmetic "
                 f"that its {row['convs']} convolution calls (the original: {original['convs']}) dominate")
    return text + "."
