"""The ``sepconv`` command: a thin layer over the library.

User mistakes (bad shapes, unknown models, unreadable files, an output that cannot be written)
print one ``sepconv: error: ...`` line on stderr and exit with status 2, never a traceback; they
are found before any long work starts. Ctrl-C prints ``sepconv: interrupted`` and exits 130, from
the first moment (this module imports torch only inside :func:`main`). When the reader of the
output goes away (``sepconv profile ... | head``), the command stops quietly with status 141, as a
Unix tool killed by SIGPIPE would.
"""

import argparse
import contextlib
import errno
import math
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

from ._io import check_output_dir, check_output_file

if TYPE_CHECKING:
    from torch import nn


# what ``sepconv demo`` writes into its --output directory
DEMO_FILES = ("report.md", "digits_cnn.pt", "accuracy_vs_macs.png", "spectra.png", "layer_error.png", "latency.png")


# the largest --input the commands take: sizes torch can index, and a tensor torch can allocate
MAX_SIZE, MAX_ELEMENTS = 2**31 - 1, 2**40


class UsageError(Exception):
    """A user mistake: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse's own mistakes (unknown option, missing argument) as one ``sepconv: error:`` line too."""

    def error(self, message: str):
        self.exit(2, f"sepconv: error: {message} (see '{self.prog} --help')\n")


def parse_shape(text: str, what: str, dims: Optional[Sequence[int]] = None) -> tuple[int, ...]:
    """``'1x3x224x224'`` -> ``(1, 3, 224, 224)``; checks positive ints and the number of dims."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"{what}: expected sizes separated by 'x' like {'x'.join(['15'] * 2 + ['3'])}, got {text!r}") from None
    if any(s < 1 for s in shape):
        raise UsageError(f"{what}: expected positive sizes, got {text!r}")
    if any(s > MAX_SIZE for s in shape) or math.prod(shape) > MAX_ELEMENTS:
        raise UsageError(f"{what}: expected sizes up to {MAX_SIZE:,} and at most {MAX_ELEMENTS:,} values in all, "
                         f"got {text!r}")
    if dims is not None and len(shape) not in dims:
        raise UsageError(f"{what}: expected {' or '.join(str(d) for d in dims)} sizes, got {len(shape)} in {text!r}")
    return shape


def _one_line(exc: BaseException) -> str:
    """The first non-blank line of ``exc``'s message ('' if none)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


def _first_line(exc: BaseException) -> str:
    """``'Type: first line of the message'``: what a one-line error can say about ``exc``."""
    line = _one_line(exc)
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _guarded(fn, what: str):
    """``fn()``, with anything it raises (even ``sys.exit``) turned into a :class:`UsageError` about ``what``.

    For code the user supplied (their model file, their factory, a pickle): its failure is theirs to
    see, on one line.
    """
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the user's prints must not mix into --json / --markdown
            return fn()
    except SystemExit as exc:
        raise UsageError(f"{what}: it called sys.exit({exc.code!r})") from None
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise UsageError(f"{what}: {_first_line(exc)}") from None


def load_model(spec: str) -> tuple["nn.Module", Optional[tuple[int, ...]], str]:
    """A built-in name (``mobilenet_v1:0.5``), ``file.py:factory``, or a ``torch.save``'d model.

    Returns ``(model, default input size or None, label)``. Loading a saved model unpickles it:
    only load files you trust.
    """
    from .models import BUILTIN, build

    base = spec.partition(":")[0]
    if base in BUILTIN:
        try:
            return build(spec), BUILTIN[base][1], spec
        except (ValueError, TypeError) as exc:
            raise UsageError(str(exc)) from None
    path, sep, factory = spec.rpartition(":")
    if sep and path.endswith(".py"):
        return _from_factory(path, factory, spec), None, spec
    if spec.endswith(".py"):
        raise UsageError(f"model: expected FILE.py:FACTORY (the function that builds the model), got {spec!r}")
    if os.path.isdir(spec):
        raise UsageError(f"model: {spec!r} is a directory, expected a file saved with torch.save(model, path)")
    if os.path.exists(spec):
        return _from_saved(spec), None, os.path.basename(spec)
    raise UsageError(
        f"model: expected a built-in name ({', '.join(sorted(BUILTIN))}; each takes an optional :WIDTH), FILE.py:FACTORY or a torch.save file, got {spec!r}"
    )


