"""Bad input raises ValueError/TypeError naming the argument, what was expected and what was got."""

import pytest
import torch

import sepconv
from sepconv import cost as C
from sepconv import decompose as D
from sepconv import functional as SF
from sepconv import padding as P
from sepconv.data import DigitsDataset
from sepconv.models import build, mobilenet_v1
from torch import nn

CASES = [
    (lambda: sepconv.SeparableConv2d(0, 4, 3), ValueError, "in_channels: expected a positive int, got 0"),
    (lambda: sepconv.SeparableConv2d(3, -2, 3), ValueError, "out_channels: expected a positive int, got -2"),
    (lambda: sepconv.SeparableConv2d(3.0, 4, 3), TypeError, "in_channels: expected a positive int, got 3.0 (float)"),
    (lambda: sepconv.SeparableConv2d(3, 4, 0), ValueError, "kernel_size: expected 2 positive ints, got 0"),
    (lambda: sepconv.SeparableConv2d(3, 4, (3, 3, 3)), ValueError, "kernel_size: expected an int or 2 ints, got 3 values (3, 3, 3)"),
    (lambda: sepconv.SeparableConv2d(3, 4, 3, stride=(1,)), ValueError, "stride: expected an int or 2 ints, got 1 values (1,)"),
    (lambda: sepconv.SeparableConv2d(3, 4, 3, stride=0), ValueError, "stride: expected 2 positive ints, got 0"),
    (lambda: sepconv.SeparableConv3d(3, 4, 3, dilation=(1, 2)), ValueError, "dilation: expected an int or 3 ints, got 2 values (1, 2)"),
    (lambda: sepconv.SeparableConv2d(3, 4, 3, depth_multiplier=0), ValueError, "depth_multiplier: expected a positive int, got 0"),
    (lambda: sepconv.DepthwiseConv2d(3, 3, depth_multiplier=-1), ValueError, "depth_multiplier: expected a positive int, got -1"),
    (lambda: sepconv.SeparableConv2d(3, 4, 3, padding="full"), ValueError,
     "padding: expected one of ('valid', 'same'), an int or a tuple of 2 ints, got 'full'"),
    (lambda: sepconv.SeparableConv2d(3, 4, 3, padding=(1, 1, 1)), ValueError, "padding: expected an int or 2 ints, got 3 values (1, 1, 1)"),
    (lambda: sepconv.SeparableConv1d(3, 4, 3, padding_mode="mirror"), ValueError,
     "padding_mode: expected one of ('zeros', 'reflect', 'replicate', 'circular'), got 'mirror'"),
    (lambda: sepconv.SpatiallySeparableConv2d(3, 4, 3, rank=0), ValueError, "rank: expected a positive int, got 0"),
    (lambda: sepconv.BlueprintSeparableConv2d(3, 4, 3, rank=0), ValueError, "rank: expected a positive int, got 0"),
    (lambda: sepconv.SpatiallySeparableConv2d(3, 4, 3, rank=4, groups=2), ValueError, "in_channels: expected a multiple of groups=2, got 3"),
    (lambda: sepconv.SpatiallySeparableConv2d(4, 4, 3, rank=3, groups=2), ValueError, "rank: expected a multiple of groups=2, got 3"),
    (lambda: sepconv.SeparableConv2d(3, 4, 3, norm_layer="batchnorm"), TypeError,
     "norm_layer: expected a callable taking the channel count, got 'batchnorm'"),
]


@pytest.mark.parametrize("make,exc,msg", CASES)
def test_constructor_errors(make, exc, msg):
    with pytest.raises(exc) as info:
        make()
    assert str(info.value) == msg


@pytest.mark.parametrize("layer,x,msg", [
    (sepconv.SeparableConv2d(3, 4, 3), torch.randn(1, 5, 8, 8), "input: expected 3 channels at dim -3, got 5 (shape [1, 5, 8, 8])"),
    (sepconv.SeparableConv2d(3, 4, 3), torch.randn(8, 8), "input: expected a 4-D batched or 3-D unbatched tensor, got 2-D of shape [8, 8]"),
    (sepconv.DepthwiseConv1d(3, 3), torch.randn(1, 3, 4, 4), "input: expected a 3-D batched or 2-D unbatched tensor, got 4-D of shape [1, 3, 4, 4]"),
    (sepconv.BlueprintSeparableConv3d(2, 4, 3), torch.randn(1, 3, 5, 5, 5), "input: expected 2 channels at dim -4, got 3 (shape [1, 3, 5, 5, 5])"),
    (sepconv.SpatiallySeparableConv2d(2, 4, 3, rank=2), torch.randn(1, 3, 5, 5), "input: expected 2 channels at dim -3, got 3 (shape [1, 3, 5, 5])"),
])
def test_forward_errors(layer, x, msg):
    with pytest.raises(ValueError) as info:
        layer(x)
    assert str(info.value) == msg


