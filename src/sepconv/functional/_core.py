"""The TorchScript-compatible core every op and layer runs through (padding, the conv call, input
checks), and the argument checks of the public ops."""

from typing import Callable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_padding_mode, to_tuple
from ..padding import PaddingArg, normalize_padding, same_fpad, static_pads, to_fpad, traced_pads, traced_same_fpad


# --------------------------------------------------------------------------------------------
# TorchScript-compatible core, shared by the public functions and the layers' forward().
# --------------------------------------------------------------------------------------------
def check_input(x: Tensor, n: int, channels: int) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(B, channels, *n dims)`` or ``(channels, *n dims)``."""
    if x.dim() != n + 2 and x.dim() != n + 1:
        raise ValueError(
            f"input: expected a {n + 2}-D batched or {n + 1}-D unbatched tensor, got {x.dim()}-D of shape {list(x.shape)}"
        )
    if x.shape[-n - 1] != channels:
        raise ValueError(f"input: expected {channels} channels at dim {-n - 1}, got {x.shape[-n - 1]} (shape {list(x.shape)})")


def pad_input(x: Tensor, fpad: List[int], padding_mode: str) -> Tensor:
    """Pad ``x`` with the ``F.pad``-ordered ``fpad`` using a torch ``padding_mode``."""
    nonzero = traced_pads(fpad)  # pads that follow a traced input's size: always applied
    for p in fpad:
        if not nonzero and p != 0:
            nonzero = True
    if not nonzero:
        return x
    if padding_mode == "zeros":
        return F.pad(x, fpad, mode="constant", value=0.0)
    return F.pad(x, fpad, mode=padding_mode)


def conv_nd(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    stride: List[int],
    fpad: List[int],
    dilation: List[int],
    groups: int,
    padding_mode: str,
) -> Tensor:
    """``F.conv{1,2,3}d`` with explicit, possibly asymmetric ``F.pad``-ordered pads.

    Symmetric zero padding is left to the convolution itself (no copy of the input); any other
    padding is done by :func:`pad_input` first.
    """
    n = weight.dim() - 2
    conv_pad: List[int] = [0] * n
    symmetric = not traced_pads(fpad)  # pads that follow a traced input's size: always by F.pad
    for i in range(n):
        if symmetric and fpad[2 * i] != fpad[2 * i + 1]:
            symmetric = False
    if padding_mode == "zeros" and symmetric:
        conv_pad = [fpad[2 * (n - 1 - i)] for i in range(n)]
    else:
        x = pad_input(x, fpad, padding_mode)
    if n == 1:
        return F.conv1d(x, weight, bias, stride, conv_pad, dilation, groups)
    if n == 2:
        return F.conv2d(x, weight, bias, stride, conv_pad, dilation, groups)
    return F.conv3d(x, weight, bias, stride, conv_pad, dilation, groups)


def input_fpad(x: Tensor, static_fpad: List[int], dynamic: bool, kernel: List[int], stride: List[int], dilation: List[int]) -> List[int]:
    """The pads for this input: the static ones, or TF 'same' computed from ``x``'s size."""
    if not dynamic:
        return static_fpad
    if torch.jit.is_tracing():  # pads the trace recomputes for each input's size
        return traced_same_fpad(x, kernel, stride, dilation)
    n = len(kernel)
    sizes: List[int] = [int(s) for s in x.shape[-n:]]
    return same_fpad(sizes, kernel, stride, dilation)


# --------------------------------------------------------------------------------------------
# Argument preparation for the public functions (plain Python, not scripted).
# --------------------------------------------------------------------------------------------
Describe = Union[str, Callable[[], str]]


