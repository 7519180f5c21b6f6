"""``cost="latency"``: each candidate's measured time on this machine, the model's own, and the
loop that makes the budget hold as measured.

The candidates' times come from :class:`sepconv.latency.LatencyTable` (measured through
``optimize_for_inference``'s eager and fused paths on an input of the layer's shape, a few ranks
per structure timed and the rest interpolated, cached on disk per machine). The budget is a
fraction of the original as deployed, ``optimize_for_inference(model, example_input)``; it is
predicted as a ratio to the original on the table's own paths (:data:`LAYER_PATHS`), with each
dense layer timed inside that model (:func:`in_context`; the candidates are scaled by the layer's
inside/alone time) and each converted layer's dense time replaced by its candidate's
(:func:`~sepconv.convert.allocate.predicted_ms`): what deployment gains over those paths (a
TorchScript graph's fusions, a faster backend) is taken to apply to the converted model in the
same proportion, and what it does not is left to the measurements below.

What a layer inside the model costs beyond that (a layout reorder between backends, a second
kernel call, a lost fusion) is still unseen, so the prediction is checked (:func:`within_budget`):
the converted model is built, optimized and timed side by side with the optimized original
(interleaved blocks, medians); where the measured ratio exceeds the budget, every converted layer
is charged the overhead the measurements say (least squares over the rounds so far,
:func:`correction`) and the allocation is made again, at most :data:`MAX_ROUNDS` models measured.
A result measured well under its budget (below :data:`UNDER` of it) is corrected downward the
same way and allocated again, for less error. Where the budget is out of reach as predicted, the
fastest allocation is measured before the budget is refused. The kept result is the most exact of
those that met the budget as measured (measured once more where it was close to the budget, it and
the original optimized anew, and passed over if that run misses it), else the fastest measured (and
``convert`` warns by how much it missed).
"""

import math
import time
import warnings
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .._timing import interleaved
from ..latency import LatencyTable, _busy, _one_thread, fastest
from .allocate import _dense_ms, fit_times, predicted_ms, time_floor
from .candidates import _Layer
from .trials import CONFIRMS, NOISE, UNDER, Trial, keep, near, next_fraction, within  # noqa: F401 (used as timing.X too)

ROUNDS = 10  # interleaved rounds of whole-model timings (at least)
BLOCK = 3  # back-to-back calls per round
# a side-by-side run of a fast model gets more rounds, to last about this long (the digits CNN's 10
# rounds took 30 ms at batch 1, and its time budgets were ruled by noise), at most MAX_SIDE_ROUNDS
SIDE_SECONDS = 1.0
MAX_SIDE_ROUNDS = 300
MAX_ROUNDS = 3  # converted models built and measured, at most, to meet a time budget
MACS_ROUNDS = 3  # allocations by MACs measured after the loop, at most


def attach_latencies(layers: list[_Layer], table: Optional[LatencyTable] = None) -> LatencyTable:
    """Set ``ms`` of every candidate of every layer (dense included); returns the table used."""
    table = table or LatencyTable()
    for l in layers:
        ranks: dict = {}
        for c in l.candidates:
            if c.structure != "dense":
                ranks.setdefault(c.structure, []).append(c.rank)
        times = table.times(l.conv, l.in_shape, ranks, bias=l.bias is not None)
        for c in l.candidates:
            c.ms = times[(c.structure, c.rank)]
    table.save()
    if table.busy:
        warnings.warn(f"convert: the machine was busy while {len(table.busy)} of {len(layers)} layers were timed "
                      "(other work slowed the multi-threaded timings); their times were not cached and the "
                      "predicted latency is less reliable: convert again on a quiet machine", RuntimeWarning,
                      stacklevel=4)
    return table


# the paths the layers' table is timed through (sepconv.latency): the original on these alone is
# the base of a prediction, a ratio of times on the same paths. The deployed original can be
# faster or slower than that base by a factor (ResNet-50 at batch 8: TorchScript ~1.3x the eager
# and fused paths' speed); a budget predicted against the deployed time instead would carry that
# factor into every prediction, too pessimistic where deployment is faster (on ResNet-50 each
# allocation measured 0.57-0.72 of the time where 0.77-0.93 was predicted)
LAYER_PATHS = ("eager", "fused")