def test_functional_errors():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"weight: expected a multiple of the 3 input channels in dim 0, got 4"):
        SF.depthwise_conv2d(x, torch.randn(4, 1, 3, 3))
    with pytest.raises(ValueError, match=r"weight: expected shape \(C\*d, 1, \*k\) for a depthwise conv, got \(3, 2, 3, 3\)"):
        SF.depthwise_conv2d(x, torch.randn(3, 2, 3, 3))
    with pytest.raises(ValueError, match=r"weight: expected a 4-D tensor, got 3-D of shape \(3, 1, 3\)"):
        SF.depthwise_conv2d(x, torch.randn(3, 1, 3))
    with pytest.raises(ValueError, match=r"pointwise_weight: expected shape \(N, 3, 1, 1\), got \(4, 3, 3, 3\)"):
        SF.separable_conv2d(x, torch.randn(3, 1, 3, 3), torch.randn(4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"bias: expected shape \(4,\), got \(5,\)"):
        SF.separable_conv2d(x, torch.randn(3, 1, 3, 3), torch.randn(4, 3, 1, 1), torch.randn(5))
    with pytest.raises(TypeError, match="input: expected a torch.Tensor, got list"):
        SF.separable_conv2d([1.0], torch.randn(3, 1, 3, 3), torch.randn(4, 3, 1, 1))
    with pytest.raises(ValueError, match=r"pointwise_weight: expected shape \(8, C, 1, 1\)"):
        SF.blueprint_separable_conv2d(x, torch.randn(4, 3, 1, 1), torch.randn(4, 2, 3, 3))
    with pytest.raises(ValueError, match=r"horizontal_weight: expected 2 channels in dim 1 \(rank/groups\), got 3"):
        SF.spatially_separable_conv2d(x, torch.randn(2, 3, 3, 1), torch.randn(4, 3, 1, 3))
    with pytest.raises(ValueError, match=r"vertical_weight: expected shape \(r, C/groups, kh, 1\), got \(2, 3, 3, 3\)"):
        SF.spatially_separable_conv2d(x, torch.randn(2, 3, 3, 3), torch.randn(4, 2, 1, 3))
    with pytest.raises(ValueError, match=r"stride: expected 2 positive ints, got 0"):
        SF.separable_conv2d(x, torch.randn(3, 1, 3, 3), torch.randn(4, 3, 1, 1), stride=0)
    with pytest.raises(ValueError, match="padding_mode: expected one of"):
        SF.separable_conv2d(x, torch.randn(3, 1, 3, 3), torch.randn(4, 3, 1, 1), padding_mode="edge")
    with pytest.raises(ValueError, match=r"border: expected one of \('reflect', 'replicate', 'circular', 'zeros'\), got 'wrap'"):
        SF.separable_filter2d(x, torch.ones(3), torch.ones(3), border="wrap")
    with pytest.raises(ValueError, match=r"padding: expected one of \('same', 'valid'\), got 'full'"):
        SF.separable_filter2d(x, torch.ones(3), torch.ones(3), padding="full")
    with pytest.raises(ValueError, match=r"kernel_x: expected shape \(k,\) or \(3, k\), got \(2, 3\)"):
        SF.separable_filter2d(x, torch.ones(2, 3), torch.ones(3))
    with pytest.raises(ValueError, match=r"^kernel_x: expected finite values, got nan at index \(1,\)$"):
        SF.separable_filter2d(x, torch.tensor([1.0, float("nan"), 1.0]), torch.ones(3))
    with pytest.raises(ValueError, match=r"^kernel_y: expected finite values, got inf at index \(2, 0\)$"):
        SF.separable_filter2d(x, torch.ones(3), torch.ones(3, 3).index_put_((torch.tensor(2), torch.tensor(0)),
                                                                             torch.tensor(float("inf"))))
    with pytest.raises(ValueError, match=r"image: expected H > 3 and W > 3 for border='reflect' with a 7x7 kernel, got 3x8"):
        SF.separable_filter2d(torch.ones(1, 1, 3, 8), torch.ones(7), torch.ones(7))
    with pytest.raises(ValueError, match=r"limit: expected None or a non-negative int, got -5"):
        from sepconv.data import DigitsDataset

        DigitsDataset("test").tensors(-5)
    with pytest.raises(ValueError, match=r"image: expected a 4-D \(B, C, H, W\) or 3-D \(C, H, W\) tensor, got 2-D"):
        SF.separable_filter2d(torch.ones(8, 8), torch.ones(3), torch.ones(3))


def test_from_dense_errors():
    with pytest.raises(ValueError, match=r"conv: expected groups == in_channels \(4\) for a depthwise conv, got groups=1"):
        sepconv.DepthwiseConv2d.from_dense(torch.nn.Conv2d(4, 4, 3))
    with pytest.raises(TypeError, match="conv: expected nn.Conv2d, got Conv1d"):
        sepconv.DepthwiseConv2d.from_dense(torch.nn.Conv1d(4, 4, 3, groups=4))


# --------------------------------------------------------------------------------------------
# sepconv.decompose: every public function refuses bad factors, groups and non-finite kernels
# --------------------------------------------------------------------------------------------
NAN, INF = float("nan"), float("inf")
W4 = torch.randn(4, 3, 3, 3)


def _with(value, shape, index=(0, 1)):
    t = torch.ones(shape)
    t[index] = value
    return t


DECOMPOSE_CASES = [
    (lambda: D.spatially_separable(W4, 2, groups=0), ValueError, "groups: expected a positive int, got 0"),
    (lambda: D.spatially_separable(W4, 2, groups=2.0), TypeError, "groups: expected a positive int, got 2.0"),
    (lambda: D.compose_depthwise_separable(torch.randn(6, 1, 3, 3), torch.randn(4, 6, 1, 1), 0), ValueError,
     "depth_multiplier: expected a positive int, got 0"),
    (lambda: D.compose_depthwise_separable(torch.randn(6, 1, 3, 3), torch.randn(4, 5, 1, 1), 2), ValueError,
     "pointwise_weight: expected shape (N, 6, 1, 1) for depthwise_weight (6, 1, 3, 3), got (4, 5, 1, 1)"),
    (lambda: D.compose_depthwise_separable(torch.randn(6, 1, 3, 3), torch.randn(4, 6, 1, 1), 4), ValueError,
     "depthwise_weight: expected shape (C*d, 1, *k) with d=4, got (6, 1, 3, 3)"),
    (lambda: D.compose_depthwise_separable([1.0], torch.randn(4, 6, 1, 1)), TypeError,
     "depthwise_weight: expected a torch.Tensor, got list"),
    (lambda: D.compose_blueprint_separable(torch.randn(7, 3, 1, 1), torch.randn(4, 2, 5, 5)), ValueError,
     "pointwise_weight: expected shape (8, C, 1, 1) for depthwise_weight (4, 2, 5, 5), got (7, 3, 1, 1)"),
    (lambda: D.compose_blueprint_separable(torch.randn(8, 3, 1, 1), torch.randn(4, 2, 0, 5)), ValueError,
     "depthwise_weight: expected a non-empty conv weight with 3 or 4 or 5 dims, got shape (4, 2, 0, 5)"),
    (lambda: D.compose_spatially_separable(torch.randn(2, 3, 3, 1), torch.randn(4, 2, 1, 3), 0), ValueError,
     "groups: expected a positive int, got 0"),
    (lambda: D.compose_spatially_separable(torch.randn(2, 3, 3, 1), torch.randn(4, 3, 1, 3)), ValueError,
     "horizontal_weight: expected shape (N, 2, 1, kw) with N a multiple of groups=1, got (4, 3, 1, 3)"),
    (lambda: D.compose_spatially_separable(torch.randn(3, 3, 3, 1), torch.randn(4, 1, 1, 3), 2), ValueError,
     "vertical_weight: expected shape (r, C/groups, kh, 1) with r a multiple of groups=2, got (3, 3, 3, 1)"),
    (lambda: D.kernel_rank(_with(INF, (2, 2))), ValueError, "kernel: expected finite values, got inf at index (0, 1)"),
    (lambda: D.kernel_rank(_with(NAN, (3, 3), (2, 1))), ValueError, "kernel: expected finite values, got nan at index (2, 1)"),
    (lambda: D.separate_kernel(_with(-INF, (2, 2))), ValueError, "kernel: expected finite values, got -inf at index (0, 1)"),
    (lambda: D.separate_kernel(_with(NAN, (2, 2), (1, 0))), ValueError, "kernel: expected finite values, got nan at index (1, 0)"),
    (lambda: D.kernel_rank(torch.zeros(0, 3)), ValueError, "kernel: expected a non-empty 2-D tensor (kh, kw), got shape (0, 3)"),
    (lambda: D.kernel_rank([[1.0, 2.0]]), TypeError, "kernel: expected a torch.Tensor, got list"),
    (lambda: D.kernel_rank(torch.eye(3), rtol="a"), TypeError, "rtol: expected a number >= 0, got 'a' (str)"),
    (lambda: D.separate_kernel(torch.eye(3), rtol=-1.0), ValueError, "rtol: expected a finite number >= 0, got -1.0"),
    (lambda: D.spectrum(_with(INF, (4, 3, 3, 3), (1, 2, 0, 0)), "blueprint"), ValueError,
     "weight: expected finite values, got inf at index (1, 2, 0, 0)"),
    (lambda: D.depthwise_separable(torch.randn(0, 3, 3, 3)), ValueError, "weight: expected a non-empty conv weight, got shape (0, 3, 3, 3)"),
    (lambda: D.best_approximations(W4, "depthwise", 3), TypeError, "ranks: expected an iterable of positive ints, got 3"),
    (lambda: D.best_approximations(torch.randn(4, 2, 3, 3), "spatial", [3], groups=2), ValueError,
     "rank: expected a multiple of groups=2, got 3"),
]


@pytest.mark.parametrize("make,exc,msg", DECOMPOSE_CASES)
def test_decompose_errors(make, exc, msg):
    with pytest.raises(exc) as info:
        make()
    assert str(info.value) == msg


def test_separate_kernel_of_an_integer_kernel_is_not_truncated():
    col, row = D.separate_kernel(torch.tensor([[2, 3], [4, 6]]))
    assert col.dtype == torch.get_default_dtype()
    torch.testing.assert_close(torch.outer(col, row).double(), torch.tensor([[2.0, 3.0], [4.0, 6.0]], dtype=torch.float64))


def test_decomposition_refuses_non_finite_factors(monkeypatch):
    real = D._svd
    monkeypatch.setattr(D, "_svd", lambda m: tuple(t * INF for t in real(m)))
    with pytest.raises(ValueError, match=r"weight: expected factors representable in torch.float32, got non-finite values"):
        D.depthwise_separable(W4, 2)


# --------------------------------------------------------------------------------------------
# Layers and functional ops: wrong types, factories, dtypes and inputs the kernel does not fit
# --------------------------------------------------------------------------------------------
def _describe(layer):
    return f"{type(layer).__name__}({layer.extra_repr()})"


def _nan_conv(conv, index):
    with torch.no_grad():
        conv.weight[index] = NAN
    return conv


SEP5 = sepconv.SeparableConv2d(3, 4, 5)
REFLECT7 = sepconv.BlueprintSeparableConv2d(3, 4, 7, padding=3, padding_mode="reflect")
CIRCULAR = sepconv.DepthwiseConv1d(2, 5, padding=4, padding_mode="circular")
SPATIAL = sepconv.SpatiallySeparableConv2d(3, 4, (3, 5), rank=2, padding="same", stride=2)

LAYER_CASES = [
    (lambda: sepconv.SeparableConv2d(3, 4, 3, act_layer=nn.ReLU()), TypeError,
     "act_layer: expected a callable returning a module (a class such as nn.ReLU, not an instance), got the module instance ReLU()"),
    (lambda: sepconv.BlueprintSeparableConv2d(3, 4, 3, norm_layer=nn.BatchNorm2d(3)), TypeError,
     "norm_layer: expected a callable taking the channel count (a class such as nn.BatchNorm2d, not an instance), "
     "got the module instance BatchNorm2d()"),
    (lambda: sepconv.SeparableConv1d(3, 4, 3, act_layer=lambda: 3), TypeError,
     "act_layer: expected a callable returning an nn.Module, got one returning int"),
    (lambda: sepconv.SeparableConv2d(3, 4, 3, norm_layer=lambda c: None), TypeError,
     "norm_layer: expected a callable returning an nn.Module, got one returning NoneType"),
    (lambda: sepconv.SeparableConv2d(3, 4, 3)([[1.0, 2.0]]), TypeError, "input: expected a torch.Tensor, got list"),
    (lambda: sepconv.DepthwiseConv2d(3, 3)((1.0, 2.0)), TypeError, "input: expected a torch.Tensor, got tuple"),
    (lambda: SPATIAL([[1.0]]), TypeError, "input: expected a torch.Tensor, got list"),
    (lambda: SEP5(torch.randn(1, 3, 8, 8, dtype=torch.float64)), TypeError,
     f"input: expected dtype torch.float32 (the weights' dtype of {_describe(SEP5)}), got torch.float64 (shape [1, 3, 8, 8])"),
    (lambda: SEP5(torch.ones(3, 8, 8, dtype=torch.long)), TypeError,
     f"input: expected dtype torch.float32 (the weights' dtype of {_describe(SEP5)}), got torch.int64 (shape [3, 8, 8])"),
    (lambda: SEP5(torch.randn(1, 3, 4, 9)), ValueError,
     f"input: expected a spatial size >= (5, 5) for {_describe(SEP5)} (the kernel must fit the padded input), "
     "got (4, 9) (shape [1, 3, 4, 9])"),
    (lambda: REFLECT7(torch.randn(1, 3, 3, 3)), ValueError,
     f"input: expected a spatial size >= (4, 4) for {_describe(REFLECT7)} (the kernel must fit the padded input; "
     "'reflect' pads must be smaller than the input), got (3, 3) (shape [1, 3, 3, 3])"),
    (lambda: CIRCULAR(torch.randn(2, 3)), ValueError,
     f"input: expected a spatial size >= (4,) for {_describe(CIRCULAR)} (the kernel must fit the padded input; "
     "'circular' pads must not exceed the input), got (3,) (shape [2, 3])"),
    (lambda: SPATIAL(torch.randn(1, 3, 0, 6)), ValueError,
     f"input: expected a spatial size >= (1, 1) for {_describe(SPATIAL)} (the kernel must fit the padded input), "
     "got (0, 6) (shape [1, 3, 0, 6])"),
    (lambda: SF.separable_conv2d(torch.randn(1, 3, 2, 2), torch.randn(3, 1, 3, 3), torch.randn(4, 3, 1, 1)), ValueError,
     "input: expected a spatial size >= (3, 3) for separable_conv2d (the kernel must fit the padded input), got (2, 2) "
     "(shape [1, 3, 2, 2])"),
    (lambda: SF.blueprint_separable_conv1d(torch.randn(1, 3, 3), torch.randn(4, 3, 1), torch.randn(4, 1, 3),
                                           padding=3, padding_mode="reflect"), ValueError,
     "input: expected a spatial size >= (4,) for blueprint_separable_conv1d (the kernel must fit the padded input; "
     "'reflect' pads must be smaller than the input), got (3,) (shape [1, 3, 3])"),
    (lambda: SF.depthwise_conv2d(torch.randn(1, 3, 8, 8), torch.randn(3, 1, 3, 3, dtype=torch.float64)), TypeError,
     "input: expected dtype torch.float64 (the weights' dtype of depthwise_conv2d), got torch.float32 (shape [1, 3, 8, 8])"),
    (lambda: SF.spatially_separable_conv2d(torch.ones(1, 3, 8, 8, dtype=torch.int32), torch.randn(2, 3, 3, 1),
                                           torch.randn(4, 2, 1, 3)), TypeError,
     "input: expected dtype torch.float32 (the weights' dtype of spatially_separable_conv2d), got torch.int32 (shape [1, 3, 8, 8])"),
    (lambda: SF.depthwise_conv2d(torch.randn(1, 0, 8, 8), torch.randn(3, 1, 3, 3)), ValueError,
     "input: expected at least 1 channel at dim -3, got 0 (shape [1, 0, 8, 8])"),
    (lambda: SF.depthwise_conv2d(torch.randn(1, 3, 8, 8), torch.randn(3, 1, 0, 3)), ValueError,
     "weight: expected a tensor without empty dims, got shape (3, 1, 0, 3)"),
    (lambda: SF.separable_conv3d(torch.randn(1, 2, 4, 4, 4), torch.randn(0, 1, 3, 3, 3), torch.randn(4, 0, 1, 1, 1)),
     ValueError, "depthwise_weight: expected a tensor without empty dims, got shape (0, 1, 3, 3, 3)"),
    (lambda: SF.separable_conv2d(torch.randn(1, 3, 8, 8), torch.randn(3, 1, 3, 3), torch.randn(4, 3, 1, 1).double()),
     TypeError, "pointwise_weight: expected the dtype of depthwise_weight (torch.float32), got torch.float64"),
    (lambda: SF.spatially_separable_conv2d(torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 1).half(), torch.randn(4, 2, 1, 3)),
     TypeError, "horizontal_weight: expected the dtype of vertical_weight (torch.float16), got torch.float32"),
    (lambda: sepconv.SeparableConv2d(3, 4, 3, bias="yes"), TypeError, "bias: expected a bool, got 'yes'"),
    (lambda: sepconv.DepthwiseConv2d.from_dense(_nan_conv(nn.Conv2d(3, 6, 3, groups=3), (5, 0, 1, 2))), ValueError,
     "conv.weight: expected finite values, got nan at index (5, 0, 1, 2)"),
    (lambda: sepconv.DepthwiseConv1d(3, 3, dtype=torch.int32), TypeError,
     "dtype: expected None or a floating-point torch.dtype, got torch.int32"),
    (lambda: sepconv.SpatiallySeparableConv2d(3, 4, 3, rank=1, dtype="float"), TypeError,
     "dtype: expected None or a floating-point torch.dtype, got 'float'"),
]


