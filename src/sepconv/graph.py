"""Graph-level model handling: ``torch.fx`` tracing and conv -> BatchNorm (-> activation) folding.

A real model keeps its convs and BatchNorms as attributes and calls them in ``forward``
(torchvision's ResNet blocks: ``self.bn1(self.conv1(x))``, a ``downsample`` branch, residual
adds, ``torch.relu``); ``nn.Sequential`` order does not say what follows what, the graph does.
:func:`fold_conv_bn` traces the model with ``torch.fx`` (sepconv's layers, torch's own layers and
any submodule fx cannot trace into are kept as single calls), finds each BatchNorm node whose
input is a conv node used by nothing else, and folds it into that conv (:mod:`sepconv.fold`). The
surgery is on the modules themselves: the returned model is the user's class with the user's
module names, each folded BatchNorm replaced by ``nn.Identity`` at its name. What is left alone is
reported with the reason: a BatchNorm in training mode, one whose input is not a conv's output, a
conv whose output is also used elsewhere, a conv or BatchNorm called at several places.

A model fx cannot trace (data-dependent control flow, ...) falls back to folding only the conv ->
BatchNorm pairs that follow each other inside an ``nn.Sequential``, and the result says so.
"""

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from .fold import fold_batchnorm
from .layers._base import _Padded
from .layers.depthwise import _DepthwiseConvNd
from ._checks import check_module

__all__ = ["Chain", "Folded", "chain_weights", "find_conv_bn", "fold_chains", "fold_conv_bn", "trace"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = nn.modules.batchnorm._BatchNorm
_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Mish, nn.Hardswish,
                nn.Hardsigmoid, nn.Sigmoid, nn.Tanh)
_ACT_FUNCTIONS = (torch.relu, torch.relu_, F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.silu, F.gelu, F.mish,
                  F.hardswish, F.hardsigmoid, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh)
_ACT_METHODS = ("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_")


@dataclass(frozen=True)
class Chain:
    """A conv -> BatchNorm (-> activation) chain found in the graph.

    Attributes:
        conv: qualified name of the called conv (or sepconv layer).
        bn: qualified name of the BatchNorm that takes its output.
        target: qualified name of the ``nn.ConvNd`` whose weight and bias take the BatchNorm in
            (``conv`` itself, or a sepconv layer's output factor such as ``'conv.pointwise'``).
        activation: what takes the BatchNorm's output, if it is an activation (``'relu'``, or the
            activation module's name), else None.
    """

    conv: str
    bn: str
    target: str
    activation: Optional[str] = None


@dataclass
class Folded:
    """What :func:`fold_conv_bn` returns.

    Attributes:
        model: the model with the BatchNorms folded (the user's modules and names).
        batchnorms: every BatchNorm's qualified name -> ``"folded into 'conv'"`` or why it was
            left alone.
        chains: the folded chains, in graph order.
        message: why the model or part of it could not be traced ('' if it could).
        graph: the traced ``torch.fx`` graph of the model (None if it could not be traced).
    """

    model: nn.Module
    batchnorms: dict = field(default_factory=dict)
    chains: list = field(default_factory=list)
    message: str = ""
    graph: Optional[fx.Graph] = field(default=None, repr=False)  # the traced graph (None if untraceable)


# --------------------------------------------------------------------------------------------
# Tracing
# --------------------------------------------------------------------------------------------
class _Tracer(fx.Tracer):
    """fx's tracer with sepconv's layers and the modules in ``leaves`` kept as single calls;
    ``stack`` holds the modules being traced into (on an error: where it was raised)."""

    def __init__(self, leaves: set) -> None:
        super().__init__()
        self.leaves = leaves
        self.stack: list = []

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _Padded) or qualname in self.leaves or super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward, args: tuple, kwargs: dict):
        qualname = self.path_of_module(m)
        if self.is_leaf_module(m, qualname):
            return super().call_module(m, forward, args, kwargs)
        self.stack.append(qualname)
        out = super().call_module(m, forward, args, kwargs)
        self.stack.pop()
        return out


