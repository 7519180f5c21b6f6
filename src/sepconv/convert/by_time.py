"""``cost="latency"``: the conversion's choice under a time budget. Each allocation is built on a
copy of the model being converted (:func:`_trial`), refit where calibration data is given, and
measured side by side with the optimized original (:func:`sepconv.convert.timing.within_budget`),
together with allocations by MACs (:func:`_by_macs`); the kept one goes into ``report.latency``."""

import copy
import dataclasses
import warnings
from collections.abc import Callable
from typing import Optional

import torch
from torch import Tensor, nn

from .allocate import _choose, macs_within_time
from .calibrate import _rel
from .candidates import _Layer
from .portfolio import best_choice, macs_choice, measure_sensitivities
from .report import ConversionReport
from .surgery import _operate
from . import timing


# the option of the same predicted time allocated by MACs, as report.message names it
BY_MACS = "by MACs (same predicted time)"


def latency_choice(model: nn.Module, target: nn.Module, layers: list[_Layer], found, probe: Tensor,
                    reference: Tensor, method: str, budget: float, batches, report: ConversionReport,
                    refit: Optional[Callable[[nn.Module, dict], object]] = None) -> dict:
    """The choice under a time budget that holds as measured (:func:`timing.within_budget`): each
    allocation is built on a copy of ``target`` (refit there by ``refit(copy, its converted layers)``
    where given, as the result will be: its output error is the result's), optimized and timed side
    by side with the optimized original, and corrected where it missed. Sets ``report.latency``
    (and warns where no allocation met the budget as measured)."""
    if batches is None:  # data-free: each layer's error weighed by its measured effect on the output
        measure_sensitivities(target, layers, found, probe, reference)
    original = timing.optimized(model, probe)  # as deployed: what the budget is a fraction of
    path = timing.optimized(model, probe, timing.LAYER_PATHS)  # the paths the layers are timed through
    timing.attach_latencies(layers)
    # the dense layers' times inside the model, and the model's own time from the same calls: the
    # prediction's base, of which the predicted time may be the budget's fraction
    latency_ms, inside = timing.in_context(path, [l.name for l in layers], probe)
    timing.in_model_times(layers, inside)

    def choose(ms: float, fraction: float) -> tuple[dict, str]:
        args = (fraction, None, None, "global", report.macs_before, ms)
        choice = _choose(layers, *args)
        if batches is not None:  # allocated by output error already
            return choice, ""
        # the proxy checked on the example, against the MAC-shaped allocation of the same predicted time
        shaped = macs_within_time(layers, fraction, ms, report.macs_before)
        return best_choice(target, layers, choice, found, probe, reference, args,
                           extra={BY_MACS: shaped} if shaped is not None else None,
                           structures=method == "auto", who=method)

    def build(choice: dict) -> tuple[nn.Module, float]:
        trial, made = _trial(target, layers, choice, found)
        if refit is not None:
            refit(trial, {k: m for k, m in made.items() if choice[k].structure != "dense"})
        with torch.no_grad():
            return trial, _rel(trial(probe), reference)

    by_macs = _by_macs(target, layers, found, probe, reference, method, batches, report.macs_before)
    kept, trials = timing.within_budget(layers, budget, latency_ms, choose, build, original, probe, by_macs,
                                        redraw=lambda: timing.optimized(model, probe))
    _report(report, kept, trials, budget, probe)
    return kept.choice


