"""A fixed separable 2-D filter (e.g. Sobel, Gaussian): :func:`separable_filter2d` and its
compiled-kernel path."""

from typing import List

import torch
from torch import Tensor

from .._checks import check_finite
from ..padding import to_fpad
from ._core import pad_input

BORDERS = ("reflect", "replicate", "circular", "zeros")


def separable_filter2d(image: Tensor, kernel_x: Tensor, kernel_y: Tensor, padding: str = "same",
                       border: str = "reflect", kernel: str = "auto") -> Tensor:
    """Apply a fixed separable filter to every channel in two 1-D passes (vertical, then horizontal).

    Equals cross-correlating each channel with the 2-D kernel ``outer(kernel_y, kernel_x)``, at
    ``kh + kw`` instead of ``kh * kw`` multiplications per pixel. Sobel-x is
    ``kernel_x = [-1, 0, 1]``, ``kernel_y = [1, 2, 1]``.

    Args:
        image: ``(B, C, H, W)`` or ``(C, H, W)``, any floating-point dtype (an integer image raises
            ``TypeError``: filter ``image.float()``).
        kernel_x: ``(kw,)`` applied along W (or ``(C, kw)``, one per channel).
        kernel_y: ``(kh,)`` applied along H (or ``(C, kh)``).
        padding: ``'same'`` (output ``H x W``; even kernels put the smaller half before) or ``'valid'``.
        border: how ``'same'`` extends the image: ``'reflect'`` (mirror without repeating the edge,
            OpenCV's default ``BORDER_REFLECT_101``), ``'replicate'``, ``'circular'`` or ``'zeros'``.
        kernel: the implementation for float32 CPU images without gradients. ``'compiled'``: the
            C++ strip kernel (``csrc/separable_filter.cpp``; borders handled in place and one pass
            over memory instead of one per tap, several times faster for large kernels), compiled on first use (~1 min,
            cached); ``'auto'`` (default): the compiled kernel if it is already loaded in this
            process (e.g. by :func:`sepconv.optimize_for_inference` or an earlier
            ``'compiled'`` call), never triggering the compile; ``'torch'``: the pure PyTorch
            path (shifted multiply-adds), which also serves every other input (any dtype,
            device, autograd).

    Returns:
        Same shape as ``image`` for ``'same'``; ``(B, C, H-kh+1, W-kw+1)`` for ``'valid'``.

    Raises:
        TypeError: ``image`` is not a floating-point tensor.
        ValueError: a bad argument, or an image too small for the kernel: smaller than it for
            ``'valid'``, not larger than the border for ``'reflect'``, smaller than the border for
            ``'circular'`` (the same rules for every ``kernel`` choice).

    Example:
        >>> img = torch.rand(1, 3, 32, 32)
        >>> gx = separable_filter2d(img, torch.tensor([-1., 0., 1.]), torch.tensor([1., 2., 1.]))
        >>> gx.shape
        torch.Size([1, 3, 32, 32])
    """
    if not isinstance(image, Tensor):
        raise TypeError(f"image: expected a torch.Tensor, got {type(image).__name__}")
    if image.dim() not in (3, 4):
        raise ValueError(f"image: expected a 4-D (B, C, H, W) or 3-D (C, H, W) tensor, got {image.dim()}-D of shape {tuple(image.shape)}")
    if not image.is_floating_point():  # the kernel cast to an integer dtype would truncate to 0
        raise TypeError(f"image: expected a floating-point tensor, got {image.dtype} (filter image.float() for a float result)")
    if padding not in ("same", "valid"):
        raise ValueError(f"padding: expected one of ('same', 'valid'), got {padding!r}")
    if border not in BORDERS:
        raise ValueError(f"border: expected one of {BORDERS}, got {border!r}")
    if kernel not in ("auto", "compiled", "torch"):
        raise ValueError(f"kernel: expected one of ('auto', 'compiled', 'torch'), got {kernel!r}")
    c = image.shape[-3]
    weights = []
    for name, k in (("kernel_y", kernel_y), ("kernel_x", kernel_x)):
        if not isinstance(k, Tensor):
            k = torch.as_tensor(k)
        check_finite(name, k)  # filter weights: NaN or Inf would silently fill the output with NaN
        if k.dim() == 1:
            k = k.expand(c, k.shape[0])
        if k.dim() != 2 or k.shape[0] != c or k.shape[1] < 1:
            raise ValueError(f"{name}: expected shape (k,) or ({c}, k), got {tuple(k.shape)}")
        weights.append(k.to(device=image.device, dtype=image.dtype))
    ky, kx = weights
    kh, kw = ky.shape[1], kx.shape[1]
    fpad = _filter_pads(image, kh, kw, padding, border)
    if image.numel() == 0:  # no batch or no channels (F.pad refuses some such tensors): an empty result
        h, w = image.shape[-2:]
        return image.new_zeros(*image.shape[:-2], h + fpad[2] + fpad[3] - kh + 1, w + fpad[0] + fpad[1] - kw + 1)
    ext = _compiled_kernels(kernel, image, ky, kx)
    if ext is not None:
        batched = image if image.dim() == 4 else image.unsqueeze(0)
        out = torch.ops.sepconv.separable_filter2d(batched, ky, kx, fpad[2], fpad[3], fpad[0], fpad[1],
                                                   _BORDER_CODES[border])
        return out if image.dim() == 4 else out.squeeze(0)
    # Two 1-D passes as sums of shifted slices: each tap is one vectorized multiply-add over the
    # image, which on CPU beats a depthwise conv with a (k, 1) kernel by 2-3x (oneDNN has no fast
    # path for those shapes). In-place accumulation unless gradients are needed.
    y = _shifted_sum(pad_input(image, [0, 0, fpad[2], fpad[3]], border), ky, dim=-2)
    return _shifted_sum(pad_input(y, [fpad[0], fpad[1], 0, 0], border), kx, dim=-1)