def _is_leaf(model: nn.Module) -> bool:
    return _Tracer(set()).is_leaf_module(model, "")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def trace(model: nn.Module) -> tuple[Optional[fx.Graph], dict]:
    """The ``torch.fx`` graph of ``model.forward``, tracing into every submodule it can.

    A submodule whose ``forward`` fx cannot trace is kept as a single call and traced again.

    Args:
        model: any module; it is called with fx proxies, not modified.

    Returns:
        ``(graph, untraced)``: ``untraced`` maps the qualified name of each submodule kept as a
        call because it could not be traced into to the error (``''`` for the model itself, and
        then ``graph`` is None).
    """
    untraced: dict = {}
    for _ in range(sum(1 for _ in model.modules()) + 1):
        tracer = _Tracer(set(untraced))
        try:
            return tracer.trace(model), untraced
        except Exception as exc:  # noqa: BLE001 - fx raises anything the user's forward raises
            where = tracer.stack[-1] if tracer.stack else ""
            if where in untraced:  # failed again where it was a leaf: give up on the whole model
                where = ""
            untraced[where] = _first_line(exc)
            if where == "":
                return None, untraced
    return None, untraced


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------
def _describe(arg: object, modules: dict) -> str:
    if not isinstance(arg, fx.Node):
        return "a constant"
    if arg.op == "placeholder":
        return f"the model's input '{arg.target}'"
    if arg.op == "call_module":
        return f"'{arg.target}' ({type(modules[arg.target]).__name__})"
    if arg.op == "call_function":
        return f"{getattr(arg.target, '__name__', str(arg.target))}()"
    if arg.op == "call_method":
        return f".{arg.target}()"
    return f"'{arg.target}'"


def _fold_target(name: str, m: nn.Module) -> Optional[tuple[str, nn.Module]]:
    """The conv whose weight a BatchNorm after module ``m`` folds into (name, module), or None."""
    if isinstance(m, (*_CONVS, _DepthwiseConvNd)):
        return name, m
    factor = getattr(m, "_output_factor", None) if isinstance(m, _Padded) else None
    if factor is not None and isinstance(getattr(m, factor, None), _CONVS):
        return f"{name}.{factor}", getattr(m, factor)
    return None


TRAINING_MODE = "in training mode: it normalizes with each batch's statistics (call model.eval() first)"


def _bn_reason(bn: nn.Module) -> str:
    """Why a BatchNorm cannot be folded whatever precedes it ('' if it can)."""
    if not bn.track_running_stats or bn.running_mean is None:
        return "no running statistics (track_running_stats=False): it normalizes with each batch's statistics"
    if bn.training:
        return TRAINING_MODE
    return ""


def _pair_reason(conv_name: str, target: tuple, bn: nn.Module) -> str:
    """Why a BatchNorm after the conv ``conv_name`` cannot be folded into it ('' if it can)."""
    conv = target[1]
    if isinstance(conv.weight, nn.parameter.UninitializedParameter):
        return f"'{conv_name}' is not initialized (lazy): run the model once first"
    if bn.num_features != conv.weight.shape[0]:
        return f"it has {bn.num_features} channels, '{conv_name}' gives {conv.weight.shape[0]}"
    return ""


def _activation(bn_node: fx.Node, modules: dict) -> Optional[str]:
    if len(bn_node.users) != 1:
        return None
    user = next(iter(bn_node.users))
    if user.op == "call_module" and isinstance(modules.get(user.target), _ACT_MODULES):
        return user.target
    if user.op == "call_function" and user.target in _ACT_FUNCTIONS:
        return user.target.__name__
    if user.op == "call_method" and user.target in _ACT_METHODS:
        return user.target
    return None


def _reads(read: set, name: str) -> bool:
    """Whether forward reads a parameter or buffer of the module ``name`` directly (get_attr)."""
    return any(r == name or r.startswith(name + ".") for r in read)


