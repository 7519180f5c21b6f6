"""The C++ kernels check every argument themselves (torch.ops.sepconv.* called directly with bad
arguments raise a RuntimeError naming the op and the argument), never read outside the input, and
propagate NaN / Inf exactly as PyTorch does; the fused layers refuse what the model refuses."""

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sepconv
from sepconv.optimize import optimize_for_inference

NAN, INF = float("nan"), float("inf")
MAX = 2147483647


@pytest.fixture(scope="module")
def ext():
    from sepconv import _fused

    module = _fused.load()  # compiled on first use (~1 min), cached
    assert module is not None, f"the C++ kernels failed to build: {_fused.error()}"
    return module


def _call(op, base: dict, change: dict):
    args = dict(base)
    args.update(change)
    return getattr(torch.ops.sepconv, op)(*args.values())


def _dwpw_args() -> dict:
    """Valid fused_dwpw arguments: 8 channels, 10 outputs (one packed panel), 3x3, pads 1."""
    return dict(x=torch.randn(2, 8, 6, 6), dw=torch.randn(1, 9, 8), dw_bias=torch.randn(8), act_mid=1, pw=torch.randn(1, 8, 16),
                pw_bias=torch.randn(16), n_out=10, act_out=2, kh=3, kw=3, sh=1, sw=1, pt=1, pb=1, pl=1, pr=1, tile_bytes=4096)


def _blueprint_args() -> dict:
    """Valid blueprint_pwdw arguments: 8 channels, 10 outputs of rank 2 (20 intermediate: two
    packed panels), 3x3, pads 1."""
    return dict(x=torch.randn(2, 8, 6, 6), pw=torch.randn(2, 8, 16), pw_bias=torch.randn(32), act_mid=1, dw=torch.randn(9, 2, 10),
                dw_bias=torch.randn(10), act_out=2, kh=3, kw=3, sh=1, sw=1, pt=1, pb=1, pl=1, pr=1, tile_bytes=4096)


def _conv_args() -> dict:
    """Valid conv2d_gemm arguments: 3 channels, 10 outputs, 3x3 (K = 27), pads 1."""
    return dict(x=torch.randn(2, 3, 6, 6), w=torch.randn(1, 27, 16), bias=torch.randn(16), n_out=10, act=1, kh=3, kw=3, sh=1, sw=1,
                dh=1, dw=1, pt=1, pb=1, pl=1, pr=1)


def _linear_args() -> dict:
    return dict(x=torch.randn(4, 20), w=torch.randn(1, 20, 16), bias=torch.randn(16), n_out=10, act=0)


def _filter_args() -> dict:
    """Valid separable_filter2d arguments: 2 channels, 8x8, a 3x5 kernel, pads 1/2, reflect."""
    return dict(x=torch.randn(1, 2, 8, 8), ky=torch.randn(2, 3), kx=torch.randn(2, 5), pt=1, pb=1, pl=2, pr=2, border=1)


def _range(name, v, lo=1):
    return f"{name}: expected an int in [{lo}, {MAX}], got {v}"