@pytest.mark.parametrize("make,exc,msg", LAYER_CASES)
def test_layer_and_functional_errors(make, exc, msg):
    with pytest.raises(exc) as info:
        make()
    assert str(info.value) == msg


def test_layer_under_autocast_is_not_refused_for_its_dtype():
    layer = sepconv.SeparableConv2d(3, 4, 3).to(torch.bfloat16)
    with torch.autocast("cpu"):
        assert layer(torch.randn(1, 3, 8, 8)).shape == (1, 4, 6, 6)


# --------------------------------------------------------------------------------------------
# The derived ``weight`` of two-factor layers cannot be changed by mistake
# --------------------------------------------------------------------------------------------
TWO_FACTOR = [
    (lambda: sepconv.SeparableConv2d(3, 4, 3), "SeparableConv2d", ("depthwise", "pointwise")),
    (lambda: sepconv.BlueprintSeparableConv1d(3, 4, 3), "BlueprintSeparableConv1d", ("pointwise", "depthwise")),
    (lambda: sepconv.SpatiallySeparableConv2d(3, 4, 3, rank=2), "SpatiallySeparableConv2d", ("vertical", "horizontal")),
]
IN_PLACE = [
    ("zero_", lambda w: nn.init.zeros_(w)),
    ("kaiming_uniform_", lambda w: nn.init.kaiming_uniform_(w)),
    ("copy_", lambda w: w.data.copy_(torch.zeros_like(w))),
    ("fill_", lambda w: w.detach()[0].fill_(1.0)),
    ("__setitem__", lambda w: w.__setitem__(0, 1.0)),
    ("add_", lambda w: w.__iadd__(1.0)),
]


