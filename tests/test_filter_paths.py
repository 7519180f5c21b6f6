"""separable_filter2d behaves the same on its two paths (kernel='compiled', the C++ strip kernel,
and kernel='torch'): each case of the table either gives both the float64 dense result or makes
both raise the same error, checked before either path runs."""

import re
import unittest.mock

import pytest
import torch
import torch.nn.functional as F

import sepconv.functional as SF


@pytest.fixture(scope="module")
def ext():
    from sepconv import _fused

    module = _fused.load()
    assert module is not None, f"the C++ kernels failed to build: {_fused.error()}"
    return module


def _img(*shape, dtype=torch.float32):
    g = torch.Generator().manual_seed(sum(shape) + len(shape))
    return torch.randn(*shape, generator=g).to(dtype)


def _k(n, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(n * 10 + seed))


def _reference(image, kx, ky, padding, border):
    """Dense float64 per-channel cross-correlation with outer(ky, kx), the border by F.pad."""
    x = image.double() if image.dim() == 4 else image.double().unsqueeze(0)
    c = x.shape[1]
    ky = torch.as_tensor(ky).double().expand(c, -1) if torch.as_tensor(ky).dim() == 1 else torch.as_tensor(ky).double()
    kx = torch.as_tensor(kx).double().expand(c, -1) if torch.as_tensor(kx).dim() == 1 else torch.as_tensor(kx).double()
    kh, kw = ky.shape[1], kx.shape[1]
    if x.numel() == 0:  # no pixels: only the output's shape
        out = x.new_zeros(*x.shape[:2], *((x.shape[2], x.shape[3]) if padding == "same" else (x.shape[2] - kh + 1, x.shape[3] - kw + 1)))
        return out if image.dim() == 4 else out.squeeze(0)
    if padding == "same":
        top, left = (kh - 1) // 2, (kw - 1) // 2
        x = F.pad(x, (left, kw - 1 - left, top, kh - 1 - top), mode="constant" if border == "zeros" else border)
    weight = (ky[:, :, None] * kx[:, None, :]).reshape(c, 1, kh, kw)
    out = F.conv2d(x, weight, groups=c)
    return out if image.dim() == 4 else out.squeeze(0)


