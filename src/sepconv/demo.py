"""``sepconv demo``: the whole story, on real data (scikit-learn's bundled digits), offline.

1. the tutorials' worked examples (15x15x3 and 7x7x3 inputs), counted by running the layers;
2. train a standard CNN; accuracy, MACs, params;
3. how separable its learned filters are (singular value spectra per structure);
4. convert it with each method at 50% and 25% of the MACs: accuracy data-free, with calibration
   refinement, and after a short distillation;
5. train the separable twin from scratch;
6. latency of the original, every conversion and the twin, eager and after
   ``optimize_for_inference``, at a batch of 64 and at batch 1, on one thread, interleaved,
   medians, each row explained (:mod:`sepconv._demo_latency`);
7. a rich summary, and ``report.md`` (:mod:`sepconv._demo_report`) + PNG plots
   (:mod:`sepconv._demo_plots`) in the output directory.
"""

import os
import platform
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ._io import check_output_dir, write_atomic
from .cli import DEMO_FILES
from .cli import console as make_console
from .convert import convert
from ._demo_plots import METHODS
from .cost import profile
from .decompose import spectrum
from .layers import SeparableConv2d, SpatiallySeparableConv2d

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
    latency_batch: int = 64  # a batch where the MACs matter (batch 1 is mostly per-call overhead)


def _config(quick: bool) -> _Config:
    if quick:
        # the same network as the full demo, trained and calibrated on less: at width 16 the convolutions are
        # so small (16 -> 32 channels of 16x16) that per-call work, not MACs, sets the time, and the latency
        # table would tell another story than the full demo's. The latency table takes ~0.3 s a round: 25
        # rounds, as in the full demo (7 let a loaded machine's noise put a model with 7x fewer MACs at the
        # original's time)
        return _Config(width=32, epochs=4, twin_epochs=4, calibrate=64, distill_epochs=1, distill_samples=256,
                       latency_rounds=25)
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


def _layers(report) -> list:
    return [dict(name=r.name, structure=r.structure, rank=r.rank, macs=r.macs_after, error=r.output_error or 0.0)
            for r in report.layers]


def _output_error(model: nn.Module, reference: torch.Tensor, x: torch.Tensor) -> float:
    """Relative error of ``model``'s outputs on ``x`` against the original's ``reference``."""
    model.eval()
    with torch.no_grad():
        return float((model(x) - reference).norm() / reference.norm())


def _convert_all(model, cfg, train_set, test_set, seed, console) -> tuple:
    """Section 4: every method and budget, data-free, calibrated and distilled."""
    from rich.markup import escape
    from torch.utils.data import Subset

    from .train import distill, evaluate

    x_test = test_set.tensors()[0]
    with torch.no_grad():
        reference = model.eval()(x_test)
    calib = train_set.tensors(cfg.calibrate)[0]
    distill_set = Subset(train_set, range(min(cfg.distill_samples, len(train_set))))
    results, kept = [], {}
    for budget in BUDGETS:
        for method in METHODS:
            with warnings.catch_warnings():  # the tables show every model's output error (and accuracy)
                warnings.filterwarnings("ignore", "convert: the converted model's output relative error", RuntimeWarning)
                free, rep_free = convert(model, method=method, budget=budget, example_input=x_test[:1])
                cal, rep_cal = convert(model, method=method, budget=budget, example_input=x_test[:1],
                                       calibration_data=calib)
            # the data-free and the calibrated conversion may choose different structures or ranks:
            # each keeps its own MACs and params
            row = dict(method=method, budget=budget, macs=rep_cal.macs_after, params=rep_cal.params_after,
                       macs_free=rep_free.macs_after, params_free=rep_free.params_after,
                       free=evaluate(free, test_set), calibrated=evaluate(cal, test_set),
                       err_free=_output_error(free, reference, x_test), err_calibrated=_output_error(cal, reference, x_test),
                       layers_free=_layers(rep_free), layers_calibrated=_layers(rep_cal),
                       structures=", ".join(f"{r.structure}{'' if r.rank is None else f'@{r.rank}'}" for r in rep_cal.layers))
            distill(cal, model, distill_set, epochs=cfg.distill_epochs, seed=seed, progress=False)
            row.update(distilled=evaluate(cal, test_set), err_distilled=_output_error(cal, reference, x_test))
            results.append(row)
            kept[f"{method} {budget:.0%}"] = cal
            other = (f" (data-free: {row['macs_free']:,} MACs, {row['params_free']:,} params)"
                     if (row["macs_free"], row["params_free"]) != (row["macs"], row["params"]) else "")
            console.print(f"   {method:9s} {budget:.0%}: {row['macs']:,} MACs{other}; accuracy {row['free']:.2%} -> "
                          f"{row['calibrated']:.2%} -> {row['distilled']:.2%}   {escape('[' + row['structures'] + ']')}")
    return results, kept


