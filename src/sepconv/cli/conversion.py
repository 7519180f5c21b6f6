"""The commands that write a model: ``convert`` and ``optimize``.

Both write ``--output`` as a self-contained archive (:func:`sepconv.load` runs it without the
model's code, see :mod:`sepconv.serialize`); ``convert`` also writes the recipe (``--recipe``,
by default next to ``--output``) that :func:`sepconv.apply_recipe` replays on the user's own class.

The input the model is measured on: the user's ``--calibration-data``; else, for a digits model
(``sepconv.models.DigitsCNN``), the bundled digits; else random normal inputs of ``--input``'s
shape (seeded, so runs repeat). Calibration and distillation need real inputs, so for other models
they need ``--calibration-data``.
"""

import contextlib
import math
import os
import re
import sys

from .. import cli
from .._io import check_output_file
from .calibration import load_calibration, parse_channels
from .common import UsageError, _emit, _first_line, parse_shape
from .progress import Stages

RANDOM_SEED = 0
# with at least this many --calibration-data samples, the last quarter is held out for the reported errors
HOLD_OUT_FROM = 8


def recipe_path(output: str) -> str:
    """The default ``--recipe`` next to ``output``: ``small.pt2`` -> ``small.recipe.pt``."""
    stem, ext = os.path.splitext(output)
    return (stem if ext in (".pt2", ".pt", ".pth") else output) + ".recipe.pt"


def _check_outputs(args) -> None:
    """``--output`` (and ``--recipe``) can be written: checked before any long work."""
    if args.output is None:
        what = {"convert": "converted", "optimize": "optimized"}[args.command]
        raise UsageError(f"--output: expected a path for the {what} model, got none")
    check_output_file(args.output, "--output")
    if getattr(args, "recipe", False) is not False:
        args.recipe = args.recipe if args.recipe is not None else recipe_path(args.output)
        check_output_file(args.recipe, "--recipe")
        if os.path.realpath(args.recipe) == os.path.realpath(args.output):
            raise UsageError(f"--recipe: expected a file other than --output, got {args.recipe!r}")


def _model_and_shape(args):
    model, default_input, label = cli.load_model(args.model)  # looked up on the package: tests replace it
    shape = parse_shape(args.input, "--input") if args.input is not None else default_input
    if shape is None:
        raise UsageError("--input: expected an input size like 1x3x32x32 for this model, got none")
    if len(shape) < 2:
        raise UsageError(f"--input: expected a batch size, channels and sizes like 1x3x32x32, got {args.input!r}")
    return model.eval(), shape, label


def _dtype(model):
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def _is_digits(model) -> bool:
    from ..models.digits import DigitsCNN

    return isinstance(model, DigitsCNN)


def _digits_like(shape: tuple, n, split: str = "train"):
    """``n`` bundled digits (scikit-learn) resized to ``(C, H, W)`` of ``shape``: an offline data source."""
    import torch.nn.functional as F

    from ..data import DigitsDataset

    images, labels = DigitsDataset(split).tensors(n)
    c, size = shape[1], tuple(shape[2:])
    if len(size) != 2:
        raise UsageError(f"--input: calibration/distillation data are 2-D images; expected BxCxHxW, got {shape}")
    images = F.interpolate(images, size=size, mode="bilinear", align_corners=False).repeat(1, c, 1, 1)
    return images, labels


def _split(data):
    """``(fit, held_out, where)``: with ``HOLD_OUT_FROM`` or more samples the last quarter is held out
    for the reported errors; ``where`` says in words which samples the errors are measured on."""
    n = len(data)
    if n < HOLD_OUT_FROM:
        return data, data, (f"the {n} samples of --calibration-data (in-sample: the same samples the layers were "
                            f"fit on; with {HOLD_OUT_FROM} or more, a quarter is held out)")
    held = n // 4
    return data[:n - held], data[n - held:], f"{held} held-out samples of --calibration-data (not used for fitting)"


