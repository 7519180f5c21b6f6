"""Choosing one candidate per layer: lossless, under a tolerance, at a fixed rank, or under a
MAC budget (global greedy allocation on each layer's lower convex hull, or a uniform share).
See the docstring of :mod:`sepconv.convert` for the objective."""

import heapq
import math
from typing import Optional

import torch

from .candidates import _Candidate, _Layer


def _hull(points: list[_Candidate]) -> list[_Candidate]:
    """Lower convex hull of (macs, error**2), from the cheapest point, error decreasing."""
    pts = sorted(points, key=lambda c: (c.macs, c.error))
    front = []
    for p in pts:  # Pareto front: strictly decreasing error with increasing MACs
        if not front or p.error < front[-1].error - 1e-15:
            front.append(p)
    hull: list[_Candidate] = []
    for p in front:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b if it lies on or above the segment a -> p
            cross = (b.macs - a.macs) * (p.error**2 - a.error**2) - (b.error**2 - a.error**2) * (p.macs - a.macs)
            if cross <= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def _allocate_global(layers: list[_Layer], limit: int) -> dict[str, _Candidate]:
    hulls = {l.name: _hull(l.candidates) for l in layers}
    choice = {name: 0 for name in hulls}
    used = sum(h[0].macs for h in hulls.values())
    heap = []

    def push(name):
        h, i = hulls[name], choice[name]
        if i + 1 < len(h):
            gain = h[i].error ** 2 - h[i + 1].error ** 2
            extra = h[i + 1].macs - h[i].macs
            heapq.heappush(heap, (-gain / max(extra, 1), name))

    for name in hulls:
        push(name)
    while heap:
        _, name = heapq.heappop(heap)
        h, i = hulls[name], choice[name]
        extra = h[i + 1].macs - h[i].macs
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
            allocation: str, total: int) -> dict[str, _Candidate]:
    """One candidate per layer name, by the rule the arguments select (``total``: the model's MACs)."""
    if budget is None and rank is None and tolerance is None:  # lossless
        eps = 100 * torch.finfo(layers[0].weight.dtype).eps
        return {l.name: min((c for c in l.candidates if c.weight_error <= eps), key=lambda c: c.macs) for l in layers}
    if tolerance is not None:
        return {l.name: min((c for c in l.candidates if c.error <= tolerance), key=lambda c: c.macs) for l in layers}
    if rank is not None:
        return {l.name: min(l.candidates, key=lambda c: (c.structure == "dense", c.error)) for l in layers}
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
