"""Model surgery: replace a trained model's convolutions by separable ones, keeping what it learned.

``convert(model, ...)`` returns a new model (unless ``inplace=True``) and a
:class:`ConversionReport`. Each eligible convolution (``nn.Conv1d/2d/3d`` with ``groups == 1`` and
a kernel larger than 1 in some dimension) is factorized by the optimal truncated SVD of
:mod:`sepconv.decompose` into one of three structures, at a rank chosen by one of:

* ``rank``: one rank everywhere;
* ``tolerance``: per layer, the cheapest factorization whose relative error is <= tolerance;
* ``budget``: the fraction of the model's MACs to keep, with ranks allocated **globally**;
* none of them: lossless — only exact factorizations (relative error <= 100 x the dtype's eps).

Allocation objective (``budget``)
---------------------------------
Minimize ``sum_l e_l**2`` subject to ``sum_l macs_l <= budget * macs(model)``, where ``e_l`` is
layer l's relative error (weight error ``||W - W_r|| / ||W||``; with ``calibration_data``, the
relative output error ``sqrt(tr(dW S dW^T) / tr(W S W^T))`` with ``S`` the covariance of the
layer's input patches). Relative errors make layers of different scales comparable (BatchNorm
folding rescales weights arbitrarily), and squared errors of different layers add up like
independent noise energies in the output, to first order. Each layer's (MACs, e**2) candidates
are reduced to their lower convex hull; starting from every layer's cheapest point, the move with
the largest error decrease per added MAC is taken while it fits the budget (greedy marginal
analysis, optimal on the convex hulls up to the last move). ``allocation='uniform'`` instead gives
every layer the same fraction of its own MACs, for comparison.

MACs are counted like :func:`sepconv.profile` (convolutions and linear layers); layers that cannot
be factorized count at their full cost against the budget.
"""

import copy
import heapq
import json
import math
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import cost as C
from ._checks import check_finite, check_module
from .decompose import best_approximations
from .fold import fold_affine
from .graph import chain_weights, find_conv_bn, fold_chains
from .layers import (
    BlueprintSeparableConv1d,
    BlueprintSeparableConv2d,
    BlueprintSeparableConv3d,
    SeparableConv1d,
    SeparableConv2d,
    SeparableConv3d,
    SpatiallySeparableConv2d,
    _bn_affine,
)

__all__ = ["convert", "ConversionReport", "LayerConversion", "fold_batchnorm", "METHODS"]

METHODS = ("auto", "depthwise", "blueprint", "spatial")
ALLOCATIONS = ("global", "uniform")
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_SEPARABLE = {1: SeparableConv1d, 2: SeparableConv2d, 3: SeparableConv3d}
_BLUEPRINT = {1: BlueprintSeparableConv1d, 2: BlueprintSeparableConv2d, 3: BlueprintSeparableConv3d}
_MAX_COV = 4096  # largest patch dimension C*K for which an input covariance is accumulated
_COV_ROWS = 32768  # patch rows (positions) used to estimate it


@dataclass
class LayerConversion:
    """One row of the report. ``structure`` is ``'dense'`` when the layer was kept as it was."""

    name: str
    structure: str
    rank: Optional[int]
    macs_before: int
    macs_after: int
    weight_error: float
    output_error: Optional[float] = None
    note: str = ""


