"""``method='auto'`` without calibration data: the per-layer allocation, or one structure everywhere,
whichever the example input says is closer to the original model.

The per-layer allocation minimizes the sum of the layers' relative weight errors, a proxy: the
network's output error also depends on how each layer's error propagates, which the weights alone
do not tell. So, given an example input (a budget needs one), the allocation for each single
structure under the same budget is built too, each candidate model is run on the example, and the
one with the least output error is kept: ``auto`` is never worse than the best single structure on
that input. The report's message says which one was kept and the errors compared.
"""

import copy
from typing import Optional

import torch
from torch import Tensor, nn

from .allocate import _choose
from .calibrate import _rel
from .candidates import _Layer

STRUCTURES = ("depthwise", "blueprint", "spatial")


def _restricted(layers: list[_Layer], structure: str) -> list[_Layer]:
    """Shallow copies of ``layers`` whose candidates are ``structure``'s and the dense conv's."""
    out = []
    for l in layers:
        r = copy.copy(l)
        r.candidates = [c for c in l.candidates if c.structure in (structure, "dense")]
        out.append(r)
    return out


def best_choice(target: nn.Module, layers: list[_Layer], choice: dict, found, probe: Tensor, reference: Tensor,
                choose_args: tuple, operate, cache: dict) -> tuple[dict, str]:
    """The choice (by layer name) with the least output error on ``probe`` among ``choice`` and each
    single structure's allocation under the same arguments, and a sentence saying which won.

    Args:
        target: the model before surgery (copied for each trial, never modified).
        choose_args: ``(budget, rank, tolerance, allocation, total MACs, latency_ms)`` for ``_choose``.
        operate: the surgery ``(model, layers, choice, found, release, cache) -> new layers``.
        cache: the layers built by the trials, for the final surgery to copy.
    """
    options = {"per-layer": choice}
    for structure in STRUCTURES:
        if not any(c.structure == structure for l in layers for c in l.candidates):
            continue
        try:
            options[structure] = _choose(_restricted(layers, structure), *choose_args)
        except ValueError:  # this structure alone cannot reach the budget
            continue
    errors = {}
    for name, option in options.items():
        if name != "per-layer" and all(option[k] is choice[k] for k in choice):
            continue  # the same as the per-layer allocation
        # the module tree is copied, its tensors shared: the surgery assigns new parameters and
        # modules, and the trial only runs in eval mode without gradients
        shared = {id(t): t for t in (*target.parameters(), *target.buffers())}
        trial = copy.deepcopy(target, shared)
        operate(trial, layers, option, found, False, cache)
        trial.eval()
        with torch.no_grad():
            errors[name] = _rel(trial(probe), reference)
    best = min(errors, key=lambda k: (errors[k], k != "per-layer"))
    compared = ", ".join(f"{k} {v:.4f}" for k, v in errors.items())
    kept = "the per-layer allocation" if best == "per-layer" else f"'{best}' everywhere"
    return options[best], f"auto kept {kept}: output error on example_input {compared}"
