"""``sepconv demo``: the whole story, on real data (scikit-learn's bundled digits), offline.

1. the tutorials' worked examples (15x15x3 and 7x7x3 inputs), counted by running the layers;
2. train a standard CNN; accuracy, MACs, params;
3. how separable its learned filters are (singular value spectra per structure);
4. convert it with each method at 50% and 25% of the MACs: accuracy data-free, with calibration
   refinement, and after a short distillation;
5. train the separable twin from scratch;
6. latency of original vs converted vs twin (and the original and a converted model after
   ``optimize_for_inference``), interleaved, medians;
7. a rich summary, and ``report.md`` + PNG plots in the output directory.
"""

import copy
import os
import platform
import time
from dataclasses import dataclass

import torch
from torch import nn

from ._io import check_output_dir, write_atomic
from ._timing import interleaved
from .cli import DEMO_FILES
from .cli import console as make_console
from .convert import convert
from .cost import profile
from .decompose import spectrum
from .optimize import optimize_for_inference
from .layers import SeparableConv2d, SpatiallySeparableConv2d

METHODS = ("depthwise", "blueprint", "spatial", "auto")
BUDGETS = (0.5, 0.25)


def tutorial_examples() -> list[dict]:
    """The separable-convolution tutorials' worked examples (see docs/worked-examples.md), counted by
    profiling real layers on real-size inputs; ``tutorial`` is what the tutorial's text counts."""
    rows = []
    cases = [
        ("15x15x3, 10 kernels 3x3, no padding", (1, 3, 15, 15), 10, 0, "depthwise", "45,630 vs 9,633"),
        ("15x15x1, 1 kernel 3x3, no padding", (1, 1, 15, 15), 1, 0, "spatial", "1,521 vs 1,170 (slip: 1,092)"),
        ("7x7x3 -> 256, no padding", (1, 3, 7, 7), 256, 0, "depthwise", "338,688 vs 23,169 (mixes sizes)"),
        ("7x7x3 -> 256, 'same' padding", (1, 3, 7, 7), 256, "same", "depthwise", "338,688 vs 23,169 (mixes sizes)"),
    ]
    for label, shape, n, padding, kind, said in cases:
        dense = nn.Conv2d(shape[1], n, 3, padding=1 if padding == "same" else 0, bias=False)
        if kind == "depthwise":
            sep = SeparableConv2d(shape[1], n, 3, padding=padding, bias=False)
        else:
            sep = SpatiallySeparableConv2d(shape[1], n, 3, rank=1, padding=padding, bias=False)
        d, s = profile(dense, shape).macs, profile(sep, shape).macs
        rows.append(dict(example=label, kind=kind, standard=d, separable=s, ratio=s / d, tutorial=said))
    return rows


@dataclass
class _Config:
    width: int
    epochs: int
    twin_epochs: int
    calibrate: int
    distill_epochs: int
    distill_samples: int
    latency_rounds: int


def _config(quick: bool) -> _Config:
    if quick:
        return _Config(width=16, epochs=4, twin_epochs=4, calibrate=64, distill_epochs=1, distill_samples=256,
                       latency_rounds=7)
    return _Config(width=32, epochs=6, twin_epochs=8, calibrate=256, distill_epochs=1, distill_samples=1347,
                   latency_rounds=25)