@dataclass
class ConversionReport:
    """What :func:`convert` did. Render with ``rich``, :meth:`to_json` or :meth:`to_markdown`."""

    layers: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # (name, reason)
    batchnorms: dict = field(default_factory=dict)  # name -> "folded into 'conv'" or why it was left alone
    macs_before: int = 0
    macs_after: int = 0
    params_before: int = 0
    params_after: int = 0
    output_error: Optional[float] = None
    budget: Optional[float] = None
    method: str = "auto"
    objective: str = "weight"
    inplace: bool = False
    message: str = ""

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["macs_ratio"] = self.macs_ratio
        return d

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def _summary(self) -> str:
        s = (f"MACs {self.macs_before:,} -> {self.macs_after:,} ({self.macs_ratio:.1%}); "
             f"params {self.params_before:,} -> {self.params_after:,}")
        if self.output_error is not None:
            s += f"; model output relative error {self.output_error:.4f}"
        if self.batchnorms:
            s += f"; BatchNorms folded {self._folded_count()} of {len(self.batchnorms)}"
        if self.inplace:
            s += "; the input model was modified in place (inplace=True)"
        return s + (f". {self.message}" if self.message else "")

    def _folded_count(self) -> int:
        return sum(why.startswith("folded into ") for why in self.batchnorms.values())

    def to_markdown(self) -> str:
        lines = [self._summary(), "", "| layer | structure | rank | MACs before | MACs after | weight error | output error |",
                 "|---|---|---:|---:|---:|---:|---:|"]
        for r in self.layers:
            out = "" if r.output_error is None else f"{r.output_error:.4f}"
            lines.append(f"| {r.name} | {r.structure} | {r.rank or ''} | {r.macs_before:,} | {r.macs_after:,} | "
                         f"{r.weight_error:.4f} | {out} |")
        if self.skipped:
            lines += ["", "| skipped layer | reason |", "|---|---|"] + [f"| {n} | {why} |" for n, why in self.skipped]
        if self.batchnorms:
            lines += ["", "| BatchNorm | folded, or why not |", "|---|---|"]
            lines += [f"| {n} | {why} |" for n, why in self.batchnorms.items()]
        return "\n".join(lines) + "\n"

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        t = Table(title="conversion (MACs = multiply-accumulates)")
        for col in ("layer", "structure", "rank", "MACs before", "MACs after", "weight err", "output err"):
            t.add_column(col, justify="left" if col in ("layer", "structure") else "right")
        for r in self.layers:
            t.add_row(r.name, r.structure, str(r.rank or ""), f"{r.macs_before:,}", f"{r.macs_after:,}",
                      f"{r.weight_error:.4f}", "" if r.output_error is None else f"{r.output_error:.4f}")
        parts = [t, Text(self._summary())]
        if self.skipped:
            s = Table(title="skipped")
            s.add_column("layer")
            s.add_column("reason")
            for n, why in self.skipped:
                s.add_row(n, why)
            parts.insert(1, s)
        if self.batchnorms:
            b = Table(title="BatchNorms")
            b.add_column("BatchNorm")
            b.add_column("folded, or why not")
            for n, why in self.batchnorms.items():
                b.add_row(n, why)
            parts.insert(-1, b)
        return Group(*parts)


@dataclass
class _Candidate:
    structure: str
    rank: Optional[int]
    macs: int
    error: float  # relative error used for allocation (weight or output)
    weight_error: float


@dataclass
class _Layer:
    name: str
    conv: nn.Module
    weight: Tensor  # BN-folded
    bias: Optional[Tensor]
    in_shape: tuple
    dense_macs: int
    candidates: list
    bn_name: Optional[str] = None
    cov: Optional[Tensor] = None


# --------------------------------------------------------------------------------------------
# BatchNorm folding
# --------------------------------------------------------------------------------------------
def fold_batchnorm(conv: nn.Module, bn: nn.Module) -> tuple[Tensor, Tensor]:
    """Weight and bias of ``bn(conv(x))`` (eval mode) as a single conv. Pure, returns new tensors."""
    return fold_affine(conv.weight, conv.bias, *_bn_affine(bn))


# --------------------------------------------------------------------------------------------
# Candidates
# --------------------------------------------------------------------------------------------
def _rank_grid(max_rank: int) -> list[int]:
    """All ranks up to 8, then about 4 per octave, always including max_rank."""
    ranks = set(range(1, min(max_rank, 8) + 1))
    r = 8.0
    while r < max_rank:
        r *= 2 ** 0.25
        ranks.add(min(max_rank, int(round(r))))
    ranks.add(max_rank)
    return sorted(ranks)


def _padding_arg(conv) -> Union[str, tuple]:
    return conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)


def _structure_macs(structure: str, conv, in_shape: tuple, rank: int) -> int:
    k, s, p, d, n = conv.kernel_size, conv.stride, _padding_arg(conv), conv.dilation, conv.out_channels
    if structure == "depthwise":
        return C.separable_conv_cost(in_shape, n, k, s, p, d, rank).macs
    if structure == "blueprint":
        return C.blueprint_separable_conv_cost(in_shape, n, k, s, p, d, rank).macs
    return C.spatially_separable_conv_cost(in_shape, n, k, rank, s, p, d).macs


