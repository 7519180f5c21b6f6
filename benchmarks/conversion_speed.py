"""Conversion that saves time: output error against *measured* latency, MAC budgets vs time budgets.

For ResNet-18, a ResNet-50-style and a MobileNetV2-style network (torchvision's layouts, written
in tests/architectures.py, random weights with randomized BatchNorm statistics) and the digits
CNN (trained here on scikit-learn's digits), at batch 1 and 8 with 2 threads:

- the original, optimized (``sepconv.optimize_for_inference``);
- ``convert(cost="macs")`` and ``convert(cost="latency")`` at several budgets, each optimized;

all converted models of one network and batch are timed with the optimized original in one
interleaved run (blocks of back-to-back warm calls, medians), so each point is a measured ratio
and the points of one network share the machine's state. The output error
is the model output's relative error against the original on the example batch (random normal
images; real test digits for the digits CNN).

    python benchmarks/conversion_speed.py [--quick] [--models resnet18,digits] [--batches 1,8]
        [--budgets 0.5,0.33] [--costs macs,latency] [--output DIR | --update-results]

writes conversion_speed.{json,md} to benchmarks/results/latest/ (not tracked by git) or to
--output DIR; --update-results writes the tracked benchmarks/results/ files and the README table.
"""

import argparse
import os
import sys
import time
import warnings

import torch

from sepconv import convert, optimize_for_inference
from sepconv._timing import interleaved

from _output import add_output_args, output_dir, write_results
from speed import machine

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import architectures  # noqa: E402

# a MAC budget of 0.75 runs at 0.8-1.0 of the time: the time budgets reach up to 0.9, so that the curves overlap
BUDGETS = {"macs": (0.75, 0.5, 0.33), "latency": (0.9, 0.75, 0.5, 0.33)}
# ResNet-50's 1x1 convs (nothing to separate) keep 52% of its MACs: budgets it can reach
MODEL_BUDGETS = {"ResNet-50": {"macs": (0.9, 0.75, 0.6), "latency": (0.9, 0.75, 0.6)}}


def digits_model():
    """The digits CNN trained for 8 epochs on scikit-learn's digits, and its test images."""
    from sepconv.data import DigitsDataset
    from sepconv.models import digits_cnn
    from sepconv.train import train

    torch.manual_seed(0)
    train_set, test_set = DigitsDataset("train", 16), DigitsDataset("test", 16)
    model = digits_cnn(32)
    train(model, train_set, epochs=8, seed=0, progress=False)
    return model.eval(), test_set.tensors()[0]


def networks(quick: bool, only=None):
    """(name, model, example images of one input) for each benchmarked architecture (``only``: the
    short names of MODELS to build, else all, or ResNet-18 and the digits CNN with ``quick``)."""
    def wanted(name):
        return MODELS[name] in only if only is not None else not quick or name in ("ResNet-18", "digits CNN")

    for name, build in (("ResNet-18", architectures.resnet18), ("ResNet-50", architectures.resnet50),
                        ("MobileNetV2", architectures.mobilenet_v2_full)):
        if wanted(name):
            torch.manual_seed(0)  # the same weights whichever networks were built before it
            yield name, build(), torch.randn(1, 3, 224, 224)
    if wanted("digits CNN"):
        model, images = digits_model()
        yield "digits CNN", model, images[:64]


def rel_error(model, reference, x) -> float:
    with torch.no_grad():
        a, b = model(x), reference(x)
    return float((a - b).norm() / b.norm())


