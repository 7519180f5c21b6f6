import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import sepconv
from sepconv import functional as SF
from reference import dense_of_blueprint, dense_of_separable, dense_of_spatial

F64 = torch.float64


def _photo() -> torch.Tensor:
    """A real photograph shipped with scikit-learn, as (1, 3, H, W) float64 in [0, 1]."""
    from sklearn.datasets import load_sample_images

    img = load_sample_images().images[0][:160, :200]  # china.jpg, cropped to keep the test fast
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).unsqueeze(0).to(F64) / 255


SOBEL_X = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=F64)


@pytest.mark.parametrize("border", ["reflect", "replicate", "circular", "zeros"])
def test_sobel_two_passes_equal_full_filter_on_photo(border):
    img = _photo()
    gx = SF.separable_filter2d(img, torch.tensor([-1.0, 0.0, 1.0]), torch.tensor([1.0, 2.0, 1.0]), border=border)
    mode = "constant" if border == "zeros" else border
    full = F.conv2d(F.pad(img, [1, 1, 1, 1], mode=mode), SOBEL_X.expand(3, 1, 3, 3), groups=3)
    torch.testing.assert_close(gx, full)
    assert gx.abs().max() > 0.5  # the photo really has edges
    # Sobel-y is the transpose
    gy = SF.separable_filter2d(img, torch.tensor([1.0, 2.0, 1.0]), torch.tensor([-1.0, 0.0, 1.0]), border=border)
    full_y = F.conv2d(F.pad(img, [1, 1, 1, 1], mode=mode), SOBEL_X.T.expand(3, 1, 3, 3), groups=3)
    torch.testing.assert_close(gy, full_y)


