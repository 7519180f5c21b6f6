"""Calibration data: checking the batches, capturing each layer's inputs, their covariances
(for output-error allocation), and the closed-form least-squares refit of each converted layer's
last factor on the converted model's own inputs."""

import logging
import math
from collections.abc import Iterable
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import cost as C
from .._checks import check_finite
from .candidates import _Layer

log = logging.getLogger("sepconv.convert")

_MAX_COV = 4096  # largest patch dimension C*K for which an input covariance is accumulated
_COV_ROWS = 32768  # patch rows (positions) used to estimate it


def _check_input(name: str, x: Tensor, where: str = "") -> Tensor:
    """A model input for conversion: a non-empty batch of finite values (any dtype the model takes)."""
    if x.dim() == 0 or 0 in x.shape:
        raise ValueError(f"{name}: expected a non-empty batch, got shape {tuple(x.shape)}{where}")
    return check_finite(name, x, where)


CAL_BATCH = 64  # samples per batch where calibration_data is a Dataset of single samples


def _batches(data) -> list[Tensor]:
    """A tensor (one batch), an iterable of batches / (input, target) pairs (e.g. a DataLoader), or
    a torch ``Dataset`` of samples (batched by :data:`CAL_BATCH`, in order) -> list of inputs."""
    if isinstance(data, Tensor):
        return [_check_input("calibration_data", data)]
    if isinstance(data, torch.utils.data.Dataset):
        data = torch.utils.data.DataLoader(data, batch_size=CAL_BATCH, shuffle=False)
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


def _check_runs(model: nn.Module, name: str, inputs: list[Tensor]) -> dict[tuple, C.ModelCost]:
    """Shape-check the model on every distinct input shape (on the meta device), naming the argument.

    Returns:
        The profile of each input shape checked, by full shape (reusable for MAC counts).
    """
    seen, profiles = set(), {}
    for i, x in enumerate(inputs):
        if tuple(x.shape[1:]) in seen:
            continue
        seen.add(tuple(x.shape[1:]))
        try:
            profiles[tuple(x.shape)] = C.profile(model, tuple(x.shape), dtype=x.dtype)
        except ValueError as exc:
            what = f"batch {i} of shape {tuple(x.shape)}" if name == "calibration_data" else f"an input of shape {tuple(x.shape)}"
            if not x.is_floating_point():  # e.g. a conv or a pooling layer fed integers
                what += f" and dtype {x.dtype} (expected a floating-point input?)"
            raise ValueError(f"{name}: the model cannot run {what}: {str(exc).removeprefix('profile: ')}") from exc
    return profiles


class _Reached(BaseException):
    """Raised by a capture hook to end a forward pass whose remaining layers are not needed."""


def _capture_inputs(model: nn.Module, names: list[str], batches: list[Tensor],
                    outputs: Optional[list] = None, stop: bool = False,
                    source: str = "calibration_data") -> dict[str, list[Tensor]]:
    """Inputs of the named modules over all batches (model in eval mode, no grad); the model's
    outputs are appended to ``outputs`` if given. With ``stop`` (one name, a module called once
    per forward), each forward pass ends as soon as that module's input is captured. ``source``:
    the argument the batches came from, named where the model fails on one."""
    got: dict[str, list[Tensor]] = {n: [] for n in names}

    def hook(n: str, a: tuple) -> None:
        got[n].append(a[0].detach())
        if stop:
            raise _Reached

    handles = [model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: hook(n, a)) for n in names]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, x in enumerate(batches):
                try:
                    y = model(x)
                except _Reached:
                    continue
                except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                    where = f"batch {i}" if source == "calibration_data" else "this input"
                    raise ValueError(f"{source}: the model failed on {where} of shape {tuple(x.shape)}: "
                                     f"{type(exc).__name__}: {exc}") from exc
                if outputs is not None:
                    outputs.append(y)
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


# ridge strengths (x the mean diagonal of the fit rows' Gram matrix) tried by _refit_last, from
# almost plain least squares to staying near the SVD factor
_SHRINK = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
_VALIDATE_EVERY = 4  # every 4th calibration sample validates the refit (with 4 or more samples)


