"""The entry point: :func:`convert` reads as the recipe; each step is a function of its own module
(:mod:`.candidates`, :mod:`.allocate`, :mod:`.surgery`, :mod:`.calibrate`, :mod:`.report`)."""

import copy
import warnings
from collections.abc import Iterable
from typing import Optional, Union

import torch
from torch import Tensor, nn

from .. import cost as C
from .._checks import check_finite, check_module
from ..graph import TRAINING_MODE, find_conv_bn, fold_chains
from .calibrate import _batches, _capture_inputs, _check_input, _check_runs, _covariances, _dense_apply, _refine, _rel
from .candidates import NOMINAL_SIZE, _candidates, _Candidate, _Layer, _structures, _with_dense
from .parallel import map_layers
from .by_time import latency_choice
from .portfolio import macs_choice
from ..prior import input_scales
from .report import ConversionReport, LayerConversion
from .surgery import _find_layers, _operate

METHODS = ("auto", "depthwise", "blueprint", "spatial")
ALLOCATIONS = ("global", "uniform")
COSTS = ("macs", "latency")


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
    cost: str = "macs",
    input_statistics: bool = False,
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
        calibration_data: a tensor, an iterable of batches (or ``(input, target)`` pairs, e.g. a
            ``DataLoader``) or a ``Dataset`` of samples (batched by 64, in order), from
            the real input distribution: ranks are allocated by output error, and each layer's
            last factor is refit by closed-form least squares to match the original layer's
            outputs given the converted model's own inputs (layer by layer, in order), shrunk
            toward the SVD factor by a ridge chosen on every 4th sample, held out.
        fold_bn: fold each BatchNorm that takes a conv's output into that conv before factorizing,
            wherever ``forward`` calls them (see :func:`sepconv.graph.fold_conv_bn`); the BatchNorm
            becomes ``nn.Identity``. The report's ``batchnorms`` says, per BatchNorm, into which
            conv it was folded or why it was left alone (e.g. training mode).
        inplace: modify and return ``model`` itself.
        allocation: ``'global'`` (default) or ``'uniform'`` (same share per layer) for ``budget``.
        cost: what ``budget`` is a fraction of: ``'macs'`` (default, the model's multiply-accumulates)
            or ``'latency'``: the measured time of ``optimize_for_inference(model, example_input)``
            on this machine at the example's batch size and the current thread count. Each
            candidate layer is timed through the path the optimized converted model uses (see
            :mod:`sepconv.latency`; cached on disk, so the first conversion of a layer shape takes
            seconds and later ones none), the errors are minimized under the predicted time, and
            ``report.latency`` gives the original's, the predicted and the measured time of the
            optimized result. Needs ``budget`` and ``allocation='global'``.
        input_statistics: without calibration data, weigh each input channel's share of a layer's
            error by ``sqrt(E[x_c^2])`` of that channel as the BatchNorms before the conv describe
            it (their shift and scale, through ReLU and residual adds; :mod:`sepconv.prior`), and
            factorize optimally for that weighted error (off by default: on the digits CNN it
            helped at some budgets and structures and hurt at others).

    Returns:
        ``(new_model, report)``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        >>> small, report = convert(net, budget=0.5, example_input=torch.randn(1, 3, 32, 32))
        >>> report.macs_after <= 0.5 * report.macs_before
        True
    """
    batches, probe, profiles = _checked_inputs(model, method, budget, rank, tolerance, allocation, example_input,
                                               calibration_data, fold_bn, inplace, cost, input_statistics)
    target = model if inplace else copy.deepcopy(model)
    report = ConversionReport(method=method, budget=budget, inplace=inplace, objective="output" if batches else "weight",
                              params_before=sum(p.numel() for p in model.parameters()), cost=cost)
    rows = _layer_shapes(model, probe, profiles, report)
    found = find_conv_bn(target) if fold_bn else None  # BatchNorms wherever forward calls them; folded at the surgery
    report.batchnorms = found.batchnorms if found else {}
    training = [name for name, why in report.batchnorms.items() if why == TRAINING_MODE]  # the folding's own reason
    if training:
        more = f" (and {len(training) - 1} more)" if len(training) > 1 else ""
        warnings.warn(f"convert: BatchNorm {training[0]!r}{more} is in training mode, so it is not folded into its conv "
                      "(in training mode it normalizes by each batch's statistics, not its running ones); call "
                      "model.eval() first", RuntimeWarning, stacklevel=2)
    source = "example_input" if example_input is not None else "calibration_data"  # what the probe came from
    unbatched = None if probe is None else f"{source}: expected a batched input, got shape {tuple(probe.shape)}"
    layers, report.skipped = _find_layers(target, method, found, rows, unbatched)
    if not layers:
        return _unchanged(target, found, report)
    if batches is None and input_statistics:  # data-free: weight each input channel by its BatchNorm statistics
        _weigh(layers, model, report)
    inputs = {}
    if batches is not None:  # output-error allocation: each layer's input covariance
        inputs = _capture_inputs(model, [l.name for l in layers], batches)
        _covariances(layers, inputs)
    _rank_candidates(layers, method, rank)
    probe_inputs, reference = _reference(model, layers, probe, source)  # before any surgery: model may be target
    if cost == "latency":
        refit = None if batches is None else lambda trial, made: _refine(trial, layers, made, batches, inputs)
        choice = latency_choice(model, target, layers, found, probe, reference, method, budget, batches, report, refit)
    else:
        choice, report.message = macs_choice(target, layers, found, probe, reference, method, batches,
                                              (budget, rank, tolerance, allocation, report.macs_before))
    new_layers = _operate(target, layers, choice, found)
    converted = {l.name: new_layers[l.name] for l in layers if choice[l.name].structure != "dense"}
    unrefit = _refine(target, layers, converted, batches, inputs) if batches is not None else set()
    _fill_report(report, target, layers, choice, new_layers, probe, probe_inputs, reference, batches, unrefit)
    report.warn_if_unusable("the example input" if batches is None else "the calibration data")
    return target, report


def _weigh(layers: list[_Layer], model: nn.Module, report: ConversionReport) -> None:
    """Set each layer's input-channel scales from the BatchNorms before it (:mod:`sepconv.prior`)."""
    scales = input_scales(model)
    for l in layers:
        s = scales.get(l.name)
        if s is not None and s.numel() == l.weight.shape[1]:
            l.scale = s
    if any(l.scale is not None for l in layers):
        report.objective = "weighted"  # the weight error weighted by the input statistics (sepconv.prior)


def _rank_candidates(layers: list[_Layer], method: str, rank: Optional[int]) -> None:
    """Set each layer's candidates (and the dense conv), the layers spread over the cores."""
    found = map_layers(lambda l: _with_dense(l, _candidates(l, _structures(l.conv, method)[0], rank)), layers,
                       cost=lambda l: l.weight.numel() * l.weight.shape[1])
    for l, candidates in zip(layers, found):
        l.candidates = candidates


def _checked_inputs(model, method, budget, rank, tolerance, allocation, example_input, calibration_data, fold_bn,
                    inplace, cost="macs", input_statistics=False) -> tuple[Optional[list[Tensor]], Optional[Tensor], dict]:
    """Check every argument; returns the calibration batches, the probe input (shapes, MACs and the
    report's output errors) and the profiles of the input shapes checked."""
    check_module("model", model)
    _check_cost(cost, budget, allocation)
    _check_args(method, budget, rank, tolerance, allocation, cost)
    for flag, value in (("fold_bn", fold_bn), ("inplace", inplace), ("input_statistics", input_statistics)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag}: expected a bool, got {value!r}")
    for pname, p in model.named_parameters():
        check_finite("model", p, f" of parameter '{pname}'")
    batches = _batches(calibration_data) if calibration_data is not None else None
    profiles = {}
    if example_input is not None:
        if not isinstance(example_input, Tensor):
            raise TypeError(f"example_input: expected a torch.Tensor, got {type(example_input).__name__}")
        _check_input("example_input", example_input)
        profiles.update(_check_runs(model, "example_input", [example_input]))
    if batches is not None:
        _check_runs(model, "calibration_data", batches)
    probe = example_input if example_input is not None else (batches[0][:1] if batches else None)
    if budget is not None and probe is None:
        what = "measured time" if cost == "latency" else "MACs"
        raise ValueError(f"example_input: a budget is a fraction of the model's {what}, which depend on the input size; "
                         "expected example_input or calibration_data, got neither")
    return batches, probe, profiles


def _check_cost(cost, budget, allocation) -> None:
    if cost not in COSTS:
        raise ValueError(f"cost: expected one of {COSTS}, got {cost!r}")
    if cost == "latency":
        if budget is None:
            raise ValueError("cost: 'latency' is a budget of time; expected a budget (a fraction of the optimized "
                             "model's measured time), got none")
        if allocation != "global":
            raise ValueError(f"allocation: expected 'global' with cost='latency' (a uniform share is a share of "
                             f"MACs), got {allocation!r}")


def _check_args(method, budget, rank, tolerance, allocation, cost="macs") -> None:
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation: expected one of {ALLOCATIONS}, got {allocation!r}")
    given = [n for n, v in (("budget", budget), ("rank", rank), ("tolerance", tolerance)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"expected at most one of budget, rank, tolerance, got {' and '.join(given)}")
    if budget is not None:
        what = "the optimized model's measured time" if cost == "latency" else "the MACs"
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):  # a string, say: the wrong type
            raise TypeError(f"budget: expected a fraction of {what} in (0, 1] (a number), got {budget!r} "
                            f"({type(budget).__name__})")
        if not 0 < budget <= 1:
            raise ValueError(f"budget: expected a fraction of {what} in (0, 1], got {budget!r}")
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise TypeError(f"rank: expected a positive int, got {rank!r}")
        if rank < 1:
            raise ValueError(f"rank: expected a positive int, got {rank}")
    if tolerance is not None:
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)):
            raise TypeError(f"tolerance: expected a relative error in [0, 1) (a number), got {tolerance!r} "
                            f"({type(tolerance).__name__})")
        if not 0 <= tolerance < 1:
            raise ValueError(f"tolerance: expected a relative error in [0, 1), got {tolerance!r}")