OK = None
CASES = [
    # name, image, kernel_x, kernel_y, padding, border, expected error (type, message) or OK
    ("odd kernels, reflect", _img(2, 3, 9, 11), _k(5), _k(3), "same", "reflect", OK),
    ("even kernels, reflect", _img(2, 3, 9, 11), _k(4), _k(2), "same", "reflect", OK),
    ("even kernels, replicate", _img(2, 3, 9, 11), _k(4), _k(6), "same", "replicate", OK),
    ("even kernels, circular", _img(2, 3, 9, 11), _k(2), _k(4), "same", "circular", OK),
    ("even kernels, zeros", _img(2, 3, 9, 11), _k(6), _k(4), "same", "zeros", OK),
    ("valid, even kernels", _img(1, 2, 9, 11), _k(4), _k(2), "valid", "reflect", OK),
    ("valid, image exactly the kernel", _img(1, 2, 5, 3), _k(3), _k(5), "valid", "reflect", OK),
    ("wide rows: every vector width", _img(1, 2, 7, 91), _k(5), _k(3), "same", "reflect", OK),  # 91 = 64 + 16 + 8 + 3
    ("3-D image", _img(3, 9, 11), _k(3), _k(5), "same", "reflect", OK),
    ("non-contiguous image", _img(2, 3, 11, 9).transpose(-1, -2), _k(5), _k(3), "same", "replicate", OK),
    ("channels_last image", _img(2, 3, 9, 11).contiguous(memory_format=torch.channels_last), _k(3), _k(3), "same", "zeros", OK),
    ("float64 image", _img(2, 3, 9, 11, dtype=torch.float64), _k(5), _k(3), "same", "reflect", OK),
    ("float64 kernels, float32 image", _img(1, 3, 9, 11), _k(5).double(), _k(3).double(), "same", "circular", OK),
    ("kernels as lists", _img(1, 2, 8, 8), [-1.0, 0.0, 1.0], [1.0, 2.0, 1.0], "same", "reflect", OK),
    ("per-channel kernels", _img(2, 3, 9, 11), torch.randn(3, 5), torch.randn(3, 3), "same", "replicate", OK),
    ("circular border as large as the image", _img(1, 2, 3, 3), _k(7), _k(7), "same", "circular", OK),
    ("replicate border larger than the image", _img(1, 2, 2, 2), _k(7), _k(7), "same", "replicate", OK),
    ("zeros border larger than the image", _img(1, 2, 2, 2), _k(7), _k(7), "same", "zeros", OK),
    ("reflect, 1 row and a 1-tap vertical kernel", _img(1, 2, 1, 9), _k(3), _k(1), "same", "reflect", OK),
    ("empty batch", _img(0, 3, 9, 11), _k(3), _k(3), "same", "reflect", OK),
    ("no channels", _img(2, 0, 9, 11), _k(3), _k(3), "same", "reflect", OK),
    ("uint8 image", torch.full((1, 1, 5, 5), 10, dtype=torch.uint8), torch.full((3,), 1 / 3), torch.full((3,), 1 / 3), "same",
     "reflect", (TypeError, "image: expected a floating-point tensor, got torch.uint8 (filter image.float() for a float result)")),
    ("int64 image", torch.ones(1, 1, 5, 5, dtype=torch.int64), _k(3), _k(3), "same", "zeros",
     (TypeError, "image: expected a floating-point tensor, got torch.int64 (filter image.float() for a float result)")),
    ("bool image", torch.ones(1, 5, 5, dtype=torch.bool), _k(3), _k(3), "same", "zeros",
     (TypeError, "image: expected a floating-point tensor, got torch.bool (filter image.float() for a float result)")),
    ("circular border larger than the image", _img(1, 2, 2, 2), _k(7), _k(7), "same", "circular",
     (ValueError, "image: expected H >= 3 and W >= 3 for border='circular' with a 7x7 kernel, got 2x2")),
    ("circular border wider than the image", _img(1, 2, 9, 2), _k(6), _k(3), "same", "circular",
     (ValueError, "image: expected H >= 1 and W >= 3 for border='circular' with a 3x6 kernel, got 9x2")),
    ("reflect border as large as the image", _img(1, 2, 3, 8), _k(3), _k(7), "same", "reflect",
     (ValueError, "image: expected H > 3 and W > 1 for border='reflect' with a 7x3 kernel, got 3x8")),
    ("valid, image smaller than the kernel", _img(1, 2, 4, 8), _k(3), _k(5), "valid", "reflect",
     (ValueError, "image: expected H >= 5 and W >= 3 for padding='valid' with a 5x3 kernel, got 4x8")),
    ("empty image height", _img(1, 2, 0, 5), _k(1), _k(1), "same", "zeros",
     (ValueError, "image: expected H >= 1 and W >= 1, got 0x5")),
    ("empty image width", _img(2, 4, 0), _k(3), _k(3), "same", "replicate",
     (ValueError, "image: expected H >= 1 and W >= 1, got 4x0")),
]


@pytest.mark.parametrize("name,image,kx,ky,padding,border,expected", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("path", ["compiled", "torch"])
def test_separable_filter2d_paths_agree(ext, isa, path, name, image, kx, ky, padding, border, expected):
    calls = []
    original = torch.ops.sepconv.separable_filter2d

    def spy(*args):
        calls.append(args)
        return original(*args)

    with unittest.mock.patch.object(torch.ops.sepconv, "separable_filter2d", spy):
        if expected is not OK:
            with pytest.raises(expected[0], match=f"^{re.escape(expected[1])}$"):
                SF.separable_filter2d(image, kx, ky, padding=padding, border=border, kernel=path)
            assert not calls
            return
        out = SF.separable_filter2d(image, kx, ky, padding=padding, border=border, kernel=path)
    # the compiled kernel serves float32 images (others take the PyTorch path; empty ones neither)
    assert len(calls) == (path == "compiled" and image.dtype == torch.float32 and image.numel() > 0)
    ref = _reference(image, kx, ky, padding, border)
    assert out.dtype == image.dtype and out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