def _from_factory(path: str, factory: str, spec: str) -> "nn.Module":
    import importlib.util

    from torch import nn

    if not os.path.isfile(path):
        raise UsageError(f"model: file {path!r} not found" if not os.path.exists(path) else f"model: {path!r} is not a file")
    module_spec = importlib.util.spec_from_file_location("_sepconv_user_model", path)
    module = importlib.util.module_from_spec(module_spec)
    _guarded(lambda: module_spec.loader.exec_module(module), f"model: could not import {path!r}")
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise UsageError(f"model: {path!r} has no callable {factory!r}")
    model = _guarded(fn, f"model: {factory}() in {path!r} failed")
    if not isinstance(model, nn.Module):
        raise UsageError(f"model: {spec!r} returned {type(model).__name__}, expected an nn.Module")
    return model


def _from_saved(path: str) -> "nn.Module":
    import torch
    from torch import nn

    obj = _guarded(lambda: torch.load(path, map_location="cpu", weights_only=False),
                   f"model: could not read {path!r} with torch.load")
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], nn.Module):
        obj = obj["model"]
    if not isinstance(obj, nn.Module):
        raise UsageError(f"model: {path!r} holds a {type(obj).__name__}, expected a whole nn.Module saved with torch.save(model, path)")
    return obj