def _layer_errors(results: list) -> dict:
    """The auto conversions' per-layer errors, data-free and calibrated, in the model's order."""
    out = {}
    for r in results:
        if r["method"] == "auto":
            for stage, key in (("data-free", "layers_free"), ("calibrated", "layers_calibrated")):
                out[f"auto {r['budget']:.0%} {stage}"] = [(l["name"], l["structure"], l["rank"], l["error"]) for l in r[key]]
    return out


def _latency(console, cfg, model, kept, twin_model, results, base, twin, x) -> dict:
    """Section 6: every model, eager and optimized, on one thread; each row explained."""
    from rich.table import Table

    from . import _demo_latency as L

    demo_threads, load = torch.get_num_threads(), L.load_average()
    console.print(f"\n[bold]6. Latency[/], batch of {cfg.latency_batch} (and 1), {cfg.latency_rounds} interleaved rounds, "
                  f"medians, on one thread (the demo used {demo_threads}; see the report for why)")
    by_name = {f"{r['method']} {r['budget']:.0%}": r for r in results}
    entries = [dict(model="original", module=model, macs=base["macs"], layers=None)]
    entries += [dict(model=k, module=m, macs=by_name[k]["macs"], layers=by_name[k]["layers_calibrated"]) for k, m in kept.items()]
    entries.append(dict(model="separable twin", module=twin_model, macs=twin["macs"], layers=None))
    with L.threads(1):
        rows = L.measure(entries, x, cfg.latency_batch, cfg.latency_rounds)
        original = rows[0]
        for r in rows[1:]:
            if r["layers"] is not None and r["optimized"] > original["optimized"]:
                r["slowest"] = L.slowest_layer(model, r["module"], r["layers"], x[:cfg.latency_batch], cfg.latency_rounds)
    for r in rows:
        r["why"] = L.explain(r, original, cfg.latency_batch)
    base["ms"], twin["ms"] = original["optimized"], rows[-1]["optimized"]
    for r in results:
        r["ms"] = next(row["optimized"] for row in rows if row["model"] == f"{r['method']} {r['budget']:.0%}")
    t = Table(title="Latency (ms, medians, one thread); speed-up of the optimized model vs the optimized original")
    for col in ("model", "MACs", "batch 1, optimized", f"batch {cfg.latency_batch}, eager", "optimized", "path", "speed-up"):
        t.add_column(col, justify="left" if col in ("model", "path") else "right")
    for r in rows:
        t.add_row(r["model"], f"{r['macs']:,}", f"{r['batch1']:.3f}", f"{r['eager']:.2f}", f"{r['optimized']:.2f}",
                  r["backend"], f"{original['optimized'] / r['optimized']:.2f}x")
    console.print(t)
    for r in rows:
        console.print(f"   {r['model']}: {r['why']}")
    return dict(rows=[{k: v for k, v in r.items() if k != "module"} for r in rows], batch=cfg.latency_batch,
                rounds=cfg.latency_rounds, demo_threads=demo_threads, load=load, cores=os.cpu_count(), results=results)