@given(st.integers(1, 9), st.integers(1, 9), st.sampled_from(["same", "valid"]), st.integers(0, 1000))
def test_separable_filter2d_equals_outer_product_kernel(kh, kw, padding, seed):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(2, 2, 12, 13, generator=g, dtype=F64)
    ky, kx = torch.randn(kh, generator=g, dtype=F64), torch.randn(kw, generator=g, dtype=F64)
    y = SF.separable_filter2d(img, kx, ky, padding=padding, border="replicate")
    k2 = torch.outer(ky, kx).expand(2, 1, kh, kw)
    if padding == "same":
        pads = [(kw - 1) // 2, kw - 1 - (kw - 1) // 2, (kh - 1) // 2, kh - 1 - (kh - 1) // 2]
        ref = F.conv2d(F.pad(img, pads, mode="replicate"), k2, groups=2)
        assert y.shape == img.shape
    else:
        ref = F.conv2d(img, k2, groups=2)
    torch.testing.assert_close(y, ref)


@given(st.integers(1, 25), st.integers(1, 25), st.sampled_from(["same", "valid"]),
       st.sampled_from(["reflect", "replicate", "circular", "zeros"]), st.integers(1, 3), st.integers(25, 70),
       st.integers(25, 90), st.booleans(), st.booleans(), st.integers(0, 1000))
@settings(max_examples=40, deadline=None)
def test_separable_filter2d_compiled_kernel_equals_float64_dense(kh, kw, padding, border, c, h, w, per_channel, batched,
                                                                  seed):
    """The C++ strip kernel (vector blocks of 32 and 8 columns and the scalar tail, strips, per-channel
    kernels, 3-D input) against the dense 2-D filter in float64."""
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(2, c, h, w, generator=g)
    ky = torch.randn(c if per_channel else 1, kh, generator=g)
    kx = torch.randn(c if per_channel else 1, kw, generator=g)
    args = (kx if per_channel else kx[0], ky if per_channel else ky[0])
    x = img if batched else img[0]
    y = SF.separable_filter2d(x, *args, padding=padding, border=border, kernel="compiled")
    k2 = (ky.double()[:, :, None] * kx.double()[:, None, :]).expand(c, kh, kw).unsqueeze(1)
    ref = img.double()
    if padding == "same":
        pads = [(kw - 1) // 2, kw - 1 - (kw - 1) // 2, (kh - 1) // 2, kh - 1 - (kh - 1) // 2]
        ref = F.pad(ref, pads, mode="constant" if border == "zeros" else border)
    ref = F.conv2d(ref, k2, groups=c)
    torch.testing.assert_close(y.double(), ref if batched else ref[0], rtol=1e-5, atol=1e-5)
    # 'auto' uses the kernel now that it is loaded; 'torch' is the reference path: same result
    torch.testing.assert_close(SF.separable_filter2d(x, *args, padding=padding, border=border, kernel="torch"), y,
                               rtol=1e-5, atol=1e-5)


def test_separable_filter2d_kernel_choice():
    """'compiled' serves float32 CPU inputs without gradients; everything else takes the PyTorch path."""
    from sepconv import _fused

    img = torch.rand(1, 2, 40, 40)
    k = torch.tensor([1.0, 2.0, 1.0])
    SF.separable_filter2d(img, k, k, kernel="compiled")
    assert _fused.loaded() is not None
    calls = []
    original = torch.ops.sepconv.separable_filter2d

    class Spy:
        def __call__(self, *a):
            calls.append(a[0].dtype)
            return original(*a)

    import unittest.mock

    with unittest.mock.patch.object(torch.ops.sepconv, "separable_filter2d", Spy()):
        SF.separable_filter2d(img, k, k)  # auto: loaded -> compiled
        SF.separable_filter2d(img.double(), k, k, kernel="compiled")  # float64: PyTorch path
        SF.separable_filter2d(img, k, k, kernel="torch")
        xg = img.clone().requires_grad_()
        out = SF.separable_filter2d(xg, k, k, kernel="compiled")  # gradients: PyTorch path
        out.sum().backward()
    assert calls == [torch.float32]
    assert xg.grad is not None
    with pytest.raises(ValueError, match=r"kernel: expected one of \('auto', 'compiled', 'torch'\), got 'cuda'"):
        SF.separable_filter2d(img, k, k, kernel="cuda")


def test_separable_filter2d_compiled_unavailable(monkeypatch):
    from sepconv import _fused

    monkeypatch.setattr(_fused, "load", lambda: None)
    monkeypatch.setattr(_fused, "loaded", lambda: None)
    img = torch.rand(1, 1, 20, 20)
    k = torch.ones(3) / 3
    ref = SF.separable_filter2d(img, k, k, kernel="torch")
    torch.testing.assert_close(SF.separable_filter2d(img, k, k), ref)  # auto: PyTorch path
    with pytest.raises(RuntimeError, match=r"kernel='compiled': the C\+\+ kernels could not be built here"):
        SF.separable_filter2d(img, k, k, kernel="compiled")


def test_separable_filter2d_per_channel_kernels_and_gaussian():
    img = _photo().float()
    g1 = torch.exp(-torch.arange(-3, 4.0) ** 2 / 2)
    g1 = g1 / g1.sum()
    blurred = SF.separable_filter2d(img, g1, g1)
    assert blurred.dtype == torch.float32
    torch.testing.assert_close(blurred.mean(), img.mean(), atol=2e-3, rtol=0)  # normalized blur keeps the mean
    kx = torch.stack([g1, torch.ones(7) / 7, g1])
    out = SF.separable_filter2d(img, kx, kx)
    torch.testing.assert_close(out[:, 0], blurred[:, 0])


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.sampled_from(["same", "valid", 1]))
def test_functional_ops_equal_dense(c, d, out, padding):
    x = torch.randn(2, c, 7, 8, dtype=F64)
    dw = torch.randn(c * d, 1, 3, 2, dtype=F64)
    pw = torch.randn(out, c * d, 1, 1, dtype=F64)
    b = torch.randn(out, dtype=F64)
    same = {"same": "same", "valid": 0, 1: 1}[padding]
    pad_kw = dict(padding=same)
    if padding == "same":
        ref = F.conv2d(x, dense_of_separable(dw, pw, d), b, padding="same")
        ref_dw = F.conv2d(x, dw, padding="same", groups=c)
    else:
        ref = F.conv2d(x, dense_of_separable(dw, pw, d), b, padding=same)
        ref_dw = F.conv2d(x, dw, padding=same, groups=c)
    torch.testing.assert_close(SF.separable_conv2d(x, dw, pw, b, **pad_kw), ref)
    torch.testing.assert_close(SF.depthwise_conv2d(x, dw, **pad_kw), ref_dw)
    bw = torch.randn(out, d, 3, 2, dtype=F64)
    bpw = torch.randn(out * d, c, 1, 1, dtype=F64)
    ref_b = F.conv2d(x, dense_of_blueprint(bpw, bw), b, padding=same)
    torch.testing.assert_close(SF.blueprint_separable_conv2d(x, bpw, bw, b, **pad_kw), ref_b)
    v = torch.randn(d, c, 3, 1, dtype=F64)
    h = torch.randn(out, d, 1, 2, dtype=F64)
    ref_s = F.conv2d(x, dense_of_spatial(v, h, 1), b, padding=same)
    torch.testing.assert_close(SF.spatially_separable_conv2d(x, v, h, b, **pad_kw), ref_s)


def test_layers_call_the_functional_math():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 11, 11, dtype=F64)
    layer = sepconv.SeparableConv2d(3, 5, 4, stride=2, padding="same", depth_multiplier=2, padding_mode="reflect", dtype=F64)
    torch.testing.assert_close(layer(x), SF.separable_conv2d(x, layer.depthwise.weight, layer.pointwise.weight,
                               layer.pointwise.bias, 2, "same", 1, "reflect"))
    bp = sepconv.BlueprintSeparableConv2d(3, 5, 3, padding=2, dilation=2, rank=2, dtype=F64)
    torch.testing.assert_close(bp(x), SF.blueprint_separable_conv2d(x, bp.pointwise.weight, bp.depthwise.weight,
                               bp.depthwise.bias, padding=2, dilation=2))
    sp = sepconv.SpatiallySeparableConv2d(3, 6, (3, 5), rank=3, groups=3, stride=(1, 2), padding="same", dtype=F64)
    torch.testing.assert_close(sp(x), SF.spatially_separable_conv2d(x, sp.vertical.weight, sp.horizontal.weight,
                               sp.horizontal.bias, (1, 2), "same", 1, 3))
    x1 = torch.randn(2, 3, 9, dtype=F64)
    d1 = sepconv.DepthwiseConv1d(3, 3, 2, padding="same", dtype=F64)
    torch.testing.assert_close(d1(x1), SF.depthwise_conv1d(x1, d1.weight, d1.bias, padding="same"))
    x3 = torch.randn(1, 3, 5, 5, 5, dtype=F64)
    s3 = sepconv.SeparableConv3d(3, 4, 3, padding=1, dtype=F64)
    torch.testing.assert_close(s3(x3), SF.separable_conv3d(x3, s3.depthwise.weight, s3.pointwise.weight, s3.bias, padding=1))
    b1 = sepconv.BlueprintSeparableConv1d(3, 4, 3, dtype=F64)
    torch.testing.assert_close(b1(x1), SF.blueprint_separable_conv1d(x1, b1.pointwise.weight, b1.depthwise.weight, b1.bias))


