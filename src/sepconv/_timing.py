"""Interleaved timing: candidates run in turn, round by round; medians (noisy machines)."""

import random
import statistics
import time
from collections.abc import Callable

import torch


def interleaved(fns: dict[str, Callable[[], object]], rounds: int = 20, warmup: int = 2,
                block: int = 1) -> dict[str, float]:
    """Median milliseconds per call of each candidate; each round runs every candidate in turn.

    With ``block > 1`` each candidate's turn is one untimed call (so it is warm again after the
    previous candidate, and another engine's worker threads have gone quiet) followed by ``block``
    timed calls back to back: each engine is alone in its timed block. Whole-network comparisons
    (sepconv vs ONNX Runtime vs OpenVINO) use blocks of 10.

    Each round runs the candidates in a fresh (seeded, so repeatable) random order, so no
    candidate always runs right after the same neighbour, whose cache footprint and freed memory it
    would otherwise inherit every time. (Rotating a fixed order is not enough: it keeps every
    candidate's predecessor.)

    Example:
        >>> t = interleaved({"a": lambda: sum(range(100)), "b": lambda: sum(range(1000))}, rounds=3)
        >>> sorted(t)
        ['a', 'b']
    """
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block: expected a positive int, got {block!r}")
    times: dict[str, list] = {k: [] for k in fns}
    with torch.inference_mode():
        for f in fns.values():
            for _ in range(warmup):
                f()
        names = list(fns)
        order = random.Random(0)
        for _ in range(rounds):
            order.shuffle(names)
            for k in names:
                if block > 1:
                    fns[k]()
                for _ in range(block):
                    t = time.perf_counter()
                    fns[k]()
                    times[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}