def _structures(conv, method: str) -> tuple[list[str], str]:
    n = conv.weight.dim() - 2
    spatial_ok = n == 2 and conv.kernel_size[0] > 1 and conv.kernel_size[1] > 1
    if method == "auto":
        return ["depthwise", "blueprint"] + (["spatial"] if spatial_ok else []), ""
    if method == "spatial" and not spatial_ok:
        return [], "spatial needs a 2-D kernel with kh > 1 and kw > 1"
    return [method], ""


def _max_rank(structure: str, w: Tensor) -> int:
    n, c, *k = w.shape
    kk = math.prod(k)
    if structure == "depthwise":
        return min(n, kk)
    if structure == "blueprint":
        return min(c, kk)
    return min(c * k[0], n * k[1])


def _output_error(w: Tensor, w_hat: Tensor, cov: Tensor) -> float:
    """sqrt(tr(dW S dW^T) / tr(W S W^T)) with W as (N, C*K)."""
    w2 = w.reshape(w.shape[0], -1).double()
    dw = w2 - w_hat.reshape(w.shape[0], -1).double()
    num = float(torch.einsum("ni,ij,nj->", dw, cov, dw))
    den = float(torch.einsum("ni,ij,nj->", w2, cov, w2))
    return math.sqrt(max(num, 0.0) / den) if den > 0 else 0.0


def _candidates(layer: _Layer, structures: list[str], fixed_rank: Optional[int]) -> list[_Candidate]:
    out = []
    for st in structures:
        ranks = [fixed_rank] if fixed_rank is not None else _rank_grid(_max_rank(st, layer.weight))
        for r, (w_hat, werr) in best_approximations(layer.weight, st, ranks).items():
            macs = _structure_macs(st, layer.conv, layer.in_shape, r)
            err = _output_error(layer.weight, w_hat, layer.cov) if layer.cov is not None else werr
            out.append(_Candidate(st, r, macs, err, werr))
    return out


# --------------------------------------------------------------------------------------------
# Allocation
# --------------------------------------------------------------------------------------------
def _hull(points: list[_Candidate]) -> list[_Candidate]:
    """Lower convex hull of (macs, error**2), from the cheapest point, error decreasing."""
    pts = sorted(points, key=lambda c: (c.macs, c.error))
    front = []
    for p in pts:  # Pareto front: strictly decreasing error with increasing MACs
        if not front or p.error < front[-1].error - 1e-15:
            front.append(p)
    hull: list[_Candidate] = []
    for p in front:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b if it lies on or above the segment a -> p
            cross = (b.macs - a.macs) * (p.error**2 - a.error**2) - (b.error**2 - a.error**2) * (p.macs - a.macs)
            if cross <= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def _allocate_global(layers: list[_Layer], limit: int) -> dict[str, _Candidate]:
    hulls = {l.name: _hull(l.candidates) for l in layers}
    choice = {name: 0 for name in hulls}
    used = sum(h[0].macs for h in hulls.values())
    heap = []

    def push(name):
        h, i = hulls[name], choice[name]
        if i + 1 < len(h):
            gain = h[i].error ** 2 - h[i + 1].error ** 2
            extra = h[i + 1].macs - h[i].macs
            heapq.heappush(heap, (-gain / max(extra, 1), name))

    for name in hulls:
        push(name)
    while heap:
        _, name = heapq.heappop(heap)
        h, i = hulls[name], choice[name]
        extra = h[i + 1].macs - h[i].macs
        if used + extra <= limit:
            used += extra
            choice[name] = i + 1
            push(name)
    return {name: hulls[name][i] for name, i in choice.items()}


def _allocate_uniform(layers: list[_Layer], limit: int, fixed: int) -> dict[str, _Candidate]:
    """Every layer keeps the same fraction of its own dense MACs (the largest that fits)."""
    lo, hi = 0.0, 1.0
    best = None
    for _ in range(40):
        share = (lo + hi) / 2
        pick = {}
        for l in layers:
            fits = [c for c in l.candidates if c.macs <= share * l.dense_macs]
            pick[l.name] = min(fits, key=lambda c: (c.error, c.macs)) if fits else min(l.candidates, key=lambda c: c.macs)
        if fixed + sum(c.macs for c in pick.values()) <= limit:
            best, lo = pick, share
        else:
            hi = share
    if best is None:
        best = {l.name: min(l.candidates, key=lambda c: c.macs) for l in layers}
    return best