def _layer_shapes(model: nn.Module, probe: Optional[Tensor], profiles: dict, report: ConversionReport) -> dict:
    """Input shape and MACs of every layer (profile rows by name) from the original model; sets
    ``report.macs_before``. Empty without a probe input."""
    if probe is None:
        return {}
    prof = profiles.get(tuple(probe.shape))
    if prof is None:
        prof = C.profile(model, tuple(probe.shape), dtype=probe.dtype if probe.is_floating_point() else torch.float32)
    report.macs_before = prof.macs
    return {r.name: r for r in prof.layers}


def _nothing_to_convert(report: ConversionReport, returned: bool) -> str:
    """Why no conv can be converted: the first skipped one's reason, else that there is none
    (``returned``: the report reaches the user, who can read the rest in it)."""
    if not report.skipped:
        return "the model has no convolution to convert (a conv with groups == 1 and a kernel > 1)"
    name, why = report.skipped[0]
    n = len(report.skipped) - 1
    more = "" if n == 0 else f" (and {n} more, see report.skipped)" if returned else f" (and {n} more)"
    return f"no convolution can be converted: '{name}': {why}{more}"


def _unchanged(target: nn.Module, found, report: ConversionReport) -> tuple[nn.Module, ConversionReport]:
    """No eligible conv: the model as it is (but for its folded BatchNorms), with a warning; a
    budget below the whole model cannot be met, and is refused like any other out of reach."""
    if report.budget is not None and report.budget < 1.0:
        raise ValueError(f"budget: expected at least 1.0, the whole model ({_nothing_to_convert(report, False)}), "
                         f"got {report.budget}")
    report.message = f"{_nothing_to_convert(report, True)}; the model is returned unchanged"
    if found is not None and found.chains:
        fold_chains(target, found.chains)
        report.message += " but for its folded BatchNorms"
    warnings.warn(report.message, stacklevel=3)
    report.macs_after = report.macs_before
    report.params_after = sum(p.numel() for p in target.parameters())
    return target, report