def _moments(child: nn.Module, z: Tensor, y: Tensor) -> tuple:
    """The sufficient statistics of a least-squares fit of ``child`` (a conv) from inputs ``z`` to
    outputs ``y``, per group ``g``: Gram (g, F, F), cross (g, F, O), patch sums (g, F), output sums
    (g, O), sums of squared outputs (g,), and the number of rows, in float64."""
    g = child.groups
    p = _patches(z, child)  # (L, Cin*K), grouped by input channel
    pt = p.reshape(p.shape[0], g, -1).transpose(0, 1).double()  # (g, L, F)
    yt = y.movedim(1, -1).reshape(-1, g, child.out_channels // g).transpose(0, 1).double()  # (g, L, O)
    return (pt.transpose(1, 2) @ pt, pt.transpose(1, 2) @ yt, pt.sum(1), yt.sum(1), yt.pow(2).sum((1, 2)), p.shape[0])


def _add(a: Optional[tuple], b: tuple) -> tuple:
    return b if a is None else tuple(x + y for x, y in zip(a, b))


def _augmented(child: nn.Module, m: tuple) -> tuple[Tensor, Tensor, Tensor]:
    """``(gram, cross, yy)``, with a constant feature for the bias where ``child`` has one."""
    gram, cross, psum, ysum, yy, count = m
    if child.bias is not None:
        g = gram.shape[0]
        top = torch.cat([gram, psum.unsqueeze(-1)], -1)
        bottom = torch.cat([psum, psum.new_full((g, 1), float(count))], -1).unsqueeze(1)
        gram = torch.cat([top, bottom], 1)
        cross = torch.cat([cross, ysum.unsqueeze(1)], 1)
    return gram, cross, yy


def _current(child: nn.Module) -> Tensor:
    """``child``'s weights (and bias) in the fit's layout, (g, F (+ 1), O)."""
    g, per_out = child.groups, child.out_channels // child.groups
    w = child.weight.detach().double().reshape(g, per_out, -1).transpose(1, 2)
    if child.bias is None:
        return w
    return torch.cat([w, child.bias.detach().double().reshape(g, 1, per_out)], 1)


def _sse(sol: Tensor, gram: Tensor, cross: Tensor, yy: Tensor) -> float:
    """The summed squared error of the solution ``sol`` on rows with these statistics."""
    return float(((sol * (gram @ sol)).sum((1, 2)) - 2 * (sol * cross).sum((1, 2)) + yy).sum())


def _refit_last(child: nn.Module, inputs: list[Tensor], targets: list[Tensor]) -> bool:
    """Closed-form least squares for the last factor (a conv) so that child(inputs) ~ targets,
    shrunk toward its current (SVD) weights by a ridge chosen on held-out samples.

    With few samples per unknown a plain refit fits the calibration data and generalizes worse
    than the SVD factor (a random-weight ResNet-18 on 48 images: 0.010 output error on them, 0.068
    on others, against 0.046 at a smaller budget). So with 4 or more samples, every 4th validates:
    ``W = argmin |PW - Y|^2 + lambda |W - W_svd|^2`` is solved on the others for each lambda of
    :data:`_SHRINK`, the lambda (or the SVD factor itself) with the least error on the held-out
    samples is taken, and solved again on all of them. Returns False, leaving ``child`` unchanged,
    if the solution is not finite."""
    g = child.groups
    per_in = child.in_channels // g
    fit = val = None
    seen = 0
    total = sum(z.shape[0] for z in inputs)
    for z_all, y_all in zip(inputs, targets):
        for z, y in _chunks(z_all, child, y_all):
            index = torch.arange(seen, seen + z.shape[0])
            held = (index % _VALIDATE_EVERY == _VALIDATE_EVERY - 1) & (total >= _VALIDATE_EVERY)
            seen += z.shape[0]
            if bool((~held).any()):
                fit = _add(fit, _moments(child, z[~held], y[~held]))
            if bool(held.any()):
                val = _add(val, _moments(child, z[held], y[held]))
    current = _current(child)
    gram, cross, _ = _augmented(child, fit)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype)
    scale = gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12)[:, None, None]

    def solve(gram: Tensor, cross: Tensor, shrink: float) -> Tensor:
        return torch.linalg.solve(gram + shrink * scale * eye, cross + shrink * scale * current)

    shrink = _SHRINK[0]
    if val is not None:
        vgram, vcross, vyy = _augmented(child, val)
        errors = {c: _sse(solve(gram, cross, c), vgram, vcross, vyy) for c in _SHRINK}
        shrink = min(errors, key=errors.get)
        if _sse(current, vgram, vcross, vyy) <= errors[shrink]:
            return True  # the SVD factor generalizes best: kept as it is
        whole = _augmented(child, _add(fit, val))
        gram, cross = whole[0], whole[1]
        scale = gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12)[:, None, None]
    sol = solve(gram, cross, shrink)  # (g, features, per_out)
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


