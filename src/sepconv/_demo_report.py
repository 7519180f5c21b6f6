"""The words of ``sepconv demo``: the best conversion (with a documented tie-break), what is said
when calibration leaves an error higher than data-free conversion did, and ``report.md``.

A conversion row is a dict with ``method``, ``budget``, ``macs``, the test accuracies ``free``,
``calibrated``, ``distilled``, the model output errors against the original on the test set
``err_free``, ``err_calibrated``, ``err_distilled``, and the per-layer report rows ``layers_free``
and ``layers_calibrated`` (dicts with ``name``, ``structure``, ``rank``, ``macs``, ``error``).
"""

from ._demo_plots import METHODS

TIE_BREAK = ("highest test accuracy after distillation; among equal accuracies the lower output error against "
             "the original (relative, on the test set), then fewer MACs, then the method order "
             + ", ".join(METHODS))


def best_conversion(results: list, budget: float) -> tuple[dict, list]:
    """The best conversion at ``budget`` and the rows it tied with on accuracy.

    Best is the highest test accuracy after distillation; ties (equal accuracy: a few hundred
    test images make them common) are broken by the lower output error, then fewer MACs, then
    the order of :data:`METHODS` (see :data:`TIE_BREAK`).

    Returns:
        ``(best, tied)``: ``tied`` are the other rows with the same accuracy, in tie-break order.
    """
    rows = sorted((r for r in results if r["budget"] == budget),
                  key=lambda r: (-r["distilled"], r["err_distilled"], r["macs"], METHODS.index(r["method"])))
    if not rows:
        raise ValueError(f"budget: expected one of the demo's budgets, got {budget}")
    best = rows[0]
    return best, [r for r in rows[1:] if r["distilled"] == best["distilled"]]


def best_sentence(best: dict, tied: list) -> str:
    """Which conversion is best and, when it tied on accuracy, what decided."""
    text = f"the best conversion is {best['method']} ({best['distilled']:.2%} after distillation"
    if not tied:
        return text + ")"
    others = ", ".join(r["method"] for r in tied)
    if all(r["err_distilled"] > best["err_distilled"] for r in tied):
        why = (f"its lower output error, {best['err_distilled']:.4f} against "
               + ", ".join(f"{r['err_distilled']:.4f}" for r in tied))
    elif all(r["macs"] > best["macs"] for r in tied if r["err_distilled"] == best["err_distilled"]):
        why = "equal output error and fewer MACs"
    else:
        why = "equal output error and MACs, by the method order"
    return text + f", tied on accuracy with {others}; chosen by {why})"


def _struct(layer: dict) -> str:
    return layer["structure"] if layer["rank"] is None else f"{layer['structure']}@{layer['rank']}"


def layer_note(row: dict, free: dict, cal: dict, first: bool, n_calib: int) -> str:
    """Why one layer's calibrated error is higher than its data-free one."""
    head = (f"{row['method']} {row['budget']:.0%}, {cal['name']}: the calibrated layer's error is {cal['error']:.3f}, "
            f"higher than data-free ({free['error']:.3f}), ")
    if (cal["structure"], cal["rank"]) != (free["structure"], free["rank"]) and cal["macs"] < free["macs"]:
        return head + (f"because calibration allocates the MACs by each layer's effect on the outputs and gave this "
                       f"layer fewer ({cal['macs']:,} for {_struct(cal)} against {free['macs']:,} for {_struct(free)}), "
                       "spending them where they lower the error more.")
    if (cal["structure"], cal["rank"]) != (free["structure"], free["rank"]):
        return head + (f"with {_struct(cal)} instead of {_struct(free)}: calibration chose it by the layer's output "
                       "error on the calibration images (and refit it to the converted model's own inputs), while the "
                       "error shown is on one test image's inputs to the original layer.")
    if first:
        return head + (f"with the same {_struct(cal)}: its last factor was fit by least squares on the {n_calib} "
                       "calibration images, and the error shown is on one test image, which the fit did not see.")
    return head + (f"with the same {_struct(cal)}: its last factor was refit to reproduce the original layer's outputs "
                   "from the converted model's own inputs, which carry the earlier layers' errors, so on the "
                   "original's inputs (what the layer plot measures) it is further off; the whole model's output "
                   f"error is {row['err_calibrated']:.4f} calibrated against {row['err_free']:.4f} data-free.")


def calibration_notes(results: list, n_calib: int, methods: tuple = ("auto",)) -> list:
    """Every place where calibration left an error higher than data-free conversion did, in words:
    per layer for ``methods`` (the layers plotted), and per model for every method."""
    notes = []
    for row in results:
        if row["method"] in methods:
            free = {l["name"]: l for l in row["layers_free"]}
            converted = [l for l in row["layers_calibrated"] if l["structure"] != "dense"]
            for i, cal in enumerate(converted):
                f = free.get(cal["name"])
                if f is not None and f["structure"] != "dense" and cal["error"] > f["error"]:
                    notes.append(layer_note(row, f, cal, i == 0, n_calib))
        if row["err_calibrated"] > row["err_free"] or row["calibrated"] < row["free"]:
            notes.append(f"{row['method']} {row['budget']:.0%}: calibrated, the model's output error is "
                         f"{row['err_calibrated']:.4f} and its accuracy {row['calibrated']:.2%}, against "
                         f"{row['err_free']:.4f} and {row['free']:.2%} data-free: "
                         "calibration fits each layer, in turn, to the original layer's outputs on the "
                         f"{n_calib} calibration images, which does not guarantee the smallest error of the whole "
                         "model on the test images.")
    return notes