BAD = [
    # fused_dwpw
    ("fused_dwpw", dict(x=torch.randn(8, 6, 6)), "fused_dwpw: x: expected a 4-D float32 CPU tensor, got 3-D Float on cpu"),
    ("fused_dwpw", dict(x=torch.randn(2, 8, 6, 6).double()), "fused_dwpw: x: expected a 4-D float32 CPU tensor, got 4-D Double on cpu"),
    ("fused_dwpw", dict(x=torch.randn(2, 0, 6, 6)), "fused_dwpw: x: expected at least one channel, got shape [2, 0, 6, 6]"),
    ("fused_dwpw", dict(dw=torch.randn(9, 8)), "fused_dwpw: dw: expected a 3-D float32 CPU tensor, got 2-D Float on cpu"),
    ("fused_dwpw", dict(dw=torch.randn(1, 9, 7)), "fused_dwpw: dw: expected (M >= 1, kh*kw = 9, C = 8), got [1, 9, 7]"),
    ("fused_dwpw", dict(dw=torch.randn(1, 8, 8)), "fused_dwpw: dw: expected (M >= 1, kh*kw = 9, C = 8), got [1, 8, 8]"),
    ("fused_dwpw", dict(dw=torch.randn(0, 9, 8)), "fused_dwpw: dw: expected (M >= 1, kh*kw = 9, C = 8), got [0, 9, 8]"),
    ("fused_dwpw", dict(dw_bias=torch.randn(7)), "fused_dwpw: dw_bias: expected 0 or M*C = 8 elements, got 7"),
    ("fused_dwpw", dict(dw_bias=torch.randn(1, 8)), "fused_dwpw: dw_bias: expected a 1-D float32 CPU tensor, got 2-D Float on cpu"),
    ("fused_dwpw", dict(pw=torch.randn(1, 7, 16)), "fused_dwpw: pw: expected packed (ceil(n_out/16) = 1, M*C = 8, 16), got [1, 7, 16]"),
    ("fused_dwpw", dict(pw=torch.randn(1, 8, 8)), "fused_dwpw: pw: expected packed (ceil(n_out/16) = 1, M*C = 8, 16), got [1, 8, 8]"),
    ("fused_dwpw", dict(n_out=17), "fused_dwpw: pw: expected packed (ceil(n_out/16) = 2, M*C = 8, 16), got [1, 8, 16]"),
    ("fused_dwpw", dict(pw=torch.randn(1, 8, 16).half()), "fused_dwpw: pw: expected a 3-D float32 CPU tensor, got 3-D Half on cpu"),
    ("fused_dwpw", dict(pw_bias=torch.randn(10)), "fused_dwpw: pw_bias: expected 0 or ceil(n_out/16)*16 = 16 elements, got 10"),
    ("fused_dwpw", dict(pw_bias=torch.zeros(16, dtype=torch.long)), "fused_dwpw: pw_bias: expected a 1-D float32 CPU tensor, got 1-D Long on cpu"),
    ("fused_dwpw", dict(act_mid=3), "fused_dwpw: act_mid: expected 0 (none), 1 (ReLU) or 2 (ReLU6), got 3"),
    ("fused_dwpw", dict(act_out=-1), "fused_dwpw: act_out: expected 0 (none), 1 (ReLU) or 2 (ReLU6), got -1"),
    ("fused_dwpw", dict(n_out=0), "fused_dwpw: " + _range("n_out", 0)),
    ("fused_dwpw", dict(kh=0), "fused_dwpw: " + _range("kh", 0)),
    ("fused_dwpw", dict(kw=-3), "fused_dwpw: " + _range("kw", -3)),
    ("fused_dwpw", dict(kh=2 ** 31), "fused_dwpw: " + _range("kh", 2 ** 31)),
    ("fused_dwpw", dict(sh=0), "fused_dwpw: " + _range("sh", 0)),
    ("fused_dwpw", dict(sw=-1), "fused_dwpw: " + _range("sw", -1)),
    ("fused_dwpw", dict(pt=-1), "fused_dwpw: " + _range("pt", -1, 0)),
    ("fused_dwpw", dict(pb=-2), "fused_dwpw: " + _range("pb", -2, 0)),
    ("fused_dwpw", dict(pl=-1), "fused_dwpw: " + _range("pl", -1, 0)),
    ("fused_dwpw", dict(pr=2 ** 40), "fused_dwpw: " + _range("pr", 2 ** 40, 0)),
    ("fused_dwpw", dict(tile_bytes=0), "fused_dwpw: " + _range("tile_bytes", 0)),
    # the case: an input smaller than a strided kernel (the size formula gave 1, not an error)
    ("fused_dwpw", dict(x=torch.randn(1, 8, 2, 2), sh=2, sw=2, pt=0, pb=0, pl=0, pr=0),
     "fused_dwpw: input height 2 padded to 2 is smaller than the kernel's extent 3"),
    ("fused_dwpw", dict(x=torch.randn(1, 8, 6, 1), sw=2, pl=0, pr=1),
     "fused_dwpw: input width 1 padded to 2 is smaller than the kernel's extent 3"),
    # blueprint_pwdw
    ("blueprint_pwdw", dict(x=torch.randn(8, 6, 6)), "blueprint_pwdw: x: expected a 4-D float32 CPU tensor, got 3-D Float on cpu"),
    ("blueprint_pwdw", dict(x=torch.randn(2, 8, 6, 6).double()),
     "blueprint_pwdw: x: expected a 4-D float32 CPU tensor, got 4-D Double on cpu"),
    ("blueprint_pwdw", dict(x=torch.randn(2, 0, 6, 6)), "blueprint_pwdw: x: expected at least one channel, got shape [2, 0, 6, 6]"),
    ("blueprint_pwdw", dict(x=torch.randn(2, 7, 6, 6)),
     "blueprint_pwdw: pw: expected packed (ceil(R*N/16) = 2, C = 7, 16), got [2, 8, 16]"),
    ("blueprint_pwdw", dict(pw=torch.randn(1, 8, 16)), "blueprint_pwdw: pw: expected packed (ceil(R*N/16) = 2, C = 8, 16), got [1, 8, 16]"),
    ("blueprint_pwdw", dict(pw=torch.randn(2, 8, 8)), "blueprint_pwdw: pw: expected packed (ceil(R*N/16) = 2, C = 8, 16), got [2, 8, 8]"),
    ("blueprint_pwdw", dict(pw=torch.randn(8, 16)), "blueprint_pwdw: pw: expected a 3-D float32 CPU tensor, got 2-D Float on cpu"),
    ("blueprint_pwdw", dict(pw_bias=torch.randn(20)), "blueprint_pwdw: pw_bias: expected 0 or ceil(R*N/16)*16 = 32 elements, got 20"),
    ("blueprint_pwdw", dict(pw_bias=torch.randn(32).double()),
     "blueprint_pwdw: pw_bias: expected a 1-D float32 CPU tensor, got 1-D Double on cpu"),
    ("blueprint_pwdw", dict(dw=torch.randn(9, 20)), "blueprint_pwdw: dw: expected a 3-D float32 CPU tensor, got 2-D Float on cpu"),
    ("blueprint_pwdw", dict(dw=torch.randn(8, 2, 10)), "blueprint_pwdw: dw: expected (kh*kw = 9, R >= 1, N >= 1), got [8, 2, 10]"),
    ("blueprint_pwdw", dict(dw=torch.randn(9, 0, 10)), "blueprint_pwdw: dw: expected (kh*kw = 9, R >= 1, N >= 1), got [9, 0, 10]"),
    ("blueprint_pwdw", dict(dw=torch.randn(9, 2, 0)), "blueprint_pwdw: dw: expected (kh*kw = 9, R >= 1, N >= 1), got [9, 2, 0]"),
    ("blueprint_pwdw", dict(dw=torch.randn(9, 4, 10)), "blueprint_pwdw: pw: expected packed (ceil(R*N/16) = 3, C = 8, 16), got [2, 8, 16]"),
    ("blueprint_pwdw", dict(dw_bias=torch.randn(20)), "blueprint_pwdw: dw_bias: expected 0 or N = 10 elements, got 20"),
    ("blueprint_pwdw", dict(dw_bias=torch.randn(1, 10)), "blueprint_pwdw: dw_bias: expected a 1-D float32 CPU tensor, got 2-D Float on cpu"),
    ("blueprint_pwdw", dict(act_mid=3), "blueprint_pwdw: act_mid: expected 0 (none), 1 (ReLU) or 2 (ReLU6), got 3"),
    ("blueprint_pwdw", dict(act_out=-1), "blueprint_pwdw: act_out: expected 0 (none), 1 (ReLU) or 2 (ReLU6), got -1"),
    ("blueprint_pwdw", dict(kh=0), "blueprint_pwdw: " + _range("kh", 0)),
    ("blueprint_pwdw", dict(kw=2 ** 31), "blueprint_pwdw: " + _range("kw", 2 ** 31)),
    ("blueprint_pwdw", dict(sh=0), "blueprint_pwdw: " + _range("sh", 0)),
    ("blueprint_pwdw", dict(sw=-1), "blueprint_pwdw: " + _range("sw", -1)),
    ("blueprint_pwdw", dict(pt=-1), "blueprint_pwdw: " + _range("pt", -1, 0)),
    ("blueprint_pwdw", dict(pb=-1), "blueprint_pwdw: " + _range("pb", -1, 0)),
    ("blueprint_pwdw", dict(pl=-1), "blueprint_pwdw: " + _range("pl", -1, 0)),
    ("blueprint_pwdw", dict(pr=2 ** 40), "blueprint_pwdw: " + _range("pr", 2 ** 40, 0)),
    ("blueprint_pwdw", dict(tile_bytes=0), "blueprint_pwdw: " + _range("tile_bytes", 0)),
    ("blueprint_pwdw", dict(x=torch.randn(1, 8, 2, 2), sh=2, sw=2, pt=0, pb=0, pl=0, pr=0),
     "blueprint_pwdw: input height 2 padded to 2 is smaller than the kernel's extent 3"),
    ("blueprint_pwdw", dict(x=torch.randn(1, 8, 6, 1), sw=2, pl=0, pr=1),
     "blueprint_pwdw: input width 1 padded to 2 is smaller than the kernel's extent 3"),
    # conv2d_gemm
    ("conv2d_gemm", dict(x=torch.randn(3, 6, 6)), "conv2d_gemm: x: expected a 4-D float32 CPU tensor, got 3-D Float on cpu"),
    ("conv2d_gemm", dict(x=torch.ones(2, 3, 6, 6, dtype=torch.uint8)), "conv2d_gemm: x: expected a 4-D float32 CPU tensor, got 4-D Byte on cpu"),
    ("conv2d_gemm", dict(x=torch.randn(2, 0, 6, 6)), "conv2d_gemm: x: expected at least one channel, got shape [2, 0, 6, 6]"),
    ("conv2d_gemm", dict(x=torch.randn(2, 4, 6, 6)), "conv2d_gemm: w: expected packed (ceil(n_out/16) = 1, K = 36, 16), got [1, 27, 16]"),
    ("conv2d_gemm", dict(w=torch.randn(1, 26, 16)), "conv2d_gemm: w: expected packed (ceil(n_out/16) = 1, K = 27, 16), got [1, 26, 16]"),
    ("conv2d_gemm", dict(w=torch.randn(27, 16)), "conv2d_gemm: w: expected a 3-D float32 CPU tensor, got 2-D Float on cpu"),
    ("conv2d_gemm", dict(n_out=40), "conv2d_gemm: w: expected packed (ceil(n_out/16) = 3, K = 27, 16), got [1, 27, 16]"),
    ("conv2d_gemm", dict(bias=torch.randn(15)), "conv2d_gemm: bias: expected 0 or ceil(n_out/16)*16 = 16 elements, got 15"),
    ("conv2d_gemm", dict(bias=torch.randn(16).double()), "conv2d_gemm: bias: expected a 1-D float32 CPU tensor, got 1-D Double on cpu"),
    ("conv2d_gemm", dict(act=7), "conv2d_gemm: act: expected 0 (none), 1 (ReLU) or 2 (ReLU6), got 7"),
    ("conv2d_gemm", dict(n_out=-5), "conv2d_gemm: " + _range("n_out", -5)),
    ("conv2d_gemm", dict(kh=0), "conv2d_gemm: " + _range("kh", 0)),
    ("conv2d_gemm", dict(kw=0), "conv2d_gemm: " + _range("kw", 0)),
    ("conv2d_gemm", dict(sh=0), "conv2d_gemm: " + _range("sh", 0)),
    ("conv2d_gemm", dict(sw=0), "conv2d_gemm: " + _range("sw", 0)),
    ("conv2d_gemm", dict(dh=0), "conv2d_gemm: " + _range("dh", 0)),
    ("conv2d_gemm", dict(dw=-1), "conv2d_gemm: " + _range("dw", -1)),
    ("conv2d_gemm", dict(pt=-1), "conv2d_gemm: " + _range("pt", -1, 0)),
    ("conv2d_gemm", dict(pb=-1), "conv2d_gemm: " + _range("pb", -1, 0)),
    ("conv2d_gemm", dict(pl=-1), "conv2d_gemm: " + _range("pl", -1, 0)),
    ("conv2d_gemm", dict(pr=-1), "conv2d_gemm: " + _range("pr", -1, 0)),
    ("conv2d_gemm", dict(kh=2 ** 30, kw=2 ** 30), f"conv2d_gemm: kh*kw*C: expected at most {MAX}, got 1073741824*1073741824*3"),
    ("conv2d_gemm", dict(x=torch.randn(1, 3, 4, 4), dh=2, pt=0, pb=0),
     "conv2d_gemm: input height 4 padded to 4 is smaller than the kernel's extent 5"),
    ("conv2d_gemm", dict(x=torch.randn(1, 3, 6, 2), sw=2, pl=0, pr=0),
     "conv2d_gemm: input width 2 padded to 2 is smaller than the kernel's extent 3"),
    # linear_gemm
    ("linear_gemm", dict(x=torch.randn(2, 4, 20)), "linear_gemm: x: expected a 2-D float32 CPU tensor, got 3-D Float on cpu"),
    ("linear_gemm", dict(x=torch.randn(4, 20).double()), "linear_gemm: x: expected a 2-D float32 CPU tensor, got 2-D Double on cpu"),
    ("linear_gemm", dict(x=torch.randn(4, 0)), "linear_gemm: x: expected at least one input feature, got shape [4, 0]"),
    ("linear_gemm", dict(x=torch.randn(4, 21)), "linear_gemm: w: expected packed (ceil(n_out/16) = 1, K = 21, 16), got [1, 20, 16]"),
    ("linear_gemm", dict(n_out=17), "linear_gemm: w: expected packed (ceil(n_out/16) = 2, K = 20, 16), got [1, 20, 16]"),
    ("linear_gemm", dict(bias=torch.randn(1, 16)), "linear_gemm: bias: expected a 1-D float32 CPU tensor, got 2-D Float on cpu"),
    ("linear_gemm", dict(bias=torch.randn(10)), "linear_gemm: bias: expected 0 or ceil(n_out/16)*16 = 16 elements, got 10"),
    ("linear_gemm", dict(act=3), "linear_gemm: act: expected 0 (none), 1 (ReLU) or 2 (ReLU6), got 3"),
    ("linear_gemm", dict(n_out=0), "linear_gemm: " + _range("n_out", 0)),
    # separable_filter2d
    ("separable_filter2d", dict(x=torch.randn(2, 8, 8)), "separable_filter2d: x: expected a 4-D float32 CPU tensor, got 3-D Float on cpu"),
    ("separable_filter2d", dict(x=torch.randn(1, 2, 8, 8).double()),
     "separable_filter2d: x: expected a 4-D float32 CPU tensor, got 4-D Double on cpu"),
    ("separable_filter2d", dict(ky=torch.randn(3)), "separable_filter2d: ky: expected a 2-D float32 CPU tensor, got 1-D Float on cpu"),
    ("separable_filter2d", dict(kx=torch.randn(2, 5).double()),
     "separable_filter2d: kx: expected a 2-D float32 CPU tensor, got 2-D Double on cpu"),
    ("separable_filter2d", dict(ky=torch.randn(3, 3)), "separable_filter2d: ky: expected (C = 2, kh >= 1), got [3, 3]"),
    ("separable_filter2d", dict(kx=torch.randn(2, 0)), "separable_filter2d: kx: expected (C = 2, kw >= 1), got [2, 0]"),
    ("separable_filter2d", dict(border=4),
     "separable_filter2d: border: expected 0 (zeros), 1 (reflect), 2 (replicate) or 3 (circular), got 4"),
    ("separable_filter2d", dict(border=-1),
     "separable_filter2d: border: expected 0 (zeros), 1 (reflect), 2 (replicate) or 3 (circular), got -1"),
    ("separable_filter2d", dict(pt=-1), "separable_filter2d: " + _range("pt", -1, 0)),
    ("separable_filter2d", dict(pb=-1), "separable_filter2d: " + _range("pb", -1, 0)),
    ("separable_filter2d", dict(pl=-1), "separable_filter2d: " + _range("pl", -1, 0)),
    ("separable_filter2d", dict(pr=-1), "separable_filter2d: " + _range("pr", -1, 0)),
    ("separable_filter2d", dict(x=torch.zeros(1, 2, 0, 8)), "separable_filter2d: " + _range("x's height", 0)),
    ("separable_filter2d", dict(x=torch.zeros(1, 2, 8, 0)), "separable_filter2d: " + _range("x's width", 0)),
    ("separable_filter2d", dict(x=torch.randn(1, 2, 2, 8), pt=2),
     "separable_filter2d: pads (2, 1, 2, 2): expected at most 1 rows and 7 columns for border 1 on a 2x8 image"),
    ("separable_filter2d", dict(x=torch.randn(1, 2, 8, 3), border=3, pl=4, pr=2),
     "separable_filter2d: pads (1, 1, 4, 2): expected at most 8 rows and 3 columns for border 3 on a 8x3 image"),
    ("separable_filter2d", dict(ky=torch.randn(2, 9), pt=0, pb=0),
     "separable_filter2d: input height 8 padded to 8 is smaller than the kernel's extent 9"),
]