@pytest.mark.parametrize("make,kind,factors", TWO_FACTOR)
@pytest.mark.parametrize("op,change", IN_PLACE)
def test_derived_weight_refuses_in_place_changes(make, kind, factors, op, change):
    layer = make()
    before = [p.detach().clone() for p in layer.parameters()]
    with pytest.raises(ValueError) as info:
        with torch.no_grad():
            change(layer.weight)
    assert str(info.value) == (
        f"weight: expected no in-place change ({kind}.weight is computed from {factors[0]}.weight and "
        f"{factors[1]}.weight on every access, so changing it would change nothing), got {op}(); change the factors "
        f"instead, e.g. nn.init.zeros_(layer.{factors[1]}.weight)")
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))


@pytest.mark.parametrize("make,kind,factors", TWO_FACTOR)
def test_derived_weight_reads_like_a_tensor_and_refuses_assignment(make, kind, factors):
    layer = make()
    w = layer.weight
    torch.testing.assert_close(w.detach(), layer.to_dense().weight.detach())
    assert type(w * 2) is torch.Tensor and type(w.sum()) is torch.Tensor
    w.square().sum().backward()  # gradients reach the factors
    assert all(getattr(layer, f).weight.grad is not None for f in factors)
    with pytest.raises(AttributeError, match=rf"weight: expected no assignment \({kind}.weight is computed from"):
        layer.weight = torch.zeros(1)