def latency_lines(lat: dict) -> list:
    """The latency section of report.md: how it was measured, the table, one sentence per row."""
    b, load = lat["batch"], lat["load"]
    busy = "" if load is None else f" The machine's load average was {load:.1f} on {lat['cores']} cores while timing."
    lines = [
        "## Latency",
        "",
        f"Median forward times, all models interleaved round by round ({lat['rounds']} rounds; batch 1: "
        f"{5 * lat['rounds']}), on **one thread** (the rest of the demo used {lat['demo_threads']}): this model is so "
        "small that with several threads each layer is a tiny parallel region, and on a machine shared with other "
        "work every region waits for a descheduled thread, which measures the load, not the model." + busy,
        "",
        f"The main columns use a **batch of {b} test images**, where the MACs matter; at batch 1 a 16x16 image is "
        "microseconds of arithmetic and the time is mostly per-call overhead (shown for comparison). *optimized* = "
        "after `sepconv.optimize_for_inference(model, batch)` with its default candidates (BatchNorm folded, "
        "channels_last, fused kernels where they measure faster, TorchScript), one optimization per batch size; "
        "*path* is what it chose. Compare ratios: absolute times vary from run to run.",
        "",
        f"| model | MACs | batch 1, optimized (ms) | batch {b}, eager (ms) | batch {b}, optimized (ms) | path | "
        "optimized vs original | why |",
        "|---|---:|---:|---:|---:|---|---:|---|",
    ]
    base = lat["rows"][0]
    for r in lat["rows"]:
        lines.append(f"| {r['model']} | {r['macs']:,} | {r['batch1']:.3f} | {r['eager']:.2f} | {r['optimized']:.2f} | "
                     f"{r['backend']} | {base['optimized'] / r['optimized']:.2f}x | {r['why']} |")
    lines += ["", f"Accuracy against measured time (right panel of the plot; batch {b}, optimized, one thread):", "",
              "| conversion | MACs | accuracy after distillation | output error | optimized (ms) | vs original |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in lat["results"]:
        lines.append(f"| {r['method']} {r['budget']:.0%} | {r['macs']:,} | {r['distilled']:.2%} | {r['err_distilled']:.4f} | "
                     f"{r['ms']:.2f} | {base['optimized'] / r['ms']:.2f}x |")
    return lines + ["", "![latency](latency.png)", ""]


def report_md(ctx: dict) -> str:
    """report.md from the demo's results (``ctx``: see ``sepconv.demo.run_demo``)."""
    cfg, base, twin, results = ctx["cfg"], ctx["base"], ctx["twin"], ctx["results"]
    best, tied = best_conversion(results, min(r["budget"] for r in results))
    notes = ctx["notes"] or ["Calibration lowered the output error of every converted model and of every plotted layer."]
    lines = [
        "# sepconv demo report",
        "",
        f"Machine: {ctx['machine']}. Seed {ctx['seed']}{', --quick' if ctx['quick'] else ''}; ran in {ctx['elapsed']:.0f} s.",
        "",
        "## 1. The tutorials' worked examples (see docs/worked-examples.md in the sepconv repository)",
        "",
        "| example | kind | standard MACs | separable MACs | ratio | the tutorial says |",
        "|---|---|---:|---:|---:|---|",
        *[f"| {r['example']} | {r['kind']} | {r['standard']:,} | {r['separable']:,} | {r['ratio']:.2%} | {r['tutorial']} |"
          for r in ctx["examples"]],
        "",
        "## 2-5. Digits: original, converted, and separable twin",
        "",
        f"A standard CNN (width {cfg.width}) was trained for {cfg.epochs} epochs on {ctx['n_train']} real handwritten "
        f"digits (scikit-learn's bundled 8x8 images, upsampled to 16x16) and tested on {ctx['n_test']}. It was then "
        "converted by `sepconv.convert` with each method at 50% and 25% of its MACs: *data-free* uses only the weights "
        "(optimal truncated SVDs, ranks allocated globally under the budget); *calibrated* allocates ranks by output "
        f"error and refits each layer's last factor by least squares on {cfg.calibrate} training images; *distilled* "
        f"then trains the calibrated model for {cfg.distill_epochs} epoch against the original's soft outputs. The "
        f"separable twin has the same layout with depthwise separable layers, trained from scratch for "
        f"{cfg.twin_epochs} epochs.",
        "",
        *ctx["table_lines"],
        "",
        f"At {best['budget']:.0%} of the MACs {best_sentence(best, tied)}, against {base['acc']:.2%} for the original "
        f"and {twin['acc']:.2%} for the twin trained from scratch. (Best: {TIE_BREAK}.) Data-free conversion loses "
        "most at small budgets, because trained filters are far from separable (see the spectra); a few hundred "
        "calibration images recover most of it.",
        "",
        "Each panel has its own accuracy axis; every point is labelled with its share of the original's MACs.",
        "",
        "![accuracy vs MACs](accuracy_vs_macs.png)",
        "",
        "### Where calibration did not lower the error",
        "",
        *[f"- {n}" for n in notes],
        "",
        "## Spectra: how separable are the learned filters?",
        "",
        "Share of the squared weight kept by the best rank-1 factorization of each structure (1.0 = exactly "
        "separable):",
        "",
        "| layer | depthwise (d=1) | blueprint (r=1) | spatial (r=1) |",
        "|---|---:|---:|---:|",
        *[f"| {n} | {p['depthwise'][0]:.3f} | {p['blueprint'][0]:.3f} | {p['spatial'][0]:.3f} |"
          for n, p in ctx["spectra"].items()],
        "",
        "![spectra](spectra.png)",
        "",
        "Per-layer relative output error of the auto conversions, layers in the model's order, each bar labelled "
        "with the structure chosen; a layer left dense has no bar and reads *dense* (it was not converted).",
        "",
        "![per-layer error](layer_error.png)",
        "",
        *latency_lines(ctx["latency"]),
    ]
    return "\n".join(lines)