def _match(node: fx.Node, modules: dict, calls: Counter, read: set) -> tuple[Optional[Chain], str]:
    """The chain ending in the BatchNorm call ``node``, or None and why it is left alone."""
    bn = modules[node.target]
    if calls[node.target] > 1:
        return None, f"called at {calls[node.target]} places in forward"
    why = _bn_reason(bn)
    if why:
        return None, why
    if _reads(read, node.target):
        return None, "its parameters or statistics are also read directly in forward"
    src = node.args[0] if node.args else node.kwargs.get("input")
    target = None
    if isinstance(src, fx.Node) and src.op == "call_module":
        target = _fold_target(src.target, modules[src.target])
    if target is None:
        return None, f"no convolution before it: its input is {_describe(src, modules)}"
    conv = src.target
    if calls[conv] > 1:
        return None, f"'{conv}' is called at {calls[conv]} places in forward (folding would change every call)"
    others = [u for u in src.users if u is not node]
    if others:
        used = ", ".join(_describe(u, modules) for u in others)
        return None, f"the output of '{conv}' is also used by {used}"
    if _reads(read, conv):
        return None, f"the weights of '{conv}' are also read directly in forward"
    why = _pair_reason(conv, target, bn)
    if why:
        return None, why
    return Chain(conv, node.target, target[0], _activation(node, modules)), ""


def _graph_chains(graph: fx.Graph, modules: dict) -> tuple[list, dict]:
    """Foldable chains in ``graph`` and, for each other BatchNorm it calls, the reason."""
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    read = {n.target for n in graph.nodes if n.op == "get_attr"}
    chains, left = [], {}
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], _BN) and node.target not in left:
            chain, why = _match(node, modules, calls, read)  # a BatchNorm called twice is in left
            if chain is not None:
                chains.append(chain)
            else:
                left[node.target] = why
    return chains, left


def _sequential_chains(root: nn.Module, prefix: str, message: str) -> tuple[list, dict]:
    """Chains of a conv and the BatchNorm right after it inside an ``nn.Sequential`` under ``root``
    (the fallback where the graph is not known); every other BatchNorm there gets ``message``."""
    chains, left = [], {}
    join = (lambda name: f"{prefix}.{name}" if name else prefix) if prefix else (lambda name: name)
    for name, parent in root.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for (a, ma), (b, mb) in zip(children, children[1:]):
            target = _fold_target(a, ma)
            if isinstance(mb, _BN) and target is not None:
                conv, bn = join(f"{name}.{a}" if name else a), join(f"{name}.{b}" if name else b)
                why = _bn_reason(mb) or _pair_reason(conv, target, mb)
                if why:
                    left[bn] = why
                else:
                    chains.append(Chain(conv, bn, conv + target[0][len(a):]))
    for name, m in root.named_modules():
        if isinstance(m, _BN) and join(name) not in left and all(c.bn != join(name) for c in chains):
            left[join(name)] = message
    return chains, left


def _untraced_message(model: nn.Module, where: str, error: str) -> str:
    what = type(model).__name__ if where == "" else f"'{where}' ({type(model.get_submodule(where)).__name__})"
    return f"could not trace {what}: {error}; folded only conv -> BatchNorm pairs inside nn.Sequential"


def _find(model: nn.Module) -> tuple[list, dict, str, Optional[fx.Graph]]:
    """Chains to fold, reasons for the other BatchNorms, the tracing message and the graph."""
    modules = dict(model.named_modules())
    if _is_leaf(model):  # a single layer: nothing to trace, and no conv before a BatchNorm
        graph, untraced, chains, left = None, {}, [], {}
    else:
        graph, untraced = trace(model)
        chains, left = _graph_chains(graph, modules) if graph is not None else ([], {})
    messages = []
    for where in sorted(untraced, key=len):  # the model itself first; nested failures inside it are moot
        if any(where.startswith(f"{w}.") or w == "" for w in untraced if w != where):
            continue
        message = _untraced_message(model, where, untraced[where])
        messages.append(message)
        more, why = _sequential_chains(modules[where], where, message)
        chains += more
        left.update(why)
    folded = {c.bn for c in chains}
    for name, m in modules.items():
        if isinstance(m, _BN) and name not in folded and name not in left:
            left[name] = _not_called_reason(name, modules)
    return chains, left, "; ".join(messages), graph


def _not_called_reason(name: str, modules: dict) -> str:
    """Why a BatchNorm the graph does not call is left alone."""
    if name == "":
        return "no convolution before it: it is the whole model"
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        owner = ".".join(parts[:i])
        if isinstance(modules.get(owner), _Padded):
            what = f"the layer '{owner}'" if owner else "the model"
            return f"inside {what} ({type(modules[owner]).__name__}), which is kept whole"
    return "not called by the model's forward"


