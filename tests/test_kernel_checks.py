"""The C++ kernels check every argument themselves (torch.ops.sepconv.* called directly with bad
arguments raise a RuntimeError naming the op and the argument), never read outside the input, and
propagate NaN / Inf exactly as PyTorch does; the fused layers refuse what the model refuses."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sepconv

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def ext():
    from sepconv import _fused

    module = _fused.load()  # compiled on first use (~1 min), cached
    assert module is not None, f"the C++ kernels failed to build: {_fused.error()}"
    return module


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
def test_fused_separable_propagates_nan_and_inf(ext, cin, cout, k, stride, mult, act_mid, act_out):
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


@pytest.mark.parametrize("cin,cout,stride,act", [(3, 20, 2, 2), (3, 16, 1, 1), (5, 33, 1, 2)])
def test_fused_conv_propagates_nan_and_inf(ext, cin, cout, stride, act):
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
def test_fused_linear_propagates_nan_and_inf(ext, rows, features, out_features, act):
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


def test_activations_of_special_values_match_pytorch(ext):
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
