"""Every layer equals its dense equivalent: to_dense() and an independently built dense conv."""

import copy
import io
import pickle

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import sepconv
from reference import (
    dense_of_blueprint,
    dense_of_separable,
    dense_of_spatial,
    dense_reference,
    explicit_pads,
)

F64 = torch.float64
MODES = ["zeros", "reflect", "replicate", "circular"]
DEPTHWISE = {1: sepconv.DepthwiseConv1d, 2: sepconv.DepthwiseConv2d, 3: sepconv.DepthwiseConv3d}
SEPARABLE = {1: sepconv.SeparableConv1d, 2: sepconv.SeparableConv2d, 3: sepconv.SeparableConv3d}
BLUEPRINT = {1: sepconv.BlueprintSeparableConv1d, 2: sepconv.BlueprintSeparableConv2d, 3: sepconv.BlueprintSeparableConv3d}


@st.composite
def geometry(draw, n):
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(n))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(n))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(n))
    padding = draw(st.one_of(st.just("valid"), st.just("same"), st.integers(0, 2),
                             st.tuples(*[st.integers(0, 2) for _ in range(n)])))
    mode = draw(st.sampled_from(MODES))
    max_size = 9 if n < 3 else 6
    size = tuple((k - 1) * d + 3 + draw(st.integers(0, max_size - 3)) for k, d in zip(kernel, dilation))
    return kernel, stride, dilation, padding, mode, size


