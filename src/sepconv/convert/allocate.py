"""Choosing one candidate per layer: lossless, under a tolerance, at a fixed rank, or under a
budget of MACs or of measured time (global greedy allocation on each layer's lower convex hull,
or a uniform share). See the docstring of :mod:`sepconv.convert` for the objective."""

import heapq
import math
from collections.abc import Callable
from typing import Optional

import torch

from .candidates import _Candidate, _Layer


def _macs(c: _Candidate) -> float:
    return c.macs


def _ms(c: _Candidate) -> float:
    return c.ms


def _hull(points: list[_Candidate], cost: Callable[[_Candidate], float] = _macs) -> list[_Candidate]:
    """Lower convex hull of (cost, error**2), from the cheapest point, error decreasing."""
    pts = sorted(points, key=lambda c: (cost(c), c.error))
    front = []
    for p in pts:  # Pareto front: strictly decreasing error with increasing MACs
        if not front or p.error < front[-1].error - 1e-15:
            front.append(p)
    hull: list[_Candidate] = []
    for p in front:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b if it lies on or above the segment a -> p
            cross = (cost(b) - cost(a)) * (p.error**2 - a.error**2) - (b.error**2 - a.error**2) * (cost(p) - cost(a))
            if cross <= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def _allocate_global(layers: list[_Layer], limit: float,
                     cost: Callable[[_Candidate], float] = _macs) -> dict[str, _Candidate]:
    hulls = {l.name: _hull(l.candidates, cost) for l in layers}  # a layer's weight scales its hull, not its shape
    weight = {l.name: l.sensitivity**2 for l in layers}
    choice = {name: 0 for name in hulls}
    used = sum(cost(h[0]) for h in hulls.values())
    heap = []

    def push(name):
        h, i = hulls[name], choice[name]
        if i + 1 < len(h):
            gain = weight[name] * (h[i].error ** 2 - h[i + 1].error ** 2)
            extra = cost(h[i + 1]) - cost(h[i])
            heapq.heappush(heap, (-gain / max(extra, 1e-9 if cost is _ms else 1), name))

    for name in hulls:
        push(name)
    while heap:
        _, name = heapq.heappop(heap)
        h, i = hulls[name], choice[name]
        extra = cost(h[i + 1]) - cost(h[i])
        if used + extra <= limit:
            used += extra
            choice[name] = i + 1
            push(name)
    return {name: hulls[name][i] for name, i in choice.items()}


def _allocate_uniform(layers: list[_Layer], limit: int, fixed: int) -> dict[str, _Candidate]:
    """Every layer keeps the same fraction of its own dense MACs (the largest that fits)."""
    lo, hi = 0.0, 1.0
    best = None
    for _ in range(40):
        share = (lo + hi) / 2
        pick = {}
        for l in layers:
            fits = [c for c in l.candidates if c.macs <= share * l.dense_macs]
            pick[l.name] = min(fits, key=lambda c: (c.error, c.macs)) if fits else min(l.candidates, key=lambda c: c.macs)
        if fixed + sum(c.macs for c in pick.values()) <= limit:
            best, lo = pick, share
        else:
            hi = share
    if best is None:
        best = {l.name: min(l.candidates, key=lambda c: c.macs) for l in layers}
    return best


def _choose(layers: list[_Layer], budget: Optional[float], rank: Optional[int], tolerance: Optional[float],
            allocation: str, total: int, latency_ms: Optional[float] = None) -> dict[str, _Candidate]:
    """One candidate per layer name, by the rule the arguments select (``total``: the model's MACs;
    ``latency_ms``: for a time budget, the original model's measured time on the paths its layers
    were timed through, of which the predicted time may be ``budget``)."""
    if budget is None and rank is None and tolerance is None:  # lossless
        eps = 100 * torch.finfo(layers[0].weight.dtype).eps
        return {l.name: min((c for c in l.candidates if c.weight_error <= eps), key=lambda c: c.macs) for l in layers}
    if tolerance is not None:
        return {l.name: min((c for c in l.candidates if c.error <= tolerance), key=lambda c: c.macs) for l in layers}
    if rank is not None:
        return {l.name: min(l.candidates, key=lambda c: (c.structure == "dense", c.error)) for l in layers}
    if latency_ms is not None:
        return _allocate_time(layers, budget, latency_ms)
    fixed = total - sum(l.dense_macs for l in layers)
    limit = int(math.floor(budget * total))
    if fixed > limit:
        raise ValueError(
            f"budget: expected at least {fixed / total:.4f}, what the layers that cannot be factorized cost "
            f"alone ({fixed:,} of {total:,} MACs), got {budget}"
        )
    cheapest = fixed + sum(min(c.macs for c in l.candidates) for l in layers)
    if cheapest > limit:
        raise ValueError(f"budget: expected at least {cheapest / total:.4f}, the cheapest factorization of every "
                         f"layer ({cheapest:,} of {total:,} MACs), got {budget}")
    if allocation == "global":
        return _allocate_global(layers, limit - fixed)
    return _allocate_uniform(layers, limit, fixed)


