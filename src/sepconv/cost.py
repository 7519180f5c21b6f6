"""Exact cost accounting from shapes alone: MACs, FLOPs, parameters and activation memory.

Units, stated once and used everywhere:

* **MACs** (multiply-accumulates) = the multiplications the separable-convolution tutorials and
  the MobileNet paper count ("mult-adds"). A convolution output element costs
  ``C/groups * prod(kernel)`` MACs.
* **FLOPs** = ``2 * MACs`` (one multiply and one add each), the convention of
  ``torch.utils.flop_counter.FlopCounterMode``. Bias additions are not counted (as there).
* **params**: parameter elements; **bytes**: elements times the dtype's item size.

Every formula is a pure function of shapes (no tensor arithmetic), e.g. for a conv::

    macs = B * N * prod(out_spatial) * (C / groups) * prod(kernel)
    macs (transposed) = B * C * prod(in_spatial) * (N / groups) * prod(kernel)

:func:`profile` propagates shapes through a whole model on the ``meta`` device (no real
compute), attributes each convolution / matmul to the module that ran it, and reports per layer
and per layer type (MobileNet's Table 2). :func:`compare` and :func:`explain` put one layer's
standard and separable forms side by side, with the derivation written out the way the
tutorials do (docs/worked-examples.md checks their worked examples).
"""

import copy
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ._checks import check_module, check_positive_int, to_tuple
from .padding import PaddingArg, normalize_padding, resolve_pads

__all__ = [
    "LayerCost",
    "conv_output_size",
    "conv_cost",
    "linear_cost",
    "depthwise_conv_cost",
    "separable_conv_cost",
    "blueprint_separable_conv_cost",
    "spatially_separable_conv_cost",
    "ModelCost",
    "profile",
    "Comparison",
    "compare",
    "explain",
]

Shape = tuple[int, ...]