def _check(layer, x, weight, bias, groups, kernel, stride, dilation, padding, mode, size):
    y = layer(x)
    pads = explicit_pads(padding, kernel, stride, dilation, size)
    ref = dense_reference(x, weight, bias, stride, dilation, groups, pads, mode)
    torch.testing.assert_close(y, ref)
    dense = layer.to_dense(input_size=size)
    torch.testing.assert_close(dense(x), ref)
    convs = [m for m in dense.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    assert len(convs) == 1 and type(convs[0]) is {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(kernel)]


@given(st.integers(1, 3).flatmap(lambda n: st.tuples(st.just(n), geometry(n))), st.integers(1, 3),
       st.integers(1, 3), st.booleans())
def test_depthwise_equals_dense(args, c, d, bias):
    n, (kernel, stride, dilation, padding, mode, size) = args
    layer = DEPTHWISE[n](c, kernel, d, stride, padding, dilation, bias, mode, dtype=F64)
    assert layer.weight.shape == (c * d, 1, *kernel)
    x = torch.randn(2, c, *size, dtype=F64)
    _check(layer, x, layer.weight, layer.bias, c, kernel, stride, dilation, padding, mode, size)


@given(st.integers(1, 3).flatmap(lambda n: st.tuples(st.just(n), geometry(n))), st.integers(1, 3),
       st.integers(1, 4), st.integers(1, 3), st.booleans())
def test_separable_equals_dense(args, c, out, d, bias):
    n, (kernel, stride, dilation, padding, mode, size) = args
    layer = SEPARABLE[n](c, out, kernel, stride, padding, dilation, d, bias, mode, dtype=F64)
    with torch.no_grad():
        if bias:
            layer.pointwise.bias.normal_()
    x = torch.randn(2, c, *size, dtype=F64)
    w = dense_of_separable(layer.depthwise.weight.detach(), layer.pointwise.weight.detach(), d)
    _check(layer, x, w, layer.bias, 1, kernel, stride, dilation, padding, mode, size)


@given(st.integers(1, 3).flatmap(lambda n: st.tuples(st.just(n), geometry(n))), st.integers(1, 3),
       st.integers(1, 4), st.integers(1, 3), st.booleans())
def test_blueprint_equals_dense(args, c, out, r, bias):
    n, (kernel, stride, dilation, padding, mode, size) = args
    layer = BLUEPRINT[n](c, out, kernel, stride, padding, dilation, r, bias, mode, dtype=F64)
    with torch.no_grad():
        if bias:
            layer.depthwise.bias.normal_()
    x = torch.randn(2, c, *size, dtype=F64)
    w = dense_of_blueprint(layer.pointwise.weight.detach(), layer.depthwise.weight.detach())
    _check(layer, x, w, layer.bias, 1, kernel, stride, dilation, padding, mode, size)


@given(geometry(2), st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.booleans())
def test_spatially_separable_equals_dense(geo, g, cg, og, rg, bias):
    kernel, stride, dilation, padding, mode, size = geo
    layer = sepconv.SpatiallySeparableConv2d(c := cg * g, og * g, kernel, rg * g, stride, padding, dilation, g, bias,
                                             mode, dtype=F64)
    with torch.no_grad():
        if bias:
            layer.horizontal.bias.normal_()
    x = torch.randn(2, c, *size, dtype=F64)
    w = dense_of_spatial(layer.vertical.weight.detach(), layer.horizontal.weight.detach(), g)
    _check(layer, x, w, layer.bias, g, kernel, stride, dilation, padding, mode, size)


def test_spatial_classic_per_channel_filter():
    # groups == in == out == rank: each channel filtered by its own Kx1 then 1xK (the seeds' picture)
    layer = sepconv.SpatiallySeparableConv2d(3, 3, 3, rank=3, groups=3, bias=False, dtype=F64)
    assert layer.vertical.weight.shape == (3, 1, 3, 1) and layer.horizontal.weight.shape == (3, 1, 1, 3)
    x = torch.randn(1, 3, 15, 15, dtype=F64)
    w = torch.stack([torch.outer(layer.vertical.weight[c, 0, :, 0], layer.horizontal.weight[c, 0, 0, :])
                     for c in range(3)]).unsqueeze(1)
    torch.testing.assert_close(layer(x), torch.nn.functional.conv2d(x, w, groups=3))
    assert layer(x).shape == (1, 3, 13, 13)


def test_unbatched_input():
    layer = sepconv.SeparableConv2d(3, 5, 3, padding="same", dtype=F64)
    x = torch.randn(3, 8, 8, dtype=F64)
    torch.testing.assert_close(layer(x), layer(x.unsqueeze(0)).squeeze(0))


@pytest.mark.parametrize("make", [
    lambda: sepconv.SeparableConv2d(4, 6, 3, padding="same", norm_layer=nn.BatchNorm2d),
    lambda: sepconv.SeparableConv2d(4, 6, 3, stride=2, padding="same", depth_multiplier=2, norm_layer=nn.BatchNorm2d, bias=False),
    lambda: sepconv.BlueprintSeparableConv2d(4, 6, 3, rank=2, padding="same", padding_mode="reflect", norm_layer=nn.BatchNorm2d),
])
def test_to_dense_folds_eval_batchnorm(make):
    layer = make().double()
    with torch.no_grad():
        layer.norm.running_mean.normal_()
        layer.norm.running_var.uniform_(0.5, 2)
        layer.norm.weight.normal_()
        layer.norm.bias.normal_()
    layer.eval()
    x = torch.randn(2, 4, 9, 9, dtype=F64)
    torch.testing.assert_close(layer.to_dense(input_size=(9, 9))(x), layer(x))


def test_to_dense_refuses_what_cannot_be_dense():
    layer = sepconv.SeparableConv2d(4, 6, 3, act_layer=nn.ReLU)
    with pytest.raises(ValueError, match="a nonlinear ReLU between the factors has no dense equivalent"):
        layer.to_dense()
    layer = sepconv.SeparableConv2d(4, 6, 3, norm_layer=nn.BatchNorm2d)  # training mode
    with pytest.raises(ValueError, match="expected no norm or an eval-mode BatchNorm between depthwise and pointwise"):
        layer.to_dense()
    layer = sepconv.BlueprintSeparableConv2d(4, 6, 3, padding=1, norm_layer=nn.BatchNorm2d).eval()
    with pytest.raises(ValueError, match="a BatchNorm before zero padding has no exact dense equivalent"):
        layer.to_dense()
    layer = sepconv.SeparableConv2d(4, 6, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="input_size: padding='same' with stride > 1 depends on the input size"):
        layer.to_dense()


def test_depthwise_from_dense_roundtrip():
    conv = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=4, padding_mode="reflect").double()
    layer = sepconv.DepthwiseConv2d.from_dense(conv)
    x = torch.randn(1, 4, 9, 9, dtype=F64)
    torch.testing.assert_close(layer(x), conv(x))
    assert layer.depth_multiplier == 2