def _inputs(args, model, shape):
    """``(example, calibration, distillation, measure, where)``: the tensors the conversion uses, the
    samples the reported errors are measured on, and in words which ones. ``measure`` and ``where`` are
    None for the bundled digits."""
    import torch

    channels = shape[1]
    mean = parse_channels(args.mean, "--mean", channels)
    std = parse_channels(args.std, "--std", channels, positive=True)
    if args.calibration_data is not None:
        data = load_calibration(args.calibration_data, shape, mean, std, _dtype(model))
        if args.calibrate:
            data = data[:args.calibrate]
        fit, held, where = _split(data)
        return fit[:shape[0]], fit, fit, held, where
    if mean is not None or std is not None:
        raise UsageError("--mean/--std: normalize --calibration-data; expected --calibration-data PATH, got none")
    if _is_digits(model):
        example = _digits_like(shape, shape[0], "test")[0]
        calibration = _digits_like(shape, args.calibrate)[0] if args.calibrate else None
        distillation = _digits_like(shape, None)[0] if args.distill_epochs else None
        return example, calibration, distillation, None, None
    for flag, value in (("--calibrate", args.calibrate), ("--distill-epochs", args.distill_epochs)):
        if value:
            raise UsageError(f"{flag}: needs inputs of this model; expected --calibration-data PATH (a tensor file, "
                             f".npy array or folder of images), got none")
    generator = torch.Generator().manual_seed(RANDOM_SEED)
    example = torch.randn(shape, generator=generator, dtype=_dtype(model) or torch.float32)
    return example, None, None, example, f"random normal inputs of shape {'x'.join(map(str, shape))} (no --calibration-data given)"


def _rel(a, b) -> float:
    a, b = a.detach(), b.detach()
    den = float(b.double().norm())
    return float((a.double() - b.double()).norm()) / den if den > 0 else float(a.double().norm())


def _outputs(model, data, batch: int = 64):
    import torch

    with torch.no_grad():
        return torch.cat([model(x) for x in data.split(batch)])


def _refresh_layers(report, original, new, data, batch: int = 16) -> None:
    """The report's per-layer errors, measured again on ``new`` (each layer on the original's inputs to
    it, over all of ``data``, a batch at a time so that no layer's inputs for all samples are held)."""
    import copy

    import torch

    from ..fold import fold_batchnorm

    into = {m.group(1): bn for bn, why in report.batchnorms.items() if (m := re.fullmatch(r"folded into '(.+)'", why))}
    references = {}
    for row in report.layers:
        conv = original.get_submodule(row.name)
        reference = references[row.name] = copy.deepcopy(conv)
        if row.name in into:
            bn = original.get_submodule(into[row.name])
            w, b = fold_batchnorm(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
            reference.weight, reference.bias = torch.nn.Parameter(w), torch.nn.Parameter(b)
        row.weight_error = _rel(new.get_submodule(row.name).weight, reference.weight)  # its dense equivalent
    sums = {}  # name -> [squared error, squared reference] over the samples

    def measure(module, args, name):
        if name not in done:  # a layer called twice in one forward: its first call, as the report's
            done.add(name)
            x = args[0].detach()
            out, ref = new.get_submodule(name)(x).double(), references[name](x).double()
            acc = sums.setdefault(name, [0.0, 0.0])
            acc[0] += float((out - ref).pow(2).sum())
            acc[1] += float(ref.pow(2).sum())

    hooks = [original.get_submodule(r.name).register_forward_pre_hook(
        lambda m, a, n=r.name: measure(m, a, n)) for r in report.layers]
    try:
        with torch.no_grad():
            for x in data.split(batch):
                done = set()
                original(x)
    finally:
        for h in hooks:
            h.remove()
    for row in report.layers:
        if row.name in sums:
            error, total = sums[row.name]
            row.output_error = (error / total) ** 0.5 if total > 0 else error ** 0.5


def _check_model_runs(model, example, shape) -> None:
    """The model must run on an input of ``--input``'s shape: said plainly, before torch.export's own words."""
    import torch

    try:
        with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
            model(example)
    except Exception as exc:  # noqa: BLE001 - the model's own error, on one line
        raise UsageError(f"--input: the model fails on an input of shape {'x'.join(map(str, shape))}: "
                         f"{_first_line(exc)}") from None


def _distill(args, model, new, report, data, measure, stages) -> str:
    """Distill ``new`` from ``model`` in place; keep the model from before if that made ``measure``'s
    error worse. Returns the report's sentence about it."""
    import copy

    from torch.utils.data import TensorDataset

    from ..train import distill

    before_state = copy.deepcopy(new.state_dict())
    before = _rel(_outputs(new, measure), _outputs(model, measure))
    stages(f"distilling for {args.distill_epochs} epoch(s) on {len(data)} samples")
    distill(new, model, TensorDataset(data), epochs=args.distill_epochs, lr=args.lr,
            batch_size=min(64, len(data)), progress=not (args.json or args.quiet))
    new.eval()
    after = _rel(_outputs(new, measure), _outputs(model, measure))
    stages(f"distilled {args.distill_epochs}/{args.distill_epochs} epoch(s): output error {before:.4f} -> {after:.4f}")
    if after > before:
        new.load_state_dict(before_state)
        report.output_error = before
        return (f"Distillation ({args.distill_epochs} epoch(s), --lr {args.lr:g}) made the model output error worse "
                f"({before:.4f} -> {after:.4f}), so the model from before distillation is kept.")
    _refresh_layers(report, model, new, measure)
    report.output_error = after
    return (f"Distilled for {args.distill_epochs} epoch(s) on {len(data)} samples: model output error "
            f"{before:.4f} -> {after:.4f}.")


def _convert(args, model, example, calibration, stages):
    from torch import nn

    from ..convert import convert

    convs = sum(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) for m in model.modules())
    stages(f"converting: choosing a structure and rank for each of the {convs} convolutions")
    with stages.library_lines():
        return convert(model, method=args.method, budget=args.budget, rank=args.rank, tolerance=args.tolerance,
                       example_input=example, cost=args.cost,
                       calibration_data=None if calibration is None else list(calibration.split(64)))


