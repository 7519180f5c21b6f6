"""What a model says about its convolutions' inputs without data: statistics from its BatchNorms.

A BatchNorm in eval mode outputs, per channel, values whose mean is its ``bias`` (beta) and whose
standard deviation is ``|weight|`` (gamma) on the data it was trained on. Data-free quantization
uses the same fact (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction", 2019). Following the ``torch.fx`` graph from each convolution's input back through
element-wise operations gives each input channel's mean and variance:

- a BatchNorm: ``(beta, gamma**2)``;
- ReLU / ReLU6 of a Gaussian ``N(m, v)``: the rectified Gaussian's moments (ReLU6's upper clip
  is ignored), closed form;
- a sum of two known inputs (residual adds): means and variances add (independence assumed);
- identity-like calls (``nn.Identity``, ``nn.Dropout`` in eval mode): unchanged.

Anything else (the model's input, pooling, concatenation, ...) gives no statistics for that conv.

:func:`input_scales` turns them into one scale per input channel, ``sqrt(E[x_c**2])``: the output
error of replacing a conv's kernel ``W`` by ``W_hat`` on inputs with these second moments (channels
and positions uncorrelated) is ``||(W - W_hat) * s||_F`` with ``s`` broadcast over the input-channel
axis, a weighted Frobenius norm. Factorizing ``W * s`` and dividing the input-side factor by ``s``
is then optimal for that error, and the error of every rank follows from the singular values of
``W * s``. That is the data-free objective of :func:`sepconv.convert` when the model has
BatchNorms; channels without statistics get weight 1 relative to the mean of the others.
"""

from __future__ import annotations

import math
import operator
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .graph import trace

__all__ = ["input_moments", "input_scales", "rectified_moments"]

_BN = nn.modules.batchnorm._BatchNorm
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_RELU_FUNCTIONS = (torch.relu, torch.relu_, F.relu, F.relu_, F.relu6)
_PASS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def rectified_moments(mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of ``relu(y)`` for ``y ~ N(mean, var)``, per element (float64).

    ``E[relu(y)] = m Phi(a) + s phi(a)`` and ``E[relu(y)^2] = (m^2 + s^2) Phi(a) + m s phi(a)``
    with ``s = sqrt(var)``, ``a = m / s``; a zero variance gives ``relu(m)`` exactly.

    Example:
        >>> m, v = rectified_moments(torch.tensor([0.0]), torch.tensor([1.0]))
        >>> round(float(m), 4), round(float(v), 4)  # half-normal: 1/sqrt(2 pi), 1/2 - 1/(2 pi)
        (0.3989, 0.3408)
    """
    mean, var = mean.double(), var.double().clamp_min(0)
    s = var.sqrt()
    safe = torch.where(s > 0, s, torch.ones_like(s))
    a = mean / safe
    cdf = 0.5 * (1 + torch.erf(a / math.sqrt(2)))
    pdf = torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    m1 = mean * cdf + s * pdf
    m2 = (mean * mean + var) * cdf + mean * s * pdf
    m1 = torch.where(s > 0, m1, mean.clamp_min(0))
    m2 = torch.where(s > 0, m2, mean.clamp_min(0) ** 2)
    return m1, (m2 - m1 * m1).clamp_min(0)


def _bn_moments(bn: nn.Module) -> Optional[tuple[Tensor, Tensor]]:
    if bn.training or not isinstance(bn, _BN):
        return None
    c = bn.num_features
    if bn.affine:
        return bn.bias.detach().double().clone(), bn.weight.detach().double() ** 2
    return torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)


def _moments(node: object, modules: dict, memo: dict) -> Optional[tuple[Tensor, Tensor]]:
    if not isinstance(node, fx.Node):
        return None
    if node in memo:
        return memo[node]
    memo[node] = None  # cycles cannot happen in fx graphs; this also bounds the recursion
    out = None
    first = node.args[0] if node.args else None
    if node.op == "call_module":
        m = modules.get(node.target)
        if isinstance(m, _BN):
            out = _bn_moments(m)
        elif isinstance(m, (nn.ReLU, nn.ReLU6)):
            out = _relu(_moments(first, modules, memo))
        elif isinstance(m, _PASS_MODULES) and not (m.training and not isinstance(m, nn.Identity)):
            out = _moments(first, modules, memo)
    elif node.op == "call_function":
        if node.target in _RELU_FUNCTIONS:
            out = _relu(_moments(first, modules, memo))
        elif node.target in (torch.add, operator.add, operator.iadd):
            if len(node.args) == 2 and not node.kwargs:
                a, b = (_moments(x, modules, memo) for x in node.args)
                if a is not None and b is not None and a[0].shape == b[0].shape:
                    out = (a[0] + b[0], a[1] + b[1])
    elif node.op == "call_method" and node.target in ("relu", "relu_"):
        out = _relu(_moments(first, modules, memo))
    memo[node] = out
    return out


def _relu(moments: Optional[tuple[Tensor, Tensor]]) -> Optional[tuple[Tensor, Tensor]]:
    return None if moments is None else rectified_moments(*moments)


def input_moments(model: nn.Module) -> dict[str, tuple[Tensor, Tensor]]:
    """Per-channel mean and variance of each conv's input, from the BatchNorms before it.

    Args:
        model: a module in eval mode (BatchNorms in training mode give no statistics).

    Returns:
        ``{conv name: (mean (C,), variance (C,))}`` in float64, for each ``nn.ConvNd`` called once
        whose input the graph explains (see the module docstring); other convs are absent. An
        untraceable model gives ``{}``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4).eval(), nn.ReLU(), nn.Conv2d(4, 4, 3))
        >>> sorted(input_moments(net))
        ['3']
    """
    graph, _ = trace(model)
    if graph is None:
        return {}
    modules = dict(model.named_modules())
    calls: dict = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    memo: dict = {}
    out = {}
    for n in graph.nodes:
        if n.op == "call_module" and isinstance(modules.get(n.target), _CONVS) and calls[n.target] == 1:
            got = _moments(n.args[0] if n.args else None, modules, memo)
            conv = modules[n.target]
            if got is not None and got[0].numel() == conv.in_channels:
                out[n.target] = got
    return out


def input_scales(model: nn.Module) -> dict[str, Tensor]:
    """``sqrt(E[x_c^2])`` per input channel of each conv :func:`input_moments` explains, float64,
    normalized to mean 1; channels whose second moment is 0 (a dead input) get a small floor.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4).eval(), nn.Conv2d(4, 4, 3))
        >>> input_scales(net)["2"].tolist()  # a fresh BatchNorm: mean 0, variance 1 per channel
        [1.0, 1.0, 1.0, 1.0]
    """
    out = {}
    for name, (mean, var) in input_moments(model).items():
        s = (mean * mean + var).sqrt()
        if not bool(torch.isfinite(s).all()) or float(s.max()) <= 0:
            continue
        s = s / s.mean()
        out[name] = s.clamp_min(1e-3)
    return out