@pytest.mark.parametrize("op,change,message", BAD, ids=[f"{op}-{'-'.join(c)}-{i}" for i, (op, c, _) in enumerate(BAD)])
def test_kernel_refuses_bad_arguments(ext, op, change, message):
    base = {"fused_dwpw": _dwpw_args, "blueprint_pwdw": _blueprint_args, "conv2d_gemm": _conv_args, "linear_gemm": _linear_args, "separable_filter2d": _filter_args}[op]()
    _call(op, base, {})  # the base arguments are valid
    with pytest.raises(RuntimeError, match=re.escape(message)):
        _call(op, base, change)


def test_border_pixels_completed_by_right_padding_only(ext, isa):
    """W + left pad < kw with a stride of 2: no output column has all its taps inside the image
    (the truncating division counted one as inside, which read the next row's pixels)."""
    torch.manual_seed(0)
    c, n = 16, 20
    x = torch.randn(2, c, 7, 2)
    dw, pw = torch.randn(c, 1, 3, 3), torch.randn(n, c, 1, 1)
    ref = F.conv2d(F.conv2d(F.pad(x.double(), (0, 1, 1, 1)), dw.double(), stride=2, groups=c), pw.double())
    from sepconv.optimize.fused import _pack_panels

    packed, bias = _pack_panels(pw.reshape(n, c), None)
    out = torch.ops.sepconv.fused_dwpw(x, dw.reshape(c, 9).t().reshape(1, 9, c).contiguous(), torch.zeros(0), 0, packed, bias,
                                       n, 0, 3, 3, 2, 2, 1, 1, 0, 1, 4096)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)

    w = torch.randn(n, 3, 3, 3)
    x3 = torch.randn(2, 3, 6, 2)
    packed, bias = _pack_panels(w.permute(0, 2, 3, 1).reshape(n, 27), None)
    out = torch.ops.sepconv.conv2d_gemm(x3, packed, bias, n, 0, 3, 3, 1, 2, 1, 1, 0, 0, 0, 1)
    ref = F.conv2d(F.pad(x3.double(), (0, 1, 0, 0)), w.double(), stride=(1, 2))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_kernels_accept_non_contiguous_weights(ext):
    """Weights given as non-contiguous views give the result of their contiguous copies (the
    kernels keep the copies alive for the whole call)."""
    torch.manual_seed(0)
    args = _dwpw_args()
    args["dw"] = torch.randn(1, 8, 9).transpose(1, 2)
    args["pw"] = torch.randn(1, 16, 8).transpose(1, 2)
    args["pw_bias"] = torch.randn(32)[::2]
    ref = _call("fused_dwpw", args, {k: args[k].contiguous() for k in ("dw", "pw", "pw_bias")})
    torch.testing.assert_close(_call("fused_dwpw", args, {}), ref, rtol=0, atol=0)
    args = _conv_args()
    args["w"] = torch.randn(1, 16, 27).transpose(1, 2)
    ref = _call("conv2d_gemm", args, {"w": args["w"].contiguous()})
    torch.testing.assert_close(_call("conv2d_gemm", args, {}), ref, rtol=0, atol=0)
    args = _linear_args()
    args["w"] = torch.randn(1, 16, 20).transpose(1, 2)
    ref = _call("linear_gemm", args, {"w": args["w"].contiguous()})
    torch.testing.assert_close(_call("linear_gemm", args, {}), ref, rtol=0, atol=0)


