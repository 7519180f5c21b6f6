"""The optimized model's input copy to channels_last (``csrc/layout.cpp``, ``sepconv::to_channels_last``):
element for element PyTorch's own ``contiguous(memory_format=torch.channels_last)`` on every
instruction set, a new tensor every time, the user's input untouched."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from sepconv import _fused, optimize_for_inference


@pytest.fixture(scope="module")
def ext():
    module = _fused.load()
    if module is None:
        pytest.skip(f"the C++ kernels are not available here: {_fused.error()}")
    return module


def _check(x: torch.Tensor) -> None:
    before = x.clone()
    y = torch.ops.sepconv.to_channels_last(x)
    expected = x.contiguous(memory_format=torch.channels_last)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.equal(y, expected)
    # the same layout (a dim of size 1 has no meaningful stride)
    assert [s for s, n in zip(y.stride(), y.shape) if n > 1] == [s for s, n in zip(expected.stride(), y.shape) if n > 1]
    assert y.data_ptr() != x.data_ptr() or x.numel() == 0  # a new tensor, never the input
    assert torch.equal(x, before)


@pytest.mark.parametrize("shape", [(8, 3, 224, 224), (1, 3, 7, 5), (2, 1, 5, 9), (2, 2, 5, 9), (3, 4, 1, 17), (1, 5, 6, 6),
                                   (2, 3, 33, 1), (0, 3, 4, 4), (2, 3, 0, 4)])
def test_equals_pytorch_copy(ext, isa, shape):
    torch.manual_seed(0)
    _check(torch.randn(shape))


@given(b=st.integers(0, 3), c=st.integers(1, 6), h=st.integers(0, 19), w=st.integers(1, 41))
def test_equals_pytorch_copy_fuzzed(ext, b, c, h, w):
    _check(torch.randn(b, c, h, w))


def test_special_values_copied_bit_for_bit(ext, isa):
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-45, 3.0]).repeat(5).reshape(1, 3, 2, 5)
    y = torch.ops.sepconv.to_channels_last(x)
    assert torch.equal(y.contiguous().view(torch.int32), x.view(torch.int32))


@pytest.mark.parametrize("make", [
    lambda: torch.randn(2, 3, 8, 8, dtype=torch.float64),  # another dtype: PyTorch's copy
    lambda: torch.randn(2, 3, 8, 16)[..., ::2],  # not contiguous
    lambda: torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last),  # already channels_last
    lambda: torch.randn(2, 3, 8, 8).permute(0, 1, 3, 2),  # transposed
], ids=["float64", "strided", "channels_last", "transposed"])
def test_other_inputs_take_pytorch_copy(ext, make):
    _check(make())


def test_refuses_other_ranks(ext):
    with pytest.raises(RuntimeError, match=r"to_channels_last: x: expected a 4-D tensor, got 3-D of shape \[3, 4, 5\]"):
        torch.ops.sepconv.to_channels_last(torch.randn(3, 4, 5))


def test_fake_shape(ext):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        y = torch.ops.sepconv.to_channels_last(torch.empty(2, 3, 5, 7))
    assert y.shape == (2, 3, 5, 7) and y.is_contiguous(memory_format=torch.channels_last)


def test_optimized_model_takes_nchw_and_channels_last_alike(ext):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.Conv2d(16, 8, 1)).eval()
    x = torch.randn(2, 3, 33, 31)
    fast = optimize_for_inference(model, x)
    before = x.clone()
    with torch.no_grad():
        expected = model(x.double().float())
        out = fast(x)
        out_cl = fast(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(x, before) and x.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(out, out_cl)
