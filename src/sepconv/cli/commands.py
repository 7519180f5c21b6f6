"""The commands that read and measure: explain, profile, bench, and demo, doctor."""

from .. import cli
from .._io import check_output_dir
from .common import DEMO_FILES, UsageError, _emit, _int_arg, parse_shape, print_wide


def cmd_explain(args) -> int:
    from ..cost import compare, explain

    h, w, c = parse_shape(args.input, "--input", dims=(3,), example="15x15x3")
    kernel = parse_shape(args.kernel, "--kernel", dims=(1, 2), example="3x3")
    kernel = kernel * 2 if len(kernel) == 1 else kernel
    padding = args.padding if args.padding in ("valid", "same") else _int_arg(args.padding, "--padding")
    shape = (c, h, w)
    print(explain(shape, args.filters, kernel, args.stride, padding, depth_multiplier=args.depth_multiplier,
                  spatial=args.spatial, rank=args.rank))
    if args.table:
        print_wide(compare(shape, args.filters, kernel, args.stride, padding,
                           depth_multiplier=args.depth_multiplier, rank=args.rank))
    return 0


def cmd_profile(args) -> int:
    from ..cost import profile

    model, default_input, label = cli.load_model(args.model)  # looked up on the package: tests replace it
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


def cmd_bench(args) -> int:
    from ..bench import copy_bandwidth, layer_speed

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
    print_wide(t)
    print(f"theoretical (MAC ratio) {r['theoretical']:.2f}x; optimized realizes {r['realized_over_theoretical']:.0%} of it "
          f"({r['backend']} path); depthwise {r['depthwise_gbs']:.1f} GB/s vs copy {r['copy_gbs']:.1f} GB/s")
    print(f"optimized / naive channels_last {r['optimized_over_naive_cl']:.2f}x (a free depthwise plus the BLAS pointwise "
          f"GEMM would give {r['gemm_bound']:.2f}x)")
    return 0


def cmd_demo(args) -> int:
    if not 0 <= args.seed < 2**63:
        raise UsageError(f"--seed: expected a non-negative int below 2**63, got {args.seed}")
    check_output_dir(args.output, "--output", DEMO_FILES)  # before the import and the training
    from ..demo import run_demo

    return run_demo(args)


def cmd_doctor(args) -> int:
    from ..doctor import report

    print("\n".join(report(build=not args.no_build)))
    return 0
