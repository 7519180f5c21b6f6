"""The fused blueprint separable kernel (``csrc/blueprint.cpp``, :class:`FusedBlueprintConv2d`):
pointwise then a grouped conv summing ``rank`` intermediate channels per output, against dense
float64 convolutions, on every instruction set, in bands of any height, on one and two threads;
and its choice by ``optimize_for_inference``."""

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import sepconv
from sepconv.optimize import FusedBlueprintConv2d, optimize_for_inference


@pytest.fixture(scope="module")
def ext():
    from sepconv import _fused

    module = _fused.load()  # compiled on first use (~1 min), cached
    assert module is not None, f"the C++ kernels failed to build: {_fused.error()}"
    return module


def _run(fused: nn.Module, x: torch.Tensor, threads: int) -> torch.Tensor:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return fused(x)
    finally:
        torch.set_num_threads(before)


def _dense_reference(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer as one dense float64 conv: W[n, c] = sum_j P[n r + j, c] B[n, j], zero padding."""
    n, r, c = layer.out_channels, layer.rank, layer.in_channels
    pw = layer.pointwise.weight.detach().double().reshape(n, r, c)
    dw = layer.depthwise.weight.detach().double()  # (n, r, kh, kw)
    weight = torch.einsum("nrc,nrhw->nchw", pw, dw)
    left, right, top, bottom = layer._fpad
    xp = F.pad(x.double(), (left, right, top, bottom))
    bias = None if layer.depthwise.bias is None else layer.depthwise.bias.detach().double()
    return F.conv2d(xp, weight, bias, layer.stride)


@pytest.mark.parametrize("cin,cout,k,stride,padding,rank,size", [
    (16, 32, 3, 1, 1, 3, (16, 16)),    # the digits CNN's first converted layer at 50%
    (32, 64, 3, 1, 1, 4, (8, 8)),
    (64, 64, 3, 2, 1, 2, (15, 14)),    # stride 2, odd sizes (a ResNet downsampling shape, small)
    (5, 17, 5, 1, 2, 3, (9, 11)),      # 5x5; N = 17, R N = 51: 16-channel blocks, 8 and scalar tails
    (7, 40, 4, 3, 2, 5, (13, 3)),      # even kernel, stride 3, width smaller than the kernel + pads
    (8, 8, (3, 5), 1, (1, 2), 1, (6, 7)),  # rank 1 (a plain depthwise conv), non-square kernel
    (3, 24, 3, 1, "same", 2, (10, 9)),
    (12, 20, 3, 1, 0, 6, (3, 3)),      # one output pixel
])
def test_fused_blueprint_equals_dense_float64(ext, isa, cin, cout, k, stride, padding, rank, size):
    torch.manual_seed(cin * 100 + cout)
    layer = sepconv.BlueprintSeparableConv2d(cin, cout, k, stride, padding, rank=rank).eval()
    with torch.no_grad():
        layer.depthwise.bias.normal_()  # as after BatchNorm folding
    x = torch.randn(3, cin, *size)
    ref = _dense_reference(layer, x)
    fused = FusedBlueprintConv2d(layer, 0)
    for tile_bytes in (1, 4 * 30 * cout * rank, 1 << 24):  # one output row per band, a few, whole images
        fused.tile_bytes = tile_bytes
        for threads in (1, 2):
            out = _run(fused, x, threads)
            assert out.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    out = _run(fused, x.contiguous(memory_format=torch.channels_last), 1)  # any memory format in
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cin=st.integers(1, 40), cout=st.integers(1, 36), rank=st.integers(1, 5), k=st.sampled_from([1, 2, 3, 5]),
       stride=st.integers(1, 3), h=st.integers(1, 17), w=st.integers(1, 17), batch=st.integers(1, 3),
       acts=st.sampled_from([(None, None), (nn.ReLU, nn.ReLU6), (nn.ReLU6, nn.ReLU)]), norm=st.booleans(),
       tile=st.sampled_from([1, 2000, 1 << 24]), threads=st.sampled_from([1, 2]))
def test_fused_blueprint_fuzz_float64_reference(ext, isa, cin, cout, rank, k, stride, h, w, batch, acts, norm, tile, threads):
    """Every channel block and tail, border and interior pixels, bands of one or more rows, a
    BatchNorm and activations between the factors, one or two threads, against the layer in float64."""
    torch.manual_seed(cin * 1000 + cout * 10 + rank)
    layer = sepconv.BlueprintSeparableConv2d(cin, cout, k, stride, k // 2, rank=rank, act_layer=acts[0],
                                             norm_layer=nn.BatchNorm2d if norm else None).eval()
    with torch.no_grad():
        layer.depthwise.bias.normal_()
        if norm:
            layer.norm.running_mean.normal_()
            layer.norm.running_var.uniform_(0.5, 2)
            layer.norm.weight.normal_()
            layer.norm.bias.normal_()
    act = acts[1]() if acts[1] else nn.Identity()
    x = torch.randn(batch, cin, h + k, w + k)
    fused = FusedBlueprintConv2d(layer, {nn.Identity: 0, nn.ReLU: 1, nn.ReLU6: 2}[type(act)])
    fused.tile_bytes = tile
    ref = act(copy.deepcopy(layer).double()(x.double()))
    torch.testing.assert_close(_run(fused, x, threads).double(), ref, rtol=1e-5, atol=1e-5)


def test_fused_blueprint_falls_back_and_traces(ext):
    """Other dtypes and gradients run the original layer (with its errors); a traced graph keeps
    the kernel call."""
    torch.manual_seed(0)
    layer = sepconv.BlueprintSeparableConv2d(6, 8, 3, padding=1, rank=3).eval()
    fused = FusedBlueprintConv2d(layer, 1)
    x = torch.randn(2, 6, 7, 7)
    with pytest.raises(TypeError) as expected:
        layer(x.double())
    with pytest.raises(TypeError) as got:
        fused(x.double())
    assert str(got.value) == str(expected.value)
    with pytest.raises(ValueError, match="expected 6 channels"):
        fused(torch.randn(2, 5, 7, 7))
    xg = x.clone().requires_grad_()
    fused(xg).sum().backward()
    xr = x.clone().requires_grad_()
    torch.relu(layer(xr)).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad)
    with torch.no_grad():
        traced = torch.jit.trace(fused, x)
    assert "sepconv::blueprint_pwdw" in str(traced.graph)
    torch.testing.assert_close(traced(x), fused(x))


def test_optimize_uses_the_fused_blueprint_kernel_where_it_wins(ext, monkeypatch):
    """The per-layer dispatch replaces a blueprint layer of rank > 1 (and the ReLU after it) by the
    kernel when it measures faster (timing stubbed: the kernel wins), and the optimized model
    matches the original."""
    from sepconv.optimize import dispatch

    def fused_wins(fns, rounds, warmup=1):
        return {k: (1.0 if k == "fused" else 2.0) for k in fns}

    from sepconv.optimize import densify

    monkeypatch.setattr(dispatch, "interleaved", fused_wins)
    # the densify step's timing too: with real timings a noisy run made the layer a dense conv first
    monkeypatch.setattr(densify, "interleaved", lambda fns, rounds, warmup=1: {k: float(k == "dense") for k in fns})
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                          sepconv.BlueprintSeparableConv2d(16, 32, 3, padding=1, rank=3), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
    with torch.no_grad():
        model[3].running_mean.normal_()
    x = torch.randn(4, 1, 16, 16)
    fast = optimize_for_inference(model, x, rounds=1, candidates=("fused",))
    assert fast.backend == "fused"
    assert any(isinstance(m, FusedBlueprintConv2d) for m in fast.modules())
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


def test_torchscript_graph_may_leave_stem_and_classifier_to_onednn(ext, monkeypatch):
    """'fused+torchscript' is the frozen graph of the fused model, or of the fused model with only
    its separable layers fused (stem and classifier back on oneDNN, which fuses them in the graph),
    whichever measures faster; both compute the original's outputs."""
    from sepconv.optimize import FusedConv2d, FusedLinear, FusedSeparableConv2d, dispatch, graphs

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                          sepconv.SeparableConv2d(16, 32, 3, padding=1), nn.ReLU(),
                          sepconv.BlueprintSeparableConv2d(32, 32, 3, padding=1, rank=2), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10), nn.ReLU()).eval()
    x = torch.randn(4, 1, 12, 12)
    monkeypatch.setattr(dispatch, "interleaved", lambda fns, rounds, warmup=1: {k: float(k != "fused") for k in fns})
    fused = dispatch._fuse(dispatch._fold(model)[0], x, 1)
    kinds = {type(m) for m in fused.modules()}
    assert {FusedConv2d, FusedLinear, FusedSeparableConv2d, FusedBlueprintConv2d} <= kinds
    plain = graphs._separable_only(fused)
    kinds = {type(m) for m in plain.modules()}
    assert FusedConv2d not in kinds and FusedLinear not in kinds
    assert {FusedSeparableConv2d, FusedBlueprintConv2d} <= kinds
    with torch.inference_mode():
        ref = model(x)
        torch.testing.assert_close(plain(x), ref, rtol=1e-4, atol=1e-5)
    assert graphs._separable_only(plain) is None  # nothing left to give back
    all_graph, all_archive = graphs._trace(fused, x)
    for faster, expect_plain in (("separable", True), ("all", False)):
        timer = lambda fns, rounds, warmup=1, faster=faster: {k: float(k != faster) for k in fns}  # noqa: E731
        module, archive = graphs._faster_graph(all_graph, all_archive, fused, x, 1, timer)
        assert (module is not all_graph) == expect_plain and (archive != all_archive) == expect_plain
        graph = str(module.graph)
        assert ("sepconv::conv2d_gemm" in graph) != expect_plain and "sepconv::blueprint_pwdw" in graph
        with torch.inference_mode():
            torch.testing.assert_close(module(x), ref, rtol=1e-4, atol=1e-5)
