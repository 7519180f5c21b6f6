"""One conv layer side by side as standard and separable forms: :func:`compare` and :func:`explain`
(the derivation written out the way the tutorials do)."""

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from .._checks import to_tuple
from ..padding import PaddingArg
from .layer import (
    Shape,
    _input_shape,
    _shape,
    blueprint_separable_conv_cost,
    conv_cost,
    separable_conv_cost,
    spatially_separable_conv_cost,
)


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