def test_attributes_and_repr():
    layer = sepconv.SeparableConv2d(8, 16, 3, stride=2, padding="same", depth_multiplier=2, bias=False,
                                    norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU6)
    assert isinstance(layer.depthwise, nn.Conv2d) and isinstance(layer.pointwise, nn.Conv2d)
    assert layer.depthwise.groups == 8 and layer.depthwise.out_channels == 16 and layer.depthwise.bias is None
    assert layer.pointwise.kernel_size == (1, 1) and layer.pointwise.bias is None
    assert isinstance(layer.norm, nn.BatchNorm2d) and isinstance(layer.act, nn.ReLU6)
    assert layer.weight.shape == (16, 8, 3, 3) and layer.bias is None
    r = repr(layer)
    assert "8, 16, kernel_size=(3, 3), stride=(2, 2), padding='same', depth_multiplier=2, bias=False" in r
    s = sepconv.SeparableConv2d(3, 4, 3)
    assert s.depthwise.bias is None and s.pointwise.bias is not None  # one bias, at the output (Keras)
    b = sepconv.BlueprintSeparableConv2d(3, 4, 5, rank=2)
    assert b.pointwise.weight.shape == (8, 3, 1, 1) and b.depthwise.weight.shape == (4, 2, 5, 5)
    assert "rank=2" in repr(b)
    sp = sepconv.SpatiallySeparableConv2d(3, 4, (5, 3), rank=2, stride=2, dilation=(2, 1))
    assert sp.vertical.kernel_size == (5, 1) and sp.vertical.stride == (2, 1) and sp.vertical.dilation == (2, 1)
    assert sp.horizontal.kernel_size == (1, 3) and sp.horizontal.stride == (1, 2) and sp.horizontal.dilation == (1, 1)
    assert "rank=2" in repr(sp) and "dilation=(2, 1)" in repr(sp)
    dw = sepconv.DepthwiseConv3d(2, (1, 3, 3), depth_multiplier=3, padding_mode="circular", padding=(0, 1, 1))
    assert dw.weight.shape == (6, 1, 1, 3, 3) and "padding_mode='circular'" in repr(dw)


def test_reset_parameters_reinitializes():
    layer = sepconv.SeparableConv2d(4, 8, 3)
    with torch.no_grad():
        layer.depthwise.weight.zero_()
        layer.pointwise.bias.fill_(3.0)
    layer.reset_parameters()
    assert layer.depthwise.weight.abs().sum() > 0 and layer.pointwise.bias.abs().sum() == 0


@pytest.mark.parametrize("make", [
    lambda c: sepconv.SeparableConv2d(c, c, 3, padding=1, padding_mode="circular"),
    lambda c: sepconv.BlueprintSeparableConv2d(c, c, 3, padding=1, padding_mode="circular"),
    lambda c: sepconv.SpatiallySeparableConv2d(c, c, 3, rank=c, padding=1, padding_mode="circular"),
    lambda c: sepconv.DepthwiseConv2d(c, 3, padding=1, padding_mode="circular"),
])
def test_init_variance_through_20_layers(make):
    torch.manual_seed(0)
    c = 64
    stack = nn.Sequential(*[make(c) for _ in range(20)])
    x = torch.randn(4, c, 16, 16)
    with torch.no_grad():
        y = stack(x)
    ratio = (y.var() / x.var()).item()
    assert 0.2 < ratio < 5.0, ratio
    # a single layer preserves the variance of its input in expectation: the composed dense kernel
    # has the LeCun variance 1 / fan_in
    w = make(c).weight if not isinstance(make(c), sepconv.DepthwiseConv2d) else None
    if w is not None:
        assert abs(w.var().item() * c * 9 - 1) < 0.15


def _all_layers():
    return [
        sepconv.DepthwiseConv2d(4, 3, depth_multiplier=2, padding="same"),
        sepconv.SeparableConv2d(4, 6, 4, stride=2, padding="same", padding_mode="reflect"),
        sepconv.SeparableConv1d(4, 6, 3, padding=1, norm_layer=nn.BatchNorm1d, act_layer=nn.ReLU),
        sepconv.SeparableConv3d(4, 6, 3, padding="same"),
        sepconv.BlueprintSeparableConv2d(4, 6, 3, rank=2, padding=1, padding_mode="replicate"),
        sepconv.SpatiallySeparableConv2d(4, 6, (3, 5), rank=2, stride=2, padding="same", padding_mode="circular"),
    ]


