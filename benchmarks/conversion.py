"""Accuracy of converted models on real digits: data-free, calibrated, distilled 1 and 3 epochs.

A digits CNN is trained here on scikit-learn's bundled digits (16x16), then converted with
``sepconv.convert`` (method 'auto') to 50% and 30% of its MACs. Each row reports test accuracy and
the model output's relative error against the original, next to the original and to the same
architecture built from separable layers and trained from scratch.

    python benchmarks/conversion.py [--quick] [--output DIR | --update-results]

writes conversion.{json,md} to benchmarks/results/latest/ (not tracked by git) or to --output DIR;
--update-results writes the tracked benchmarks/results/conversion.{json,md} and the README's tables.
"""

import argparse
import copy
import json
import os
import platform
import sys
import time

import torch

from sepconv import convert, profile
from sepconv._io import write_atomic
from sepconv.data import DigitsDataset
from sepconv.models import digits_cnn, digits_separable_cnn
from sepconv.train import distill, evaluate, train

from _output import add_output_args, output_dir



def rel_error(model, reference, x):
    with torch.no_grad():
        a, b = model(x), reference(x)
    return float((a - b).norm() / b.norm())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smaller network, fewer epochs (a smoke run)")
    p.add_argument("--seed", type=int, default=0, help="random seed for training (default 0)")
    add_output_args(p)
    args = p.parse_args(argv)
    out = output_dir(p, args)
    width, epochs = (16, 4) if args.quick else (32, 8)
    torch.manual_seed(args.seed)
    train_set, test_set = DigitsDataset("train", 16), DigitsDataset("test", 16)
    x_test = test_set.tensors()[0]
    calib = train_set.tensors(256)[0]
    start = time.perf_counter()

    model = digits_cnn(width)
    train(model, train_set, epochs=epochs, seed=args.seed, progress=False)
    base = profile(model, (1, 1, 16, 16))
    rows = [dict(model="original", budget=1.0, stage="trained", macs=base.macs, params=base.params,
                 accuracy=evaluate(model, test_set), output_error=0.0)]
    for budget in (0.5, 0.3):
        free, _ = convert(model, method="auto", budget=budget, example_input=x_test[:1])
        cal, _ = convert(model, method="auto", budget=budget, example_input=x_test[:1], calibration_data=calib)
        macs = profile(cal, (1, 1, 16, 16)).macs
        params = sum(p.numel() for p in cal.parameters())
        for stage, m in (("data-free", free), ("calibrated", cal)):
            rows.append(dict(model="converted (auto)", budget=budget, stage=stage, macs=profile(m, (1, 1, 16, 16)).macs,
                             params=sum(p.numel() for p in m.parameters()), accuracy=evaluate(m, test_set),
                             output_error=rel_error(m, model, x_test)))
        for total in (1, 3):
            student = copy.deepcopy(cal)
            distill(student, model, train_set, epochs=total, seed=args.seed, progress=False)
            rows.append(dict(model="converted (auto)", budget=budget, stage=f"distilled {total} epoch{'s' * (total > 1)}",
                             macs=macs, params=params, accuracy=evaluate(student, test_set),
                             output_error=rel_error(student, model, x_test)))
    twin = digits_separable_cnn(width)
    train(twin, train_set, epochs=epochs, seed=args.seed, progress=False)
    tc = profile(twin, (1, 1, 16, 16))
    rows.append(dict(model="separable twin (scratch)", budget=tc.macs / base.macs, stage=f"trained {epochs} epochs",
                     macs=tc.macs, params=tc.params, accuracy=evaluate(twin, test_set), output_error=None))

    meta = dict(machine=f"{platform.machine()}, {os.cpu_count()} cores", torch=torch.__version__,
                python=sys.version.split()[0], width=width, epochs=epochs, seed=args.seed,
                seconds=round(time.perf_counter() - start, 1), quick=args.quick)
    os.makedirs(out, exist_ok=True)
    write_atomic(os.path.join(out, "conversion.json"), lambda f: f.write(json.dumps(dict(meta=meta, rows=rows), indent=2).encode()))
    lines = [f"Digits CNN (width {width}, {epochs} epochs) on scikit-learn's digits, 16x16; {meta['machine']}, "
             f"torch {meta['torch']}; `python benchmarks/conversion.py`", "",
             "| model | MAC budget | stage | MACs | params | test accuracy | output rel. error |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        err = "" if r["output_error"] is None else f"{r['output_error']:.4f}"
        lines.append(f"| {r['model']} | {r['budget']:.0%} | {r['stage']} | {r['macs']:,} | {r['params']:,} | "
                     f"{r['accuracy']:.2%} | {err} |")
    table = "\n".join(lines) + "\n"
    write_atomic(os.path.join(out, "conversion.md"), lambda f: f.write(table.encode()))
    print(table)
    print(f"results written to {out}")
    if args.update_results:
        import update_readme

        update_readme.main(["--update-results"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
