"""Per-layer work (spectra, factors) spread over the cores: one BLAS thread per layer.

A multi-threaded eigendecomposition or SVD synchronizes its threads at every step of its
reduction to tridiagonal / bidiagonal form; on 2 cores it gains little, and on a loaded machine
(a thread waiting for a descheduled sibling at each barrier) it can be several times slower than
one thread. Independent layers are independent work, so the layers are spread over
``torch.get_num_threads()`` Python threads (the linear algebra releases the GIL), each running
single-threaded, largest first.
"""

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def map_layers(fn: Callable[[T], R], items: Sequence[T], cost: Callable[[T], float]) -> list[R]:
    """``[fn(item) for item in items]``, run on all cores with one BLAS thread each.

    Args:
        fn: the per-item work; must not modify shared state.
        items: the items, results returned in this order.
        cost: an estimate of each item's work (the largest are started first).
    """
    threads = torch.get_num_threads()
    if threads <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    order = sorted(range(len(items)), key=lambda i: -cost(items[i]))
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            futures = {i: pool.submit(fn, items[i]) for i in order}
            return [futures[i].result() for i in range(len(items))]
    finally:
        torch.set_num_threads(threads)