# ---- the fused layers refuse what the model refuses ----
def _fused_wins(monkeypatch):
    import sepconv.optimize.dispatch as O

    monkeypatch.setattr(O, "interleaved", lambda fns, rounds, warmup=1: {k: (1.0 if "fused" in k else 2.0) for k in fns})


def _same_error(f, g, x):
    """f(x) raises, and g(x) raises the same exception type with the same message."""
    with torch.no_grad():
        with pytest.raises(Exception) as expected:
            f(x)
        with pytest.raises(type(expected.value), match=re.escape(str(expected.value))):
            g(x)


def test_optimized_model_refuses_inputs_the_model_refuses(ext, monkeypatch):
    """The issue's case: an input smaller than the strided kernel gave a (1, 128, 1, 1) tensor of
    values like 7.9e33 on the fused path; now the same error as the eager path (and the model)."""
    _fused_wins(monkeypatch)
    m = nn.Sequential(sepconv.SeparableConv2d(64, 128, 3, stride=2), nn.ReLU()).eval()
    x = torch.randn(2, 64, 20, 20)
    fast = optimize_for_inference(m, x, rounds=1, candidates=("eager", "fused"))
    assert fast.backend == "fused"
    eager = optimize_for_inference(m, x, candidates=("eager",))
    for bad in (torch.randn(1, 64, 2, 2), torch.randn(1, 64, 20, 2), torch.randn(1, 32, 20, 20)):
        with torch.no_grad(), pytest.raises((RuntimeError, ValueError)):
            m(bad)
        _same_error(eager, fast, bad)
    with torch.no_grad():  # the smallest input that fits still runs the kernel, correctly
        small = torch.randn(1, 64, 3, 3)
        torch.testing.assert_close(fast(small), m(small), rtol=1e-4, atol=1e-5)