def _spectra(model: nn.Module) -> dict:
    """Normalized singular values per eligible conv and structure (energy share per rank)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.groups == 1 and m.kernel_size != (1, 1) and m.in_channels > 1:
            w = m.weight.detach().double()
            out[name] = {}
            for st in ("depthwise", "blueprint", "spatial"):
                s = spectrum(w, st)
                energy = (s**2).sum(0) if s.dim() > 1 else s**2
                energy = energy / energy.sum()
                out[name][st] = energy.tolist()
    return out


def _plots(out_dir: str, results: list, base: dict, twin: dict, spectra: dict, layer_errors: dict, latency: dict) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []

    def save(fig, name):
        path = os.path.join(out_dir, name)
        write_atomic(path, lambda f: fig.savefig(f, dpi=110, bbox_inches="tight", format="png"))
        plt.close(fig)
        files.append(name)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    for ax, stage, title in zip(axes, ("free", "calibrated", "distilled"),
                                ("data-free", "with calibration", "after distillation")):
        for method in METHODS:
            pts = sorted((r["macs"], r[stage]) for r in results if r["method"] == method)
            ax.plot([p[0] / 1e6 for p in pts], [100 * p[1] for p in pts], "o-", label=method)
        ax.plot(base["macs"] / 1e6, 100 * base["acc"], "k*", markersize=12, label="original")
        ax.plot(twin["macs"] / 1e6, 100 * twin["acc"], "rs", markersize=8, label="separable twin (scratch)")
        ax.set_title(title)
        ax.set_xlabel("MACs per image (millions)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[-1].legend(fontsize=8)
    save(fig, "accuracy_vs_macs.png")

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
    save(fig, "spectra.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    names = sorted({n for v in layer_errors.values() for n in v})
    width = 0.8 / max(1, len(layer_errors))
    for i, (label, errs) in enumerate(layer_errors.items()):
        ax.bar([j + i * width for j in range(len(names))], [errs.get(n, 0.0) for n in names], width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names)
    ax.set_ylabel("relative output error of the layer")
    ax.set_title("per-layer error, auto method")
    ax.legend(fontsize=8)
    save(fig, "layer_error.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(list(latency), list(latency.values()))
    ax.set_xlabel("median forward time (ms), batch of 64, interleaved")
    ax.set_title("latency on this machine (noisy: compare ratios)")
    save(fig, "latency.png")
    return files


def run_demo(args) -> int:
    """Run the demo; returns the exit status."""
    from rich.console import Console
    from rich.table import Table
    from torch.utils.data import Subset

    from .data import DigitsDataset
    from .models import digits_cnn, digits_separable_cnn
    from .train import distill, evaluate, save_atomic, train

    console = make_console() if Console().is_terminal else make_console(width=120)
    cfg = _config(args.quick)
    out_dir = args.output
    check_output_dir(out_dir, "--output", DEMO_FILES)  # a bad folder is reported now, not after the training
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    # 1. the tutorials' worked examples
    examples = tutorial_examples()
    t = Table(title="1. The tutorials' worked examples, counted by running sepconv's layers (MACs = multiplications)")
    for col in ("example", "separable kind", "standard", "separable", "ratio", "the tutorial says"):
        t.add_column(col, justify="right" if col in ("standard", "separable", "ratio") else "left")
    for r in examples:
        t.add_row(r["example"], r["kind"], f"{r['standard']:,}", f"{r['separable']:,}", f"{r['ratio']:.2%}", r["tutorial"])
    console.print(t)

    # 2. a standard CNN on real digits
    train_set, test_set = DigitsDataset("train", 16, seed=args.seed), DigitsDataset("test", 16, seed=args.seed)
    x_test = test_set.tensors()[0]
    shape = (1, 1, 16, 16)
    console.print(f"\n[bold]2. Training a standard CNN[/] on {len(train_set)} real 8x8 digits (upsampled to 16x16), "
                  f"testing on {len(test_set)}")
    model = digits_cnn(cfg.width)
    train(model, train_set, epochs=cfg.epochs, seed=args.seed, progress=True)
    base_cost = profile(model, shape)
    base = dict(acc=evaluate(model, test_set), macs=base_cost.macs, params=base_cost.params)
    console.print(f"   test accuracy {base['acc']:.2%}, {base['macs']:,} MACs, {base['params']:,} params per image")
    save_atomic(model, os.path.join(out_dir, "digits_cnn.pt"))

    # 3. spectra
    spectra = _spectra(model)
    console.print("\n[bold]3. How separable are the learned filters?[/] energy kept by the best rank-1 factorization:")
    for name, per in spectra.items():
        console.print(f"   {name}: " + ", ".join(f"{st} {100 * per[st][0]:.1f}%" for st in per))

    # 4. conversions
    console.print("\n[bold]4. Converting[/] with each method and budget: data-free, calibrated "
                  f"({cfg.calibrate} training images), distilled ({cfg.distill_epochs} epoch)")
    calib = train_set.tensors(cfg.calibrate)[0]
    distill_set = Subset(train_set, range(min(cfg.distill_samples, len(train_set))))
    results, layer_errors, kept = [], {}, {}
    for budget in BUDGETS:
        for method in METHODS:
            free, rep_free = convert(model, method=method, budget=budget, example_input=x_test[:1])
            cal, rep_cal = convert(model, method=method, budget=budget, example_input=x_test[:1], calibration_data=calib)
            acc_free, acc_cal = evaluate(free, test_set), evaluate(cal, test_set)
            distill(cal, model, distill_set, epochs=cfg.distill_epochs, seed=args.seed, progress=False)
            acc_dist = evaluate(cal, test_set)
            row = dict(method=method, budget=budget, macs=rep_cal.macs_after, params=rep_cal.params_after,
                       free=acc_free, calibrated=acc_cal, distilled=acc_dist,
                       structures=", ".join(f"{r.structure}{'' if r.rank is None else f'@{r.rank}'}" for r in rep_cal.layers))
            results.append(row)
            console.print(f"   {method:9s} {budget:.0%}: {row['macs']:,} MACs; accuracy {acc_free:.2%} -> "
                          f"{acc_cal:.2%} -> {acc_dist:.2%}   [{row['structures']}]")
            if method == "auto":
                kept[f"auto {budget:.0%}"] = cal
                layer_errors[f"auto {budget:.0%} data-free"] = {r.name: r.output_error or 0.0 for r in rep_free.layers}
                layer_errors[f"auto {budget:.0%} calibrated"] = {r.name: r.output_error or 0.0 for r in rep_cal.layers}

    # 5. the separable twin from scratch
    console.print(f"\n[bold]5. Training the separable twin from scratch[/] ({cfg.twin_epochs} epochs)")
    twin_model = digits_separable_cnn(cfg.width)
    train(twin_model, train_set, epochs=cfg.twin_epochs, seed=args.seed, progress=True)
    twin_cost = profile(twin_model, shape)
    twin = dict(acc=evaluate(twin_model, test_set), macs=twin_cost.macs, params=twin_cost.params)
    console.print(f"   test accuracy {twin['acc']:.2%}, {twin['macs']:,} MACs, {twin['params']:,} params")

    # 6. latency
    console.print(f"\n[bold]6. Latency[/], batch of 64, {cfg.latency_rounds} interleaved rounds, medians "
                  f"({torch.get_num_threads()} threads; this machine is noisy, compare ratios)")
    batch = x_test[:64]
    models = {"original": model, **kept, "separable twin": twin_model,
              # the fused kernel's one-time compile (~1 min) is not worth it for these small models
              "original, optimized": optimize_for_inference(model, batch, rounds=3, candidates=("eager", "torchscript")),
              "auto 25%, optimized": optimize_for_inference(kept["auto 25%"], batch, rounds=3,
                                                            candidates=("eager", "torchscript"))}
    copies = {k: copy.deepcopy(m).eval() for k, m in models.items()}
    latency = interleaved({k: (lambda m=m: m(batch)) for k, m in copies.items()}, cfg.latency_rounds, warmup=1)
    for k, v in latency.items():
        console.print(f"   {k:20s} {v:7.2f} ms  ({latency['original'] / v:.2f}x vs original)")

    # 7. summary
    summary = Table(title="Summary: digits test accuracy vs cost (MACs per 16x16 image)")
    cols = ("model", "budget", "MACs", "params", "data-free", "calibrated", "distilled")
    for col in cols:
        summary.add_column(col, justify="left" if col == "model" else "right")
    lines = ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]

    def add(cells):
        summary.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")

    add(["original (dense)", "100%", f"{base['macs']:,}", f"{base['params']:,}", f"{base['acc']:.2%}", "", ""])
    for r in results:
        add([f"converted: {r['method']}", f"{r['budget']:.0%}", f"{r['macs']:,}", f"{r['params']:,}",
             f"{r['free']:.2%}", f"{r['calibrated']:.2%}", f"{r['distilled']:.2%}"])
    add(["separable twin (scratch)", f"{twin['macs'] / base['macs']:.0%}", f"{twin['macs']:,}", f"{twin['params']:,}",
         f"{twin['acc']:.2%}", "", ""])
    console.print()
    console.print(summary)

    plots = _plots(out_dir, results, base, twin, spectra, layer_errors, latency)
    elapsed = time.perf_counter() - started
    report = _report_md(args, cfg, examples, base, twin, results, spectra, latency, lines, plots, elapsed, len(train_set),
                        len(test_set))
    path = os.path.join(out_dir, "report.md")
    write_atomic(path, lambda f: f.write(report.encode("utf-8")))
    console.print(f"\nWrote {path}, {len(plots)} plots and digits_cnn.pt in {out_dir}/ ({elapsed:.0f} s). "
                  f"Try: sepconv convert {os.path.join(out_dir, 'digits_cnn.pt')} --input 1x1x16x16 --budget 0.3 "
                  "--calibrate 256 --output small.pt")
    return 0


def _report_md(args, cfg, examples, base, twin, results, spectra, latency, table_lines, plots, elapsed, n_train, n_test) -> str:
    best = max(results, key=lambda r: (r["budget"] == 0.25, r["distilled"]))
    lines = [
        "# sepconv demo report",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads. Seed {args.seed}{', --quick' if args.quick else ''}; ran in {elapsed:.0f} s.",
        "",
        "## 1. The tutorials' worked examples (see docs/worked-examples.md in the sepconv repository)",
        "",
        "| example | kind | standard MACs | separable MACs | ratio | the tutorial says |",
        "|---|---|---:|---:|---:|---|",
        *[f"| {r['example']} | {r['kind']} | {r['standard']:,} | {r['separable']:,} | {r['ratio']:.2%} | {r['tutorial']} |"
          for r in examples],
        "",
        "## 2-5. Digits: original, converted, and separable twin",
        "",
        f"A standard CNN (width {cfg.width}) was trained for {cfg.epochs} epochs on {n_train} real handwritten digits "
        f"(scikit-learn's bundled 8x8 images, upsampled to 16x16) and tested on {n_test}. It was then converted by "
        "`sepconv.convert` with each method at 50% and 25% of its MACs: *data-free* uses only the weights (optimal "
        "truncated SVDs, ranks allocated globally under the budget); *calibrated* allocates ranks by output error "
        f"and refits each layer's last factor by least squares on {cfg.calibrate} training images; *distilled* then "
        f"trains the calibrated model for {cfg.distill_epochs} epoch against the original's soft outputs. The "
        f"separable twin has the same layout with depthwise separable layers, trained from scratch for "
        f"{cfg.twin_epochs} epochs.",
        "",
        *table_lines,
        "",
        f"At 25% of the MACs the best conversion ({best['method']}) keeps {best['distilled']:.2%} accuracy after "
        f"distillation, against {base['acc']:.2%} for the original and {twin['acc']:.2%} for the twin trained from "
        "scratch. Data-free conversion loses most at small budgets, because trained filters are far from separable "
        "(see the spectra); a few hundred calibration images recover most of it.",
        "",
        "![accuracy vs MACs](accuracy_vs_macs.png)",
        "",
        "## Spectra: how separable are the learned filters?",
        "",
        "Share of the squared weight kept by the best rank-1 factorization of each structure (1.0 = exactly "
        "separable):",
        "",
        "| layer | depthwise (d=1) | blueprint (r=1) | spatial (r=1) |",
        "|---|---:|---:|---:|",
        *[f"| {n} | {p['depthwise'][0]:.3f} | {p['blueprint'][0]:.3f} | {p['spatial'][0]:.3f} |" for n, p in spectra.items()],
        "",
        "![spectra](spectra.png)",
        "",
        "![per-layer error](layer_error.png)",
        "",
        "## Latency",
        "",
        "Median forward time for a batch of 64 test images, candidates interleaved round by round; "
        "*optimized* = after `sepconv.optimize_for_inference` (BatchNorm folded, channels_last, fastest measured path) "
        f"({cfg.latency_rounds} rounds). Timings on this machine are noisy (2x run to run): compare the ratios, "
        "not the absolute numbers.",
        "",
        "| model | ms | speed-up vs original |",
        "|---|---:|---:|",
        *[f"| {k} | {v:.2f} | {latency['original'] / v:.2f}x |" for k, v in latency.items()],
        "",
        "![latency](latency.png)",
        "",
    ]
    return "\n".join(lines)
