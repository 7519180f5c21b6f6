import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from sepconv import functional as SF
from sepconv.padding import normalize_padding, resolve_pads, same_fpad, same_pads, static_pads, to_fpad
from reference import tf_same_pads_1d


# (input, kernel, stride, dilation) -> (out, before, after), worked by hand from TF's documented
# rule. The first row is TensorFlow's own documentation example (width 13, filter 6, stride 5).
TF_TABLE = [
    ((13, 6, 5, 1), (3, 1, 2)),
    ((7, 4, 2, 1), (4, 1, 2)),
    ((8, 4, 2, 1), (4, 1, 1)),
    ((5, 3, 1, 1), (5, 1, 1)),
    ((5, 2, 1, 1), (5, 0, 1)),
    ((10, 3, 2, 2), (5, 1, 2)),   # eff. kernel 5: 4*2 + 5 - 10 = 3
    ((4, 1, 3, 1), (2, 0, 0)),
    ((9, 3, 3, 1), (3, 0, 0)),   # (3-1)*3 + 3 - 9 = 0
    ((2, 5, 1, 1), (2, 2, 2)),
]


@pytest.mark.parametrize("args,expected", TF_TABLE)
def test_same_pads_tf_table(args, expected):
    n, k, s, d = args
    out, before, after = expected
    assert same_pads([n], [k], [s], [d]) == [(before, after)]
    assert (n + before + after - ((k - 1) * d + 1)) // s + 1 == out


@given(st.integers(1, 40), st.integers(1, 7), st.integers(1, 5), st.integers(1, 3))
def test_same_pads_match_tf_rule_and_scripted_twin(n, k, s, d):
    assert same_pads([n], [k], [s], [d]) == [tf_same_pads_1d(n, k, s, d)]
    b, a = tf_same_pads_1d(n, k, s, d)
    assert same_fpad([n], [k], [s], [d]) == [b, a]
    # output size is ceil(n / s)
    assert (n + b + a - ((k - 1) * d + 1)) // s + 1 == -(-n // s)


def _tf_conv1d_same_numpy(x, w, s, d):
    """A naive TF-'SAME' 1-D cross-correlation in numpy: the hand-written reference."""
    n, k = len(x), len(w)
    b, a = tf_same_pads_1d(n, k, s, d)
    xp = np.concatenate([np.zeros(b), x, np.zeros(a)])
    out = -(-n // s)
    return np.array([sum(w[j] * xp[i * s + j * d] for j in range(k)) for i in range(out)])


@given(st.integers(1, 20), st.integers(1, 6), st.integers(1, 4), st.integers(1, 3), st.integers(0, 10**6))
def test_same_values_equal_numpy_tf_reference(n, k, s, d, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    w = torch.randn(k, generator=g, dtype=torch.float64)
    y = SF.depthwise_conv1d(x.reshape(1, 1, n), w.reshape(1, 1, k), stride=s, dilation=d, padding="same")
    ref = _tf_conv1d_same_numpy(x.numpy(), w.numpy(), s, d)
    np.testing.assert_allclose(y.reshape(-1).numpy(), ref, rtol=1e-12, atol=1e-12)


@given(st.integers(3, 12), st.integers(1, 6), st.integers(1, 3))
def test_same_stride1_equals_torch_same(n, k, d):
    # torch's own padding='same' (stride 1) also puts the extra pad after: an independent check.
    x = torch.randn(1, 2, n, n + 1, dtype=torch.float64)
    w = torch.randn(2, 1, k, k + 1, dtype=torch.float64)
    ours = SF.depthwise_conv2d(x, w, padding="same", dilation=d)
    theirs = F.conv2d(x, w, padding="same", dilation=d, groups=2)
    torch.testing.assert_close(ours, theirs)


def test_static_and_dynamic():
    assert static_pads("same", (3, 4), (1, 1), (1, 2)) == [(1, 1), (3, 3)]
    assert static_pads("same", (3,), (2,), (1,)) is None
    assert static_pads((1, 2), (3, 3), (2, 2), (1, 1)) == [(1, 1), (2, 2)]
    assert resolve_pads("same", (4,), (2,), (1,), (7,)) == [(1, 2)]
    assert to_fpad([(1, 2), (3, 4)]) == [3, 4, 1, 2]


def test_normalize_padding():
    assert normalize_padding("valid", 3) == (0, 0, 0)
    assert normalize_padding("same", 2) == "same"
    assert normalize_padding(2, 2) == (2, 2)
    assert normalize_padding((1, 0), 2) == (1, 0)


@pytest.mark.parametrize(
    "padding,exc,msg",
    [
        ("full", ValueError, "padding: expected one of ('valid', 'same'), an int or a tuple of 2 ints, got 'full'"),
        (-1, ValueError, "padding: expected 2 >= 0 ints, got -1"),
        ((1, 2, 3), ValueError, "padding: expected an int or 2 ints, got 3 values (1, 2, 3)"),
        (1.5, TypeError, "padding: expected an int or a tuple of 2 ints, got 1.5"),
    ],
)
def test_normalize_padding_errors(padding, exc, msg):
    with pytest.raises(exc) as info:
        normalize_padding(padding, 2)
    assert str(info.value) == msg


def test_dynamic_same_needs_input_size():
    with pytest.raises(ValueError, match="input_size: padding='same' with stride > 1 depends on the input size"):
        resolve_pads("same", (3,), (2,), (1,))