def test_fused_conv_and_linear_refuse_inputs_their_layers_refuse(ext):
    from sepconv.optimize import FusedConv2d, FusedLinear, FusedSeparableConv2d

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, 3, stride=2, dilation=2).eval()
    fused = FusedConv2d(conv, 1)
    for bad in (torch.randn(1, 3, 4, 9), torch.randn(1, 3, 9, 4), torch.randn(1, 4, 9, 9)):
        _same_error(lambda x: torch.relu(conv(x)), fused, bad)
    with torch.no_grad():
        ok = torch.randn(1, 3, 5, 5)
        torch.testing.assert_close(fused(ok), torch.relu(conv(ok)), rtol=1e-4, atol=1e-5)
    linear = nn.Linear(20, 10).eval()
    fused = FusedLinear(linear, 0)
    for bad in (torch.randn(4, 21), torch.randn(2, 3, 19), torch.randn(20, 1)):
        _same_error(linear, fused, bad)
    layer = sepconv.SeparableConv2d(8, 16, 5, stride=3, padding=1).eval()
    fused = FusedSeparableConv2d(layer, 0)
    for bad in (torch.randn(1, 8, 2, 9), torch.randn(1, 8, 9, 2), torch.randn(1, 7, 9, 9)):
        _same_error(layer, fused, bad)
    with torch.no_grad():
        empty = torch.randn(0, 8, 9, 9)
        assert fused(empty).shape == layer(empty).shape


