"""``sepconv demo``: the whole story, on real data, offline.

Section 1 checks the seeds' worked examples by running the layers and counting what they do.
"""

import torch
from torch import nn

from .cost import profile
from .layers import SeparableConv2d, SpatiallySeparableConv2d


def seeds_examples() -> list[dict]:
    """The seeds' worked examples, counted by profiling real layers on real-size inputs.

    Returns rows with the example, the standard and separable MAC counts, and the seed's own
    figures for comparison.
    """
    rows = []
    cases = [
        ("15x15x3, 10 kernels 3x3, no padding", (1, 3, 15, 15), 10, 0, "depthwise", "45,630 vs 9,633"),
        ("15x15x1, 1 kernel 3x3, no padding", (1, 1, 15, 15), 1, 0, "spatial", "1,521 vs 1,170 (slip: 1,092)"),
        ("7x7x3 -> 256, no padding", (1, 3, 7, 7), 256, 0, "depthwise", "338,688 vs 23,169 (mixed sizes)"),
        ("7x7x3 -> 256, 'same' padding", (1, 3, 7, 7), 256, "same", "depthwise", "338,688 vs 23,169 (mixed sizes)"),
    ]
    for label, shape, n, padding, kind, seed in cases:
        dense = nn.Conv2d(shape[1], n, 3, padding=1 if padding == "same" else 0, bias=False)
        if kind == "depthwise":
            sep = SeparableConv2d(shape[1], n, 3, padding=padding, bias=False)
        else:
            sep = SpatiallySeparableConv2d(shape[1], n, 3, rank=1, padding=padding, bias=False)
        d, s = profile(dense, shape).macs, profile(sep, shape).macs
        x = torch.randn(shape)
        rows.append(dict(example=label, kind=kind, standard=d, separable=s, ratio=s / d,
                         output_shape=tuple(sep(x).shape), seed=seed))
    return rows


def run_demo(args) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="The seeds' worked examples, counted by running sepconv's layers (MACs = multiplications)")
    for col in ("example", "separable kind", "standard", "separable", "ratio", "seed says"):
        table.add_column(col, justify="right" if col in ("standard", "separable", "ratio") else "left")
    for r in seeds_examples():
        table.add_row(r["example"], r["kind"], f"{r['standard']:,}", f"{r['separable']:,}", f"{r['ratio']:.2%}", r["seed"])
    console.print(table)
    return 0
