"""Interleaved timing: candidates run in turn, round by round; medians (noisy machines)."""

import statistics
import time
from collections.abc import Callable

import torch


def interleaved(fns: dict[str, Callable[[], object]], rounds: int = 20, warmup: int = 2) -> dict[str, float]:
    """Median milliseconds per candidate; each round calls every candidate once, in turn.

    Example:
        >>> t = interleaved({"a": lambda: sum(range(100)), "b": lambda: sum(range(1000))}, rounds=3)
        >>> sorted(t)
        ['a', 'b']
    """
    times: dict[str, list] = {k: [] for k in fns}
    with torch.inference_mode():
        for f in fns.values():
            for _ in range(warmup):
                f()
        for _ in range(rounds):
            for k, f in fns.items():
                t = time.perf_counter()
                f()
                times[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}