def points(name, model, images, batch, rounds, block, quick, budgets=None, costs=("macs", "latency")):
    """Every budget's conversion of ``model`` at ``batch``, optimized; then all of them and the
    optimized original timed in one interleaved run, so the ratios of one network's rows share the
    machine's state (on this class of machine the original's own time moved 1.5x between runs 20
    minutes apart, and a converted model's ratio with it)."""
    x = images[:batch] if images.shape[0] >= batch else images[:1].expand(batch, *images.shape[1:]).contiguous()
    if name != "digits CNN":
        x = torch.randn(batch, *images.shape[1:], generator=torch.Generator().manual_seed(1))
    original = optimize_for_inference(model, x)
    rows, built = [], {}
    if budgets is None:
        default = MODEL_BUDGETS.get(name, BUDGETS)
        budgets = {k: (((0.5,) if 0.5 in v else v[1:2]) if quick else v) for k, v in default.items() if k in costs}
    for cost, values in budgets.items():
        for budget in values:
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    small, report = convert(model, budget=budget, cost=cost, example_input=x)
            except ValueError as exc:  # e.g. a budget below what the structures can reach
                rows.append(dict(model=name, batch=batch, cost=cost, budget=budget, error=str(exc)))
                print(f"  {name} b{batch} {cost} {budget}: {exc}", flush=True)
                continue
            seconds = time.perf_counter() - t0
            latency = getattr(report, "latency", None) or {}
            row = dict(model=name, batch=batch, cost=cost, budget=budget, date=time.strftime("%Y-%m-%d %H:%M"),
                       convert_seconds=round(seconds, 2), macs_ratio=report.macs_ratio,
                       output_error=rel_error(small, model, x), predicted_ratio=latency.get("predicted_ratio"),
                       rounds=latency.get("rounds"))
            rows.append(row)
            built[f"{cost} {budget}"] = (optimize_for_inference(small, x), row)
    if not built:
        return rows
    fns = {"original": lambda: original(x)}
    fns.update({key: (lambda fast=fast: fast(x)) for key, (fast, _) in built.items()})
    t = interleaved(fns, rounds, block=block)
    for key, (fast, row) in built.items():
        row.update(original_ms=round(t["original"], 3), converted_ms=round(t[key], 3),
                   measured_ratio=t[key] / t["original"], backend=fast.backend, load=os.getloadavg()[0])
        pred = "" if row["predicted_ratio"] is None else (f", predicted {row['predicted_ratio']:.2f}, "
                                                           f"{row['rounds']} allocation(s) measured")
        print(f"  {name} b{batch} {key.replace(' ', '=')}: MACs {row['macs_ratio']:.2f}, time {row['measured_ratio']:.2f} "
              f"({row['converted_ms']:.2f} vs {row['original_ms']:.2f} ms{pred}), error {row['output_error']:.4f}; "
              f"load {row['load']:.1f}", flush=True)
    return rows


