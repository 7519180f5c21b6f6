"""Side-by-side speed of separable convolutions on this machine: layers, MobileNetV1, filters.

Every comparison interleaves its candidates round by round and reports medians, because this
machine's timings are noisy (2x run to run): only ratios measured in one run mean anything.

    python benchmarks/speed.py [--quick] [--no-compile] [--output DIR | --update-results]

writes speed.{json,md} to benchmarks/results/latest/ (not tracked by git) or to --output DIR;
--update-results writes the tracked benchmarks/results/speed.{json,md} and the README's tables.

Sections:
1. each distinct MobileNetV1 depthwise-separable layer shape (and the tutorials' worked examples:
   15x15x3 to 10 channels, 7x7x3 to 256), batch 1
   and 8, 1 and 2 threads: dense conv, naive ``nn.Sequential(depthwise, pointwise)`` in NCHW and
   channels_last, sepconv's ``SeparableConv2d``, and ``sepconv.optimize_for_inference``; realized
   speed-up vs dense, realized / theoretical (MAC ratio), and the depthwise part's effective GB/s
   against a copy bandwidth measured in the same run;
2. whole MobileNetV1, batch 1 and 8, 2 threads: eager, torch.compile, sepconv optimized, and two
   reference engines on the same exported ONNX model with the same thread count, in float32:
   ONNX Runtime (its spinning thread pool turned off) and OpenVINO (latency hint, one stream,
   f32 precision: its default on AMX/AVX512-BF16 CPUs would be bfloat16). Engines alternate in
   blocks of ``--block`` (10) back-to-back warm calls, each engine alone in its timed block;
   each engine's max output error against eager PyTorch is recorded;
3. ``separable_filter2d`` vs the dense 2-D filter for K = 3..25, and OpenCV's ``sepFilter2D``
   when ``cv2`` is installed.
"""

import argparse
import copy
import os
import platform
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F

from sepconv.bench import copy_bandwidth, interleaved, layer_speed
from sepconv.doctor import cpu_model, vector_isa
from sepconv.functional import separable_filter2d
from sepconv.models import mobilenet_v1
from sepconv.optimize import optimize_for_inference

from _output import add_output_args, output_dir, write_results

# (in, out, input size, stride): MobileNetV1 1.0-224's distinct depthwise separable layers
MOBILENET_SHAPES = [(32, 64, 112, 1), (64, 128, 112, 2), (128, 128, 56, 1), (128, 256, 56, 2), (256, 256, 28, 1),
                    (256, 512, 28, 2), (512, 512, 14, 1), (512, 1024, 14, 2), (1024, 1024, 7, 1)]
TUTORIAL_SHAPES = [(3, 10, 15, 1), (3, 256, 7, 1)]  # the tutorials' worked examples


def layer_rows(shapes, batches, threads_list, rounds):
    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        bandwidth = copy_bandwidth()
        for batch in batches:
            for cin, cout, size, stride in shapes:
                r = layer_speed(batch, cin, cout, size, stride, rounds=rounds, bandwidth=bandwidth)
                rows.append(r)
                m = r["ms"]
                print(f"  {threads}t b{batch} {cin}->{cout} @{size} s{stride}: dense {m['dense']:.2f} ms, "
                      f"naive cl {m['naive channels_last']:.2f}, optimized {m['sepconv optimized']:.2f} ({r['backend']}); "
                      f"realized {r['realized']['sepconv optimized']:.2f}x of theoretical {r['theoretical']:.2f}x", flush=True)
    return rows


def onnx_bytes(model, x) -> bytes:
    """``model`` exported to ONNX (the dynamo exporter), serialized: what both engines load."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    return program.model_proto.SerializeToString()


def ort_session(onnx, threads):
    """ONNX Runtime on ``threads`` threads; its spinning thread pool is turned off so that it does
    not steal the cores from the engine timed after it."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(onnx, so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda a: session.run(None, {name: a})[0]


