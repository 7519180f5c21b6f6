"""Side-by-side timing helpers: interleaved medians, copy bandwidth, one layer's candidates.

This machine class is noisy (2x run to run), so every comparison here runs its candidates in
turn, round by round, and reports medians: only ratios from one run mean anything.
"""

import copy
import statistics
import time

import torch
from torch import nn

from . import cost as C
from ._timing import interleaved
from .layers import SeparableConv2d
from .optimize import optimize_for_inference

__all__ = ["interleaved", "copy_bandwidth", "layer_speed"]


def copy_bandwidth(mib: int = 256, repeats: int = 7) -> float:
    """GB/s of a large tensor copy (read + write), a memory-bandwidth yardstick."""
    src = torch.ones(mib * 2**18)
    dst = torch.empty_like(src)
    dst.copy_(src)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        ts.append(time.perf_counter() - t)
    return 2 * src.numel() * 4 / statistics.median(ts) / 1e9


def layer_speed(batch: int, in_channels: int, out_channels: int, size: int, stride: int = 1, kernel_size: int = 3,
                rounds: int = 20, bandwidth: float = 0.0) -> dict:
    """Time one depthwise separable layer against its dense twin and the naive forms.

    Candidates: dense ``nn.Conv2d`` (channels_last), naive ``nn.Sequential(depthwise, pointwise)``
    in NCHW and channels_last, sepconv's :class:`SeparableConv2d` on NCHW input, and
    :func:`optimize_for_inference` of it; plus the depthwise factor alone (for its GB/s) and the
    pointwise factor alone as one BLAS GEMM into a preallocated output (``torch.mm(out=)``, no
    depthwise, no allocation): naive channels_last time / that GEMM bounds what any fused kernel
    with an equally fast GEMM can gain over the naive pair.

    Returns:
        a dict with ``ms`` per candidate, ``theoretical`` (dense MACs / separable MACs),
        ``realized`` speed-ups vs dense, ``realized_over_theoretical``, ``optimized_over_naive_cl``,
        ``gemm_bound`` (naive channels_last / pointwise GEMM only), ``depthwise_gbs`` and the chosen
        ``backend``.
    """
    torch.manual_seed(0)
    pad = kernel_size // 2
    x = torch.randn(batch, in_channels, size, size)
    xc = x.contiguous(memory_format=torch.channels_last)
    cl = torch.channels_last
    dense = nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad, bias=False).eval().to(memory_format=cl)
    dw = nn.Conv2d(in_channels, in_channels, kernel_size, stride, pad, groups=in_channels, bias=False)
    pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
    naive = nn.Sequential(dw, pw).eval()
    naive_cl = copy.deepcopy(naive).to(memory_format=cl)
    layer = SeparableConv2d(in_channels, out_channels, kernel_size, stride, pad, bias=False).eval()
    with torch.no_grad():
        layer.depthwise.weight.copy_(dw.weight)
        layer.pointwise.weight.copy_(pw.weight)
    fast = optimize_for_inference(layer, xc, rounds=10)
    dw_cl = naive_cl[0]
    out = (size + 2 * pad - kernel_size) // stride + 1
    a2d = torch.randn(batch * out * out, in_channels)
    w2d = pw.weight.detach().reshape(out_channels, in_channels).t().contiguous()
    o2d = torch.empty(batch * out * out, out_channels)
    t = interleaved({
        "dense": lambda: dense(xc), "naive NCHW": lambda: naive(x), "naive channels_last": lambda: naive_cl(xc),
        "sepconv layer": lambda: layer(x), "sepconv optimized": lambda: fast(xc), "depthwise only": lambda: dw_cl(xc),
        "pointwise GEMM only": lambda: torch.mm(a2d, w2d, out=o2d),
    }, rounds)
    shape = (batch, in_channels, size, size)
    theoretical = (C.conv_cost(shape, out_channels, kernel_size, stride, pad, bias=False).macs
                   / C.separable_conv_cost(shape, out_channels, kernel_size, stride, pad, bias=False).macs)
    dw_bytes = 4 * batch * in_channels * (size * size + out * out)
    return dict(
        batch=batch, cin=in_channels, cout=out_channels, size=size, stride=stride, threads=torch.get_num_threads(),
        ms={k: round(v, 4) for k, v in t.items()}, theoretical=theoretical,
        realized={k: t["dense"] / t[k] for k in ("naive NCHW", "naive channels_last", "sepconv layer", "sepconv optimized")},
        realized_over_theoretical=t["dense"] / t["sepconv optimized"] / theoretical,
        optimized_over_naive_cl=t["naive channels_last"] / t["sepconv optimized"],
        gemm_bound=t["naive channels_last"] / t["pointwise GEMM only"],
        backend=fast.backend, depthwise_gbs=dw_bytes / t["depthwise only"] / 1e6, copy_gbs=bandwidth,
    )