def optimized(model: nn.Module, x: Tensor, candidates: Optional[tuple] = None) -> nn.Module:
    """``optimize_for_inference(model, x)``, on ``candidates`` paths where given."""
    from ..optimize import optimize_for_inference

    return optimize_for_inference(model, x) if candidates is None else optimize_for_inference(model, x, candidates=candidates)


def in_context(path: nn.Module, names: list[str], x: Tensor) -> tuple[float, dict[str, float]]:
    """Least ms of the whole model ``path`` (optimized on :data:`LAYER_PATHS`) and of each named
    layer inside it, from the same calls (forward hooks), over :data:`ROUNDS` x :data:`BLOCK` calls.

    A layer timed alone is not the layer inside the model: there its input was just written by the
    layer before it (in cache, already channels_last) and its output is read next, and the model's
    other work (adds, ReLUs, pooling) runs between the convs. Timed in the model, the dense layers'
    times and the rest of the model's add up by construction. Names the model does not run are left
    out. On a busy machine (:func:`sepconv.latency._busy`), the least of the multi- and
    single-threaded calls, as in the table."""
    module = getattr(path, "module", path)
    named = dict(module.named_modules())
    times: dict[str, float] = {}
    start: dict[str, float] = {}
    hooks = []
    for name in names:
        m = named.get(name)
        if m is None:
            continue

        def pre(_m, _a, name=name):
            start[name] = time.perf_counter()

        def post(_m, _a, _o, name=name):
            ms = (time.perf_counter() - start[name]) * 1e3
            times[name] = min(times.get(name, ms), ms)

        hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    fns = {"model": lambda: path(x)}
    try:
        whole = fastest(fns, ROUNDS, block=BLOCK)["model"]
        if torch.get_num_threads() > 1 and _busy({"model": whole}, fns, ROUNDS):  # as the table's layers
            whole = min(whole, _one_thread(fns, ROUNDS)["model"])  # the hooks keep each layer's least
    finally:
        for h in hooks:
            h.remove()
    return whole, times


def in_model_times(layers: list[_Layer], measured: dict[str, float]) -> None:
    """Scale each layer's candidates' table times by the layer's dense time measured inside the
    model over its dense time alone: the table gives each candidate's time relative to the dense
    layer (timed in the same interleaved run), the model gives the dense layer's."""
    for l in layers:
        ms = measured.get(l.name)
        dense = _dense_ms(l)
        if ms is not None and ms > 0 and dense > 0:
            for c in l.candidates:
                c.ms *= ms / dense


def side_rounds(ms: float) -> int:
    """Interleaved rounds of a side-by-side run of two models of about ``ms`` each: :data:`ROUNDS`,
    or more where that lasts under :data:`SIDE_SECONDS` (at most :data:`MAX_SIDE_ROUNDS`).

    Example:
        >>> side_rounds(50.0), side_rounds(0.5)
        (10, 300)
    """
    wanted = math.ceil(SIDE_SECONDS * 1e3 / (2 * BLOCK * max(ms, 1e-6)))
    return max(ROUNDS, min(MAX_SIDE_ROUNDS, wanted))


def side_by_side(original: nn.Module, converted: nn.Module, x: Tensor) -> tuple[float, float]:
    """Median ms of the optimized original and converted models, interleaved in one run of
    :func:`side_rounds` rounds (from one warm call of the original)."""
    with torch.inference_mode():
        original(x)
        start = time.perf_counter()
        original(x)
        once = (time.perf_counter() - start) * 1e3
    t = interleaved({"original": lambda: original(x), "converted": lambda: converted(x)}, side_rounds(once), warmup=2,
                    block=BLOCK)
    return t["original"], t["converted"]


def _converted_sums(layers: list[_Layer], choice: dict, base: dict) -> tuple[int, float, float]:
    """How many layers are converted, the uncorrected ms of their chosen candidates, and their dense ms."""
    todo = [l for l in layers if choice[l.name].structure != "dense"]
    return len(todo), sum(base[id(choice[l.name])] for l in todo), sum(_dense_ms(l) for l in todo)