def markdown(meta, rows) -> str:
    lines = [f"Measured {meta['date']} on {meta['machine']}, torch {meta['torch']}, {meta['threads']} threads; "
             f"optimized converted vs optimized original, interleaved blocks of {meta['block']} calls, medians of "
             f"{meta['rounds']} rounds; every converted model of one network and batch in the same run "
             "(compare ratios within a network and batch)."
             + (f" Only {meta['this_run']} were measured in this run; the other rows are from an earlier run."
                if meta.get("this_run") else
                f" Rows of {', '.join(meta['earlier_run'])} are from an earlier run." if meta.get("earlier_run") else ""), "",
             "| model | batch | budget | MACs kept | time kept (measured) | predicted | output error | converted ms | original ms |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['batch']} | {r['cost']} {r['budget']} | | | | {r['error']} | | |")
            continue
        pred = "" if r.get("predicted_ratio") is None else f"{r['predicted_ratio']:.2f}"
        lines.append(f"| {r['model']} | {r['batch']} | {r['cost']} {r['budget']} | {r['macs_ratio']:.2f} | "
                     f"{r['measured_ratio']:.2f} | {pred} | {r['output_error']:.4f} | {r['converted_ms']:.2f} | "
                     f"{r['original_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def latency_error_at(points: list, t: float):
    """The error of the cost='latency' curve (``points``: (measured time, error)) at measured time
    ``t``: linear between its points; ``None`` outside them (no comparison at equal time)."""
    pts = sorted(points)
    for (t0, e0), (t1, e1) in zip(pts, pts[1:]):
        if t0 <= t <= t1:
            return e0 if t1 == t0 else e0 + (e1 - e0) * (t - t0) / (t1 - t0)
    return pts[0][1] if len(pts) == 1 and t == pts[0][0] else None


def dominance(rows: list) -> list:
    """Per cost='macs' point: the cost='latency' curve's error at the same measured time, and
    whether it is lower (the latency curve dominates where every such comparison holds). Past the
    curve's slowest point it holds where a faster latency point is as exact; before its fastest
    point it fails where that point is less exact (the MAC point is faster and more exact)."""
    out = []
    ok = [r for r in rows if "error" not in r]
    for key in dict.fromkeys((r["model"], r["batch"]) for r in ok):
        curve = [(r["measured_ratio"], r["output_error"]) for r in ok if (r["model"], r["batch"]) == key and r["cost"] == "latency"]
        for r in ok:
            if (r["model"], r["batch"]) == key and r["cost"] == "macs":
                e = latency_error_at(curve, r["measured_ratio"])
                lower = None if e is None else e <= r["output_error"]
                # past the latency curve's slowest point: dominated outright where a faster point is as exact
                faster = [pe for pt, pe in curve if pt <= r["measured_ratio"]]
                if e is None and faster and min(faster) <= r["output_error"]:
                    e, lower = min(faster), True
                # before the latency curve's fastest point: beaten outright where that point is less exact
                first = min(curve, default=None)  # (time, error) of the fastest latency point
                if e is None and not faster and first is not None and first[1] > r["output_error"]:
                    e, lower = first[1], False
                out.append(dict(model=key[0], batch=key[1], budget=r["budget"], time=r["measured_ratio"],
                                macs_error=r["output_error"], latency_error=e, lower=lower))
    return out


def dominance_markdown(comparisons: list) -> str:
    if not comparisons:
        return ""
    held = sum(c["lower"] is True for c in comparisons)
    compared = sum(c["lower"] is not None for c in comparisons)
    outside = len(comparisons) - compared
    lines = ["", f"At equal measured time, cost='latency' against cost='macs' (the latency curve's error interpolated "
             f"at each MAC point's measured time, or a faster latency point at least as exact): lower or equal in "
             f"{held} of {compared} comparisons" + (f" ({outside} MAC point(s) outside the latency curve's times)" if outside else "")
             + ".", "",
             "| model | batch | macs budget | time kept | error, cost='macs' | error, cost='latency' | latency lower |",
             "|---|---:|---|---:|---:|---:|---|"]
    for c in comparisons:
        e = "outside the latency curve" if c["latency_error"] is None else f"{c['latency_error']:.4f}"
        mark = "" if c["lower"] is None else ("yes" if c["lower"] else "**no**")
        lines.append(f"| {c['model']} | {c['batch']} | {c['budget']} | {c['time']:.2f} | {c['macs_error']:.4f} | {e} | {mark} |")
    return "\n".join(lines) + "\n"


MODELS = {"ResNet-18": "resnet18", "ResNet-50": "resnet50", "MobileNetV2": "mobilenetv2", "digits CNN": "digits"}


def _key(r: dict) -> tuple:
    return r.get("model"), r.get("batch"), r.get("cost"), r.get("budget")


def merged(rows: list, models: list, points_only: bool = False) -> list:
    """``rows`` (of the ``models`` just run) with the tracked results' rows of every other model, in
    :data:`MODELS` order: rerunning one model replaces its rows, not the whole table; with
    ``points_only`` (chosen budgets, costs or batches) only the rows of the points run are replaced."""
    import json

    from _output import RESULTS

    try:
        with open(os.path.join(RESULTS, "conversion_speed.json")) as f:
            old = json.load(f)["rows"]
    except (OSError, ValueError, KeyError):
        old = []
    run = {name for name, short in MODELS.items() if short in models}
    new = {_key(r) for r in rows}
    kept = [r for r in old if (_key(r) not in new if points_only else r.get("model") not in run)] + rows
    order, costs = list(MODELS), ("macs", "latency")
    return sorted(kept, key=lambda r: (order.index(r["model"]) if r["model"] in order else len(order), r.get("batch", 0),
                                       costs.index(r["cost"]) if r.get("cost") in costs else 2, -r.get("budget", 0)))


def _names(p, flag, text, allowed):
    names = [t.strip() for t in text.split(",") if t.strip()]
    allowed = list(allowed.values()) if isinstance(allowed, dict) else list(allowed)
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        p.error(f"{flag}: expected a comma-separated subset of {', '.join(allowed)}, got {text!r}")
    return names


def _numbers(p, flag, text, kind, ok, expected):
    """The comma-separated ``kind`` values of ``text``, or exit saying ``expected`` where one does not
    parse or fails ``ok``."""
    try:
        values = tuple(kind(t) for t in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(ok(v) for v in values):
        p.error(f"{flag}: expected comma-separated {expected}, got {text!r}")
    return values


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="ResNet-18 and the digits CNN, batch 1, one budget each")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--block", type=int, default=5)
    p.add_argument("--models", default=None, help=f"comma-separated subset of {', '.join(MODELS.values())}")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1 with --quick, else 1,8)")
    p.add_argument("--budgets", default=None, help="comma-separated budgets, each for every cost in --costs")
    p.add_argument("--costs", default="macs,latency", help="comma-separated subset of macs,latency")
    add_output_args(p)
    args = p.parse_args(argv)
    # an option given is checked, even empty: "" is not taken for "not given"
    models = _names(p, "--models", args.models, MODELS) if args.models is not None else None
    batches = ((1,) if args.quick else (1, 8)) if args.batches is None else \
        _numbers(p, "--batches", args.batches, int, lambda v: v >= 1, "positive ints")
    costs = _names(p, "--costs", args.costs, ("macs", "latency"))
    # chosen budgets for every model, else each model's own (MODEL_BUDGETS, else BUDGETS) of the chosen costs
    budgets = None if args.budgets is None else \
        {c: _numbers(p, "--budgets", args.budgets, float, lambda v: 0 < v <= 1, "fractions in (0, 1]") for c in costs}
    out = output_dir(p, args)
    torch.set_num_threads(2)
    rounds = args.rounds or (3 if args.quick else 10)
    start = time.perf_counter()
    print(f"machine: {machine()}; torch {torch.__version__}", flush=True)
    rows = []
    load = os.getloadavg()[0]
    for name, model, images in (networks(args.quick) if models is None else networks(args.quick, models)):
        for batch in batches:
            rows += points(name, model, images, batch, rounds, args.block, args.quick, budgets=budgets, costs=costs)
    meta = dict(date=time.strftime("%Y-%m-%d"), machine=machine(), torch=torch.__version__, threads=2, rounds=rounds,
                block=args.block, quick=args.quick, seconds=round(time.perf_counter() - start, 1),
                load_before=load, load_after=os.getloadavg()[0])
    points_only = budgets is not None or len(costs) < 2 or args.batches is not None
    if args.update_results and (models is not None or points_only):  # the tracked rows not run again stay
        run = {r["model"] for r in rows}
        rows = merged(rows, models or list(MODELS.values()), points_only=points_only)
        meta["earlier_run"] = sorted({r["model"] for r in rows} - (set() if points_only else run), key=list(MODELS).index)
        if points_only:
            chosen = "" if budgets is None else f" at budgets {', '.join(map(str, next(iter(budgets.values()))))}"
            at = "" if args.batches is None else f" at batch {' and '.join(map(str, batches))}"
            meta["this_run"] = (f"the rows of cost {' and '.join(costs)}{chosen} of "
                                f"{', '.join(sorted(run, key=list(MODELS).index))}{at}")
    comparisons = dominance(rows)
    write_results(out, "conversion_speed", dict(meta=meta, rows=rows, dominance=comparisons),
                  markdown(meta, rows) + dominance_markdown(comparisons))
    return 0


if __name__ == "__main__":
    sys.exit(main())
