"""The figures of ``sepconv demo``: each built by its own function from the demo's results (so that
tests can inspect them), written as PNGs by :func:`save_plots`.

The results are plain dicts: a conversion row has ``method``, ``budget``, ``macs``, the test
accuracies ``free``, ``calibrated`` and ``distilled``, and optionally ``ms`` (its median time
after ``optimize_for_inference``); ``base`` and ``twin`` have ``acc``, ``macs`` and optionally
``ms``. ``layer_errors`` maps a series name to ``[(layer, structure, rank, relative error)]``
in the model's order.
"""

import os
from typing import Optional

from ._io import write_atomic

METHODS = ("depthwise", "blueprint", "spatial", "auto")
STAGES = (("free", "data-free"), ("calibrated", "with calibration"), ("distilled", "after distillation"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# label offsets (points) per method: the methods' points at one budget sit close together
_OFFSETS = ((4, 4), (4, -10), (-24, 4), (-24, -10))


def _label(ax, x: float, y: float, text: str, offset: tuple = (4, 4)) -> None:
    ax.annotate(text, (x, y), textcoords="offset points", xytext=offset, fontsize=7)


def _curves(ax, results: list, x_key: str, y_key: str, x_scale: float = 1.0) -> list:
    """One line per method through its budgets, every point labelled with its budget; returns the
    accuracies plotted (%)."""
    plotted = []
    for method, offset in zip(METHODS, _OFFSETS):
        rows = sorted((r for r in results if r["method"] == method and r.get(x_key) is not None),
                      key=lambda r: r[x_key])
        if not rows:
            continue
        xs, ys = [r[x_key] / x_scale for r in rows], [100 * r[y_key] for r in rows]
        ax.plot(xs, ys, "o-", label=method)
        for r, x, y in zip(rows, xs, ys):
            _label(ax, x, y, f"{r['budget']:.0%}", offset)
        plotted += ys
    return plotted


def _references(ax, ys: list, base: tuple, twin: tuple, twin_label: str) -> None:
    """The original (star) and the twin (square) at ``(x, accuracy)``; the accuracy axis fitted to
    the conversions and the original, so that their differences stay visible: a twin outside it
    is drawn at the edge, its accuracy written out."""
    ax.plot(base[0], 100 * base[1], "k*", markersize=12, label="original")
    _label(ax, base[0], 100 * base[1], "100%")
    ys = ys + [100 * base[1]]
    pad = max(0.5, 0.1 * (max(ys) - min(ys)))
    lo, hi = min(ys) - pad, max(ys) + pad
    ax.set_ylim(lo, hi)
    y = 100 * twin[1]
    if lo <= y <= hi:
        ax.plot(twin[0], y, "rs", markersize=8, label="separable twin (scratch)")
        _label(ax, twin[0], y, twin_label)
        return
    edge, marker, where = (lo + pad / 3, "rv", "below") if y < lo else (hi - pad / 3, "r^", "above")
    ax.plot(twin[0], edge, marker, markersize=8, label="separable twin (scratch)")
    _label(ax, twin[0], edge, f"{twin_label}: {y:.1f}% ({where} the axis)")


def accuracy_figure(results: list, base: dict, twin: dict, n_test: Optional[int] = None):
    """Test accuracy vs MACs, one panel per stage, each with its own accuracy axis (the calibrated
    and distilled accuracies differ by tenths of a percent, invisible on the data-free panel's scale).
    With ``n_test`` (test images), the title says that equal accuracies overlap."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    if n_test:
        fig.suptitle(f"test accuracy on {n_test} images moves in steps of {100 / n_test:.2f}%: equal accuracies "
                     "overlap (the report breaks ties by output error)", fontsize=10)
    share = twin["macs"] / base["macs"]
    for ax, (stage, title) in zip(axes, STAGES):
        # the data-free models at their own MACs (their allocation may differ from the calibrated one)
        ys = _curves(ax, [dict(r, macs=r.get("macs_free", r["macs"])) for r in results] if stage == "free" else results,
                     "macs", stage, 1e6)
        _references(ax, ys, (base["macs"] / 1e6, base["acc"]), (twin["macs"] / 1e6, twin["acc"]), f"twin {share:.0%}")
        ax.set_title(f"{title} (accuracy axis fitted to this panel)")
        ax.set_xlabel("MACs per image (millions); labels: share of the original's MACs")
        ax.set_ylabel("test accuracy (%)")
        ax.margins(x=0.08)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def spectra_figure(spectra: dict):
    """Energy kept vs rank, per structure and layer."""
    import torch

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
    for ax, st in zip(axes, ("depthwise", "blueprint", "spatial")):
        for name, per in spectra.items():
            cum = torch.tensor(per[st]).cumsum(0)
            ax.plot(range(1, len(cum) + 1), 100 * cum, "o-", markersize=3, label=name)
        ax.set_title(f"{st}: energy kept vs rank")
        ax.set_xlabel("rank (depth multiplier / blueprints / spatial rank)")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("% of the squared weight kept")
    axes[0].legend(fontsize=8)
    return fig


def layer_order(layer_errors: dict) -> list:
    """The layers of every series, in the model's order (first appearance), not sorted as strings."""
    names: list = []
    for rows in layer_errors.values():
        for name, *_ in rows:
            if name not in names:
                names.append(name)
    return names


def layer_error_figure(layer_errors: dict):
    """Per-layer relative output error, layers in model order; a layer left dense has no bar but
    the word "dense" (its error is not zero-by-approximation: it was not converted)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2))
    names = layer_order(layer_errors)
    width = 0.8 / max(1, len(layer_errors))
    for i, (label, rows) in enumerate(layer_errors.items()):
        by_name = {name: (structure, rank, err) for name, structure, rank, err in rows}
        xs = [j + i * width for j in range(len(names))]
        heights = [by_name[n][2] if n in by_name and by_name[n][0] != "dense" else 0.0 for n in names]
        bars = ax.bar(xs, heights, width, label=label)
        for x, n, bar in zip(xs, names, bars):
            structure, rank, _ = by_name.get(n, ("absent", None, None))
            text = "dense" if structure == "dense" else "" if structure == "absent" else \
                f"{structure}@{rank}" if rank is not None else structure
            ax.annotate(text, (x, bar.get_height()), textcoords="offset points", xytext=(0, 2), ha="center",
                        va="bottom", rotation=90, fontsize=7, color="dimgray" if structure == "dense" else "black")
    ax.set_xticks([j + (len(layer_errors) - 1) * width / 2 for j in range(len(names))], names)
    ax.set_xlabel("layer, in the model's order (\"dense\": left unconverted)")
    ax.set_ylabel("relative output error of the layer\n(on one test image's inputs to it)")
    ax.set_title("per-layer error, auto method, data-free vs calibrated")
    ax.margins(y=0.25)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def latency_figure(rows: list, results: list, base: dict, twin: dict, batch: int):
    """Left: the latency table (eager and optimized, at ``batch``); right: accuracy after
    distillation vs measured optimized time, per method, every point labelled with its budget."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, max(4.2, 0.42 * len(rows))))
    names = [r["model"] for r in rows][::-1]
    ys = range(len(names))
    left.barh([y + 0.2 for y in ys], [r["eager"] for r in rows][::-1], 0.4, label="eager", color="silver")
    left.barh([y - 0.2 for y in ys], [r["optimized"] for r in rows][::-1], 0.4, label="optimize_for_inference")
    left.set_yticks(list(ys), names)
    left.set_xlabel(f"median forward time (ms), batch of {batch}, interleaved")
    left.set_title("latency on this machine (compare ratios)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3, axis="x")
    ys = _curves(right, results, "ms", "distilled")
    _references(right, ys, (base["ms"], base["acc"]), (twin["ms"], twin["acc"]), f"twin {twin['macs'] / base['macs']:.0%}")
    right.set_xlabel(f"measured time after optimize_for_inference (ms, batch of {batch}); labels: MAC budget")
    right.set_ylabel("test accuracy after distillation (%)")
    right.set_title("accuracy vs measured time (up and left is better)")
    right.margins(x=0.1)
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_plots(out_dir: str, results: list, base: dict, twin: dict, spectra: dict, layer_errors: dict,
               latency_rows: list, batch: int, n_test: Optional[int] = None) -> list:
    """Write the demo's PNGs into ``out_dir`` (atomically); returns their names."""
    plt = _pyplot()
    files = []
    figures = (("accuracy_vs_macs.png", lambda: accuracy_figure(results, base, twin, n_test)),
               ("spectra.png", lambda: spectra_figure(spectra)),
               ("layer_error.png", lambda: layer_error_figure(layer_errors)),
               ("latency.png", lambda: latency_figure(latency_rows, results, base, twin, batch)))
    for name, build in figures:
        fig = build()
        path = os.path.join(out_dir, name)
        write_atomic(path, lambda f, fig=fig: fig.savefig(f, dpi=110, bbox_inches="tight", format="png"))
        plt.close(fig)
        files.append(name)
    return files