def correction(history: list[tuple[int, float, float, float]]) -> float:
    """The time each converted layer costs beyond its table time, from the measurements.

    Each measured round gives ``(n, cand, dense, delta)``: how many layers were converted, their
    chosen candidates' uncorrected ms, what those layers take dense, and the measured
    converted-minus-original time (in the table's units). The converted layers then really took
    ``delta + dense``, ``delta + dense - cand`` more than predicted. What a layer timed alone does
    not show is paid per converted layer inside the model, whatever the candidate's own time: a
    layout reorder between backends, a second kernel call and an intermediate tensor, the dense
    conv's fusion with the residual add and ReLU that the separable layer loses; and on busy cores
    every kernel call waits a scheduler slice. So the correction is one overhead per converted
    layer, the least-squares ``b`` in ``n * b = delta + dense - cand`` over the rounds; negative
    where the converted layers ran faster than predicted (the candidates' times are kept positive
    where it is applied).

    Example:
        >>> correction([(4, 2.0, 10.0, -4.0)])  # 4 layers took 6 ms where 2 were predicted
        1.0
    """
    num = sum(n * (d + dense - c) for n, c, dense, d in history)
    den = sum(n * n for n, _, _, _ in history)
    return 0.0 if den <= 0 else num / den


def _fastest_ratio(layers: list[_Layer], latency_ms: float) -> float:
    """The least predicted ratio any allocation reaches with the current times (the budget
    ``_allocate_time`` asks for at least)."""
    return time_floor(layers, latency_ms)[1] / latency_ms


def _measure(layers: list[_Layer], choice: dict, message: str, latency_ms: float, build: Callable[[dict], tuple],
             original: nn.Module, x: Tensor) -> tuple[Trial, nn.Module]:
    """Build ``choice``, optimize it and time it side by side with ``original``; the trial and the
    model built (not optimized: a confirmation optimizes it again, see :func:`within_budget`)."""
    predicted = predicted_ms(layers, choice, latency_ms) / latency_ms
    model, error = build(choice)
    before, after = side_by_side(original, optimized(model, x), x)
    return Trial(choice, message, predicted, before, after, error), model


def _record(trial: Trial, model: nn.Module, budget: float, trials: list[Trial], models: dict) -> None:
    """Append ``trial`` to ``trials``; where it met the budget, keep its model in ``models`` (by
    the trial's id) to be measured again (:func:`keep`)."""
    trials.append(trial)
    if trial.met(budget):
        models[id(trial)] = model


def _measured_already(trials: list[Trial], choice: dict) -> bool:
    """Whether one of ``trials`` has the same candidate for every layer as ``choice``."""
    return any(all(t.choice[k] is choice[k] for k in choice) for t in trials)


def _along_macs(layers: list[_Layer], budget: float, by_macs: Callable[[float], Optional[dict]], latency_ms: float,
                build: Callable[[dict], tuple], original: nn.Module, x: Tensor, trials: list[Trial],
                models: dict) -> None:
    """Measure the allocation by MACs at the budget's fraction of the MACs (a model's time rarely
    falls faster than its MACs: the most MACs that may fit), and, until one measures within the
    budget and not far under it (:data:`UNDER`), at the fractions :func:`next_fraction` aims at:
    at most :data:`MACS_ROUNDS` models, each recorded in ``trials`` and ``models``
    (:func:`_record`). Stops where the fraction leaves (0, 1), where no allocation has that few
    MACs, and where the allocation was measured already."""
    fraction, points = budget, []
    for _ in range(MACS_ROUNDS):
        if not 0.0 < fraction < 1.0:  # no MACs left, or the original itself
            return
        choice = by_macs(fraction)
        if choice is None or _measured_already(trials, choice):
            return
        trial, model = _measure(layers, choice, "", latency_ms, build, original, x)
        trial.macs_fraction = fraction
        _record(trial, model, budget, trials, models)
        if near(trial.ratio, budget):
            return
        points.append((fraction, trial.ratio))
        fraction = next_fraction(points, budget)