# --------------------------------------------------------------------------------------------
# Building layers and measuring
# --------------------------------------------------------------------------------------------
def _build(structure: str, conv, weight: Tensor, bias: Optional[Tensor], rank: int) -> nn.Module:
    """The separable layer for ``conv`` with (BatchNorm-folded) ``weight`` and ``bias``, via from_dense."""
    dense = copy.deepcopy(conv)
    dense.weight = nn.Parameter(weight.detach().clone())
    dense.bias = None if bias is None else nn.Parameter(bias.detach().clone())
    n = weight.dim() - 2
    if structure == "depthwise":
        layer = _SEPARABLE[n].from_dense(dense, depth_multiplier=rank)
    elif structure == "blueprint":
        layer = _BLUEPRINT[n].from_dense(dense, rank=rank)
    else:
        layer = SpatiallySeparableConv2d.from_dense(dense, rank=rank)
    layer.train(conv.training)
    return layer


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)


def _check_input(name: str, x: Tensor, where: str = "") -> Tensor:
    """A model input for conversion: a non-empty batch of finite values (any dtype the model takes)."""
    if x.dim() == 0 or 0 in x.shape:
        raise ValueError(f"{name}: expected a non-empty batch, got shape {tuple(x.shape)}{where}")
    return check_finite(name, x, where)


def _batches(data) -> list[Tensor]:
    """A tensor (one batch) or an iterable of batches / (input, target) pairs -> list of inputs."""
    if isinstance(data, Tensor):
        return [_check_input("calibration_data", data)]
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(f"calibration_data: expected a tensor or an iterable of batches, got {type(data).__name__}")
    out = []
    for i, b in enumerate(data):
        x = b[0] if isinstance(b, (list, tuple)) and b else b
        if not isinstance(x, Tensor):
            raise TypeError(f"calibration_data: expected tensors or (input, target) batches, got {type(x).__name__}")
        out.append(_check_input("calibration_data", x, f" in batch {i}"))
    if not out:
        raise ValueError("calibration_data: expected at least one batch, got none")
    return out


def _check_runs(model: nn.Module, name: str, inputs: list[Tensor]) -> None:
    """Shape-check the model on every distinct input shape (on the meta device), naming the argument."""
    seen = set()
    for i, x in enumerate(inputs):
        if tuple(x.shape[1:]) in seen:
            continue
        seen.add(tuple(x.shape[1:]))
        try:
            C.profile(model, tuple(x.shape), dtype=x.dtype)
        except ValueError as exc:
            what = f"batch {i} of shape {tuple(x.shape)}" if name == "calibration_data" else f"an input of shape {tuple(x.shape)}"
            raise ValueError(f"{name}: the model cannot run {what}: {str(exc).removeprefix('profile: ')}") from exc


def _capture_inputs(model: nn.Module, names: list[str], batches: list[Tensor]) -> dict[str, list[Tensor]]:
    """Inputs of the named modules over all batches (model in eval mode, no grad)."""
    got: dict[str, list[Tensor]] = {n: [] for n in names}
    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, a, n=n: got[n].append(a[0].detach())) for n in names]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, x in enumerate(batches):
                try:
                    model(x)
                except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                    raise ValueError(f"calibration_data: the model failed on batch {i} of shape {tuple(x.shape)}: "
                                     f"{type(exc).__name__}: {exc}") from exc
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return got