def _input_for(layer):
    n = layer._n
    return torch.randn(2, 4, *([6] * n if n == 3 else [10] * n))


@pytest.mark.parametrize("layer", _all_layers(), ids=lambda m: type(m).__name__)
def test_serialization_roundtrips(layer):
    layer.eval()
    x = _input_for(layer)
    y = layer(x)
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    fresh = copy.deepcopy(layer)
    for p in fresh.parameters():
        p.data.zero_()
    fresh.load_state_dict(torch.load(buf))
    torch.testing.assert_close(fresh(x), y)
    torch.testing.assert_close(copy.deepcopy(layer)(x), y)
    torch.testing.assert_close(pickle.loads(pickle.dumps(layer))(x), y)
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.load(buf, weights_only=False)(x), y)


@pytest.mark.parametrize("layer", _all_layers(), ids=lambda m: type(m).__name__)
def test_torchscript(layer):
    layer.eval()
    x = _input_for(layer)
    torch.testing.assert_close(torch.jit.script(layer)(x), layer(x))


def _same_strided_layers():
    S = sepconv
    for k in (2, 3, 4):  # (k - 1) < stride - 1 for k = 2 at stride 3: the pads' max(., 0) matters
        for stride in (2, 3):
            yield S.SeparableConv2d(6, 10, k, stride, "same")
            yield S.SeparableConv2d(6, 10, k, stride, "same", padding_mode="reflect")
            yield S.DepthwiseConv2d(6, k, 2, stride, "same")
            yield S.BlueprintSeparableConv2d(6, 10, k, stride, "same")
            yield S.SpatiallySeparableConv2d(6, 10, k, 2, stride=stride, padding="same")
    yield S.SeparableConv1d(6, 10, 3, 2, "same")
    yield S.DepthwiseConv3d(6, (3, 2, 3), 1, (2, 3, 2), "same")


@pytest.mark.parametrize("layer", list(_same_strided_layers()), ids=lambda m: f"{type(m).__name__}({m.extra_repr()})")
def test_traced_same_padding_follows_the_input_size(layer):
    """padding='same' with a stride depends on the input size: a traced layer recomputes the pads
    for each input (the trace once froze the example's: a 33x35 input gave a 16x17 output, not
    17x18), as the scripted one does."""
    import warnings

    layer.eval()
    n = layer._n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(layer, torch.randn(1, 6, *[12] * n))
    scripted = torch.jit.script(layer)
    for size in (12, 13, 14, 9, 31):
        x = torch.randn(2, 6, *[size + i for i in range(n)])
        y = layer(x)
        assert traced(x).shape == y.shape
        torch.testing.assert_close(traced(x), y)
        torch.testing.assert_close(scripted(x), y)


def test_traced_functional_same_padding_follows_the_input_size():
    import warnings

    import sepconv.functional as SF

    torch.manual_seed(0)
    dw, pw = torch.randn(6, 1, 3, 3), torch.randn(10, 6, 1, 1)
    f = lambda x: SF.separable_conv2d(x, dw, pw, stride=2, padding="same")  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(f, torch.randn(1, 6, 12, 12))
    for h, w in ((13, 14), (9, 31), (12, 12)):
        x = torch.randn(1, 6, h, w)
        torch.testing.assert_close(traced(x), f(x))


@pytest.mark.parametrize("layer", [m for m in _all_layers() if m._n == 2], ids=lambda m: type(m).__name__)
def test_channels_last(layer):
    layer.eval()
    x = _input_for(layer)
    y = layer(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(y, layer(x))
    layer = layer.to(memory_format=torch.channels_last)
    torch.testing.assert_close(layer(x.contiguous(memory_format=torch.channels_last)), y)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("layer", _all_layers(), ids=lambda m: type(m).__name__)
def test_dtypes_against_float64(layer, dtype, tol):
    layer.eval()
    x = _input_for(layer)
    ref = layer.double()(x.double())
    low = copy.deepcopy(layer).to(dtype)
    y = low(x.to(dtype))
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())