def _summary(console, base: dict, twin: dict, results: list) -> list:
    """Section 7: the summary table (printed; returned as markdown lines) and the best conversion."""
    from rich.table import Table

    from ._demo_report import TIE_BREAK, best_conversion, best_sentence

    note = ("MACs and params: the calibrated (and distilled) model's; a data-free conversion that chose other "
            "structures or ranks gives its own in brackets")
    summary = Table(title="Summary: digits test accuracy vs cost (MACs per 16x16 image)", caption=note)
    cols = ("model", "budget", "MACs", "params", "data-free", "calibrated", "distilled")
    for col in cols:
        summary.add_column(col, justify="left" if col == "model" else "right")
    lines = ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]

    def add(cells):
        summary.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")

    add(["original (dense)", "100%", f"{base['macs']:,}", f"{base['params']:,}", f"{base['acc']:.2%}", "", ""])
    for r in results:
        free = f"{r['free']:.2%}"
        if (r.get("macs_free"), r.get("params_free")) not in ((None, None), (r["macs"], r["params"])):
            free += f" ({r['macs_free']:,} MACs, {r['params_free']:,} params)"  # its own allocation
        add([f"converted: {r['method']}", f"{r['budget']:.0%}", f"{r['macs']:,}", f"{r['params']:,}",
             free, f"{r['calibrated']:.2%}", f"{r['distilled']:.2%}"])
    add(["separable twin (scratch)", f"{twin['macs'] / base['macs']:.0%}", f"{twin['macs']:,}", f"{twin['params']:,}",
         f"{twin['acc']:.2%}", "", ""])
    lines += ["", note + "."]
    console.print()
    console.print(summary)
    best, tied = best_conversion(results, min(BUDGETS))
    console.print(f"At {min(BUDGETS):.0%} of the MACs {best_sentence(best, tied)}. (Best: {TIE_BREAK}.)")
    return lines


def _print_examples(console) -> list:
    """Section 1: the tutorials' worked examples, printed; returns their rows."""
    from rich.table import Table

    examples = tutorial_examples()
    t = Table(title="1. The tutorials' worked examples, counted by running sepconv's layers (MACs = multiplications)")
    for col in ("example", "separable kind", "standard", "separable", "ratio", "the tutorial says"):
        t.add_column(col, justify="right" if col in ("standard", "separable", "ratio") else "left")
    for r in examples:
        t.add_row(r["example"], r["kind"], f"{r['standard']:,}", f"{r['separable']:,}", f"{r['ratio']:.2%}", r["tutorial"])
    console.print(t)
    return examples


def run_demo(args) -> int:
    """Run the demo; returns the exit status."""
    from rich.console import Console

    from ._demo_plots import save_plots
    from ._demo_report import calibration_notes, report_md
    from .data import DigitsDataset
    from .models import digits_cnn, digits_separable_cnn
    from .train import evaluate, save_atomic, train

    console = make_console() if Console().is_terminal else make_console(width=120)
    cfg = _config(args.quick)
    out_dir = args.output
    check_output_dir(out_dir, "--output", DEMO_FILES)  # a bad folder is reported now, not after the training
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    # 1. the tutorials' worked examples
    examples = _print_examples(console)

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
    results, kept = _convert_all(model, cfg, train_set, test_set, args.seed, console)

    # 5. the separable twin from scratch
    console.print(f"\n[bold]5. Training the separable twin from scratch[/] ({cfg.twin_epochs} epochs)")
    twin_model = digits_separable_cnn(cfg.width)
    train(twin_model, train_set, epochs=cfg.twin_epochs, seed=args.seed, progress=True)
    twin_cost = profile(twin_model, shape)
    twin = dict(acc=evaluate(twin_model, test_set), macs=twin_cost.macs, params=twin_cost.params)
    console.print(f"   test accuracy {twin['acc']:.2%}, {twin['macs']:,} MACs, {twin['params']:,} params")

    # 6. latency
    latency = _latency(console, cfg, model, kept, twin_model, results, base, twin, x_test)

    # 7. summary
    lines = _summary(console, base, twin, results)
    notes = calibration_notes(results, cfg.calibrate)
    for note in notes:
        console.print(f"Calibration: {note}")

    plots = save_plots(out_dir, results, base, twin, spectra, _layer_errors(results), latency["rows"], cfg.latency_batch,
                       len(test_set))
    elapsed = time.perf_counter() - started
    report = report_md(dict(
        cfg=cfg, base=base, twin=twin, results=results, examples=examples, spectra=spectra, table_lines=lines,
        notes=notes, latency=latency, seed=args.seed, quick=args.quick, elapsed=elapsed, n_train=len(train_set),
        n_test=len(test_set), machine=f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                                      f"{torch.get_num_threads()} threads"))
    path = os.path.join(out_dir, "report.md")
    write_atomic(path, lambda f: f.write(report.encode("utf-8")))
    console.print(f"\nWrote {path}, {len(plots)} plots and digits_cnn.pt in {out_dir}/ ({elapsed:.0f} s). "
                  f"Try: sepconv convert {os.path.join(out_dir, 'digits_cnn.pt')} --input 1x1x16x16 --budget 0.3 "
                  "--calibrate 256 --output small.pt2")
    return 0
