"""What sepconv runs on here: versions, the CPU and its vector instruction set, and whether the C++
kernels are active (and why not). ``sepconv doctor`` prints it; the set-up scripts run it once so
that the kernels are built up front instead of inside a user's first call.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

from . import _fused


def vector_isa(flags: str) -> str:
    """The widest float vector instruction set named in a CPU's flags (``/proc/cpuinfo``).

    Example:
        >>> vector_isa("fma avx avx2 avx512f amx_tile")
        'AVX-512 (+AMX)'
    """
    names = set(flags.split())
    if "avx512f" in names:
        return "AVX-512" + (" (+AMX)" if "amx_tile" in names else "")
    if "avx2" in names:
        return "AVX2" + (" + FMA" if "fma" in names else "")
    if "avx" in names:
        return "AVX"
    if "asimd" in names or "neon" in names:
        return "NEON"
    return "SSE" if "sse2" in names else "unknown"


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name. Where it is a generic name without a model number, as virtual machines
    often show ("AMD EPYC", "Intel(R) Xeon(R) Processor"), the x86 family and model numbers are
    added: they tell the CPU generations apart (AMD family 25 is Zen 3 at model 1, Zen 4 at model 17).

    Args:
        cpuinfo: the file to read (Linux's ``/proc/cpuinfo``); without it, the platform's name.

    Example:
        >>> isinstance(cpu_model(), str)
        True
    """
    fields: dict = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip() and fields:
                    break  # the first processor's block
                key, _, value = (part.strip() for part in line.partition(":"))
                if key in ("model name", "cpu family", "model"):
                    fields.setdefault(key, value)
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if not any(c.isdigit() for c in name) and "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def report(build: bool = True) -> list[str]:
    """Lines describing this installation.

    Args:
        build: load the kernels, compiling them first if this environment has no build yet (1-5
            minutes, announced on stderr); if False, only report whether they are loaded.

    Returns:
        ``["sepconv 0.1.0", "python ...", ...]``, one fact per line.
    """
    import torch

    from . import __version__

    flags = _fused.cpu_signature().partition(" [")[2]
    model = cpu_model()
    lines = [
        f"sepconv {__version__} ({os.path.dirname(os.path.abspath(__file__))})",
        f"python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        f"cpu: {model}, {os.cpu_count()} logical cores, vector ISA {vector_isa(flags.rstrip(']'))}",
    ]
    try:
        module = _fused.load() if build else _fused.loaded()
    except ValueError as exc:  # a wrong SEPCONV_ISA
        lines.append(f"kernels: not active: {exc}")
        return lines
    if module is not None:
        lines.append(f"kernels: active (fused depthwise+pointwise, fused blueprint, dense/linear GEMM, separable filter; "
                     f"built in {_fused.directory()})")
        lines.append(isa_line(module))
    elif _fused.error():
        lines.append(f"kernels: not available, the PyTorch path is used ({_fused.error().splitlines()[0]})")
    else:
        where = _fused.build_directory()
        lines.append(f"kernels: built in {where}, not loaded in this process" if _fused.built() else
                     f"kernels: not built yet (built on first use, or by sepconv doctor, in {where})")
    return lines


def isa_line(module) -> str:
    """The active kernels' instruction set, its blocking, and why it was chosen.

    Example: ``kernel ISA: avx512 (16-float vectors, GEMM blocks 6x64, channel blocks of 2048;
    caches L1d 48 KiB, L2 2048 KiB; the widest this CPU supports, of avx512, avx2, generic;
    SEPCONV_ISA forces one)``
    """
    name, why = _fused.isa()
    vl, mr, cols, kc = module.blocking()
    l1, l2 = module.cache_sizes()
    return (f"kernel ISA: {name} ({vl}-float vectors, GEMM blocks {mr}x{cols}, channel blocks of {kc}; "
            f"caches L1d {l1 // 1024} KiB, L2 {l2 // 1024} KiB; {why}, of {', '.join(module.supported_isas())}; "
            f"{_fused.ISA_ENV} forces one)")


def versions() -> str:
    """``sepconv X (torch Y, python Z)`` without importing torch (fast enough for ``--version``)."""
    from . import __version__

    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "not installed"
    return f"sepconv {__version__} (torch {torch_version}, python {platform.python_version()}, {sys.platform})"