def _reference(model: nn.Module, layers: list[_Layer], probe: Optional[Tensor],
               source: str) -> tuple[dict, Optional[Tensor]]:
    """Each layer's input and the model's output on the probe (from the argument ``source``), for
    the report's output errors."""
    if probe is None:
        return {}, None
    outputs: list = []
    inputs = _capture_inputs(model, [l.name for l in layers], [probe], outputs, source=source)
    return inputs, outputs[0]


def _notes(l: _Layer, c: _Candidate, calibrated: bool, unrefit: set) -> str:
    notes = [f"BatchNorm '{l.bn_name}' folded"] if l.bn_name else []
    if calibrated and l.cov is None:
        notes.append("allocated by weight error (input covariance not estimated for 3-D or C*K > 4096)")
    if calibrated and c.structure != "dense" and l.weight.dim() > 4:
        notes.append("not refit on calibration data (3-D)")
    if l.name in unrefit:
        notes.append("not refit on calibration data: the least-squares fit was not finite; kept the SVD factors")
    return "; ".join(notes)


def _fill_report(report: ConversionReport, target: nn.Module, layers: list[_Layer], choice: dict, new_layers: dict,
                 probe: Optional[Tensor], probe_inputs: dict, reference: Optional[Tensor],
                 batches: Optional[list], unrefit: set) -> None:
    """One row per layer (with its output error on the probe), the converted model's MACs, params
    and output error."""
    for l in layers:
        c = choice[l.name]
        out_err = None
        if probe is not None:
            x = probe_inputs[l.name][0]
            with torch.no_grad():
                out_err = _rel(new_layers[l.name].eval()(x), _dense_apply(l.conv, l.weight, l.bias, x))
            new_layers[l.name].train(l.conv.training)
        report.layers.append(LayerConversion(l.name, c.structure, c.rank, l.dense_macs, c.macs, c.weight_error,
                                             out_err, _notes(l, c, batches is not None, unrefit)))
    if probe is not None:
        report.macs_after = C.profile(target, tuple(probe.shape), dtype=probe.dtype).macs
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