def check_call(x: object, kind: Describe, n: int, channels: int, dtype: torch.dtype) -> Tensor:
    """Eager checks of an op's or a layer's input: a tensor of the right rank, channels and dtype.

    ``kind`` names the op or layer in messages (a callable is only called to raise). Under
    autocast the dtype is left to autocast.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"input: expected a torch.Tensor, got {type(x).__name__}")
    check_input(x, n, channels)
    if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"input: expected dtype {dtype} (the weights' dtype of {kind if isinstance(kind, str) else kind()}), "
                        f"got {x.dtype} (shape {list(x.shape)})")
    return x


def check_fit(x: Tensor, kind: Describe, kernel: List[int], dilation: List[int],
              fpad: Union[List[int], Callable[[Tensor], List[int]]], padding_mode: str) -> None:
    """Raise ``ValueError`` unless the (dilated) kernel fits ``x`` padded by ``fpad`` (F.pad order,
    or a function of ``x`` giving them, for ``'same'`` with a stride), and the pads are ones
    ``padding_mode`` can make from ``x`` ('reflect' needs pads < size, 'circular' pads <= size)."""
    n = len(kernel)
    sizes = list(x.shape[-n:])  # no int(): symbolic sizes stay symbolic under torch.export
    if callable(fpad):  # input-dependent 'same' pads: any non-empty input fits the kernel
        fpad = fpad(x) if all(size > 0 for size in sizes) else [0] * (2 * n)
        kernel = [1] * n if min(sizes) < 1 else kernel
    need = []
    for i in range(n):
        before, after = fpad[2 * (n - 1 - i)], fpad[2 * (n - 1 - i) + 1]
        m = max(1, (kernel[i] - 1) * dilation[i] + 1 - before - after)
        if padding_mode == "reflect" and (before or after):
            m = max(m, before + 1, after + 1)
        elif padding_mode == "circular":
            m = max(m, before, after)
        need.append(m)
    if any(size < m for size, m in zip(sizes, need)):
        why = {"reflect": "; 'reflect' pads must be smaller than the input",
               "circular": "; 'circular' pads must not exceed the input"}.get(padding_mode, "")
        raise ValueError(f"input: expected a spatial size >= {tuple(need)} for {kind if isinstance(kind, str) else kind()} "
                         f"(the kernel must fit the padded input{why}), got {tuple(sizes)} (shape {list(x.shape)})")


def _check_tensor(name: str, t: object, dim: int) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != dim:
        raise ValueError(f"{name}: expected a {dim}-D tensor, got {t.dim()}-D of shape {tuple(t.shape)}")
    if 0 in t.shape:
        raise ValueError(f"{name}: expected a tensor without empty dims, got shape {tuple(t.shape)}")
    return t


def _same_dtype(a_name: str, a: Tensor, b_name: str, b: Tensor) -> None:
    if a.dtype != b.dtype:
        raise TypeError(f"{b_name}: expected the dtype of {a_name} ({a.dtype}), got {b.dtype}")


def _check_bias(bias: Optional[Tensor], channels: int) -> None:
    if bias is not None:
        _check_tensor("bias", bias, 1)
        if bias.shape[0] != channels:
            raise ValueError(f"bias: expected shape ({channels},), got {tuple(bias.shape)}")


def _geometry(
    x: Tensor, n: int, kernel: Tuple[int, ...], stride, padding: PaddingArg, dilation, padding_mode: str
) -> Tuple[List[int], List[int], List[int]]:
    """Validate stride/padding/dilation/padding_mode; return stride, F.pad list, dilation."""
    stride_t = to_tuple("stride", stride, n)
    dilation_t = to_tuple("dilation", dilation, n)
    pad = normalize_padding(padding, n)
    check_padding_mode(padding_mode)
    pads = static_pads(pad, kernel, stride_t, dilation_t)
    if pads is None and torch.jit.is_tracing():  # pads the trace recomputes for each input's size
        fpad = traced_same_fpad(x, list(kernel), list(stride_t), list(dilation_t))
    elif pads is None:
        fpad = same_fpad([int(s) for s in x.shape[-n:]], list(kernel), list(stride_t), list(dilation_t))
    else:
        fpad = to_fpad(pads)
    return list(stride_t), fpad, list(dilation_t)


def _channels(x: object, n: int) -> int:
    """The channel count of a checked input (-1 if ``x`` is not even a tensor of enough dims)."""
    c = x.shape[-n - 1] if isinstance(x, Tensor) and x.dim() >= n + 1 else -1
    if c == 0:
        raise ValueError(f"input: expected at least 1 channel at dim {-n - 1}, got 0 (shape {list(x.shape)})")
    return c
