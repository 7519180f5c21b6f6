"""``method='auto'`` without calibration data: the per-layer allocation, or one structure everywhere,
whichever the example input says is closer to the original model.

The per-layer allocation minimizes the sum of the layers' relative weight errors, a proxy: the
network's output error also depends on how each layer's error propagates, which the weights alone
do not tell. So, given an example input (a budget needs one), the allocation for each single
structure under the same budget is built too, each candidate model is run on the example, and the
one with the least output error is kept: ``auto`` is never worse than the best single structure on
that input. The report's message says which one was kept and the errors compared.

Under a time budget (``cost='latency'``, any method) one more option is run: the allocation by
MACs with the most MACs whose predicted time fits the budget (``'by MACs (same predicted
time)'``; not the allocation at the budget's fraction of the MACs, which is measured separately
and reported among ``report.latency``'s trials). The allocation by time spends the budget where
the layers' times say it buys the most weight error; where the network's output disagrees with
that proxy, the MAC-shaped allocation can be closer at the same time, and then it is kept: at
equal time, ``cost='latency'`` is never further from the original on the example than
``cost='macs'`` is predicted to be.

The trials cost a forward pass each: a factorization is a linear map of the conv's input, so each
candidate model is the original one with the converted convs' weights replaced by their
factorizations' dense equivalents (composed from the spectra's factors, :mod:`.spectra`); only the
kept option's separable layers are built, by the surgery.
"""

import copy
from typing import Optional

import torch
from torch import Tensor, nn

from torch.func import functional_call

from ..graph import Folded, fold_chains
from .allocate import _choose
from .calibrate import _rel
from .candidates import _Candidate, _Layer, weighted
from .parallel import map_layers
from .surgery import _build_weighted

STRUCTURES = ("depthwise", "blueprint", "spatial")


def _restricted(layers: list[_Layer], structure: str) -> list[_Layer]:
    """Shallow copies of ``layers`` whose candidates are ``structure``'s and the dense conv's."""
    out = []
    for l in layers:
        r = copy.copy(l)
        r.candidates = [c for c in l.candidates if c.structure in (structure, "dense")]
        out.append(r)
    return out


def best_choice(target: nn.Module, layers: list[_Layer], choice: dict, found: Optional[Folded], probe: Tensor,
                reference: Tensor, choose_args: tuple, extra: Optional[dict] = None,
                structures: bool = True, who: str = "auto") -> tuple[dict, str]:
    """The choice (by layer name) with the least output error on ``probe`` among ``choice``, each
    single structure's allocation under the same arguments (with ``structures``) and the ``extra``
    options (name -> choice), and a sentence saying which won.

    Each option is run as the original model (BatchNorms folded) with every converted conv's weight
    replaced by its factorization's dense equivalent (the same linear map, composed from the
    factors): no separable layer is built for a trial.

    Args:
        target: the model before surgery (never modified: a copy of its module tree is folded).
        found: its conv -> BatchNorm chains to fold, or None.
        choose_args: ``(budget, rank, tolerance, allocation, total MACs, latency_ms)`` for ``_choose``.
        who: the method named in the sentence.
    """
    options = {"per-layer": choice}
    for structure in STRUCTURES if structures else ():
        if not any(c.structure == structure for l in layers for c in l.candidates):
            continue
        try:
            options[structure] = _choose(_restricted(layers, structure), *choose_args)
        except ValueError:  # this structure alone cannot reach the budget
            continue
    options.update(extra or {})
    trial = _trial_model(target, found)
    errors: dict = {}
    made: dict = {}  # approximations by (layer, structure, rank): options share many
    for name, option in options.items():
        if name != "per-layer" and all(option[k] is choice[k] for k in choice):
            continue  # the same as the per-layer allocation
        errors[name] = _output_error(trial, layers, option, made, probe, reference)
    best = min(errors, key=lambda k: (errors[k], k != "per-layer"))
    compared = ", ".join(f"{k} {v:.4g}" for k, v in errors.items())
    kept = ("the per-layer allocation" if best == "per-layer" else f"'{best}' everywhere" if best in STRUCTURES
            else f"the allocation {best}" if best.startswith("by ") else f"the {best} allocation")
    return options[best], f"{who} kept {kept}: output error on example_input {compared}"