def console(width: Optional[int] = None):
    """A rich console whose closed-pipe error reaches :func:`main` (rich alone would exit 1 there)."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    return _Console(width=width)


def _console():
    from rich.console import Console

    return console(width=max(100, Console().width))


def _emit(report, args) -> None:
    """Print a report as JSON, markdown, or a rich table, as the flags ask."""
    if args.json:
        print(report.to_json())
    elif args.markdown:
        print(report.to_markdown())
    else:
        _console().print(report)


def cmd_explain(args) -> int:
    from .cost import compare, explain

    h, w, c = parse_shape(args.input, "--input", dims=(3,))
    kernel = parse_shape(args.kernel, "--kernel", dims=(1, 2))
    kernel = kernel * 2 if len(kernel) == 1 else kernel
    padding = args.padding if args.padding in ("valid", "same") else _int_arg(args.padding, "--padding")
    shape = (c, h, w)
    print(explain(shape, args.filters, kernel, args.stride, padding, depth_multiplier=args.depth_multiplier,
                  spatial=args.spatial, rank=args.rank))
    if args.table:
        _console().print(compare(shape, args.filters, kernel, args.stride, padding,
                                 depth_multiplier=args.depth_multiplier, rank=args.rank))
    return 0


def _int_arg(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{what}: expected 'valid', 'same' or a non-negative int, got {text!r}") from None
    if value < 0:
        raise UsageError(f"{what}: expected 'valid', 'same' or a non-negative int, got {text!r}")
    return value


def cmd_profile(args) -> int:
    from .cost import profile

    model, default_input, label = load_model(args.model)
    if args.input is not None:
        shape = parse_shape(args.input, "--input")
    elif default_input is not None:
        shape = default_input
    else:
        raise UsageError("--input: expected an input size like 1x3x224x224 for this model, got none")
    try:
        report = profile(model, shape, name=label)
    except ValueError as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    _emit(report, args)
    return 0


def _digits_like(shape: tuple[int, ...], n: int, split: str = "train"):
    """``n`` bundled digits (scikit-learn) resized to ``(C, H, W)`` of ``shape``: an offline data source."""
    import torch.nn.functional as F

    from .data import DigitsDataset

    images, labels = DigitsDataset(split).tensors(n)
    c, size = shape[1], tuple(shape[2:])
    if len(size) != 2:
        raise UsageError(f"--input: calibration/distillation data are 2-D images; expected BxCxHxW, got {shape}")
    images = F.interpolate(images, size=size, mode="bilinear", align_corners=False).repeat(1, c, 1, 1)
    return images, labels


def cmd_convert(args) -> int:
    from .convert import convert
    from .train import distill, save_atomic

    if args.output is None:
        raise UsageError("--output: expected a path for the converted model, got none")
    check_output_file(args.output, "--output")  # before the long work, not after it
    for name in ("calibrate", "distill_epochs"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')}: expected a non-negative int, got {getattr(args, name)}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr: expected a positive number, got {args.lr}")
    model, default_input, label = load_model(args.model)
    shape = parse_shape(args.input, "--input") if args.input is not None else default_input
    if shape is None:
        raise UsageError("--input: expected an input size like 1x3x32x32 for this model, got none")
    model.eval()
    example = _digits_like(shape, shape[0], "test")[0]  # real images, for the report's output errors
    calibration = None
    if args.calibrate:
        calibration = _digits_like(shape, args.calibrate)[0]
    new, report = convert(model, method=args.method, budget=args.budget, rank=args.rank, tolerance=args.tolerance,
                          example_input=example, calibration_data=calibration)
    if args.distill_epochs:
        from torch.utils.data import TensorDataset

        images = _digits_like(shape, None)[0]
        distill(new, model, TensorDataset(images), epochs=args.distill_epochs, lr=args.lr,
                batch_size=min(64, len(images)), progress=not args.json)
        new.eval()
    _emit(report, args)
    save_atomic(new, args.output)
    if not args.json:
        print(f"wrote {args.output}" + (f" (distilled {args.distill_epochs} epoch(s) on bundled digits)" if args.distill_epochs else ""))
    return 0


def cmd_bench(args) -> int:
    from .bench import copy_bandwidth, layer_speed

    b, c, h, w = parse_shape(args.input, "--input", dims=(4,))
    if h != w:
        raise UsageError(f"--input: expected a square input (H == W), got {h}x{w}")
    if args.threads is not None:
        if not 1 <= args.threads <= 4096:
            raise UsageError(f"--threads: expected an int from 1 to 4096, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    for name in ("filters", "stride", "kernel", "rounds"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name}: expected a positive int, got {getattr(args, name)}")
    r = layer_speed(b, c, args.filters, h, args.stride, args.kernel, args.rounds, copy_bandwidth())
    if args.json:
        import json

        print(json.dumps(r, indent=2))
        return 0
    from rich.table import Table

    t = Table(title=f"{b}x{c}x{h}x{w} -> {args.filters} channels, {args.kernel}x{args.kernel} stride {args.stride}, "
                    f"{r['threads']} threads, medians of {args.rounds} interleaved rounds (noisy machine: compare ratios)")
    for col in ("candidate", "ms", "speed-up vs dense"):
        t.add_column(col, justify="left" if col == "candidate" else "right")
    for k, v in r["ms"].items():
        t.add_row(k, f"{v:.3f}", f"{r['ms']['dense'] / v:.2f}x")
    _console().print(t)
    print(f"theoretical (MAC ratio) {r['theoretical']:.2f}x; optimized realizes {r['realized_over_theoretical']:.0%} of it "
          f"({r['backend']} path); depthwise {r['depthwise_gbs']:.1f} GB/s vs copy {r['copy_gbs']:.1f} GB/s")
    print(f"optimized / naive channels_last {r['optimized_over_naive_cl']:.2f}x (a free depthwise plus the BLAS pointwise "
          f"GEMM would give {r['gemm_bound']:.2f}x)")
    return 0


def cmd_demo(args) -> int:
    if not 0 <= args.seed < 2**63:
        raise UsageError(f"--seed: expected a non-negative int below 2**63, got {args.seed}")
    check_output_dir(args.output, "--output", DEMO_FILES)  # before the import and the training
    from .demo import run_demo

    return run_demo(args)


def cmd_doctor(args) -> int:
    from .doctor import report

    print("\n".join(report(build=not args.no_build)))
    return 0


def _versions() -> str:
    from .doctor import versions

    return versions()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sepconv", description="Separable convolutions for PyTorch.")
    parser.add_argument("--version", action="version", version=_versions())
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the whole story on real data (digits), in about two minutes")
    p.add_argument("--quick", action="store_true", help="a much shorter run (CI)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="sepconv-demo", help="directory for report.md and plots")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("explain", help="count a layer's multiplications step by step, the way the tutorials do")
    p.add_argument("--input", required=True, help="HxWxC, e.g. 15x15x3")
    p.add_argument("--kernel", default="3", help="K or KHxKW")
    p.add_argument("--filters", type=int, required=True, help="number of kernels N")
    p.add_argument("--padding", default="valid", help="valid, same or an int")
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--depth-multiplier", type=int, default=1)
    p.add_argument("--spatial", action="store_true", help="spatially separable (Kx1 then 1xK) instead")
    p.add_argument("--rank", type=int, default=1, help="rank of the spatially separable / blueprint forms")
    p.add_argument("--table", action="store_true", help="also print all separable forms side by side")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("convert", help="replace a model's convolutions by separable ones, optimally")
    p.add_argument("model", help="a built-in name, FILE.py:FACTORY, or a torch.save'd model file")
    p.add_argument("--method", default="auto", choices=["auto", "depthwise", "blueprint", "spatial"])
    how = p.add_mutually_exclusive_group()
    how.add_argument("--budget", type=float, help="fraction of the model's MACs to keep, e.g. 0.3")
    how.add_argument("--rank", type=int, help="one rank for every layer")
    how.add_argument("--tolerance", type=float, help="per-layer cap on the relative error")
    p.add_argument("--input", help="BxCxHxW input size, e.g. 1x1x16x16")
    p.add_argument("--calibrate", type=int, default=0, metavar="N",
                   help="refine with N bundled digit images (resized to --input)")
    p.add_argument("--distill-epochs", type=int, default=0, metavar="E",
                   help="then distill from the original for E epochs on the bundled digits (soft targets)")
    p.add_argument("--lr", type=float, default=3e-4, help="distillation learning rate")
    p.add_argument("--output", help="where to write the converted model (atomically, with torch.save)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--markdown", action="store_true")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("bench", help="time a separable layer against its dense twin, side by side")
    p.add_argument("--input", required=True, help="BxCxHxW, e.g. 8x32x112x112")
    p.add_argument("--filters", type=int, required=True, help="output channels N")
    p.add_argument("--kernel", type=int, default=3)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("profile", help="MACs, FLOPs, params per layer and per layer type")
    p.add_argument("model", help="mobilenet_v1[:WIDTH], FILE.py:FACTORY, or a torch.save'd model file")
    p.add_argument("--input", help="BxCxHxW, e.g. 1x3x224x224")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--markdown", action="store_true")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("doctor", help="versions, the CPU and its vector ISA, and whether the C++ kernels are active "
                                      "(builds them first if this environment has no build yet)")
    p.add_argument("--no-build", action="store_true", help="only report; never compile the kernels")
    p.set_defaults(func=cmd_doctor)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``sepconv`` command; returns the exit status (0, 2 for a mistake, 130, 141)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("sepconv: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, like a tool killed by SIGPIPE
        _discard_stdout()
        return 141


def _main(argv: Optional[Sequence[str]]) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers, not at the interpreter's exit
        return status
    except BrokenPipeError:
        raise
    except ImportError as exc:  # an optional extra is missing (e.g. scikit-learn for the demo)
        print(f"sepconv: error: {_one_line(exc)} (install the demo extras: pip install scikit-learn matplotlib)", file=sys.stderr)
        return 2
    except (UsageError, ValueError, TypeError, OSError) as exc:
        print(f"sepconv: error: {_one_line(exc) or _first_line(exc)}", file=sys.stderr)
        return 2


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (e.g. captured in tests)
        pass


if __name__ == "__main__":
    sys.exit(main())