# ---- NaN / Inf: propagated exactly as PyTorch does ----
def _with_specials(shape, seed, positions):
    """A random tensor with NaN, +Inf and -Inf (in turn) at `positions` (index tuples; negative
    indices count from the end)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    for i, pos in enumerate(positions):
        x[pos] = (NAN, INF, -INF)[i % 3]
    return x


def _assert_same_specials(out, eager, ref64):
    """The NaN and Inf positions (and signs) of `out` are those of the eager float32 model and of
    the float64 reference; the finite values match the float64 reference."""
    for ref in (eager, ref64):
        assert torch.equal(out.isnan(), ref.isnan()), f"NaN at {out.isnan().sum()} places, expected {ref.isnan().sum()}"
        assert torch.equal(out.isposinf(), ref.isposinf()) and torch.equal(out.isneginf(), ref.isneginf())
    torch.testing.assert_close(out.double(), ref64, rtol=1e-5, atol=1e-5, equal_nan=True)


# corners, border, interior, in the first, last (scalar tail) and middle channels
IMAGE_SPOTS = [(0, 0, 0, 0), (-1, -1, -1, -1), (0, -1, 5, 6), (1, 0, -1, 0), (0, 2, 0, -1), (1, -1, 3, 3), (0, -2, 8, 1),
               (1, 1, 2, -2), (0, 1, 9, 10)]


@pytest.mark.parametrize("cin,cout,k,stride,mult,act_mid,act_out", [
    (3, 10, 3, 1, 1, nn.ReLU, 1),      # channels only in the scalar remainder
    (13, 17, 3, 2, 1, nn.ReLU6, 2),    # one 8-channel vector + 5 scalar channels; N % 16 = 1
    (24, 40, 5, 1, 1, nn.ReLU, 2),     # a 16-channel block + an 8-channel block, 5x5
    (29, 20, 3, 1, 2, nn.ReLU6, 1),    # 16 + 8 + 5 channels, depth multiplier 2
    (37, 33, 4, 1, 1, None, 1),        # any kernel size (per-pixel path), only the output ReLU
    (16, 16, 3, 1, 1, nn.ReLU, 0),     # only the middle ReLU
])
def test_fused_separable_propagates_nan_and_inf(ext, isa, cin, cout, k, stride, mult, act_mid, act_out):
    """The fused ReLU / ReLU6 mapped NaN to 0 (1,152 NaNs in the original output, 0 in the
    optimized one): now NaN, +Inf and -Inf come out where the eager model puts them."""
    from sepconv.optimize import FusedSeparableConv2d

    torch.manual_seed(cin)
    layer = sepconv.SeparableConv2d(cin, cout, k, stride, k // 2, depth_multiplier=mult, act_layer=act_mid).eval()
    with torch.no_grad():
        layer.depthwise.bias = nn.Parameter(torch.randn(cin * mult) * 0.1)
    act = {0: nn.Identity(), 1: nn.ReLU(), 2: nn.ReLU6()}[act_out]
    fused = FusedSeparableConv2d(layer, act_out)
    x = _with_specials((2, cin, 12, 13), cin, IMAGE_SPOTS)
    with torch.inference_mode():
        out = fused(x)
        eager = act(layer(x))
    ref64 = act(copy.deepcopy(layer).double()(x.double()))
    assert out.isnan().any()
    _assert_same_specials(out, eager, ref64)


@pytest.mark.parametrize("cin,cout,k,stride,rank,act_mid,act_out", [
    (3, 10, 3, 1, 2, nn.ReLU, 1),      # intermediate 20: a 16-channel block + scalar tail
    (13, 17, 3, 2, 3, nn.ReLU6, 2),    # N = 17: 16 + 1 output channels, stride 2
    (24, 40, 5, 1, 1, None, 2),        # rank 1, 5x5
    (16, 24, 4, 1, 2, nn.ReLU, 0),     # any kernel size (per-pixel path), only the middle ReLU
])
def test_fused_blueprint_propagates_nan_and_inf(ext, isa, cin, cout, k, stride, rank, act_mid, act_out):
    """Blueprint layers: NaN / Inf through the pointwise GEMM into the grouped conv's sums, where
    the eager model puts them."""
    from sepconv.optimize import FusedBlueprintConv2d

    torch.manual_seed(cin)
    layer = sepconv.BlueprintSeparableConv2d(cin, cout, k, stride, k // 2, rank=rank, act_layer=act_mid).eval()
    with torch.no_grad():
        layer.depthwise.bias.normal_()
    act = {0: nn.Identity(), 1: nn.ReLU(), 2: nn.ReLU6()}[act_out]
    fused = FusedBlueprintConv2d(layer, act_out)
    x = _with_specials((2, cin, 12, 13), cin, IMAGE_SPOTS)
    with torch.inference_mode():
        out = fused(x)
        eager = act(layer(x))
    ref64 = act(copy.deepcopy(layer).double()(x.double()))
    assert out.isnan().any()
    _assert_same_specials(out, eager, ref64)


@pytest.mark.parametrize("cin,cout,stride,act", [(3, 20, 2, 2), (3, 16, 1, 1), (5, 33, 1, 2)])
def test_fused_conv_propagates_nan_and_inf(ext, isa, cin, cout, stride, act):
    """Stem convs: NaN/Inf in the gathered border patches and in the patches read in place."""
    from sepconv.optimize import FusedConv2d

    torch.manual_seed(cin)
    conv = nn.Conv2d(cin, cout, 3, stride, 1).eval()
    fn = {1: torch.relu, 2: F.relu6}[act]
    fused = FusedConv2d(conv, act)
    x = _with_specials((2, cin, 12, 13), cin, IMAGE_SPOTS)
    with torch.inference_mode():
        out = fused(x)
        eager = fn(conv(x))
    ref64 = fn(F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), stride, 1))
    assert out.isnan().any()
    _assert_same_specials(out, eager, ref64)


@pytest.mark.parametrize("rows,features,out_features,act", [(7, 37, 20, 1), (3, 500, 40, 2), (1, 9, 17, 2)])
def test_fused_linear_propagates_nan_and_inf(ext, isa, rows, features, out_features, act):
    """Linear layers (the vector part and the tail of the outputs; > 384 features: summed in blocks)."""
    from sepconv.optimize import FusedLinear

    torch.manual_seed(features)
    linear = nn.Linear(features, out_features).eval()
    fn = {1: torch.relu, 2: F.relu6}[act]
    fused = FusedLinear(linear, act)
    x = _with_specials((rows, features), features, [(0, 0), (-1, -1), (rows // 2, features // 2)])
    with torch.inference_mode():
        out = fused(x)
        eager = fn(linear(x))
    ref64 = fn(F.linear(x.double(), linear.weight.double(), linear.bias.double()))
    assert out.isnan().any()
    _assert_same_specials(out, eager, ref64)


def test_activations_of_special_values_match_pytorch(ext, isa):
    """Values that reach the activation directly (through the bias of a linear layer and of a 1x1
    conv): NaN stays NaN, ReLU6(+Inf) = 6, ReLU(-Inf) = 0, ReLU(+Inf) = +Inf, in a full panel of
    16 outputs and in the tail."""
    from sepconv.optimize import FusedConv2d, FusedLinear

    values = torch.tensor([NAN, INF, -INF, -0.0, 0.0, 7.0, -2.0, 3.0, 6.0, NAN, -INF, INF, 5.5, NAN, -1.0, 2.0, INF, NAN, -0.0])
    n = values.numel()  # 19 outputs: a full 16-column panel and a tail of 3
    for act, fn in ((1, torch.relu), (2, F.relu6)):
        # y = 0 * w + bias: the special values enter through the bias, one per output column
        linear = nn.Linear(1, n).eval()
        conv = nn.Conv2d(1, n, 1).eval()
        with torch.no_grad():
            linear.bias.copy_(values)
            conv.bias.copy_(values)
        with torch.inference_mode():
            outs = [FusedLinear(linear, act)(torch.zeros(3, 1)), FusedConv2d(conv, act)(torch.zeros(1, 1, 3, 3)).permute(0, 2, 3, 1)]
        for out in outs:
            expected = fn(values).expand_as(out)
            assert torch.equal(out.isnan(), expected.isnan()), (act, out)
            assert torch.equal(torch.nan_to_num(out), torch.nan_to_num(expected)), (act, out)


@pytest.mark.parametrize("op,base,change", [
    ("fused_dwpw", _dwpw_args, dict(x=torch.randn(1, 8, 2, 2), sh=2, sw=2, pt=0, pb=0, pl=0, pr=0)),
    ("blueprint_pwdw", _blueprint_args, dict(x=torch.randn(1, 8, 2, 2), sh=2, sw=2, pt=0, pb=0, pl=0, pr=0)),
    ("conv2d_gemm", _conv_args, dict(x=torch.randn(1, 3, 1, 6), dh=2, pt=0, pb=0)),
    ("separable_filter2d", _filter_args, dict(x=torch.randn(1, 2, 1, 8), pt=0, pb=0)),
])
def test_fake_shapes_refuse_what_the_kernel_refuses(ext, op, base, change):
    """Tracing with fake tensors (torch.compile) must not predict an output for an input the kernel
    refuses: the meta function raises the kernel's own message."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with pytest.raises(RuntimeError) as real:
        _call(op, base(), change)
    args = dict(base())
    args.update(change)
    with FakeTensorMode() as mode, pytest.raises(RuntimeError) as fake:
        getattr(torch.ops.sepconv, op)(*[mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for v in args.values()])
    assert "smaller than the kernel's extent" in str(real.value)
    assert str(fake.value) == str(real.value).splitlines()[0]