@dataclass(frozen=True)
class LayerCost:
    """Cost of one layer, from shapes. ``parts`` holds the factors of a separable layer.

    Attributes:
        macs: multiply-accumulates (the papers' "mult-adds").
        params: parameter elements.
        input_shape: ``(B, C, *spatial)``.
        output_shape: ``(B, N, *spatial_out)``.
        parts: ``((name, LayerCost), ...)`` for multi-factor layers, else empty.
    """

    macs: int
    params: int
    input_shape: Shape
    output_shape: Shape
    parts: tuple = ()

    @property
    def flops(self) -> int:
        """``2 * macs``: one multiply and one add per MAC."""
        return 2 * self.macs

    def output_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of the output activation (intermediate factors' outputs not included)."""
        return math.prod(self.output_shape) * _itemsize(dtype)

    def param_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of the parameters."""
        return self.params * _itemsize(dtype)

    @property
    def intermediate_shapes(self) -> tuple:
        """Output shapes of all factors but the last (the round trip through memory)."""
        return tuple(p.output_shape for _, p in self.parts[:-1])


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _input_shape(input_shape: Sequence[int], n: Optional[int] = None) -> Shape:
    """Check ``(B, C, *spatial)``; ``n`` spatial dims if given (1-3 otherwise)."""
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise TypeError(f"input_shape: expected a sequence of ints (B, C, *spatial), got {input_shape!r}")
    shape = tuple(input_shape)
    if n is None and not 3 <= len(shape) <= 5:
        raise ValueError(f"input_shape: expected (B, C, *spatial) with 1 to 3 spatial dims, got {shape}")
    if n is not None and len(shape) != n + 2:
        raise ValueError(f"input_shape: expected {n + 2} dims (B, C, *spatial), got {shape}")
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"input_shape: expected positive ints, got {shape}")
    return shape


def conv_output_size(
    input_size: Sequence[int], kernel_size: Sequence[int], stride: Sequence[int], padding: PaddingArg,
    dilation: Sequence[int],
) -> Shape:
    """Spatial output size: ``floor((n + before + after - (k - 1) * d - 1) / s) + 1`` per dim.

    Example:
        >>> conv_output_size((15, 15), (3, 3), (1, 1), 'valid', (1, 1))
        (13, 13)
        >>> conv_output_size((224, 224), (3, 3), (2, 2), 'same', (1, 1))
        (112, 112)
    """
    if isinstance(input_size, (str, bytes)) or not isinstance(input_size, Sequence):
        raise TypeError(f"input_size: expected a sequence of positive ints (the spatial size), got {input_size!r}")
    n = len(input_size)
    input_size = to_tuple("input_size", input_size, n)
    kernel_size, stride, dilation = (to_tuple(name, v, n) for name, v in
                                     (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)))
    pads = resolve_pads(normalize_padding(padding, n), kernel_size, stride, dilation, input_size)
    out = []
    for size, k, s, d, (b, a) in zip(input_size, kernel_size, stride, dilation, pads):
        span = size + b + a - (k - 1) * d - 1
        if span < 0:
            raise ValueError(
                f"input_shape: spatial size {size} (padded {size + b + a}) is smaller than the dilated kernel {(k - 1) * d + 1}"
            )
        out.append(span // s + 1)
    return tuple(out)


def _geom(input_shape, kernel_size, stride, dilation):
    x = _input_shape(input_shape)
    n = len(x) - 2
    return x, n, to_tuple("kernel_size", kernel_size, n), to_tuple("stride", stride, n), to_tuple("dilation", dilation, n)


def conv_cost(
    input_shape: Sequence[int], out_channels: int, kernel_size, stride=1, padding: PaddingArg = 0, dilation=1,
    groups: int = 1, bias: bool = True, transposed: bool = False, output_padding=0,
) -> LayerCost:
    """Cost of a (grouped, strided, dilated, padded, or transposed) 1-3-D convolution.

    ``macs = B * N * prod(out) * (C/groups) * prod(k)``; transposed:
    ``B * C * prod(in) * (N/groups) * prod(k)`` (every input element meets the whole kernel).

    Args:
        input_shape: ``(B, C, *spatial)``.
        out_channels: N.

    Example:
        >>> conv_cost((1, 3, 15, 15), 10, 3).macs     # the tutorials' 3x3x3x10x13x13
        45630
    """
    x, n, k, s, d = _geom(input_shape, kernel_size, stride, dilation)
    b, c = x[:2]
    check_positive_int("out_channels", out_channels)
    groups = check_positive_int("groups", groups)
    if c % groups or out_channels % groups:
        raise ValueError(f"groups: expected a divisor of in_channels={c} and out_channels={out_channels}, got {groups}")
    kernel = math.prod(k)
    params = out_channels * (c // groups) * kernel + (out_channels if bias else 0)
    if transposed:
        p = to_tuple("padding", padding, n, minimum=0)
        op = to_tuple("output_padding", output_padding, n, minimum=0)
        out = tuple((i - 1) * si - 2 * pi + di * (ki - 1) + oi + 1 for i, si, pi, di, ki, oi in zip(x[2:], s, p, d, k, op))
        macs = b * c * math.prod(x[2:]) * (out_channels // groups) * kernel
    else:
        out = conv_output_size(x[2:], k, s, padding, d)
        macs = b * out_channels * math.prod(out) * (c // groups) * kernel
    return LayerCost(macs, params, x, (b, out_channels, *out))


def linear_cost(input_shape: Sequence[int], out_features: int, bias: bool = True) -> LayerCost:
    """Cost of ``nn.Linear``: ``macs = prod(batch dims) * in_features * out_features``.

    Example:
        >>> linear_cost((1, 1024), 1000).macs
        1024000
    """
    shape = tuple(input_shape)
    if not shape or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape):
        raise ValueError(f"input_shape: expected positive ints (*, in_features), got {shape}")
    check_positive_int("out_features", out_features)
    in_features = shape[-1]
    macs = math.prod(shape[:-1]) * in_features * out_features
    return LayerCost(macs, in_features * out_features + (out_features if bias else 0), shape, (*shape[:-1], out_features))


def _combine(parts: list[tuple[str, LayerCost]]) -> LayerCost:
    return LayerCost(sum(p.macs for _, p in parts), sum(p.params for _, p in parts), parts[0][1].input_shape,
                     parts[-1][1].output_shape, tuple(parts))


def depthwise_conv_cost(input_shape: Sequence[int], kernel_size, depth_multiplier: int = 1, stride=1,
                        padding: PaddingArg = 0, dilation=1, bias: bool = True) -> LayerCost:
    """Cost of a depthwise conv: ``B * C*d * prod(out) * prod(k)`` MACs.

    Example:
        >>> depthwise_conv_cost((1, 3, 15, 15), 3).macs    # 3x3x1 x 3 channels x 13x13
        4563
    """
    x = _input_shape(input_shape)
    d = check_positive_int("depth_multiplier", depth_multiplier)
    return conv_cost(x, x[1] * d, kernel_size, stride, padding, dilation, groups=x[1], bias=bias)


def separable_conv_cost(input_shape: Sequence[int], out_channels: int, kernel_size, stride=1, padding: PaddingArg = 0,
                        dilation=1, depth_multiplier: int = 1, bias: bool = True) -> LayerCost:
    """Cost of depthwise (``C -> C*d``) then pointwise (``C*d -> N``), one bias at the end.

    ``macs = B * prod(out) * C*d * (prod(k) + N)``; ratio to dense ``d/N + d/prod(k)``.

    Example:
        >>> separable_conv_cost((1, 3, 15, 15), 10, 3).macs   # 4,563 + 5,070
        9633
    """
    dw = depthwise_conv_cost(input_shape, kernel_size, depth_multiplier, stride, padding, dilation, bias=False)
    pw = conv_cost(dw.output_shape, out_channels, 1, bias=bias)
    return _combine([("depthwise", dw), ("pointwise", pw)])


def blueprint_separable_conv_cost(input_shape: Sequence[int], out_channels: int, kernel_size, stride=1,
                                  padding: PaddingArg = 0, dilation=1, rank: int = 1, bias: bool = True) -> LayerCost:
    """Cost of pointwise (``C -> N*r`` at input resolution) then grouped spatial (``N*r -> N``).

    ``macs = B * (prod(in) * C * N*r + prod(out) * N*r * prod(k))``.

    Example:
        >>> blueprint_separable_conv_cost((1, 3, 15, 15), 10, 3, padding='same').macs  # 15*15*(3*10 + 10*9)
        27000
    """
    x = _input_shape(input_shape)
    r = check_positive_int("rank", rank)
    pw = conv_cost(x, out_channels * r, 1, bias=False)
    dw = conv_cost(pw.output_shape, out_channels, kernel_size, stride, padding, dilation, groups=out_channels, bias=bias)
    return _combine([("pointwise", pw), ("depthwise", dw)])


def spatially_separable_conv_cost(input_shape: Sequence[int], out_channels: int, kernel_size, rank: int = 1, stride=1,
                                  padding: PaddingArg = 0, dilation=1, groups: int = 1, bias: bool = True) -> LayerCost:
    """Cost of ``(kh, 1)`` filters to ``r`` channels, then ``(1, kw)`` filters, as the layer runs them.

    The vertical factor pads, strides and dilates along H only, so its output is
    ``(H_out, W)``; the horizontal factor then produces ``(H_out, W_out)``::

        macs = B * (r * H_out * W * C/g * kh  +  N * H_out * W_out * r/g * kw)

    Example:
        >>> c = spatially_separable_conv_cost((1, 1, 15, 15), 1, 3)   # the tutorials' 3x1 then 1x3
        >>> [p.macs for _, p in c.parts], c.macs
        ([585, 507], 1092)
    """
    x, n, k, s, d = _geom(input_shape, kernel_size, stride, dilation)
    if n != 2:
        raise ValueError(f"input_shape: expected (B, C, H, W) for a spatially separable conv, got {x}")
    r = check_positive_int("rank", rank)
    (pt, pb), (pl, pr) = resolve_pads(normalize_padding(padding, 2), k, s, d, x[2:])
    v = _padded_conv_cost(x, r, (k[0], 1), (s[0], 1), ((pt, pb), (0, 0)), (d[0], 1), groups, bias=False)
    h = _padded_conv_cost(v.output_shape, out_channels, (1, k[1]), (1, s[1]), ((0, 0), (pl, pr)), (1, d[1]), groups, bias)
    return _combine([("vertical", v), ("horizontal", h)])


def _padded_conv_cost(x, out_channels, k, s, pads, d, groups, bias) -> LayerCost:
    """Conv cost with explicit (possibly asymmetric) pads: that of the padded input, unpadded."""
    padded = (*x[:2], *(size + b + a for size, (b, a) in zip(x[2:], pads)))
    cost = conv_cost(padded, out_channels, k, s, 0, d, groups=groups, bias=bias)
    return LayerCost(cost.macs, cost.params, tuple(x), cost.output_shape)


# --------------------------------------------------------------------------------------------
# Whole models
# --------------------------------------------------------------------------------------------
CATEGORIES = ("conv 1x1", "depthwise conv", "conv", "grouped conv", "transposed conv", "fully connected")


def _conv_category(x_shape, w_shape, groups: int, transposed: bool) -> str:
    if transposed:
        return "transposed conv"
    c = x_shape[1]
    if groups == c and groups > 1 and w_shape[1] == 1:
        return "depthwise conv"
    if groups > 1:
        return "grouped conv"
    if all(k == 1 for k in w_shape[2:]):
        return "conv 1x1"
    return "conv"


@dataclass
class LayerRow:
    """One row of a :class:`ModelCost`: a module that ran convolutions/matmuls or holds parameters."""

    name: str
    type: str
    input_shape: Shape
    output_shape: Shape
    macs: int
    params: int
    output_bytes: int
    category: str

    @property
    def flops(self) -> int:
        return 2 * self.macs


@dataclass
class ModelCost:
    """The cost of a model on one input size. Render with ``rich``, :meth:`to_json`, :meth:`to_markdown`.

    Attributes:
        macs: convolution + linear (matmul) multiply-accumulates.
        flops: ``2 * macs``.
        params: parameter elements (shared parameters counted once).
        layers: :class:`LayerRow` per module that does work, in execution order.
        input_shape, dtype: what was profiled.
        activation_bytes: sum of the rows' output activations (what training keeps for backward).
    """

    macs: int
    params: int
    layers: list
    input_shape: tuple
    dtype: str
    activation_bytes: int
    param_bytes: int
    model: str = ""
    breakdown: dict = field(default_factory=dict)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def by_type(self) -> dict:
        """MobileNet Table 2: MACs, params and their shares per layer type (convs and linears)."""
        return self.breakdown

    def to_dict(self) -> dict:
        d = asdict(self)
        d["flops"] = self.flops
        d["units"] = {"macs": "multiply-accumulates", "flops": "2 x macs", "bytes": self.dtype}
        return d

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_markdown(self, max_rows: Optional[int] = None) -> str:
        rows = self.layers if max_rows is None else self.layers[:max_rows]
        lines = [
            f"**{self.model or 'model'}** on input {tuple(self.input_shape)} ({self.dtype}): "
            f"{self.macs:,} MACs ({self.flops:,} FLOPs = 2 x MACs), {self.params:,} params",
            "",
            "| layer | type | input | output | MACs | params |",
            "|---|---|---|---|---:|---:|",
        ]
        for r in rows:
            lines.append(f"| {r.name} | {r.type} | {_shape(r.input_shape)} | {_shape(r.output_shape)} | {r.macs:,} | {r.params:,} |")
        lines += ["", "| layer type | MACs | MAC share | params | param share |", "|---|---:|---:|---:|---:|"]
        for cat, v in self.breakdown.items():
            lines.append(f"| {cat} | {v['macs']:,} | {v['macs_share']:.2%} | {v['params']:,} | {v['params_share']:.2%} |")
        return "\n".join(lines) + "\n"

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table

        t = Table(title=f"{self.model or 'model'} on {_shape(self.input_shape)} ({self.dtype})", show_footer=True)
        t.add_column("layer", footer="total")
        t.add_column("type")
        t.add_column("input")
        t.add_column("output")
        t.add_column("MACs", justify="right", footer=f"{self.macs:,}")
        t.add_column("params", justify="right", footer=f"{self.params:,}")
        for r in self.layers:
            t.add_row(r.name, r.type, _shape(r.input_shape), _shape(r.output_shape), f"{r.macs:,}", f"{r.params:,}")
        b = Table(title="by layer type (MACs = multiply-accumulates; FLOPs = 2 x MACs)")
        for col in ("layer type", "MACs", "MAC share", "params", "param share"):
            b.add_column(col, justify="left" if col == "layer type" else "right")
        for cat, v in self.breakdown.items():
            b.add_row(cat, f"{v['macs']:,}", f"{v['macs_share']:.2%}", f"{v['params']:,}", f"{v['params_share']:.2%}")
        return Group(t, b)


def _shape(s) -> str:
    return "x".join(str(v) for v in s)


class _Uncacheable(Exception):
    pass


_PLAIN = (type(None), bool, int, float, str, torch.dtype, torch.device, torch.memory_format, torch.layout)


def _key(a):
    """A hashable description of an op argument that determines the op's output metadata on meta."""
    if type(a) in (torch.Tensor, nn.Parameter):
        return (torch.Tensor, tuple(a.shape), a.stride(), a.dtype, a.device.type, a.storage_offset())
    if isinstance(a, (list, tuple)):
        return (type(a), tuple(_key(v) for v in a))
    if isinstance(a, _PLAIN):
        return (type(a), a)  # the type too: 1, 1.0 and True are equal keys otherwise
    raise _Uncacheable


def _make(spec):
    """New meta tensors of the recorded output metadata."""
    if isinstance(spec, list):
        return tuple(_make(s) for s in spec)
    shape, stride, dtype = spec
    return torch.empty_strided(shape, stride, dtype=dtype, device="meta")


def _spec(out):
    if type(out) is torch.Tensor and out.is_meta and out.storage_offset() == 0:
        return (tuple(out.shape), out.stride(), out.dtype)
    if isinstance(out, tuple) and out:
        return [_spec(o) for o in out]
    raise _Uncacheable


def _cacheable(func) -> bool:
    """A functional op: mutates nothing and returns new tensors (no views or aliases of its inputs)."""
    schema = func._schema
    return not schema.is_mutable and all(r.alias_info is None for r in schema.returns)


class _OpCounter(TorchDispatchMode):
    """Counts conv / matmul MACs from shapes and attributes them to the innermost running module.

    On the meta device an op's output metadata is a function of its arguments' metadata, and many
    meta kernels are Python: the output of each functional op is recorded by its arguments'
    shapes, strides and dtypes, and a repeated call (ResNet-152's 36 identical blocks) gets new
    meta tensors of the recorded metadata without running the kernel again."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.macs: dict[str, int] = {}
        self.category: dict[str, str] = {}
        self._outputs: dict = {}

    def _run(self, func, args, kwargs):
        if not _cacheable(func):
            return func(*args, **kwargs)
        try:
            key = (func, _key(args), _key(tuple(sorted(kwargs.items()))))
        except _Uncacheable:
            return func(*args, **kwargs)
        spec = self._outputs.get(key)
        if spec is not None:
            return _make(spec)
        out = func(*args, **kwargs)
        try:
            self._outputs[key] = _spec(out)
        except _Uncacheable:
            pass
        return out

    def _add(self, macs: int, category: str) -> None:
        name = self.stack[-1] if self.stack else ""
        self.macs[name] = self.macs.get(name, 0) + macs
        self.category.setdefault(name, category)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = self._run(func, args, kwargs)
        packet = func._overloadpacket
        aten = torch.ops.aten
        if packet in (aten.convolution, aten._convolution):
            x, w = args[0], args[1]
            transposed, groups = bool(args[6]), int(args[8])
            # shapes only: macs = B * prod(conv positions) * prod(w_shape)
            positions = x.shape[2:] if transposed else out.shape[2:]
            macs = x.shape[0] * math.prod(positions) * math.prod(w.shape)
            self._add(int(macs), _conv_category(x.shape, w.shape, groups, transposed))
        elif packet in (aten.mm, aten.addmm):
            a, b = (args[0], args[1]) if packet is aten.mm else (args[1], args[2])
            self._add(int(a.shape[0] * a.shape[1] * b.shape[1]), "fully connected")
        elif packet in (aten.bmm, aten.baddbmm):
            a, b = (args[0], args[1]) if packet is aten.bmm else (args[1], args[2])
            self._add(int(a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]), "fully connected")
        return out


_NO_WORK = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Flatten, nn.Unflatten)


def _first_tensor(obj) -> Optional[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (list, tuple)):
        for o in obj:
            t = _first_tensor(o)
            if t is not None:
                return t
    if isinstance(obj, dict):
        return _first_tensor(list(obj.values()))
    return None


def _parse_input_size(input_size) -> list[tuple[int, ...]]:
    if isinstance(input_size, torch.Size) or (
        isinstance(input_size, Sequence) and input_size and all(isinstance(v, int) and not isinstance(v, bool) for v in input_size)
    ):
        shapes = [tuple(input_size)]
    elif (isinstance(input_size, Sequence) and not isinstance(input_size, str) and input_size
          and all(isinstance(v, Sequence) and not isinstance(v, str) for v in input_size)):
        shapes = [tuple(v) for v in input_size]
    else:
        raise TypeError(f"input_size: expected a shape like (1, 3, 224, 224) or a list of shapes, got {input_size!r}")
    for s in shapes:
        if not s or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in s):
            raise ValueError(f"input_size: expected positive ints, got {s}")
    return shapes


def _meta_copy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)`` whose plain parameters and buffers are new ``meta`` tensors of the
    same shape, strides, dtype and ``requires_grad``: no tensor data is copied (ResNet-152's
    240 MB were). Tied tensors stay tied; other tensor types are deep-copied as usual."""
    memo: dict = {}
    keep = []  # the originals outlive the copy, so that their ids in memo stay theirs
    for t in itertools.chain(model.parameters(), model.buffers()):
        if id(t) in memo or type(t) not in (torch.Tensor, nn.Parameter) or t.is_meta:
            continue
        empty = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
        memo[id(t)] = nn.Parameter(empty, requires_grad=t.requires_grad) if type(t) is nn.Parameter else empty
        keep.append(t)
    return copy.deepcopy(model, memo)


def profile(model: nn.Module, input_size, dtype: torch.dtype = torch.float32, name: str = "") -> ModelCost:
    """Profile ``model`` on an input of ``input_size`` by shape propagation on the ``meta`` device.

    No real arithmetic runs: a copy of the model is moved to ``meta`` and every convolution and
    matmul is counted from its shapes and attributed to the module that ran it. ``macs``
    counts convolutions and linear layers only, as the papers do; ``params`` is the sum of
    ``numel()`` of the model's (unique) parameters.

    Args:
        model: any ``nn.Module``; it is not modified.
        input_size: ``(B, C, *spatial)``, or a list of shapes for several inputs.
        dtype: dtype of the input and of floating parameters (for bytes).
        name: label for the report.

    Returns:
        :class:`ModelCost`.

    Raises:
        ValueError: when a layer fails on the given input size (names the layer and shapes).

    Example:
        >>> from sepconv.models import mobilenet_v1
        >>> profile(mobilenet_v1(), (1, 3, 224, 224)).macs
        568740352
    """
    check_module("model", model)
    shapes = _parse_input_size(input_size)
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype: expected a torch.dtype, got {dtype!r}")
    meta = _meta_copy(model).to(device="meta", dtype=dtype) if dtype.is_floating_point else _meta_copy(model).to("meta")
    meta.eval()
    counter = _OpCounter()
    names = {m: n for n, m in meta.named_modules()}
    seen_in: dict[str, tuple] = {}
    seen_out: dict[str, tuple] = {}
    order: list[str] = []
    failing: list[tuple[str, str, tuple]] = []

    def pre(module, args):
        name_ = names[module]
        counter.stack.append(name_)
        t = _first_tensor(args)
        if name_ not in seen_in:
            order.append(name_)
            seen_in[name_] = tuple(t.shape) if t is not None else ()
        failing.append((name_, type(module).__name__, seen_in[name_]))

    def post(module, args, output):
        counter.stack.pop()
        failing.pop()
        t = _first_tensor(output)
        seen_out[names[module]] = tuple(t.shape) if t is not None else ()

    handles = []
    for m in meta.modules():
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    inputs = [torch.empty(s, device="meta", dtype=dtype) for s in shapes]
    try:
        with torch.no_grad(), counter:
            meta(*inputs)
    except Exception as exc:  # name the failing (innermost) layer and its input shape
        if failing:
            lname, ltype, lshape = failing[-1]
            raise ValueError(
                f"profile: layer '{lname or '<model>'}' ({ltype}) failed on input of shape {lshape} "
                f"(model input {shapes[0] if len(shapes) == 1 else shapes}): {exc}"
            ) from exc
        raise ValueError(f"profile: the model failed on input {shapes}: {exc}") from exc
    finally:
        for h in handles:
            h.remove()

    modules = dict(meta.named_modules())
    itemsize = _itemsize(dtype)
    rows = []
    for name_ in order:
        module = modules[name_]
        own = sum(p.numel() for p in module.parameters(recurse=False))
        macs = counter.macs.get(name_, 0)
        is_leaf = next(module.children(), None) is None
        if macs == 0 and (not is_leaf or isinstance(module, _NO_WORK)) and own == 0:
            continue
        out_shape = seen_out.get(name_, ())
        rows.append(LayerRow(name_ or "<model>", type(module).__name__, seen_in.get(name_, ()), out_shape, macs, own,
                             math.prod(out_shape) * itemsize if out_shape else 0,
                             counter.category.get(name_, "other")))
    total_macs = sum(counter.macs.values())
    params = sum(p.numel() for p in model.parameters())
    counted = {c: {"macs": 0, "params": 0} for c in CATEGORIES}
    for r in rows:
        if r.category in counted:
            counted[r.category]["macs"] += r.macs
            counted[r.category]["params"] += r.params
    counted = {c: v for c, v in counted.items() if v["macs"] or v["params"]}
    mac_total = sum(v["macs"] for v in counted.values()) or 1
    param_total = sum(v["params"] for v in counted.values()) or 1
    breakdown = {c: {**v, "macs_share": v["macs"] / mac_total, "params_share": v["params"] / param_total}
                 for c, v in counted.items()}
    return ModelCost(
        macs=total_macs, params=params, layers=rows, input_shape=shapes[0] if len(shapes) == 1 else shapes,
        dtype=str(dtype).replace("torch.", ""), activation_bytes=sum(r.output_bytes for r in rows),
        param_bytes=sum(p.numel() * (itemsize if p.is_floating_point() else p.element_size()) for p in model.parameters()),
        model=name or type(model).__name__, breakdown=breakdown,
    )


# --------------------------------------------------------------------------------------------
# One layer, side by side
# --------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    """One conv layer as standard, depthwise separable, blueprint separable and spatially separable.

    ``rows``: name -> dict(macs, params, ratio, closed_form, formula). ``ratio`` is MACs relative to
    the standard conv; ``closed_form`` is the textbook ratio where it applies exactly.
    """

    input_shape: Shape
    output_shape: Shape
    rows: dict

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self) -> str:
        lines = [f"input {_shape(self.input_shape)} -> output {_shape(self.output_shape)}", "",
                 "| form | MACs | params | ratio | closed form |", "|---|---:|---:|---:|---|"]
        for name, r in self.rows.items():
            cf = "" if r["closed_form"] is None else f"{r['closed_form']:.4f} = {r['formula']}"
            lines.append(f"| {name} | {r['macs']:,} | {r['params']:,} | {r['ratio']:.4f} | {cf} |")
        return "\n".join(lines) + "\n"

    def __rich__(self):
        from rich.table import Table

        t = Table(title=f"{_shape(self.input_shape)} -> {_shape(self.output_shape)} (MACs = multiplications)")
        for col in ("form", "MACs", "params", "ratio", "closed form"):
            t.add_column(col, justify="left" if col in ("form", "closed form") else "right")
        for name, r in self.rows.items():
            cf = "" if r["closed_form"] is None else f"{r['closed_form']:.4f} = {r['formula']}"
            t.add_row(name, f"{r['macs']:,}", f"{r['params']:,}", f"{r['ratio']:.4f}", cf)
        return t


def _as_batched(input_shape) -> Shape:
    shape = tuple(input_shape) if isinstance(input_shape, Sequence) and not isinstance(input_shape, str) else input_shape
    if isinstance(shape, tuple) and len(shape) == 3:
        shape = (1, *shape)
    return _input_shape(shape, 2)


def compare(input_shape: Sequence[int], out_channels: int, kernel_size, stride=1, padding: PaddingArg = 0, dilation=1,
            depth_multiplier: int = 1, rank: int = 1, bias: bool = False) -> Comparison:
    """The same 2-D layer as standard, depthwise separable, blueprint and spatially separable conv.

    Args:
        input_shape: ``(C, H, W)`` or ``(B, C, H, W)``.
        out_channels: N.
        depth_multiplier: d of the depthwise separable form.
        rank: r of the blueprint and spatially separable forms.
        bias: count bias parameters (MACs never include bias additions).

    Returns:
        :class:`Comparison`; closed forms (exact when the forms share output resolution):
        depthwise separable ``d/N + d/K`` (``1/N + 1/K^2`` at ``d = 1`` for a KxK kernel),
        blueprint ``r/C + r/K`` at stride 1 with 'same' padding.

    Example:
        >>> c = compare((3, 15, 15), 10, 3)
        >>> c.rows['standard']['macs'], c.rows['depthwise separable']['macs']
        (45630, 9633)
    """
    x = _as_batched(input_shape)
    k = to_tuple("kernel_size", kernel_size, 2)
    std = conv_cost(x, out_channels, k, stride, padding, dilation, bias=bias)
    sep = separable_conv_cost(x, out_channels, k, stride, padding, dilation, depth_multiplier, bias)
    bp = blueprint_separable_conv_cost(x, out_channels, k, stride, padding, dilation, rank, bias)
    sp = spatially_separable_conv_cost(x, out_channels, k, rank, stride, padding, dilation, bias=bias)
    c, n, kk, d = x[1], out_channels, math.prod(k), depth_multiplier
    same_res = std.output_shape[2:] == x[2:]
    rows = {
        "standard": dict(macs=std.macs, params=std.params, ratio=1.0, closed_form=1.0, formula="1"),
        f"depthwise separable (d={d})": dict(
            macs=sep.macs, params=sep.params, ratio=sep.macs / std.macs, closed_form=d / n + d / kk,
            formula=f"{d}/{n} + {d}/{kk}" if d != 1 else f"1/N + 1/K^2 = 1/{n} + 1/{kk}"),
        f"blueprint separable (r={rank})": dict(
            macs=bp.macs, params=bp.params, ratio=bp.macs / std.macs,
            closed_form=(rank / c + rank / kk) if same_res else None, formula=f"r/C + r/K^2 = {rank}/{c} + {rank}/{kk}"),
        f"spatially separable (r={rank})": dict(macs=sp.macs, params=sp.params, ratio=sp.macs / std.macs,
                                               closed_form=None, formula=""),
    }
    # keep the plain key for the default multiplier, as users look it up
    if d == 1:
        rows["depthwise separable"] = rows.pop("depthwise separable (d=1)")
    if rank == 1:
        rows["blueprint separable"] = rows.pop("blueprint separable (r=1)")
        rows["spatially separable"] = rows.pop("spatially separable (r=1)")
    return Comparison(x, std.output_shape, rows)


def _n(v: int) -> str:
    return f"{v:,}"


def explain(input_shape: Sequence[int], out_channels: int, kernel_size, stride=1, padding: PaddingArg = "valid",
            dilation=1, depth_multiplier: int = 1, spatial: bool = False, rank: int = 1) -> str:
    """The tutorials' step-by-step multiplication count, for one layer, as text.

    Args:
        input_shape: ``(C, H, W)`` or ``(B, C, H, W)``.
        out_channels: number of kernels N.
        spatial: compare with a spatially separable (``kh x 1`` then ``1 x kw``, rank ``rank``)
            conv instead of a depthwise separable one.

    Example:
        >>> print(explain((3, 15, 15), 10, 3))   # doctest: +ELLIPSIS
        Standard convolution: 10 kernels of 3x3x3 on a 15x15x3 input (valid, stride 1)
        ...
        Depthwise separable needs 9,633 vs 45,630 multiplications: 21.11% of standard; ...
    """
    x = _as_batched(input_shape)
    b, c, h, w = x
    kh, kw = to_tuple("kernel_size", kernel_size, 2)
    std = conv_cost(x, out_channels, (kh, kw), stride, padding, dilation, bias=False)
    _, _, ho, wo = std.output_shape
    pad_txt = padding if isinstance(padding, str) else f"padding={padding}"
    batch = f" x {b} images" if b > 1 else ""
    bx = f" x {b}" if b > 1 else ""
    lines = [
        f"Standard convolution: {out_channels} kernels of {kh}x{kw}x{c} on a {h}x{w}x{c} input ({pad_txt}, stride {stride})",
        f"  output {ho}x{wo}x{out_channels}: {ho} vertical x {wo} horizontal slides",
        "  multiplications = kernel width x kernel height x channels x kernels x vertical slides x horizontal slides" + batch,
        f"                  = {kw} x {kh} x {c} x {out_channels} x {ho} x {wo}{bx} = {_n(std.macs)}",
    ]
    if not spatial:
        d = depth_multiplier
        sep = separable_conv_cost(x, out_channels, (kh, kw), stride, padding, dilation, d, bias=False)
        dw, pw = sep.parts[0][1], sep.parts[1][1]
        lines += [
            f"Depthwise separable convolution (depth multiplier {d}):",
            f"  depthwise: {c * d} kernels of {kh}x{kw}x1, one{'' if d == 1 else f' group of {d}'} per input channel",
            f"           = {kw} x {kh} x 1 x {c * d} x {ho} x {wo}{bx} = {_n(dw.macs)}",
            f"  pointwise: {out_channels} kernels of 1x1x{c * d} over the {ho}x{wo}x{c * d} intermediate",
            f"           = 1 x 1 x {c * d} x {out_channels} x {ho} x {wo}{bx} = {_n(pw.macs)}",
            f"  total      {_n(dw.macs)} + {_n(pw.macs)} = {_n(sep.macs)}",
            f"Depthwise separable needs {_n(sep.macs)} vs {_n(std.macs)} multiplications: "
            f"{sep.macs / std.macs:.2%} of standard; closed form {'d/N + d/K^2' if d != 1 else '1/N + 1/K^2'} = "
            f"{d}/{out_channels} + {d}/{kh * kw} = {d / out_channels + d / (kh * kw):.2%}",
        ]
        other = sep
    else:
        sp = spatially_separable_conv_cost(x, out_channels, (kh, kw), rank, stride, padding, dilation, bias=False)
        v, hz = sp.parts[0][1], sp.parts[1][1]
        _, _, vh, vw = v.output_shape
        lines += [
            f"Spatially separable convolution (rank {rank}): {kh}x1 kernels, then 1x{kw} kernels",
            f"  {kh}x1 kernel: {rank} kernels of {kh}x1x{c} slide {vh} vertical x {vw} horizontal positions",
            f"           = 1 x {kh} x {c} x {rank} x {vh} x {vw}{bx} = {_n(v.macs)}",
            f"  1x{kw} kernel: {out_channels} kernels of 1x{kw}x{rank} slide over the {vh}x{vw} intermediate: {ho} x {wo} positions",
            f"           = {kw} x 1 x {rank} x {out_channels} x {ho} x {wo}{bx} = {_n(hz.macs)}",
            f"  total      {_n(v.macs)} + {_n(hz.macs)} = {_n(sp.macs)}",
            f"Spatially separable needs {_n(sp.macs)} vs {_n(std.macs)} multiplications: {sp.macs / std.macs:.2%} of standard",
        ]
        seed_style = kw * rank * out_channels * h * wo * b
        if seed_style != hz.macs:
            lines.append(
                f"  note: counting the 1x{kw} pass over all {h} input rows, as one of the tutorials does, gives "
                f"{_n(v.macs)} + {_n(seed_style)} = {_n(v.macs + seed_style)}; but the {kh}x1 pass leaves only {vh} rows."
            )
        other = sp
    lines.append(f"FLOPs = 2 x multiplications (a multiply and an add each): {_n(std.flops)} vs {_n(other.flops)}.")
    return "\n".join(lines)