def _trial_model(target: nn.Module, found: Optional[Folded]) -> nn.Module:
    """``target`` with its BatchNorms folded, in eval mode, for trials: the module tree is copied,
    its tensors shared (folding assigns new parameters; trials run without gradients)."""
    trial = copy.deepcopy(target, {id(t): t for t in (*target.parameters(), *target.buffers())})
    if found is not None:
        fold_chains(trial, found.chains)
    return trial.eval()


def _output_error(trial: nn.Module, layers: list[_Layer], option: dict, made: dict, probe: Tensor,
                  reference: Tensor) -> float:
    """The relative output error on ``probe`` of ``trial`` with each layer of ``option`` (name ->
    candidate; dense ones and names not in it left as they are) replaced by its factorization's
    dense equivalent (cached in ``made`` by layer, structure and rank)."""
    todo = [l for l in layers if l.name in option and option[l.name].structure != "dense"]
    key = lambda l: (l.name, option[l.name].structure, option[l.name].rank)  # noqa: E731
    fresh = [l for l in todo if key(l) not in made]
    made.update(zip(map(key, fresh), map_layers(lambda l: _approximation(l, option[l.name]), fresh,
                                                cost=lambda l: l.weight.numel() * l.weight.shape[1])))
    params = {f"{l.name}.weight": made[key(l)] for l in todo}
    params.update({f"{l.name}.bias": l.bias for l in todo if l.bias is not None})
    with torch.no_grad():
        return _rel(functional_call(trial, params, (probe,)), reference)


def measure_sensitivities(target: nn.Module, layers: list[_Layer], found: Optional[Folded], probe: Tensor,
                          reference: Tensor) -> None:
    """Set each layer's ``sensitivity``: the network's relative output error on ``probe`` with that
    layer alone factorized, per unit of the layer's own relative error (one forward pass per layer).

    The allocation's proxy sums the layers' squared errors as if each reached the output alike; an
    error in a layer whose output a residual branch or a later BatchNorm scales down matters less
    than one in a layer everything depends on. Scaled by these measured factors, the sum estimates
    the squared output error to first order (the layers' errors taken as independent). Each layer
    is probed at the candidate nearest half its dense MACs, an operating point budgets use.
    """
    trial = _trial_model(target, found)
    made: dict = {}
    for l in layers:
        probes = [c for c in l.candidates if c.structure != "dense" and c.error > 1e-12]
        if not probes:
            continue
        c = min(probes, key=lambda c: (abs(c.macs - 0.5 * l.dense_macs), c.error))
        l.sensitivity = _output_error(trial, [l], {l.name: c}, made, probe, reference) / c.error


def _approximation(l: _Layer, c: _Candidate) -> Tensor:
    """The dense weight equal to the separable layer that ``l`` becomes as ``c``."""
    w = None
    spectrum = l.spectra.get(c.structure)
    if spectrum is not None:
        w = spectrum.approximation(weighted(l), c.rank)
    if w is None:
        return _build_weighted(l, c).to_dense().weight.detach()
    if l.scale is not None:  # the input factor is divided by the scale (surgery._unscale_input)
        w = w / l.scale.to(w.dtype).view(1, -1, *([1] * (w.dim() - 2)))
    return w


def macs_choice(target: nn.Module, layers: list[_Layer], found, probe: Optional[Tensor], reference, method: str,
                 batches, args: tuple) -> tuple[dict, str]:
    """``cost="macs"``'s allocation under ``_choose``'s ``args`` (budget, rank, tolerance, allocation,
    total MACs) and its message: data-free, ``auto`` under a budget checks its proxy on the example
    against each single structure's allocation (:func:`~.portfolio.best_choice`)."""
    choice = _choose(layers, *args)
    if method == "auto" and args[0] is not None and batches is None:
        return best_choice(target, layers, choice, found, probe, reference, (*args, None))
    return choice, ""