def _check_finite(chains: list, modules: dict) -> None:
    for c in chains:
        bn = modules[c.bn]
        if not all(bool(torch.isfinite(t).all()) for t in (bn.running_mean, bn.running_var)):
            raise ValueError(f"layer '{c.bn}': expected finite BatchNorm statistics, got NaN or Inf")


def chain_weights(model: nn.Module, chain: Chain) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the chain's conv with its BatchNorm folded in (new tensors; ``model``
    is not changed).

    Args:
        model: the model :func:`find_conv_bn` found ``chain`` in.
        chain: one of its chains.
    """
    bn, conv = model.get_submodule(chain.bn), model.get_submodule(chain.target)
    return fold_batchnorm(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)


def fold_chains(model: nn.Module, chains: list) -> None:
    """Fold each chain's BatchNorm into its conv (new weight and bias parameters) and replace the
    BatchNorm by ``nn.Identity`` wherever it is attached (under every name it has). Modifies
    ``model``.

    Args:
        model: the model :func:`find_conv_bn` found ``chains`` in, unchanged since.
        chains: its chains (``Folded.chains``).
    """
    modules = dict(model.named_modules())
    folded = {id(modules[c.bn]) for c in chains}
    for chain in chains:
        conv = modules[chain.target]
        w, b = chain_weights(model, chain)
        grad = conv.weight.requires_grad
        conv.weight = nn.Parameter(w, requires_grad=grad)  # new parameters: a weight tied elsewhere stays as it was
        conv.bias = nn.Parameter(b, requires_grad=grad if conv.bias is None else conv.bias.requires_grad)
    for parent in list(model.modules()):
        for attr, child in list(parent._modules.items()):
            if id(child) in folded:
                setattr(parent, attr, nn.Identity())


def fold_conv_bn(model: nn.Module, inplace: bool = False, graph_module: bool = False) -> Folded:
    """Fold every BatchNorm that follows a conv into it, wherever the pair is in the model.

    The pairs come from the ``torch.fx`` graph of ``model.forward``: a BatchNorm (eval mode, with
    running statistics) whose input is the output of a conv (``nn.Conv1d/2d/3d``, a sepconv
    depthwise layer, or a sepconv separable layer's output factor) that nothing else uses, and
    that is called once. Exact in eval mode, up to rounding.

    Args:
        model: any module; not modified unless ``inplace=True``.
        inplace: fold into ``model`` itself instead of a deep copy.
        graph_module: return the traced ``torch.fx.GraphModule`` (BatchNorm nodes removed)
            instead of the model's own class; if the model cannot be traced, the model is
            returned as with ``graph_module=False`` and ``message`` says why.

    Returns:
        :class:`Folded`: the model, each BatchNorm's outcome and the folded chains.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: a BatchNorm to fold has non-finite running statistics.

    Example:
        >>> class Block(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.conv, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
        ...     def forward(self, x):
        ...         return torch.relu(self.bn(self.conv(x)))
        >>> fold_conv_bn(Block().eval()).batchnorms
        {'bn': "folded into 'conv'"}
    """
    check_module("model", model)
    target = model if inplace else copy.deepcopy(model)
    found = find_conv_bn(target)
    fold_chains(target, found.chains)
    if graph_module and found.graph is not None:
        target = _to_graph_module(target, found.graph, found.chains)
    return Folded(target, found.batchnorms, found.chains, found.message, found.graph)


def find_conv_bn(model: nn.Module) -> Folded:
    """What :func:`fold_conv_bn` would fold, without changing ``model``.

    Args:
        model: any module.

    Returns:
        :class:`Folded` whose ``model`` is ``model`` itself, unchanged; fold it with
        :func:`fold_chains` (``chains``), or read one conv's folded weights with
        :func:`chain_weights`.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: a BatchNorm to fold has non-finite running statistics.
    """
    check_module("model", model)
    chains, left, message, graph = _find(model)
    modules = dict(model.named_modules())
    _check_finite(chains, modules)
    outcome = {c.bn: f"folded into '{c.target}'" for c in chains}
    outcome.update(left)
    outcome = {name: outcome[name] for name in modules if name in outcome}  # in the model's order
    return Folded(model, outcome, chains, message, graph)


def _to_graph_module(model: nn.Module, graph: fx.Graph, chains: list) -> fx.GraphModule:
    folded = {c.bn for c in chains}
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target in folded:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    return fx.GraphModule(model, graph, class_name=type(model).__name__)