def openvino_session(onnx, threads):
    """OpenVINO's CPU plugin on ``threads`` threads, one stream, latency hint, and float32
    inference precision: on CPUs with AMX or AVX512-BF16 its default would be bfloat16, which is
    not the same computation."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(onnx, b"")
    compiled = core.compile_model(model, "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(threads),
        "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    return lambda a: request.infer({0: a}, share_inputs=True)[0]


def engine_version(name: str) -> str:
    try:
        import importlib.metadata

        return importlib.metadata.version(name)
    except Exception:
        return "not installed"


def mobilenet_rows(batches, threads, rounds, use_compile, block=10):
    """Whole MobileNetV1 per engine; each engine warm and alone in its timed block of ``block``
    back-to-back calls (engines alternate block by block, medians)."""
    rows = []
    torch.set_num_threads(threads)
    for batch in batches:
        torch.manual_seed(0)
        model = mobilenet_v1().eval()
        x = torch.randn(batch, 3, 224, 224)
        xn = x.numpy()
        with torch.no_grad():
            reference = model(x)
        fast = optimize_for_inference(model, x)  # the default 10 dispatch rounds
        fns = {"eager": lambda: model(x), "sepconv optimized": lambda: fast(x)}
        compile_s = None
        if use_compile:
            t0 = time.perf_counter()
            compiled = torch.compile(copy.deepcopy(model))
            with torch.inference_mode():
                compiled(x)
            compile_s = time.perf_counter() - t0
            fns["torch.compile"] = lambda: compiled(x)
        errors = {}
        onnx = onnx_bytes(model, x)
        for engine, make in (("onnxruntime", ort_session), ("openvino", openvino_session)):
            try:
                run = make(onnx, threads)
            except ImportError:
                continue
            errors[engine] = float((torch.as_tensor(run(xn)) - reference).abs().max() / reference.abs().max())
            fns[engine] = lambda run=run: run(xn)
        t = interleaved(fns, rounds, block=block)
        # the dispatch's own timings and rejections: why this path was chosen (a noisy dispatch can pick
        # a path that runs slower here than another did in its timing)
        row = dict(batch=batch, threads=threads, ms={k: round(v, 3) for k, v in t.items()}, backend=fast.backend,
                   dispatch_ms={k: round(v, 3) for k, v in fast.timings.items()}, rejected=dict(fast.rejected),
                   compile_seconds=compile_s, max_rel_error=errors)
        for engine, key in (("onnxruntime", "optimized_over_ort"), ("openvino", "optimized_over_openvino")):
            if engine in t:
                row[key] = t["sepconv optimized"] / t[engine]
        rows.append(row)
        print(f"  MobileNetV1 b{batch} {threads}t: " + ", ".join(f"{k} {v:.2f} ms" for k, v in t.items())
              + f" (dispatch: {fast.backend} of " + ", ".join(f"{k} {v:.2f}" for k, v in fast.timings.items()) + ")",
              flush=True)
    return rows


def filter_rows(ks, rounds, size=512):
    rows = []
    torch.set_num_threads(2)
    try:
        import cv2  # optional
    except ImportError:
        cv2 = None
    img = torch.rand(1, 3, size, size)
    for k in ks:
        g = torch.exp(-((torch.arange(k) - (k - 1) / 2) ** 2) / (2 * (k / 6) ** 2))
        g = g / g.sum()
        full = torch.outer(g, g).expand(3, 1, k, k).contiguous()
        p = (k - 1) // 2

        def dense():
            return F.conv2d(F.pad(img, [p, k - 1 - p, p, k - 1 - p], mode="reflect"), full, groups=3)

        fns = {"separable_filter2d": lambda: separable_filter2d(img, g, g, kernel="compiled"), "dense 2-D filter": dense}
        if cv2 is not None:
            hwc = img[0].permute(1, 2, 0).contiguous().numpy()
            gn = g.numpy()
            cv2.setNumThreads(2)
            fns["OpenCV sepFilter2D"] = lambda: cv2.sepFilter2D(hwc, -1, gn, gn, borderType=cv2.BORDER_REFLECT_101)
        t = interleaved(fns, rounds)
        row = dict(k=k, ms={n: round(v, 4) for n, v in t.items()}, speedup=t["dense 2-D filter"] / t["separable_filter2d"],
                   target=k / 4)
        if cv2 is not None:
            row["over_opencv"] = t["separable_filter2d"] / t["OpenCV sepFilter2D"]
        rows.append(row)
        print(f"  K={k}: separable {t['separable_filter2d']:.2f} ms, dense {t['dense 2-D filter']:.2f} ms "
              f"({row['speedup']:.2f}x, target {k / 4:.2f}x)", flush=True)
    return rows


def median(v):
    return statistics.median(v) if v else float("nan")


def machine() -> str:
    """CPU model, core count and vector instruction set, e.g. 'AMD EPYC 7B13, 2 cores, x86_64 AVX2 + FMA'."""
    from sepconv import _fused

    flags = _fused.cpu_signature().partition(" [")[2].rstrip("]")
    isa = vector_isa(flags) if flags else torch.backends.cpu.get_cpu_capability()
    model = cpu_model()
    return f"{model}, {os.cpu_count()} cores, {platform.machine()} {isa}; sepconv kernels: {kernel_isa()}"


def kernel_isa() -> str:
    """The instruction set of sepconv's kernels in this run (``SEPCONV_ISA`` forces one)."""
    from sepconv import _fused

    if _fused.load() is None:
        return f"not active ({_fused.error()})"
    name, why = _fused.isa()
    return f"{name} ({why})" if why else name