def cmd_convert(args) -> int:
    from ..optimize import optimize_for_inference
    from ..serialize import export_program, make_recipe, save, save_recipe

    _check_outputs(args)  # before the long work, not after it
    if args.cost == "latency" and args.budget is None:
        raise UsageError("--cost latency: a budget of time; expected --budget (a fraction of the optimized model's "
                         "measured time), got none")
    if args.calibrate is not None and args.calibrate < 1:  # (0 read as "all of them")
        raise UsageError(f"--calibrate: expected a positive int (how many samples), got {args.calibrate}")
    if args.distill_epochs < 0:
        raise UsageError(f"--distill-epochs: expected a non-negative int, got {args.distill_epochs}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr: expected a positive number, got {args.lr}")
    stages = Stages(quiet=args.quiet or not (args.progress or sys.stderr.isatty()))
    stages(f"loading the model {args.model}")
    model, shape, label = _model_and_shape(args)
    example, calibration, distillation, measure, where = _inputs(args, model, shape)
    _check_model_runs(model, example, shape)
    stages("checking that torch.export can save the model")
    export_program(model, example)  # a model torch.export cannot save is refused before the conversion
    new, report = _convert(args, model, example, calibration, stages)
    if measure is not None:
        _refresh_layers(report, model, new, measure)
        report.output_error = _rel(_outputs(new, measure), _outputs(model, measure))
    notes = [report.message.rstrip(".") + "." if report.message else ""]
    if args.distill_epochs:
        notes.append(_distill(args, model, new, report, distillation, example if measure is None else measure,
                              stages))
    if where is not None:
        notes.append(f"Model output relative error {report.output_error:.4f} (and the layers' output errors) on "
                     f"{where}.")
    report.message = " ".join(filter(None, notes))
    _emit(report, args)
    # the archive is the program for production: optimized as `sepconv optimize` would (the paths
    # torch.export can save), so that it runs at the speed the conversion was for, not eagerly
    stages("optimizing the converted model for inference on this CPU (as sepconv optimize does)")
    fast = optimize_for_inference(new, example, candidates=("eager", "fused"))
    stages(f"writing {args.output} and {args.recipe}")
    meta = save(fast, args.output, example, portable=new)
    save_recipe(make_recipe(model, new, report.batchnorms), args.recipe)
    if not args.json:
        print(f"wrote {args.output} (optimized for inference, backend {fast.backend!r}"
              + (", with a portable copy for machines without the C++ kernels" if meta["needs_kernels"] else "")
              + f"; load it anywhere with sepconv.load) and {args.recipe} (sepconv.apply_recipe puts the converted "
              "weights into your own model class)")
    return 0


def cmd_optimize(args) -> int:
    import torch

    from ..optimize import optimize_for_inference
    from ..serialize import export_program, save

    _check_outputs(args)
    if not 1 <= args.rounds <= 1000:
        raise UsageError(f"--rounds: expected an int from 1 to 1000, got {args.rounds}")
    model, shape, label = _model_and_shape(args)
    generator = torch.Generator().manual_seed(RANDOM_SEED)
    example = torch.randn(shape, generator=generator, dtype=_dtype(model) or torch.float32)
    _check_model_runs(model, example, shape)
    export_program(model, example)  # refused before the optimization if torch.export cannot save it
    fast = optimize_for_inference(model, example, rounds=args.rounds, candidates=("eager", "fused"))
    meta = save(fast, args.output, example, portable=model)
    folded = sum(why.startswith("folded into ") for why in fast.batchnorms.values())
    print(f"{label}: backend {fast.backend!r}, BatchNorms folded {folded} of {len(fast.batchnorms)}; wrote "
          f"{args.output} (load it anywhere with sepconv.load"
          + ("; it runs the fused C++ kernels where they can be built, else a portable copy saved with it)"
             if meta["needs_kernels"] else ")"))
    return 0