# --------------------------------------------------------------------------------------------
# padding, data and model builders
# --------------------------------------------------------------------------------------------
OTHER_CASES = [
    (lambda: P.same_pads([7], [3], [0], [1]), ValueError, "stride: expected 1 positive ints, got [0]"),
    (lambda: P.same_pads([7, 7], [3], [1], [1]), ValueError, "input_size: expected an int or 1 ints, got 2 values [7, 7]"),
    (lambda: P.same_pads([7], [-3], [1], [1]), ValueError, "kernel_size: expected 1 positive ints, got [-3]"),
    (lambda: P.same_pads([7], 3, [1], [1]), TypeError, "kernel_size: expected a sequence of positive ints, got 3"),
    (lambda: P.resolve_pads("same", [3], [2], [1], [0]), ValueError, "input_size: expected 1 positive ints, got [0]"),
    (lambda: P.same_fpad([7], [3], [0], [1]), ValueError,
     "same_fpad: expected positive input_size, kernel_size, stride and dilation, got [7], [3], [0], [1]"),
    (lambda: C.conv_output_size(8, 3, 1, 0, 1), TypeError, "input_size: expected a sequence of positive ints (the spatial size), got 8"),
    (lambda: C.conv_output_size((8,), (3,), (0,), 0, (1,)), ValueError, "stride: expected 1 positive ints, got (0,)"),
    (lambda: C.conv_output_size((8, 8), (3,), (1, 1), 0, (1, 1)), ValueError, "kernel_size: expected an int or 2 ints, got 1 values (3,)"),
    (lambda: DigitsDataset(seed="a"), TypeError, "seed: expected an int, got 'a' (str)"),
    (lambda: DigitsDataset(seed=1.5), TypeError, "seed: expected an int, got 1.5 (float)"),
    (lambda: DigitsDataset(test_fraction="a"), TypeError, "test_fraction: expected a fraction in (0, 1), got 'a' (str)"),
    (lambda: build(3), TypeError, "model: expected a name such as 'mobilenet_v1:0.5', got 3"),
    (lambda: build("mobilenet_v1:inf"), ValueError, "model: expected a positive number up to 8 after ':' in 'mobilenet_v1:inf', got 'inf'"),
    (lambda: build("digits_cnn:2.5"), ValueError, "model: expected a positive int up to 1024 after ':' in 'digits_cnn:2.5', got '2.5'"),
    (lambda: mobilenet_v1(float("inf")), ValueError, "width_mult: expected a positive number, got inf"),
    (lambda: mobilenet_v1(0.25, act_layer=nn.ReLU()), TypeError,
     "act_layer: expected a callable returning a module (a class such as nn.ReLU, not an instance), got the module instance ReLU()"),
    (lambda: mobilenet_v1(0.25, norm_layer="bn"), TypeError, "norm_layer: expected a callable taking the channel count, got 'bn'"),
]


