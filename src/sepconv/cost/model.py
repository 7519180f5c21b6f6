"""A whole model's cost: :func:`profile` runs it on the ``meta`` device and counts every convolution
and matmul per module (:class:`ModelCost`, :class:`LayerRow`)."""

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

from .._checks import check_module, describe
from .layer import Shape, _itemsize, _shape

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
        elif packet in (aten.bmm, aten.baddbmm, aten.addbmm):
            a, b = (args[0], args[1]) if packet is aten.bmm else (args[1], args[2])
            self._add(int(a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]), "fully connected")
        elif packet in (aten.mv, aten.addmv):  # a matrix times a vector (matmul with a 1-D operand)
            a = args[0] if packet is aten.mv else args[1]
            self._add(int(a.shape[0] * a.shape[1]), "fully connected")
        elif packet in (aten.dot, aten.vdot):
            self._add(int(args[0].shape[0]), "fully connected")
        elif packet is aten._trilinear:  # nn.Bilinear: one multiply-add per (sample, out, in1, in2)
            self._add(_trilinear_macs(*args[:6]), "fully connected")
        return out


def _trilinear_macs(i1, i2, i3, expand1, expand2, expand3) -> int:
    """``aten._trilinear``'s products: the size of the space its three inputs broadcast to, each
    unsqueezed at its ``expand`` dims (for ``nn.Bilinear``: batch x out x in1 x in2)."""
    full = [1] * (i1.dim() + len(expand1))
    for t, expand in ((i1, expand1), (i2, expand2), (i3, expand3)):
        sizes = iter(t.shape)
        for d in range(len(full)):
            if d not in expand:
                full[d] = max(full[d], next(sizes))
    return math.prod(full)


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
        hint = " (pass its .shape)" if isinstance(input_size, torch.Tensor) else ""
        raise TypeError(f"input_size: expected a shape like (1, 3, 224, 224) or a list of shapes, got "
                        f"{describe(input_size)}{hint}")
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