def within_budget(layers: list[_Layer], budget: float, latency_ms: float, choose: Callable[[float, float], tuple],
                  build: Callable[[dict], tuple], original: nn.Module, x: Tensor,
                  alternative: Optional[Callable[[float], Optional[dict]]] = None,
                  redraw: Optional[Callable[[], nn.Module]] = None) -> tuple[Trial, list[Trial]]:
    """Allocate, build, measure; while the measured ratio exceeds ``budget`` (or is far under it),
    correct and repeat; then measure allocations by MACs too (:func:`_along_macs`).

    Args:
        layers: the layers with their candidates' table times (``ms``); corrected in place.
        budget: the fraction of the original's measured time to reach (as deployed, side by side;
            predicted as the same fraction of ``latency_ms``).
        latency_ms: the original's time on the layers' paths in the table's units (:func:`in_context`).
        choose: ``(latency_ms, budget) -> (choice, message)``, the allocation under the current
            times (raises ValueError where the budget cannot be reached).
        build: ``choice -> (converted model, output error)``, the model is not ``layers``' target.
        original: the optimized original model, timed again side by side with each result.
        x: the example input.
        alternative: ``fraction -> choice`` (None where no allocation has that few MACs), the
            allocation by MACs at a fraction of the MACs, whose time the table may not foresee:
            measured after the loop (unless it was measured in it; :func:`_along_macs`) and kept
            on the same terms.
        redraw: ``() -> the original optimized anew``, for the confirmation runs (:func:`keep`):
            ``optimize_for_inference`` picks its paths by timing them, so each optimization is a
            draw (the same ResNet-50 ran 47.8 ms on one, 44.7 ms on the next), and a user who
            optimizes the original and the converted model gets draws of their own; a confirmation
            therefore times a fresh optimization of both. None: ``original`` again.

    Returns:
        The kept trial (the most exact of those within the budget as measured, measured again
        where it was close to the budget: :func:`keep`; else the fastest measured) and every trial
        in order. Where the corrected times say the budget cannot be
        reached, the fastest allocation they allow is measured instead.

    Raises:
        ValueError: the budget is out of reach as predicted before anything was measured, and the
            fastest allocation, measured, misses it too (the allocation's message, and the
            measured ratio).
    """
    fit_times(layers, latency_ms)
    base = {id(c): c.ms for l in layers for c in l.candidates}
    trials: list[Trial] = []
    models: dict[int, nn.Module] = {}  # the model of each trial that met the budget, by its id
    history: list[tuple[int, float, float, float]] = []
    overhead = 0.0
    unreachable: Optional[ValueError] = None
    for _ in range(MAX_ROUNDS):
        for l in layers:
            for c in l.candidates:
                c.ms = base[id(c)] if c.structure == "dense" else max(base[id(c)] + overhead, 0.25 * base[id(c)])
        try:
            choice, message = choose(latency_ms, budget)
        except ValueError as exc:
            unreachable = unreachable or (exc if not trials else None)
            try:  # out of reach as predicted: the fastest allocation the times allow, measured
                choice, message = choose(latency_ms, _fastest_ratio(layers, latency_ms) * (1 + 1e-9))
            except ValueError:
                break
        if _measured_already(trials, choice):
            break  # the corrections changed nothing: measuring it again tells nothing new
        trial, model = _measure(layers, choice, message, latency_ms, build, original, x)
        _record(trial, model, budget, trials, models)
        before, after = trials[-1].original_ms, trials[-1].measured_ms
        if unreachable is not None and after > within(budget) * before:
            break  # the fastest allocation misses too: the budget is out of reach
        if near(after / before, budget):
            break  # within the budget, and not far under it
        n, cand, dense = _converted_sums(layers, choice, base)
        if n == 0:
            break  # nothing converted: no layer's time to correct
        # the measured ratio in the table's units: a fraction of the original on the same paths
        history.append((n, cand, dense, (after / before - 1.0) * latency_ms))
        overhead = correction(history)
    fastest = min(trials, key=lambda t: t.ratio) if trials else None
    if alternative is not None:
        _along_macs(layers, budget, alternative, latency_ms, build, original, x, trials, models)
    if unreachable is not None and not models:  # out of reach as predicted, and as measured
        measured = "" if fastest is None else (f"; the fastest allocation measured {fastest.ratio:.4f} of the "
                                               "optimized original's time")
        raise ValueError(f"{unreachable}{measured}") from unreachable

    def remeasure(t: Trial) -> bool:
        before, after = side_by_side(original if redraw is None else redraw(), optimized(models[id(t)], x), x)
        t.add_run(before, after)
        return after <= within(budget) * before

    kept = keep(trials, budget, remeasure)
    return (kept if kept is not None else min(trials, key=lambda t: t.ratio)), trials