def _grad_inputs():
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=F64, requires_grad=True)

    return [
        ("depthwise_conv1d", SF.depthwise_conv1d, (r(1, 2, 7), r(4, 1, 3), r(4)), dict(padding="same", stride=2)),
        ("depthwise_conv2d", SF.depthwise_conv2d, (r(1, 2, 6, 6), r(2, 1, 2, 3), r(2)), dict(padding="same", padding_mode="reflect")),
        ("depthwise_conv3d", SF.depthwise_conv3d, (r(1, 2, 4, 4, 4), r(2, 1, 2, 2, 2), None), dict(padding=1)),
        ("separable_conv1d", SF.separable_conv1d, (r(1, 2, 7), r(2, 1, 3), r(3, 2, 1), r(3)), dict(padding=1)),
        ("separable_conv2d", SF.separable_conv2d, (r(1, 2, 6, 6), r(4, 1, 3, 3), r(3, 4, 1, 1), r(3)), dict(stride=2, padding="same", padding_mode="circular")),
        ("separable_conv3d", SF.separable_conv3d, (r(1, 2, 4, 4, 4), r(2, 1, 3, 3, 3), r(3, 2, 1, 1, 1), None), dict(padding="same")),
        ("blueprint_separable_conv1d", SF.blueprint_separable_conv1d, (r(1, 2, 7), r(6, 2, 1), r(3, 2, 3), r(3)), dict()),
        ("blueprint_separable_conv2d", SF.blueprint_separable_conv2d, (r(1, 2, 6, 6), r(3, 2, 1, 1), r(3, 1, 3, 3), r(3)), dict(padding="same", padding_mode="replicate")),
        ("blueprint_separable_conv3d", SF.blueprint_separable_conv3d, (r(1, 2, 4, 4, 4), r(3, 2, 1, 1, 1), r(3, 1, 2, 2, 2), None), dict()),
        ("spatially_separable_conv2d", SF.spatially_separable_conv2d, (r(1, 2, 6, 7), r(2, 1, 3, 1), r(4, 1, 1, 3), r(4)), dict(groups=2, padding="same", stride=2)),
        ("separable_filter2d", SF.separable_filter2d, (r(1, 2, 6, 6), r(3), r(5)), dict()),
    ]


@pytest.mark.parametrize("name,fn,args,kwargs", _grad_inputs(), ids=[t[0] for t in _grad_inputs()])
def test_gradcheck(name, fn, args, kwargs):
    assert torch.autograd.gradcheck(lambda *a: fn(*a, **kwargs), args)