def _number_type(low: float, high: float, closed_low: bool, closed_high: bool, what: str):
    """An argparse ``type`` for a number in an interval: refused when the command line is read."""
    import argparse

    interval = f"{'[' if closed_low else '('}{low:g}, {high:g}{']' if closed_high else ')'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} in {interval}, got {text!r}") from None
        if not ((low <= value if closed_low else low < value) and (value <= high if closed_high else value < high)):
            raise argparse.ArgumentTypeError(f"expected {what} in {interval}, got {text!r}")
        return value

    return parse


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return value


def add_convert_parser(sub) -> None:
    """The ``convert`` command's arguments."""
    p = sub.add_parser("convert", help="replace a model's convolutions by separable ones, optimally")
    p.add_argument("model", help="a built-in name, FILE.py:FACTORY, or a torch.save'd model file")
    p.add_argument("--method", default="auto", choices=["auto", "depthwise", "blueprint", "spatial"])
    how = p.add_mutually_exclusive_group()
    how.add_argument("--budget", type=_number_type(0, 1, False, True, "a fraction of the MACs (of the time with --cost latency)"),
                     help="fraction of the model's MACs to keep, in (0, 1], e.g. 0.3")
    how.add_argument("--rank", type=_positive_int, help="one rank for every layer")
    how.add_argument("--tolerance", type=_number_type(0, 1, True, False, "a relative error"),
                     help="per-layer cap on the relative error, in [0, 1)")
    p.add_argument("--cost", default="macs", choices=["macs", "latency"],
                   help="what --budget is a fraction of: the model's MACs (default), or 'latency': the measured time of "
                        "the optimized model on this machine at --input's batch size (each candidate layer timed once, "
                        "cached in ~/.cache/sepconv/latency)")
    p.add_argument("--input", help="BxCxHxW input size, e.g. 1x3x32x32 (the report's MACs are for this batch)")
    p.add_argument("--calibration-data", metavar="PATH",
                   help="your inputs: a torch.save'd tensor (or dict/list of tensors), a .npy array, or a folder of "
                        "images (resized to --input, scaled to [0, 1]); used to calibrate, distill and report errors. "
                        "With 8 or more samples, the last quarter is held out: the reported errors are measured "
                        "on it, the rest is fit on; with fewer, the errors are in-sample")
    p.add_argument("--mean", help="per-channel mean subtracted from --calibration-data, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", help="per-channel std dividing --calibration-data, e.g. 0.229,0.224,0.225")
    p.add_argument("--calibrate", type=int, default=None, metavar="N",
                   help="use only the first N samples of --calibration-data; for a digits model without it, "
                        "refine with N bundled digit images")
    p.add_argument("--distill-epochs", type=int, default=0, metavar="E",
                   help="then distill from the original for E epochs on the same data (soft targets, no labels); "
                        "if that makes the measured output error worse, the model from before is kept")
    p.add_argument("--lr", type=float, default=3e-4, help="distillation learning rate")
    p.add_argument("--output", help="required: the converted model, self-contained (load with sepconv.load), written "
                                    "atomically")
    p.add_argument("--recipe", help="the recipe for sepconv.apply_recipe (default: next to --output, "
                                    "e.g. small.pt2 -> small.recipe.pt)")
    chatter = p.add_mutually_exclusive_group()
    chatter.add_argument("--quiet", action="store_true",
                         help="no progress lines on stderr (they are printed when stderr is a terminal)")
    chatter.add_argument("--progress", action="store_true",
                         help="progress lines on stderr even when it is not a terminal (e.g. a log file)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--markdown", action="store_true")
    p.set_defaults(func=cmd_convert)


def add_optimize_parser(sub) -> None:
    """The ``optimize`` command's arguments."""
    p = sub.add_parser("optimize", help="fold BatchNorms and pick the fastest CPU path (eager or fused kernels); "
                                        "save it self-contained")
    p.add_argument("model", help="a built-in name, FILE.py:FACTORY, or a torch.save'd model file")
    p.add_argument("--input", help="BxCxHxW input size the paths are timed on, e.g. 1x3x224x224")
    p.add_argument("--rounds", type=int, default=10, help="timing rounds per candidate path")
    p.add_argument("--output", help="required: the optimized model, self-contained (load with sepconv.load), written "
                                    "atomically")
    p.set_defaults(func=cmd_optimize, recipe=False)