@pytest.mark.parametrize("make,exc,msg", OTHER_CASES)
def test_padding_data_and_model_errors(make, exc, msg):
    with pytest.raises(exc) as info:
        make()
    assert str(info.value) == msg


# --------------------------------------------------------------------------------------------
# convert: non-finite or malformed data and models are refused before anything is written
# --------------------------------------------------------------------------------------------
def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()


def _poisoned(value, index, shape=(2, 3, 8, 8)):
    x = torch.randn(shape)
    x[index] = value
    return x


def _negative_var():
    net = _net()
    net[1].running_var[2] = -5.0
    return net


X8 = torch.randn(2, 3, 8, 8)
CONVERT_CASES = [
    (lambda: sepconv.convert(_net(), rank=1, calibration_data=_poisoned(NAN, (0, 0, 3, 5))), ValueError,
     "calibration_data: expected finite values, got nan at index (0, 0, 3, 5)"),
    (lambda: sepconv.convert(_net(), rank=1, calibration_data=[(X8, 0), (_poisoned(INF, (1, 2, 0, 7)), 1)]), ValueError,
     "calibration_data: expected finite values, got inf at index (1, 2, 0, 7) in batch 1"),
    (lambda: sepconv.convert(_net(), rank=1, example_input=_poisoned(-INF, (0, 1, 1, 1), (1, 3, 8, 8))), ValueError,
     "example_input: expected finite values, got -inf at index (0, 1, 1, 1)"),
    (lambda: sepconv.convert(_net(), rank=1, calibration_data=X8.long()), ValueError,
     "calibration_data: the model cannot run batch 0 of shape (2, 3, 8, 8) and dtype torch.int64 (expected a "
     "floating-point input?): layer '0' (Conv2d) failed on input of shape (2, 3, 8, 8) (model input (2, 3, 8, 8)): "
     "Input type (long int) and bias type (float) should be the same"),
    (lambda: sepconv.convert(_net(), rank=1, calibration_data=[X8, X8[:0]]), ValueError,
     "calibration_data: expected a non-empty batch, got shape (0, 3, 8, 8) in batch 1"),
    (lambda: sepconv.convert(_net(), rank=1, calibration_data=3), TypeError,
     "calibration_data: expected a tensor or an iterable of batches, got int"),
    (lambda: sepconv.convert(_net(), rank=1, calibration_data="x.pt"), TypeError,
     "calibration_data: expected a tensor or an iterable of batches, got str"),
    (lambda: sepconv.convert(_net(), rank=1, calibration_data=torch.randn(2, 5, 8, 8)), ValueError,
     "calibration_data: the model cannot run batch 0 of shape (2, 5, 8, 8): layer '0' (Conv2d) failed on input of "
     "shape (2, 5, 8, 8) (model input (2, 5, 8, 8)): Invalid channel dimensions"),
    (lambda: sepconv.convert(_net(), rank=1, example_input=torch.randn(1, 3, 2, 2)), ValueError,
     "example_input: the model cannot run an input of shape (1, 3, 2, 2): layer '3' (Conv2d) failed on input of shape "
     "(1, 8, 2, 2) (model input (1, 3, 2, 2)): Calculated padded input size per channel: (2 x 2). Kernel size: (3 x 3). "
     "Kernel size can't be greater than actual input size"),
    (lambda: sepconv.convert(nn.Sequential(nn.Conv2d(3, 8, 3)), rank=1, example_input=torch.randn(3, 8, 8)), ValueError,
     "example_input: expected a batched input, got shape (3, 8, 8) (layer '0' (Conv2d) received an unbatched input of "
     "shape (3, 8, 8))"),
    (lambda: sepconv.convert(_net(), fold_bn="no"), TypeError, "fold_bn: expected a bool, got 'no'"),
    (lambda: sepconv.convert(_net(), inplace=1), TypeError, "inplace: expected a bool, got 1"),
    (lambda: sepconv.convert(_negative_var(), rank=1), ValueError,
     "layer '1': expected a BatchNorm that folds into finite weights (running_var + eps > 0), got non-finite folded "
     "weights for layer '0'"),
]


@pytest.mark.parametrize("make,exc,msg", CONVERT_CASES)
def test_convert_errors(make, exc, msg):
    with pytest.raises(exc) as info:
        make()
    assert str(info.value) == msg


def test_convert_refuses_a_model_with_non_finite_weights_anywhere():
    net = _net()
    with torch.no_grad():
        net[1].weight[3] = INF  # a BatchNorm's affine weight, folded into conv '0'
    with pytest.raises(ValueError) as info:
        sepconv.convert(net, rank=1)
    assert str(info.value) == "model: expected finite values, got inf at index (3,) of parameter '1.weight'"


def test_non_finite_refit_keeps_the_svd_factors_and_says_so(monkeypatch):
    net = _net()
    monkeypatch.setattr(torch.linalg, "solve", lambda a, b: torch.full_like(b, NAN))
    new, report = sepconv.convert(net, method="depthwise", rank=1, calibration_data=X8)
    assert all(bool(torch.isfinite(p).all()) for p in new.parameters())
    assert all("the least-squares fit was not finite; kept the SVD factors" in r.note for r in report.layers)
    assert report.output_error is not None and report.output_error == report.output_error  # not NaN