def _report(report: ConversionReport, kept: timing.Trial, trials: list, budget: float, probe: Tensor) -> None:
    """Set ``report.message`` and ``report.latency`` from the kept trial and every trial; warn where
    the runs of one model varied (a busy machine) or no allocation met the budget as measured."""
    report.message = _kept_message(kept, trials, budget)
    report.latency = dict(original_ms=kept.original_ms, predicted_ms=kept.predicted_ratio * kept.original_ms,
                          measured_ms=kept.measured_ms, predicted_ratio=kept.predicted_ratio,
                          measured_ratio=kept.ratio, rounds=len(trials),
                          trials=[dict(predicted_ratio=t.predicted_ratio, measured_ratio=t.ratio,
                                       output_error=t.error, macs_fraction=t.macs_fraction, runs=t.runs,
                                       run_ratios=list(t.ratios), rejected=t.rejected) for t in trials],
                          batch=int(probe.shape[0]), threads=torch.get_num_threads())
    varied = [t for t in trials if t.varied()]
    if varied:
        runs = ", ".join(f"{r:.3f}" for r in varied[0].ratios)
        warnings.warn(f"convert: the side-by-side timings varied from run to run (the same two models measured {runs} "
                      "of the original's time): other work on the machine disturbs them, so the kept model's "
                      "measured time is uncertain; convert again on a quiet machine", RuntimeWarning, stacklevel=4)
    if not kept.met(budget):
        tried = f"the fastest of {len(trials)} allocations" if len(trials) > 1 else "the allocation"
        over = (f"{kept.ratio / budget - 1:.0%} over" if kept.ratio > budget else
                f"the mean of {kept.runs} runs; measured again, it missed")
        note = (f"the time budget was not reached as measured: {tried} measured "
                f"{kept.ratio:.3f} of the optimized original's time, budget {budget} ({over})")
        report.message = f"{report.message}; {note}" if report.message else note
        warnings.warn(f"convert: {note}", RuntimeWarning, stacklevel=4)


def _by_macs(target: nn.Module, layers: list[_Layer], found, probe: Tensor, reference: Tensor, method: str, batches,
             total: int) -> Callable[[float], Optional[dict]]:
    """``fraction -> choice``: the allocation by MACs at ``fraction`` of the MACs, None where no
    allocation has that few. Of what ``cost="macs"`` chooses (the layers weighed alike) and the
    same allocation with each layer weighed by its measured effect on the output (``layers``'
    sensitivities), the one closer to the original on the example: where the MAC budget's model
    fits the time budget as measured, the result is at least as close as that model. Measured by
    :func:`timing.within_budget`, it shows what the time table cannot (on ResNet-50 at batch 8, 75%
    of the MACs ran in 0.68 of the time where the table predicted more)."""
    alike = [dataclasses.replace(l, sensitivity=1.0) for l in layers]

    def at(fraction: float) -> Optional[dict]:
        args = (fraction, None, None, "global", total)
        try:
            plain = macs_choice(target, alike, found, probe, reference, method, batches, args)[0]
            weighed = macs_choice(target, layers, found, probe, reference, method, batches, args)[0]
        except ValueError:  # no allocation has that few MACs
            return None
        if all(plain[k] is weighed[k] for k in plain):
            return plain
        return best_choice(target, layers, plain, found, probe, reference, (*args, None), extra={"weighed": weighed},
                           structures=False)[0]
    return at


def _kept_message(kept: timing.Trial, trials: list, budget: float) -> str:
    """``kept``'s message, or where an allocation by MACs (:func:`_by_macs`) was kept, why."""
    if kept.macs_fraction is None:
        return kept.message
    others = [t for t in trials if t.macs_fraction is None]
    met = [t.error for t in others if t.met(budget)]
    if met:
        why = f"closer to the original on the example (output error {kept.error:.4g} against {min(met):.4g})"
    elif others:
        fastest = min(others, key=lambda t: t.ratio)
        runs = f", mean of {fastest.runs} runs" if fastest.runs > 1 else ""
        why = f"the allocations by time missed the budget as measured (the fastest: {fastest.ratio:.3f}{runs})"
    else:
        why = "no allocation by time was predicted to fit"
    return f"kept the allocation by {kept.macs_fraction:.3g} of the MACs, measured at {kept.ratio:.3f} of the time: {why}"


def _trial(target: nn.Module, layers: list[_Layer], choice: dict, found) -> tuple[nn.Module, dict]:
    """``target`` converted as ``choice`` says, on a copy (the module tree copied, the tensors
    shared: the surgery assigns new parameters), in eval mode, and its new layers by name;
    ``target`` and the layers' spectra stay as they were, for the next allocation and the final
    surgery."""
    trial = copy.deepcopy(target, {id(t): t for t in (*target.parameters(), *target.buffers())})
    spectra = [l.spectra for l in layers]
    made = _operate(trial, layers, choice, found)
    for l, s in zip(layers, spectra):
        l.spectra = s
    return trial.eval(), made