def test_gradients_flow_through_layers():
    for layer in _all_layers():
        layer = layer.double()
        x = _input_for(layer).double().requires_grad_()
        assert torch.autograd.gradcheck(lambda t: layer(t), (x,), fast_mode=True)


@pytest.mark.parametrize("conv,make", [
    (nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, padding_mode="reflect"),
     lambda c: sepconv.SeparableConv2d.from_dense(c, depth_multiplier=6)),
    (nn.Conv1d(4, 6, 5, padding="same", bias=False), lambda c: sepconv.SeparableConv1d.from_dense(c, depth_multiplier=5)),
    (nn.Conv3d(2, 3, 3, padding=1), lambda c: sepconv.SeparableConv3d.from_dense(c, depth_multiplier=3)),
    (nn.Conv2d(4, 6, (3, 5), padding=(1, 2), padding_mode="circular"),
     lambda c: sepconv.BlueprintSeparableConv2d.from_dense(c, rank=4)),
    (nn.Conv1d(3, 5, 4, dilation=2), lambda c: sepconv.BlueprintSeparableConv1d.from_dense(c, rank=3)),
    (nn.Conv3d(2, 3, 2, stride=2), lambda c: sepconv.BlueprintSeparableConv3d.from_dense(c, rank=2)),
    (nn.Conv2d(4, 6, (3, 5), stride=(1, 2), padding="valid", dilation=(2, 1)),
     lambda c: sepconv.SpatiallySeparableConv2d.from_dense(c, rank=12)),
    (nn.Conv2d(4, 6, 3, padding=1, groups=2, padding_mode="replicate"),
     lambda c: sepconv.SpatiallySeparableConv2d.from_dense(c, rank=12)),
])
def test_from_dense_full_rank_is_exact_and_keeps_options(conv, make):
    conv = conv.double()
    layer = make(conv)
    n = conv.weight.dim() - 2
    x = torch.randn(2, conv.in_channels, *[9] * n, dtype=F64)
    torch.testing.assert_close(layer(x), conv(x))
    assert layer.stride == conv.stride and layer.dilation == conv.dilation
    assert layer.padding_mode == conv.padding_mode and (layer.bias is None) == (conv.bias is None)
    assert next(layer.parameters()).dtype == F64


def test_from_dense_low_rank_is_the_svd_optimum():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1).double()
    layer = sepconv.SeparableConv2d.from_dense(conv, depth_multiplier=1)
    from sepconv.decompose import depthwise_separable

    err = depthwise_separable(conv.weight.detach(), 1)[2]
    assert abs(float((layer.weight - conv.weight).detach().norm() / conv.weight.detach().norm()) - err) < 1e-12
    with pytest.raises(ValueError, match="conv: expected groups=1 \\(a dense conv\\), got groups=2"):
        sepconv.SeparableConv2d.from_dense(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(TypeError, match="conv: expected nn.Conv2d, got Linear"):
        sepconv.BlueprintSeparableConv2d.from_dense(nn.Linear(3, 3))


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("kind", ["SeparableConv", "BlueprintSeparableConv"])
def test_unbatched_input_with_a_norm_between_the_factors(kind, n):
    """An unbatched input gives the batched result: the BatchNorm (and a per-channel PReLU)
    between the factors saw an unbatched (C, L) as (N, C) and silently normalized the wrong axis
    (or raised from inside torch for 2-D and 3-D)."""
    torch.manual_seed(n)
    cls = getattr(sepconv, f"{kind}{n}d")
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[n]
    mid = 4 if kind == "SeparableConv" else 6
    layer = cls(4, 6, 3, stride=3, padding=1, norm_layer=bn, act_layer=lambda: nn.PReLU(mid)).eval()
    with torch.no_grad():
        layer.norm.running_mean.uniform_(-1, 1)
        layer.norm.running_var.uniform_(0.5, 2)
        layer.act.weight.uniform_(0, 1)
    size = {1: (13,), 2: (7, 8), 3: (5, 4, 6)}[n]  # 1-D: a depthwise output of length 5, not 4 or 6
    x = torch.randn(4, *size)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer(x[None])[0])
        torch.testing.assert_close(torch.jit.script(layer)(x), layer(x[None])[0])
