"""How long conversion and profiling take on full-size ResNets, and how much memory they need.

    python benchmarks/convert_time.py [--threads 2] [--repeats 3] [--quick] [--output DIR | --update-results]

Each task runs in its own subprocess (so that its peak resident memory, ``ru_maxrss``, is its own):
the imports are warmed first (a small conversion and profile, not timed), the model is built, and
the task runs ``--repeats`` times; the median wall time is reported with the CPU time of the same
run (on a machine shared with other work, CPU time is the better guide to the cost; the load
average is recorded too). Tasks, with the targets set for them:

* ``convert resnet18``: data-free ``convert(resnet18, budget=0.5, example_input=1x3x224x224)``, target <= 3 s;
* ``convert resnet50``: data-free, ``budget=0.6``, target <= 5 s and peak memory < 2 GB;
* ``profile resnet152``: ``profile(resnet152, (1, 3, 224, 224))``, target <= 0.5 s;
* ``calibrated resnet18``: ``budget=0.5`` with ``calibration_data`` of 32 random 224x224 images
  (no target: measured for reference);
* ``latency resnet18, new table`` / ``latency resnet18, cached table``: data-free
  ``convert(resnet18, budget=0.5, cost="latency", example_input=1x3x224x224)``, each run with an
  empty latency cache (every candidate layer timed first) / with the table measured once before
  the timed runs (a second conversion of the same layer shapes); "time kept" is the converted
  model's measured share of the optimized original's time (no target: measured for reference).

The models are ``tests/architectures.py``'s torchvision-faithful ``resnet18/50/152`` (random weights,
randomized BatchNorm statistics). Writes convert_time.{json,md} to benchmarks/results/latest/ (not
tracked by git) or to ``--output DIR``; ``--update-results`` writes benchmarks/results/ instead
and copies the table into the README.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _output import add_output_args, output_dir, write_results  # noqa: E402

TASKS = {  # name -> (target seconds or None, target peak MB or None)
    "convert resnet18": (3.0, None),
    "convert resnet50": (5.0, 2048),
    "profile resnet152": (0.5, None),
    "calibrated resnet18": (None, None),
    "latency resnet18, new table": (None, None),
    "latency resnet18, cached table": (None, None),
}


def _child(task: str, repeats: int, threads: int) -> dict:
    """Run one task ``repeats`` times in this process; the measurements as a dict."""
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    import torch

    torch.set_num_threads(threads)
    from architectures import resnet18, resnet50, resnet152, resnet_basic

    from sepconv import convert, profile

    small = resnet_basic()  # warm the imports and lazy initializations, untimed
    convert(small, budget=0.5, example_input=torch.randn(1, 3, 32, 32))
    convert(small, budget=0.5, calibration_data=torch.randn(2, 3, 32, 32))
    profile(small, (1, 3, 32, 32))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 224, 224, generator=g)
    kind, _, arch = task.partition(",")[0].partition(" ")
    model = {"resnet18": resnet18, "resnet50": resnet50, "resnet152": resnet152}[arch]()
    if kind == "profile":
        run = lambda: profile(model, (1, 3, 224, 224))  # noqa: E731
    elif kind == "convert":
        budget = 0.5 if arch == "resnet18" else 0.6
        run = lambda: convert(model, budget=budget, example_input=x)  # noqa: E731
    elif kind == "latency":
        run = lambda: convert(model, budget=0.5, cost="latency", example_input=x)  # noqa: E731
        cache = tempfile.mkdtemp(prefix="sepconv-latency-")
        os.environ["SEPCONV_CACHE_DIR"] = cache  # never the user's own table
        if task.endswith("cached table"):
            run()  # the table measured, untimed
    else:
        data = torch.randn(32, 3, 224, 224, generator=g)
        run = lambda: convert(model, budget=0.5, example_input=x, calibration_data=data)  # noqa: E731
    walls, cpus = [], []
    for _ in range(repeats):
        if task.endswith("new table"):
            shutil.rmtree(os.path.join(cache, "latency"), ignore_errors=True)
        w, c = time.perf_counter(), time.process_time()
        result = run()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    median = sorted(range(repeats), key=lambda i: walls[i])[repeats // 2]
    out = dict(task=task, seconds=walls[median], cpu_seconds=cpus[median], all_seconds=walls,
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if kind != "profile":
        report = result[1]
        out.update(macs_ratio=report.macs_ratio, output_error=report.output_error)
        if report.latency:
            out.update(time_ratio=report.latency["measured_ratio"])
    if kind == "latency":
        shutil.rmtree(cache, ignore_errors=True)
    return out


def measure(task: str, repeats: int, threads: int) -> dict:
    """One task in a fresh subprocess."""
    load = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", task, "--repeats", str(repeats),
                           "--threads", str(threads)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{task} failed:\n{proc.stderr}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["load_before"] = load
    row["load_after"] = os.getloadavg()[0]
    return row


def machine() -> dict:
    """CPU model, logical cores and the widest vector instruction set (from /proc/cpuinfo)."""
    from sepconv import _fused
    from sepconv.doctor import cpu_model, vector_isa

    flags = _fused.cpu_signature().partition(" [")[2].rstrip("]")
    return dict(cpu=cpu_model(), cores=os.cpu_count(), vector_isa=vector_isa(flags))


def markdown(meta: dict, rows: list) -> str:
    lines = [f"Measured {meta['date']} on {meta['cpu']} ({meta['cores']} logical cores, {meta['vector_isa']}), "
             f"torch {meta['torch']}, {meta['threads']} threads, median of {meta['repeats']} runs after warm imports; "
             "CPU time of the same run; load average (1 min) before each task.", "",
             "| task | seconds | CPU seconds | target | peak RSS (MB) | MACs kept | time kept | load |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        target, mb = TASKS[r["task"]]
        t = "" if target is None else f"<= {target:g} s" + ("" if mb is None else f", < {mb} MB")
        kept = f"{r['macs_ratio']:.1%}" if "macs_ratio" in r else ""
        time_kept = f"{r['time_ratio']:.1%}" if "time_ratio" in r else ""
        lines.append(f"| {r['task']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {t} | {r['peak_rss_mb']:.0f} | {kept} | "
                     f"{time_kept} | {r['load_before']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="one run each of the data-free MAC-budget tasks (a smoke run)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    add_output_args(p)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.repeats, args.threads)))
        return 0
    out = output_dir(p, args)
    import torch

    repeats = 1 if args.quick else args.repeats
    meta = dict(date=time.strftime("%Y-%m-%d %H:%M"), torch=torch.__version__, threads=args.threads, repeats=repeats,
                **machine())
    print(f"{meta['cpu']}, {meta['cores']} logical cores, vector ISA {meta['vector_isa']}; {args.threads} threads", flush=True)
    rows = []
    for task in TASKS:
        if args.quick and task.startswith(("calibrated", "latency")):
            continue
        rows.append(measure(task, repeats, args.threads))
        r = rows[-1]
        print(f"  {task}: {r['seconds']:.2f} s (CPU {r['cpu_seconds']:.2f} s), peak RSS {r['peak_rss_mb']:.0f} MB, "
              f"load {r['load_before']:.1f}", flush=True)
    write_results(out, "convert_time", dict(meta=meta, rows=rows), markdown(meta, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