def markdown(meta, layers, nets, filters) -> str:
    lines = [f"Measured {meta['date']} on {meta['machine']}, torch {meta['torch']}; medians of {meta['rounds']} "
             "interleaved rounds (this machine is noisy: compare ratios within a row).", ""]
    lines += ["**Depthwise separable layers** (MobileNetV1 shapes, 3x3; times in ms; *realized* = dense time / "
              "separable time; *theoretical* = dense MACs / separable MACs):", "",
              "| threads | batch | layer | dense | naive NCHW | naive CL | sepconv layer | optimized | realized | theoretical | realized/theor. | opt./naive CL | pointwise GEMM only | naive CL / GEMM only | dw GB/s (copy GB/s) |",
              "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in layers:
        m = r["ms"]
        lines.append(f"| {r['threads']} | {r['batch']} | {r['cin']}->{r['cout']} @{r['size']} s{r['stride']} | "
                     f"{m['dense']:.2f} | {m['naive NCHW']:.2f} | {m['naive channels_last']:.2f} | {m['sepconv layer']:.2f} | "
                     f"{m['sepconv optimized']:.2f} | {r['realized']['sepconv optimized']:.2f}x | {r['theoretical']:.2f}x | "
                     f"{r['realized_over_theoretical']:.2f} | {r['optimized_over_naive_cl']:.2f} | "
                     f"{m['pointwise GEMM only']:.2f} | {r['gemm_bound']:.2f} | {r['depthwise_gbs']:.1f} ({r['copy_gbs']:.1f}) |")
    mob = [r for r in layers if r["cin"] >= 32]
    rot = [r["realized_over_theoretical"] for r in mob]
    onc = [r["optimized_over_naive_cl"] for r in layers]
    bound = [r["gemm_bound"] for r in layers]
    lines += ["", "Targets:", "",
              "| target | measured | met |", "|---|---|---|",
              f"| optimized / naive channels_last >= 1.0 on every shape | min {min(onc):.3f} | {'yes' if min(onc) >= 1.0 else f'no, short by {1 - min(onc):.1%}'} |",
              f"| optimized / naive channels_last, median >= 1.3 | median {median(onc):.3f} | {'yes' if median(onc) >= 1.3 else f'no, short by {1.3 - median(onc):.3f}'} |",
              f"| (limit) naive channels_last / pointwise GEMM alone, i.e. free depthwise + BLAS GEMM | median {median(bound):.2f} | "
              f"{'above 1.3' if median(bound) >= 1.3 else 'below 1.3: the median needs a GEMM faster than BLAS'} |",
              f"| realized / theoretical over MobileNetV1 shapes, median >= 0.8 | median {median(rot):.3f} | {'yes' if median(rot) >= 0.8 else f'no, short by {0.8 - median(rot):.3f}'} |",
              f"| realized / theoretical, minimum >= 0.5 | min {min(rot):.3f} | {'yes' if min(rot) >= 0.5 else f'no, short by {0.5 - min(rot):.3f}'} |"]
    for r in nets:
        for key, engine in (("optimized_over_ort", "ONNX Runtime"), ("optimized_over_openvino", "OpenVINO")):
            if key in r:
                v = r[key]
                lines.append(f"| MobileNetV1 batch {r['batch']}, {r['threads']} threads: optimized / {engine} <= 1.0 | {v:.2f} | "
                             f"{'yes' if v <= 1.0 else f'no, {v - 1:.0%} slower'} |")
    big = [f for f in filters if f["k"] >= 7]
    if big:
        worst = min(big, key=lambda f: f["speedup"] / f["target"])
        lines.append(f"| separable filtering K >= 7: >= K/4 faster than dense | worst K={worst['k']}: {worst['speedup']:.2f}x vs {worst['target']:.2f}x | "
                     f"{'yes' if all(f['speedup'] >= f['target'] for f in big) else 'no'} |")
        if "over_opencv" in big[0]:
            w = max(f["over_opencv"] for f in big)
            lines.append(f"| separable filtering within 1.5x of OpenCV | worst {w:.2f}x | {'yes' if w <= 1.5 else 'no'} |")
        else:
            lines.append("| separable filtering within 1.5x of OpenCV | OpenCV not installed | not measured |")
    engines = ", ".join(f"{k} {v}" for k, v in meta.get("engines", {}).items())
    lines += ["", f"**MobileNetV1 1.0-224** (ms per batch; float32 everywhere; each engine warm and alone in blocks of "
              f"{meta.get('block', 1)} back-to-back calls, engines alternating; {engines}):", "", "| batch | threads | " + " | ".join(nets[0]["ms"]) + " | chosen path |",
              "|---:|---:|" + "---:|" * len(nets[0]["ms"]) + "---|"]
    for r in nets:
        lines.append(f"| {r['batch']} | {r['threads']} | " + " | ".join(f"{v:.1f}" for v in r["ms"].values()) + f" | {r['backend']} |")
    lines += ["", "**Separable image filter** (Gaussian, 3x512x512, reflect border, 2 threads; ms):", "",
              "| K | " + " | ".join(filters[0]["ms"]) + " | speed-up vs dense | target K/4 |", "|---:|" + "---:|" * (len(filters[0]["ms"]) + 2)]
    for f in filters:
        lines.append(f"| {f['k']} | " + " | ".join(f"{v:.2f}" for v in f["ms"].values()) + f" | {f['speedup']:.2f}x | {f['target']:.2f}x |")
    return "\n".join(lines) + "\n"


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return int(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer shapes and rounds (a smoke run)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of MobileNetV1")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--block", type=positive_int, default=10, help="back-to-back timed calls per engine turn for whole networks (default 10)")
    add_output_args(p)
    args = p.parse_args(argv)
    out = output_dir(p, args)
    rounds = args.rounds or (5 if args.quick else 20)
    shapes = (MOBILENET_SHAPES[:2] + TUTORIAL_SHAPES[:1]) if args.quick else (MOBILENET_SHAPES + TUTORIAL_SHAPES)
    start = time.perf_counter()
    print(f"machine: {machine()}; torch {torch.__version__}", flush=True)
    print("1. layers", flush=True)
    layers = layer_rows(shapes, (1,) if args.quick else (1, 8), (2,) if args.quick else (1, 2), rounds)
    print("2. MobileNetV1", flush=True)
    nets = mobilenet_rows((1,) if args.quick else (1, 8), 2, rounds, use_compile=not args.no_compile and not args.quick,
                          block=args.block)
    print("3. separable filtering", flush=True)
    filters = filter_rows([3, 7, 15] if args.quick else list(range(3, 26, 2)), rounds)
    engines = {e: engine_version(e) for e in ("onnxruntime", "openvino")}
    meta = dict(date=time.strftime("%Y-%m-%d"), machine=machine(), torch=torch.__version__, python=sys.version.split()[0], rounds=rounds,
                block=args.block, engines=engines,
                quick=args.quick, seconds=round(time.perf_counter() - start, 1))
    write_results(out, "speed", dict(meta=meta, layers=layers, mobilenet=nets, filters=filters),
                  markdown(meta, layers, nets, filters))
    return 0


if __name__ == "__main__":
    sys.exit(main())
