"""The fused inference modules: depthwise + pointwise (``fused_dwpw``), blueprint separable
(``blueprint_pwdw``), dense convs with few
inputs per output (``conv2d_gemm``) and linear layers (``linear_gemm``) on the compiled kernels
of :mod:`sepconv._fused`, each falling back to the layer it replaces."""

from typing import Optional

import torch
from torch import Tensor, nn

from .. import _fused

_ACTS = {nn.Identity: 0, nn.ReLU: 1, nn.ReLU6: 2}


def _pack_panels(weight: Tensor, bias: Optional[Tensor]) -> tuple:
    """A (N, K) weight as the GEMM's panels (ceil(N / 16), K, 16), zero-padded, and the bias
    padded to ceil(N / 16) * 16 (empty without one)."""
    n, k = weight.shape
    blocks = (n + 15) // 16
    packed = torch.zeros(blocks * 16, k)
    packed[:n] = weight.detach().float()
    padded = torch.zeros(blocks * 16 if bias is not None else 0)
    if bias is not None:
        padded[:n] = bias.detach().float()
    return packed.reshape(blocks, 16, k).transpose(1, 2).contiguous(), padded


def _needs_reference(x: Tensor) -> bool:
    """Whether a fused layer must run its PyTorch reference on ``x``: another dtype, gradients
    wanted, or no compiled kernels here (``_fused.load()`` builds them and registers their ops
    once, then is a cached lookup)."""
    return x.dtype != torch.float32 or (x.requires_grad and torch.is_grad_enabled()) or _fused.load() is None


def _min_input(channels: int, extent: tuple, pads: tuple) -> tuple:
    """``(channels, H, W)``: the least input a fused conv's kernel runs on (a padded image holding the
    kernel's extent ``(h, w)`` at least once; ``pads`` top, bottom, left, right). See :func:`_fits`."""
    return channels, max(1, extent[0] - pads[0] - pads[1]), max(1, extent[1] - pads[2] - pads[3])


def _fits(x: Tensor, least: tuple) -> bool:
    """Whether the 4-D ``x`` has a non-empty batch, the channels and at least the size ``least``
    (:func:`_min_input`) of a fused conv's kernel. Any other input runs the reference layer, which
    raises the original model's error for it (the kernel itself refuses it too, in its own words).
    True while tracing: a traced graph keeps the kernel call, whose own checks then guard it (and
    comparing traced sizes would only warn)."""
    if torch.jit.is_tracing():
        return True
    return x.shape[1] == least[0] and x.shape[2] >= least[1] and x.shape[3] >= least[2] and x.shape[0] > 0


def _activation(y: Tensor, code: int) -> Tensor:
    return torch.relu(y) if code == 1 else (y.clamp(0, 6) if code == 2 else y)


