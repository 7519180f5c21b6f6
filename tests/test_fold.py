"""The BatchNorm folding math (sepconv.fold) against float64 references: conv then F.batch_norm."""

import pytest
import torch
import torch.nn.functional as F

from sepconv.fold import batchnorm_affine, fold_affine, fold_batchnorm, shifted_bias

F64 = torch.float64
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _stats(c: int, g: torch.Generator, affine: bool = True) -> dict:
    return dict(running_mean=torch.randn(c, generator=g, dtype=F64),
                running_var=torch.rand(c, generator=g, dtype=F64) * 1.5 + 0.5,
                eps=1e-3,
                bn_weight=torch.rand(c, generator=g, dtype=F64) + 0.5 if affine else None,
                bn_bias=torch.randn(c, generator=g, dtype=F64) if affine else None)


# (dims, in, out, groups, bias, affine): plain, grouped, depthwise (with a multiplier), pointwise, no bias
CASES = [
    (2, 4, 6, 1, True, True),
    (2, 4, 6, 1, False, True),
    (2, 4, 8, 2, True, True),
    (2, 5, 10, 5, False, True),  # depthwise, depth multiplier 2
    (2, 6, 6, 6, True, False),  # depthwise, BatchNorm without affine parameters
    (1, 3, 7, 1, False, True),
    (1, 4, 4, 4, True, True),
    (3, 2, 5, 1, True, True),
    (3, 4, 4, 2, False, False),
]


@pytest.mark.parametrize("n, cin, cout, groups, bias, affine", CASES)
def test_fold_batchnorm_matches_conv_then_batch_norm(n, cin, cout, groups, bias, affine):
    g = torch.Generator().manual_seed(n * 100 + cin * 10 + groups)
    k = (3, 2, 3)[:n]
    weight = torch.randn(cout, cin // groups, *k, generator=g, dtype=F64)
    b = torch.randn(cout, generator=g, dtype=F64) if bias else None
    s = _stats(cout, g, affine)
    x = torch.randn(2, cin, *[7] * n, generator=g, dtype=F64)
    ref = F.batch_norm(CONV[n](x, weight, b, padding=1, groups=groups), s["running_mean"], s["running_var"],
                       s["bn_weight"], s["bn_bias"], training=False, eps=s["eps"])
    w, fb = fold_batchnorm(weight, b, **s)
    torch.testing.assert_close(CONV[n](x, w, fb, padding=1, groups=groups), ref, rtol=1e-12, atol=1e-12)
    assert w.shape == weight.shape and fb.shape == (cout,)


def test_fold_does_not_modify_or_track_its_arguments():
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(4, 2, 3, 3, generator=g, dtype=F64, requires_grad=True)
    bias = torch.randn(4, generator=g, dtype=F64, requires_grad=True)
    s = _stats(4, g)
    before = [t.clone() for t in (weight, bias, s["running_mean"], s["running_var"])]
    w, b = fold_batchnorm(weight, bias, **s)
    assert not w.requires_grad and not b.requires_grad
    for t, old in zip((weight, bias, s["running_mean"], s["running_var"]), before):
        assert torch.equal(t, old)


def test_batchnorm_affine_is_the_eval_batch_norm():
    g = torch.Generator().manual_seed(2)
    s = _stats(5, g)
    x = torch.randn(3, 5, 4, generator=g, dtype=F64)
    scale, shift = batchnorm_affine(s["running_mean"], s["running_var"], s["eps"], s["bn_weight"], s["bn_bias"])
    ref = F.batch_norm(x, s["running_mean"], s["running_var"], s["bn_weight"], s["bn_bias"], False, eps=s["eps"])
    torch.testing.assert_close(scale[:, None] * x + shift[:, None], ref, rtol=1e-12, atol=1e-12)


def test_fold_affine_without_bias_gets_the_shift_as_bias():
    weight = torch.ones(2, 1, 1, dtype=F64)
    w, b = fold_affine(weight, None, torch.tensor([2.0, 3.0], dtype=F64), torch.tensor([0.5, -1.0], dtype=F64))
    assert w.flatten().tolist() == [2.0, 3.0] and b.tolist() == [0.5, -1.0]


@pytest.mark.parametrize("n, cin, cout, groups", [(2, 6, 4, 1), (2, 6, 3, 3), (2, 8, 4, 4), (1, 4, 8, 2), (3, 3, 3, 3)])
def test_shifted_bias_is_a_constant_input_through_the_conv(n, cin, cout, groups):
    g = torch.Generator().manual_seed(cin + groups)
    weight = torch.randn(cout, cin // groups, *[3] * n, generator=g, dtype=F64)
    shift = torch.randn(cin, generator=g, dtype=F64)
    x = torch.randn(1, cin, *[6] * n, generator=g, dtype=F64)
    ref = CONV[n](x + shift.reshape(1, cin, *[1] * n), weight, groups=groups)  # no padding: exact
    got = CONV[n](x, weight, shifted_bias(weight, shift, groups), groups=groups)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