def _filter_pads(image: Tensor, kh: int, kw: int, padding: str, border: str) -> List[int]:
    """``separable_filter2d``'s ``F.pad``-ordered pads, after checking that the image suits them:
    the same rules for the compiled and the PyTorch path, checked before either runs."""
    h, w = image.shape[-2:]
    if h < 1 or w < 1:
        raise ValueError(f"image: expected H >= 1 and W >= 1, got {h}x{w}")
    if padding == "valid":
        if h < kh or w < kw:
            raise ValueError(f"image: expected H >= {kh} and W >= {kw} for padding='valid' with a {kh}x{kw} kernel, got {h}x{w}")
        return [0, 0, 0, 0]
    fpad = to_fpad([((kh - 1) // 2, kh - 1 - (kh - 1) // 2), ((kw - 1) // 2, kw - 1 - (kw - 1) // 2)])
    ph, pw = max(fpad[2:]), max(fpad[:2])
    # F.pad's limits: a reflection must not repeat the edge, a circular border wraps at most once
    if border == "reflect" and (ph >= h or pw >= w):
        raise ValueError(f"image: expected H > {ph} and W > {pw} for border='reflect' with a {kh}x{kw} kernel, got {h}x{w}")
    if border == "circular" and (ph > h or pw > w):
        raise ValueError(f"image: expected H >= {ph} and W >= {pw} for border='circular' with a {kh}x{kw} kernel, got {h}x{w}")
    return fpad


_BORDER_CODES = {"zeros": 0, "reflect": 1, "replicate": 2, "circular": 3}  # as in csrc/separable_filter.cpp


def _compiled_kernels(choice: str, image: Tensor, *kernels: Tensor):
    """The C++ kernels' module if ``choice`` and the input allow it, else None (PyTorch path)."""
    if choice == "torch" or image.dtype != torch.float32 or image.device.type != "cpu":
        return None
    if torch.is_grad_enabled() and (image.requires_grad or any(k.requires_grad for k in kernels)):
        return None
    from .. import _fused

    if choice == "auto":
        return _fused.loaded()
    ext = _fused.load()
    if ext is None:
        raise RuntimeError(f"kernel='compiled': the C++ kernels could not be built here ({_fused.error()}); "
                           "use kernel='torch'")
    return ext


def _shifted_sum(x: Tensor, kernel: Tensor, dim: int) -> Tensor:
    """``out[..., i] = sum_j kernel[:, j] * x[..., i + j]`` along ``dim``, per channel (dim -3)."""
    k = kernel.shape[1]
    n = x.shape[dim] - k + 1
    if n < 1:
        raise ValueError(f"image: expected a size >= {k} along dim {dim} for a 'valid' filter, got {x.shape[dim]}")
    taps = kernel.t().reshape(k, kernel.shape[0], 1, 1)  # (k, C, 1, 1), broadcast over H, W
    differentiable = torch.is_grad_enabled() and (x.requires_grad or kernel.requires_grad)
    out = x.narrow(dim, 0, n) * taps[0]
    for j in range(1, k):
        if differentiable:
            out = out + x.narrow(dim, j, n) * taps[j]
        else:
            out.addcmul_(x.narrow(dim, j, n), taps[j])
    return out