def _patches(x: Tensor, conv) -> Tensor:
    """Input patches the conv multiplies, ``(positions, C*K)``, for 1-D and 2-D convs."""
    n = conv.weight.dim() - 2
    if n == 1:
        x = x.unsqueeze(-2)
    k = (1, *conv.kernel_size) if n == 1 else conv.kernel_size
    s = (1, *conv.stride) if n == 1 else conv.stride
    d = (1, *conv.dilation) if n == 1 else conv.dilation
    if isinstance(conv.padding, str):
        from .padding import resolve_pads, to_fpad
        pads = to_fpad(resolve_pads(conv.padding, conv.kernel_size, conv.stride, conv.dilation, x.shape[-n:]))
    else:
        pads = [p for p in reversed(conv.padding) for _ in (0, 1)]
    if n == 1:
        pads = pads + [0, 0]
    if any(pads):
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        x = F.pad(x, pads, mode=mode)
    cols = F.unfold(x, k, dilation=d, stride=s)  # (B, C*K, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _chunks(x: Tensor, conv, *others: Tensor, rows: int = 8192):
    """Split a batch so that each piece has at most ~``rows`` output positions (bounded memory)."""
    n = conv.weight.dim() - 2
    per_item = max(1, math.prod(x.shape[-n:]) // math.prod(conv.stride))
    step = max(1, rows // per_item)
    for i in range(0, x.shape[0], step):
        yield (x[i:i + step], *[o[i:i + step] for o in others])


def _refit_last(child: nn.Module, inputs: list[Tensor], targets: list[Tensor]) -> bool:
    """Closed-form least squares for the last factor (a conv) so that child(inputs) ~ targets.

    Returns False, leaving ``child`` unchanged, if the solution is not finite."""
    g = child.groups
    per_in = child.in_channels // g
    per_out = child.out_channels // g
    gram = cross = psum = ysum = None
    count = 0
    for z, y in (piece for z, y in zip(inputs, targets) for piece in _chunks(z, child, y)):
        p = _patches(z, child)  # (L, Cin*K), grouped by input channel
        pt = p.reshape(p.shape[0], g, -1).transpose(0, 1).double()  # (g, L, F)
        yt = y.movedim(1, -1).reshape(-1, g, per_out).transpose(0, 1).double()  # (g, L, O)
        parts = (pt.transpose(1, 2) @ pt, pt.transpose(1, 2) @ yt, pt.sum(1), yt.sum(1))
        if gram is None:
            gram, cross, psum, ysum = parts
        else:
            gram, cross, psum, ysum = gram + parts[0], cross + parts[1], psum + parts[2], ysum + parts[3]
        count += p.shape[0]
    if child.bias is not None:  # augment with a constant feature for the bias
        top = torch.cat([gram, psum.unsqueeze(-1)], -1)
        bottom = torch.cat([psum, psum.new_full((g, 1), float(count))], -1).unsqueeze(1)
        gram = torch.cat([top, bottom], 1)
        cross = torch.cat([cross, ysum.unsqueeze(1)], 1)
    ridge = 1e-6 * gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype)
    sol = torch.linalg.solve(gram + ridge[:, None, None] * eye, cross)  # (g, features, per_out)
    bias = sol[:, -1, :].reshape(-1) if child.bias is not None else None
    w = (sol[:, :-1, :] if child.bias is not None else sol).permute(0, 2, 1)
    w = w.reshape(child.out_channels, per_in, *child.kernel_size).to(child.weight.dtype)
    bias = None if bias is None else bias.to(child.bias.dtype)
    if not bool(torch.isfinite(w).all()) or (bias is not None and not bool(torch.isfinite(bias).all())):
        return False  # keep the SVD factor: never write non-finite weights (also after the cast)
    child.weight.data.copy_(w)
    if bias is not None:
        child.bias.data.copy_(bias)
    return True


def _rel(a: Tensor, b: Tensor) -> float:
    den = float(b.double().norm())
    return float((a.double() - b.double()).norm()) / den if den > 0 else float(a.double().norm())


def _dense_apply(conv, weight: Tensor, bias: Optional[Tensor], x: Tensor) -> Tensor:
    return conv._conv_forward(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))