class FusedSeparableConv2d(nn.Module):
    """Inference-only depthwise + pointwise in one pass (``csrc/fused_dwpw.cpp``), float32 NHWC.

    Built by :func:`optimize_for_inference` from a BatchNorm-folded :class:`~sepconv.SeparableConv2d`
    (any depth multiplier; and the ReLU/ReLU6 after it, fused). Any other input (another dtype,
    gradients), or a machine where the kernel cannot be compiled, runs the original layer, kept as
    ``reference``. The kernel is the dispatcher op ``torch.ops.sepconv.fused_dwpw``, so tracing,
    freezing and the profiler see it.
    """

    def __init__(self, layer: nn.Module, act_out: int) -> None:
        super().__init__()
        dw, pw = layer.depthwise, layer.pointwise
        c, n, m = layer.in_channels, layer.out_channels, layer.depth_multiplier
        kh, kw = layer.kernel_size
        self.reference = layer
        self.act_mid = _ACTS[type(layer.act)]
        self.act_out = act_out
        self.n = n
        self.geometry = (kh, kw, *layer.stride, layer._fpad[2], layer._fpad[3], layer._fpad[0], layer._fpad[1])
        self.least = _min_input(c, (kh, kw), self.geometry[4:])
        # PyTorch's depthwise output channel c * m + j filters input channel c; the kernel keeps
        # the intermediate in the order j * C + c (so 8 adjacent channels read 8 adjacent inputs),
        # the pointwise weights' columns permuted to match
        packed, bias = _pack_panels(pw.weight.reshape(n, c, m).transpose(1, 2).reshape(n, m * c), pw.bias)
        taps = dw.weight.detach().float().reshape(c, m, kh * kw)
        self.register_buffer("dw_weight", taps.permute(1, 2, 0).contiguous())  # (m, kh * kw, c)
        self.register_buffer("dw_bias", dw.bias.detach().float().reshape(c, m).t().reshape(-1).contiguous()
                             if dw.bias is not None else torch.zeros(0))
        self.register_buffer("pw_weight", packed)
        self.register_buffer("pw_bias", bias)
        # a tile's depthwise result, its input rows (prefetched during the previous tile's GEMM)
        # and the weights share L2: 3/16 of it (96 KiB of the 512 KiB L2 it was tuned on; on a
        # 2 MiB L2 from 1/16 to 1/4 measured alike); >= 48 pixels, as each tile streams all the
        # pointwise weights
        self.tile_bytes = max(_fused.l2_bytes() * 3 // 16, 48 * 4 * c * m)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or not _fits(x, self.least) or _needs_reference(x):
            return _activation(self.reference(x), self.act_out)
        # buffers straight from _buffers: nn.Module.__getattr__ cost ~1.5 us each, a quarter of a
        # small layer's whole call at batch 1
        b = self._buffers
        return torch.ops.sepconv.fused_dwpw(x, b["dw_weight"], b["dw_bias"], self.act_mid, b["pw_weight"], b["pw_bias"],
                                            self.n, self.act_out, *self.geometry, self.tile_bytes)


class FusedBlueprintConv2d(nn.Module):
    """Inference-only blueprint separable conv in one pass (``csrc/blueprint.cpp``), float32 NHWC.

    Built by :func:`optimize_for_inference` from a BatchNorm-folded
    :class:`~sepconv.BlueprintSeparableConv2d` of any rank (and the ReLU/ReLU6 after it, fused;
    an eval-mode BatchNorm and ReLU/ReLU6 between the factors too): per band of output rows, the
    pointwise result is computed into an L2-sized buffer and the grouped ``k x k`` conv (``rank``
    inputs per output channel, which PyTorch runs several times slower than a depthwise conv)
    reads it from there. Any other input runs the original layer (``reference``). The kernel is
    the dispatcher op ``torch.ops.sepconv.blueprint_pwdw``.
    """

    def __init__(self, layer: nn.Module, act_out: int) -> None:
        super().__init__()
        from ..layers._base import _bn_affine

        pw, dw = layer.pointwise, layer.depthwise
        c, n, r = layer.in_channels, layer.out_channels, layer.rank
        kh, kw = layer.kernel_size
        self.reference = layer
        self.act_mid = _ACTS[type(layer.act)]
        self.act_out = act_out
        self.geometry = (kh, kw, *layer.stride, layer._fpad[2], layer._fpad[3], layer._fpad[0], layer._fpad[1])
        self.least = _min_input(c, (kh, kw), self.geometry[4:])
        weight, bias = pw.weight.detach().float().reshape(n * r, c), None
        if not isinstance(layer.norm, nn.Identity):  # an eval-mode BatchNorm: zero padding applies after it
            scale, shift = (t.detach().float() for t in _bn_affine(layer.norm))
            weight, bias = weight * scale[:, None], shift
        # PyTorch's intermediate channel n * r + j feeds output n; the kernel's order is j * N + n
        order = torch.arange(n * r).reshape(n, r).t().reshape(-1)
        packed, packed_bias = _pack_panels(weight[order], None if bias is None else bias[order])
        self.register_buffer("pw_weight", packed)
        self.register_buffer("pw_bias", packed_bias)
        taps = dw.weight.detach().float().reshape(n, r, kh * kw)
        self.register_buffer("dw_weight", taps.permute(2, 1, 0).contiguous())  # (kh * kw, r, n)
        self.register_buffer("dw_bias", dw.bias.detach().float().contiguous() if dw.bias is not None else torch.zeros(0))
        # a band's intermediate in 3/16 of L2, as the depthwise + pointwise kernel's tile
        self.tile_bytes = max(_fused.l2_bytes() * 3 // 16, 4 * kh * n * r)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or not _fits(x, self.least) or _needs_reference(x):
            return _activation(self.reference(x), self.act_out)
        b = self._buffers
        return torch.ops.sepconv.blueprint_pwdw(x, b["pw_weight"], b["pw_bias"], self.act_mid, b["dw_weight"], b["dw_bias"],
                                                self.act_out, *self.geometry, self.tile_bytes)


class FusedConv2d(nn.Module):
    """Inference-only dense 2-D convolution with few inputs per output (``csrc/dense.cpp``).

    Built by :func:`optimize_for_inference` from an ``nn.Conv2d`` with ``groups=1``, zero padding
    and ``in_channels x kh x kw <= 64`` (a network's stem on RGB input), and the ReLU/ReLU6 after
    it (fused): an implicit GEMM of the input patches (read in place, gathered only near the
    border) with the prepacked weights on the fused kernel's GEMM. Float32 NHWC. Any other input
    runs the original conv (``reference``).
    """

    def __init__(self, conv: nn.Conv2d, act_out: int) -> None:
        super().__init__()
        n, c, kh, kw = conv.weight.shape
        self.reference = conv
        self.act_out = act_out
        self.n = n
        left, right, top, bottom = conv._reversed_padding_repeated_twice
        self.geometry = (kh, kw, *conv.stride, *conv.dilation, top, bottom, left, right)
        dh, dw = conv.dilation
        self.least = _min_input(c, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), (top, bottom, left, right))
        weight, bias = _pack_panels(conv.weight.permute(0, 2, 3, 1).reshape(n, kh * kw * c), conv.bias)
        self.register_buffer("weight", weight)  # rows in (kh, kw, in_channels) order, as gathered
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or not _fits(x, self.least) or _needs_reference(x):
            return _activation(self.reference(x), self.act_out)
        b = self._buffers
        return torch.ops.sepconv.conv2d_gemm(x, b["weight"], b["bias"], self.n, self.act_out, *self.geometry)


class FusedLinear(nn.Module):
    """Inference-only linear layer on the fused kernel's GEMM with prepacked weights (``csrc/dense.cpp``).

    Built by :func:`optimize_for_inference` from an ``nn.Linear`` (and the ReLU/ReLU6 after it,
    fused). The BLAS path repacks the weight matrix on every call; this one packs it once. Input
    ``(*, in_features)`` float32; any other input runs the original layer (``reference``).
    """

    def __init__(self, linear: nn.Linear, act_out: int) -> None:
        super().__init__()
        self.reference = linear
        self.act_out = act_out
        self.n = linear.out_features
        self.k = linear.in_features
        weight, bias = _pack_panels(linear.weight, linear.bias)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        # another feature count: the reference raises the layer's error (while tracing, the kernel's check guards)
        if x.dim() == 0 or (not torch.jit.is_tracing() and x.shape[-1] != self.k) or _needs_reference(x):
            return _activation(self.reference(x), self.act_out)
        b = self._buffers
        y = torch.ops.sepconv.linear_gemm(x.reshape(-1, x.shape[-1]), b["weight"], b["bias"], self.n, self.act_out)
        return y.reshape(*x.shape[:-1], self.n)


def release_buffers() -> None:
    """Free the idle output buffers of the fused kernel.

    Outputs of 1 MiB and more of fused layers come from a small caching allocator (at most 16 idle
    blocks): reusing memory that nothing references any more avoids a page fault per 4 KiB page on
    every call. Memory a tensor still uses is never reused; this frees the idle blocks.

    Example:
        >>> release_buffers()
    """
    from .. import _fused

    ext = _fused.loaded()  # nothing to free if the kernels were never loaded
    if ext is not None:
        ext.release_buffers()