def _dense_ms(layer: _Layer) -> float:
    return next(c.ms for c in layer.candidates if c.structure == "dense")


def predicted_ms(layers: list[_Layer], choice: dict, latency_ms: float) -> float:
    """The model's predicted time: its measured time with each layer's dense time replaced by the
    chosen candidate's (what is not a converted layer is taken as it was measured)."""
    return latency_ms + sum(choice[l.name].ms - _dense_ms(l) for l in layers)


def fit_times(layers: list[_Layer], latency_ms: float) -> None:
    """Make the layers' times add up with the model's: where the dense layers timed alone take
    longer than the whole optimized model (call overhead that the model does not pay per layer),
    every candidate's time is scaled by the same factor, so that the all-dense model is predicted
    at exactly ``latency_ms`` and a budget of 1 is always reachable."""
    dense = sum(_dense_ms(l) for l in layers)
    if dense > latency_ms > 0:
        k = latency_ms / dense
        for l in layers:
            for c in l.candidates:
                c.ms *= k


def time_floor(layers: list[_Layer], latency_ms: float) -> tuple[float, float]:
    """The predicted time of everything that is not a candidate layer (``latency_ms`` minus the
    layers' dense times, at least 0), and the least predicted time of any allocation: that plus
    the fastest candidate of every layer (ms)."""
    fixed = max(latency_ms - sum(_dense_ms(l) for l in layers), 0.0)
    return fixed, fixed + sum(min(c.ms for c in l.candidates) for l in layers)


def _allocate_time(layers: list[_Layer], budget: float, latency_ms: float) -> dict[str, _Candidate]:
    """Global allocation under ``budget * latency_ms``, the original's time on the paths its layers
    were timed through: the prediction is a ratio to the original on the same paths. The time of
    everything that is not a candidate layer (``latency_ms`` minus the layers' dense times, at
    least 0) is fixed."""
    fit_times(layers, latency_ms)
    fixed, fastest = time_floor(layers, latency_ms)
    limit = budget * latency_ms
    if fastest > limit:
        raise ValueError(f"budget: expected at least {fastest / latency_ms:.4f}, the fastest candidate of every "
                         f"layer (predicted {fastest:.3f} ms of the original's {latency_ms:.3f} ms on the same "
                         f"paths on this machine), got {budget}")
    return _allocate_global(layers, limit - fixed, _ms)


def macs_within_time(layers: list[_Layer], budget: float, latency_ms: float,
                     total: int) -> Optional[dict[str, _Candidate]]:
    """The MAC-budget allocation (the per-layer error against MACs) with the most MACs whose
    predicted time fits ``budget * latency_ms``, or ``None`` where none does.

    A second answer to a time budget: the allocation by time spends it where the layers' times say
    it buys the most weight error, and the allocation by MACs, where the MACs do; which of the two
    the network's output prefers, the example decides (:func:`~sepconv.convert.portfolio.best_choice`).
    """
    fit_times(layers, latency_ms)
    fixed = total - sum(l.dense_macs for l in layers)
    lo = fixed + sum(min(c.macs for c in l.candidates) for l in layers)  # MAC limits: lo fits or nothing does
    hi, limit = total, budget * latency_ms

    def pick(macs: int) -> tuple[dict[str, _Candidate], bool]:
        choice = _allocate_global(layers, macs - fixed)
        return choice, predicted_ms(layers, choice, latency_ms) <= limit

    best, fits = pick(lo)
    if not fits:
        return None
    while hi - lo > max(1, total // 1000):  # to 0.1% of the MACs
        mid = (lo + hi) // 2
        choice, fits = pick(mid)
        if fits:
            best, lo = choice, mid
        else:
            hi = mid
    return best

