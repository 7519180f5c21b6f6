"""Optimizing a model many times in one process keeps no copy of its weights behind (a
time-budget conversion optimizes each trial model: a frozen TorchScript graph's weights used to
stay in memory for the rest of the process)."""

import ctypes
import ctypes.util
import gc
import os

import pytest
import torch
from torch import nn

import sepconv


def _libc():
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return libc if libc is not None and hasattr(libc, "malloc_trim") and os.path.exists("/proc/self/statm") else None


def _resident_mb() -> float:
    """Resident memory after a garbage collection and glibc's trim (memory freed but kept by the
    allocator is not a leak)."""
    gc.collect()
    _libc().malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(_libc() is None, reason="needs glibc's malloc_trim and /proc (Linux)")
def test_repeated_torchscript_optimizations_free_the_frozen_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 512, 3, padding=1), nn.ReLU(), nn.Conv2d(512, 1024, 3, padding=1),
                          nn.ReLU()).eval()  # 19 MB of weights
    x = torch.randn(1, 3, 8, 8)
    sepconv.optimize_for_inference(model, x, rounds=1, candidates=("torchscript",))  # warm: lazy initializations
    before = _resident_mb()
    for _ in range(5):
        fast = sepconv.optimize_for_inference(model, x, rounds=1, candidates=("torchscript",))
        assert fast.backend == "torchscript"
        del fast
    grown = _resident_mb() - before
    assert grown < 30, f"{grown:.0f} MB kept after 5 optimizations of a model with 19 MB of weights"