def _covariances(layers: list[_Layer], inputs: dict[str, list[Tensor]]) -> None:
    """Set each layer's ``cov``, the covariance of its input patches (1-D and 2-D, C*K <= 4096)."""
    for l in layers:
        if l.weight.dim() > 4 or l.weight[0].numel() > _MAX_COV:
            continue
        # an estimate: at most _COV_ROWS patch rows, evenly subsampled, accumulated in float32
        positions = sum(t.numel() for t in inputs[l.name]) // l.conv.in_channels // math.prod(l.conv.stride)
        every = max(1, math.ceil(positions / _COV_ROWS))
        cov = None
        for x in inputs[l.name]:
            for (piece,) in _chunks(x, l.conv):
                p = _patches(piece, l.conv)[::every].float()
                cov = p.T @ p if cov is None else cov + p.T @ p
        l.cov = cov.double()


def _refine(target: nn.Module, layers: list[_Layer], converted: dict[str, nn.Module], batches: list[Tensor],
            inputs: dict[str, list[Tensor]]) -> set[str]:
    """Refit each converted layer's last factor to the original layer's outputs, given the converted
    model's own inputs, layer by layer in order (a line per layer on the ``sepconv.convert`` logger, at
    INFO). Returns the names of the layers left unrefit.

    Where the calibration data is one batch and each converted layer runs once per forward pass,
    this is one pass: each layer is refit when the pass reaches it (a pre-hook on its last factor)
    and the pass goes on through the refit layer. Otherwise each layer's inputs are captured by a
    pass of its own, up to that layer.
    """
    unrefit: set[str] = set()
    todo = [l for l in layers if converted.get(l.name) is not None and l.weight.dim() <= 4]
    log.info("refitting %d converted layers on %d samples (least squares, layer by layer)", len(todo),
             sum(b.shape[0] for b in batches))
    children = {f"{l.name}.{converted[l.name]._output_factor}": l for l in todo}

    def refit(i: int, l: _Layer, child: nn.Module, zs: list[Tensor]) -> None:
        log.info("refitting layer %d/%d", i, len(todo))
        ys = [_dense_apply(l.conv, l.weight, l.bias, x) for x in inputs[l.name]]
        with torch.no_grad():
            if not _refit_last(child, zs, ys):
                unrefit.add(l.name)

    if len(batches) == 1 and all(len(inputs[l.name]) == 1 for l in todo):
        _refit_in_one_pass(target, children, batches[0], refit)
        return unrefit
    for i, (child_name, l) in enumerate(children.items(), 1):
        once = len(inputs[l.name]) == len(batches)  # called once per forward: the rest of the model is not needed
        zs = _capture_inputs(target, [child_name], batches, stop=once)[child_name]
        refit(i, l, target.get_submodule(child_name), zs)
    return unrefit


def _refit_in_one_pass(target: nn.Module, children: dict[str, _Layer], batch: Tensor, refit) -> None:
    """Run ``target`` on ``batch`` once, calling ``refit(i, layer, child, [input])`` on each named child
    (by name, its layer) before it runs, in the order the pass reaches them."""
    names = {id(target.get_submodule(n)): n for n in children}
    order = iter(range(1, len(children) + 1))

    def hook(child: nn.Module, args: tuple) -> None:
        refit(next(order), children[names[id(child)]], child, [args[0].detach()])

    handles = [target.get_submodule(n).register_forward_pre_hook(hook) for n in children]
    was = target.training
    target.eval()
    try:
        with torch.no_grad():
            target(batch)
    finally:
        for h in handles:
            h.remove()
        target.train(was)