# --------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------
def _check_args(method, budget, rank, tolerance, allocation):
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation: expected one of {ALLOCATIONS}, got {allocation!r}")
    given = [n for n, v in (("budget", budget), ("rank", rank), ("tolerance", tolerance)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"expected at most one of budget, rank, tolerance, got {' and '.join(given)}")
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
            raise ValueError(f"budget: expected a fraction of the MACs in (0, 1], got {budget!r}")
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise TypeError(f"rank: expected a positive int, got {rank!r}")
        if rank < 1:
            raise ValueError(f"rank: expected a positive int, got {rank}")
    if tolerance is not None:
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
            raise ValueError(f"tolerance: expected a relative error in [0, 1), got {tolerance!r}")


def _skip_reason(m: nn.Module) -> Optional[str]:
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return "transposed conv"
    if not isinstance(m, _CONVS):
        return None
    if isinstance(m.weight, nn.parameter.UninitializedParameter):
        return "lazy conv not initialized: run the model once first"
    if m.groups != 1:
        return f"grouped conv (groups={m.groups}): already {'depthwise' if m.groups == m.in_channels else 'grouped'}"
    if all(k == 1 for k in m.kernel_size):
        return "1x1 kernel: nothing to separate"
    return ""


def convert(
    model: nn.Module,
    method: str = "auto",
    budget: Optional[float] = None,
    rank: Optional[int] = None,
    tolerance: Optional[float] = None,
    example_input: Optional[Tensor] = None,
    calibration_data: Union[Tensor, Iterable, None] = None,
    fold_bn: bool = True,
    inplace: bool = False,
    allocation: str = "global",
) -> tuple[nn.Module, ConversionReport]:
    """Replace a trained model's convolutions by separable ones, optimally.

    Args:
        model: the trained model; never modified unless ``inplace=True``.
        method: ``'depthwise'`` (depthwise + pointwise), ``'blueprint'`` (pointwise + depthwise),
            ``'spatial'`` (kh x 1 + 1 x kw), or ``'auto'`` (per layer the structure and rank with
            the least error for its MACs). A factorization costing as much as the dense conv is
            never used: the layer then stays dense.
        budget: fraction of the model's MACs to keep, in (0, 1]; ranks allocated globally.
        rank: one rank (depth multiplier / blueprints / spatial rank) for every layer.
        tolerance: per-layer cap on the relative error (output error with calibration data).
        example_input: an input batch; gives the layer shapes for MAC counts and the output
            errors in the report. Without it (and without calibration data) MACs are counted per
            output position, assuming 'same'-like padding.
        calibration_data: a tensor or an iterable of batches (or ``(input, target)`` pairs) from
            the real input distribution: ranks are allocated by output error, and each layer's
            last factor is refit by closed-form least squares to match the original layer's
            outputs given the converted model's own inputs (layer by layer, in order).
        fold_bn: fold each BatchNorm that takes a conv's output into that conv before factorizing,
            wherever ``forward`` calls them (see :func:`sepconv.graph.fold_conv_bn`); the BatchNorm
            becomes ``nn.Identity``. The report's ``batchnorms`` says, per BatchNorm, into which
            conv it was folded or why it was left alone (e.g. training mode).
        inplace: modify and return ``model`` itself.
        allocation: ``'global'`` (default) or ``'uniform'`` (same share per layer) for ``budget``.

    Returns:
        ``(new_model, report)``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        >>> small, report = convert(net, budget=0.5, example_input=torch.randn(1, 3, 32, 32))
        >>> report.macs_after <= 0.5 * report.macs_before
        True
    """
    check_module("model", model)
    _check_args(method, budget, rank, tolerance, allocation)
    for flag, value in (("fold_bn", fold_bn), ("inplace", inplace)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag}: expected a bool, got {value!r}")
    for pname, p in model.named_parameters():
        check_finite("model", p, f" of parameter '{pname}'")
    batches = _batches(calibration_data) if calibration_data is not None else None
    if example_input is not None:
        if not isinstance(example_input, Tensor):
            raise TypeError(f"example_input: expected a torch.Tensor, got {type(example_input).__name__}")
        _check_input("example_input", example_input)
        _check_runs(model, "example_input", [example_input])
    if batches is not None:
        _check_runs(model, "calibration_data", batches)
    probe = example_input if example_input is not None else (batches[0][:1] if batches else None)

    if budget is not None and probe is None:
        raise ValueError("example_input: a budget is a fraction of the model's MACs, which depend on the input size; "
                         "expected example_input or calibration_data, got neither")

    target = model if inplace else copy.deepcopy(model)
    report = ConversionReport(method=method, budget=budget, inplace=inplace,
                              objective="output" if batches else "weight")
    report.params_before = sum(p.numel() for p in model.parameters())

    # shapes and MACs of every layer, from the original model
    rows = {}
    if probe is not None:
        prof = C.profile(model, tuple(probe.shape), dtype=probe.dtype if probe.is_floating_point() else torch.float32)
        rows = {r.name: r for r in prof.layers}
        report.macs_before = prof.macs

    # BatchNorms to fold into their convs wherever forward calls them (the graph); folded at the surgery
    found = find_conv_bn(target) if fold_bn else None
    report.batchnorms = found.batchnorms if found else {}
    chain_of = {c.conv: c for c in found.chains if c.conv == c.target} if found else {}
    layers: list[_Layer] = []
    for name, m in target.named_modules():
        reason = _skip_reason(m)
        if reason is None:
            continue
        if reason:
            report.skipped.append((name, reason))
            continue
        structures, why = _structures(m, method)
        if not structures:
            report.skipped.append((name, why))
            continue
        chain = chain_of.get(name)
        bn_name = chain.bn if chain else None
        if chain is not None:
            bn = target.get_submodule(bn_name)
            if not all(bool(torch.isfinite(t).all()) for t in (bn.running_mean, bn.running_var)):
                raise ValueError(f"layer '{bn_name}': expected finite BatchNorm statistics, got NaN or Inf")
            w, b = chain_weights(target, chain)
            if not (bool(torch.isfinite(w).all()) and bool(torch.isfinite(b).all())):
                raise ValueError(f"layer '{bn_name}': expected a BatchNorm that folds into finite weights "
                                 f"(running_var + eps > 0), got non-finite folded weights for layer '{name}'")
        else:
            w, b = m.weight.detach(), None if m.bias is None else m.bias.detach()
        if name in rows:
            in_shape, dense_macs = rows[name].input_shape, rows[name].macs
            if len(in_shape) != m.weight.dim():
                arg = "example_input" if example_input is not None else "calibration_data"
                raise ValueError(f"{arg}: expected a batched input, got shape {tuple(probe.shape)} (layer '{name}' "
                                 f"({type(m).__name__}) received an unbatched input of shape {tuple(in_shape)})")
        else:
            in_shape, dense_macs = _nominal_shape(m)
        layers.append(_Layer(name, m, w, b, tuple(in_shape), dense_macs, [], bn_name))

    if not layers:
        report.message = "no eligible convolution (groups == 1, kernel > 1) was found; the model is returned unchanged"
        if found is not None and found.chains:
            fold_chains(target, found.chains)
            report.message += " but for its folded BatchNorms"
        warnings.warn(report.message, stacklevel=2)
        report.macs_after = report.macs_before
        report.params_after = sum(p.numel() for p in target.parameters())
        return target, report

    # input covariances for output-error allocation
    orig_in: dict[str, list[Tensor]] = {}
    if batches is not None:
        orig_in = _capture_inputs(model, [l.name for l in layers], batches)
        for l in layers:
            if l.weight.dim() > 4 or l.weight[0].numel() > _MAX_COV:
                continue
            # an estimate: at most _COV_ROWS patch rows, evenly subsampled, accumulated in float32
            positions = sum(t.numel() for t in orig_in[l.name]) // l.conv.in_channels // math.prod(l.conv.stride)
            every = max(1, math.ceil(positions / _COV_ROWS))
            cov = None
            for x in orig_in[l.name]:
                for (piece,) in _chunks(x, l.conv):
                    p = _patches(piece, l.conv)[::every].float()
                    cov = p.T @ p if cov is None else cov + p.T @ p
            l.cov = cov.double()

    lossless = budget is None and rank is None and tolerance is None
    for l in layers:
        structures, _ = _structures(l.conv, method)
        cands = _candidates(l, structures, rank)
        l.candidates = [c for c in cands if c.macs < l.dense_macs] + [_Candidate("dense", None, l.dense_macs, 0.0, 0.0)]

    if lossless:
        eps = 100 * torch.finfo(layers[0].weight.dtype).eps
        choice = {l.name: min((c for c in l.candidates if c.weight_error <= eps), key=lambda c: c.macs) for l in layers}
    elif tolerance is not None:
        choice = {l.name: min((c for c in l.candidates if c.error <= tolerance), key=lambda c: c.macs) for l in layers}
    elif rank is not None:
        choice = {l.name: min(l.candidates, key=lambda c: (c.structure == "dense", c.error)) for l in layers}
    else:
        total = report.macs_before
        fixed = total - sum(l.dense_macs for l in layers)
        limit = int(math.floor(budget * total))
        if fixed > limit:
            raise ValueError(
                f"budget: expected at least {fixed / total:.4f}, what the layers that cannot be factorized cost "
                f"alone ({fixed:,} of {total:,} MACs), got {budget}"
            )
        cheapest = fixed + sum(min(c.macs for c in l.candidates) for l in layers)
        if cheapest > limit:
            raise ValueError(f"budget: expected at least {cheapest / total:.4f}, the cheapest factorization of every "
                             f"layer ({cheapest:,} of {total:,} MACs), got {budget}")
        choice = _allocate_global(layers, limit - fixed) if allocation == "global" else _allocate_uniform(layers, limit, fixed)

    # what the report compares against, taken before any surgery (the model itself may be the target)
    probe_inputs, reference = {}, None
    if probe is not None:
        probe_inputs = _capture_inputs(model, [l.name for l in layers], [probe])
        was = model.training
        model.eval()
        with torch.no_grad():
            reference = model(probe)
        model.train(was)

    # surgery
    if found is not None:
        fold_chains(target, found.chains)
    new_layers = {}
    for l in layers:
        c = choice[l.name]
        if c.structure == "dense":  # kept as it is (with its BatchNorm folded in)
            new_layers[l.name] = l.conv
        else:
            new = _build(c.structure, l.conv, l.weight, l.bias, c.rank)
            _set_module(target, l.name, new)
            new_layers[l.name] = new

    # data-aware refinement of each converted layer's last factor, layer by layer, in order
    unrefit: set[str] = set()
    if batches is not None:
        for l in layers:
            new = new_layers[l.name]
            if choice[l.name].structure == "dense" or l.weight.dim() > 4:
                continue
            ys = [_dense_apply(l.conv, l.weight, l.bias, x) for x in orig_in[l.name]]
            child_name = f"{l.name}.{new._output_factor}"
            child = target.get_submodule(child_name)
            zs = _capture_inputs(target, [child_name], batches)[child_name]
            with torch.no_grad():
                if not _refit_last(child, zs, ys):
                    unrefit.add(l.name)

    # the report
    for l in layers:
        c = choice[l.name]
        out_err = None
        if probe is not None:
            x = probe_inputs[l.name][0]
            with torch.no_grad():
                out_err = _rel(new_layers[l.name].eval()(x), _dense_apply(l.conv, l.weight, l.bias, x))
            new_layers[l.name].train(l.conv.training)
        notes = [f"BatchNorm '{l.bn_name}' folded"] if l.bn_name else []
        if batches is not None and l.cov is None:
            notes.append("allocated by weight error (input covariance not estimated for 3-D or C*K > 4096)")
        if batches is not None and c.structure != "dense" and l.weight.dim() > 4:
            notes.append("not refit on calibration data (3-D)")
        if l.name in unrefit:
            notes.append("not refit on calibration data: the least-squares fit was not finite; kept the SVD factors")
        note = "; ".join(notes)
        report.layers.append(LayerConversion(l.name, c.structure, c.rank, l.dense_macs, c.macs, c.weight_error, out_err, note))
    if probe is not None:
        after = C.profile(target, tuple(probe.shape), dtype=probe.dtype)
        report.macs_after = after.macs
        was = target.training
        target.eval()
        with torch.no_grad():
            report.output_error = _rel(target(probe), reference)
        target.train(was)
    else:
        report.macs_before = sum(l.dense_macs for l in layers)
        report.macs_after = sum(choice[l.name].macs for l in layers)
        report.message = (f"MACs of the converted convolutions only, on a nominal {NOMINAL_SIZE}-wide output map; "
                          "pass example_input for the model's real counts")
    report.params_after = sum(p.numel() for p in target.parameters())
    return target, report


NOMINAL_SIZE = 32


def _nominal_shape(conv) -> tuple[tuple, int]:
    """Without an example input: an input of ``32 * stride`` per spatial dim (a 32-wide output
    map with 'same'-like padding), large enough for the kernel."""
    extent = [(k - 1) * d + 1 for k, d in zip(conv.kernel_size, conv.dilation)]
    in_shape = (1, conv.in_channels, *[max(NOMINAL_SIZE * s, e) for s, e in zip(conv.stride, extent)])
    macs = C.conv_cost(in_shape, conv.out_channels, conv.kernel_size, conv.stride, _padding_arg(conv),
                       conv.dilation, bias=False).macs
    return in_shape, macs
