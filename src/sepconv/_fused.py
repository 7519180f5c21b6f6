"""The C++ kernels, compiled on first use: the fused depthwise + pointwise convolution
(``csrc/fused_dwpw.cpp``, ``torch.ops.sepconv.fused_dwpw``), the fused blueprint separable
convolution (``csrc/blueprint.cpp``, ``blueprint_pwdw``), dense convolution with few inputs
per output and linear layers on the same GEMM (``csrc/dense.cpp``, ``conv2d_gemm``,
``linear_gemm``), the strip-wise separable filter (``csrc/separable_filter.cpp``,
``torch.ops.sepconv.separable_filter2d``) and the optimized model's input copy to channels_last
(``csrc/layout.cpp``, ``to_channels_last``).

Why a C++ extension: the point of fusion is that the depthwise tile is consumed by the pointwise
GEMM while it is still in cache (and, for the filter, that a strip's vertical result is filtered
horizontally before it leaves cache), which needs control over loops and buffers that no PyTorch
op gives; a small C++ extension built with ``torch.utils.cpp_extension.load`` at first use (cached in
a folder private to the environment, torch version and CPU: :func:`build_directory`) needs only the
compiler PyTorch's CPU wheels already expect, and keeps torch's thread pool. When it cannot be built
(no compiler, no ninja) :func:`load` returns ``None`` and callers keep the PyTorch path.

Instruction sets: one build serves every x86-64 CPU. The torch-facing files are compiled for the
baseline only; the compute kernels (``csrc/isa_impl.h``) are compiled three times, each in its own
namespace with its own target: AVX-512 (16-float vectors), AVX2 + FMA (8) and the baseline. The
widest one the CPU supports runs (:func:`isa` says which and why); ``SEPCONV_ISA=avx512|avx2|generic``
forces one (refused with a ``ValueError`` if the CPU lacks it), and :func:`set_isa` switches at run
time.

Threads: the kernel splits its tiles with ``at::parallel_for``. With torch's OpenMP backend (the
pip wheels) that template expands to ``#pragma omp parallel`` in *our* translation unit, so the
file is compiled with ``-fopenmp`` — without it the pragma is ignored and the kernel silently runs
on one thread. The link resolves ``libgomp.so.1`` to the copy torch has already loaded.
"""

import contextlib
import fcntl
import hashlib
import os
import platform
import sys
import threading
import time
from typing import Optional

_lock = threading.Lock()
_state: dict = {}
SOURCES = ("fused_dwpw.cpp", "blueprint.cpp", "separable_filter.cpp", "dense.cpp", "layout.cpp", "isa.cpp", "isa_avx512.cpp",
           "isa_avx2.cpp", "isa_generic.cpp")
HEADERS = ("common.h", "gemm.h", "kernels.h", "isa_impl.h")
ISA_ENV = "SEPCONV_ISA"  # forces an instruction set's kernels: avx512, avx2 or generic


def _csrc() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")


def cpu_signature() -> str:
    """The CPU's model name and instruction-set flags (which kernels run depends on the flags)."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = (part.strip() for part in line.partition(":"))
                if key == "model name" and not model:
                    model = value
                elif key in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(value.split()))
    except OSError:
        pass
    return f"{model or platform.machine()} [{flags}]"


def build_directory() -> str:
    """Where the kernels are built and cached: private to this Python environment, torch version,
    CPU and copy of the sources, so that two environments, two machines sharing a home folder or
    two checkouts installed in one environment never rebuild or load each other's build (torch's
    builder compiles again whenever the sources' paths change). Under ``$TORCH_EXTENSIONS_DIR`` if
    set, else ``~/.cache/sepconv/kernels``."""
    import torch

    base = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "sepconv", "kernels")
    key = hashlib.sha256("\0".join((os.path.realpath(sys.prefix), torch.__version__, cpu_signature(),
                                   os.path.realpath(_csrc()))).encode()).hexdigest()
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__.replace('+', '-')}"
    return os.path.join(base, f"{tag}-{key[:12]}")


def _fingerprint(flags: list) -> str:
    """What a build depends on: the sources and headers, and the flags."""
    digest = hashlib.sha256(" ".join(flags).encode())
    for name in SOURCES + HEADERS:
        with open(os.path.join(_csrc(), name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _exclusive(directory: str):
    """Hold an exclusive lock on the build folder (released by the OS if this process dies).

    torch's own build lock is a plain file that a killed build leaves behind, after which every
    later process waits for it forever; while we hold this lock no other sepconv process is
    building here, so such a file is stale and is removed."""
    with open(os.path.join(directory, "sepconv.lock"), "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("sepconv: waiting for another process building the kernels ...", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        stale = os.path.join(directory, "lock")
        if os.path.exists(stale):
            os.unlink(stale)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _flags() -> tuple:
    """(compiler flags, linker flags) of the build."""
    import torch

    openmp = ["-fopenmp"] if "parallel backend: OpenMP" in torch.__config__.parallel_info() else []
    # no -march: the build runs on any CPU of this architecture; the ISA files add their own targets
    return ["-O3", *openmp], openmp


def _marker(directory: str) -> str:
    """The file a finished build of these sources with these flags leaves in ``directory``."""
    cflags, openmp = _flags()
    return os.path.join(directory, f"built-{_fingerprint(cflags + openmp)}")


def built() -> bool:
    """Whether this environment has a finished build of the current sources (never compiles)."""
    return os.path.exists(_marker(build_directory()))


def _build():
    """Build (or load the cached build of) the extension; says so on stderr when it compiles."""
    from torch.utils.cpp_extension import load as load_extension

    # the pip-installed ninja lives next to this interpreter, which may not be on PATH
    bindir = os.path.dirname(sys.executable)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    cflags, openmp = _flags()
    directory = build_directory()
    os.makedirs(directory, exist_ok=True)
    marker = _marker(directory)
    with _exclusive(directory):
        fresh = not os.path.exists(marker)
        if fresh:
            print(f"sepconv: building the C++ kernels for this environment, once (about 1-5 minutes); "
                  f"cached in {directory}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        module = load_extension(name="sepconv_kernels", sources=[os.path.join(_csrc(), n) for n in SOURCES],
                                extra_cflags=cflags, extra_ldflags=openmp, build_directory=directory, verbose=False)
        if fresh:
            open(marker, "w").close()
            print(f"sepconv: kernels built in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    _state["directory"] = directory
    return module


def load():
    """The compiled extension module, or ``None`` if it cannot be built here (reason in :func:`error`).

    The first call in an environment compiles the kernels (1-5 minutes, announced on stderr; the
    set-up scripts do it up front with ``sepconv doctor``); later calls load the cached build.
    """
    if "module" in _state:  # built (or failed) already: no lock, so torch.compile can trace callers
        return _state["module"]
    with _lock:
        if "module" in _state:
            return _state["module"]
        if "built" not in _state:
            try:
                _state["built"] = _build()
                _register_fake()
            except Exception as exc:  # no compiler / ninja: the PyTorch path remains
                _state["built"] = None
                _state["error"] = f"{type(exc).__name__}: {exc}"
        if _state["built"] is not None:
            forced = os.environ.get(ISA_ENV, "")
            if forced:  # a wrong value raises here on every call, nothing is cached until it is right
                _select(_state["built"], forced, ISA_ENV)
                _state["isa_reason"] = f"forced by {ISA_ENV}={forced}"
            else:
                _state["isa_reason"] = "the widest this CPU supports"
        _state["module"] = _state["built"]
        return _state["module"]


def _select(module, name: str, what: str) -> str:
    """Make ``name``'s kernels active in ``module``; ``what`` names the setting in the error."""
    supported = list(module.supported_isas())
    if name not in ("avx512", "avx2", "generic"):
        raise ValueError(f"{what}: expected 'avx512', 'avx2' or 'generic', got {name!r}")
    if name not in supported:
        raise ValueError(f"{what}: this CPU does not support {name!r} (it supports {', '.join(map(repr, supported))})")
    return module.set_isa(name)


def l2_bytes() -> int:
    """The L2 cache size per core as the loaded kernels read it from the OS (512 KiB if they are not
    loaded)."""
    module = _state.get("module")
    return int(module.cache_sizes()[1]) if module is not None else 512 * 1024


def isa() -> Optional[tuple]:
    """``(name, reason)`` of the active kernels' instruction set (``'avx512'``, ``'avx2'`` or
    ``'generic'``), or ``None`` if the kernels are not loaded."""
    module = _state.get("module")
    if module is None:
        return None
    return module.isa(), _state.get("isa_reason", "")


def set_isa(name: Optional[str]) -> str:
    """Run the kernels of instruction set ``name`` from now on (``None``: the widest the CPU supports).

    Args:
        name: ``'avx512'``, ``'avx2'``, ``'generic'`` or ``None``.

    Returns:
        The active instruction set's name.

    Raises:
        ValueError: an unknown name, or one this CPU does not support.
        RuntimeError: the kernels are not available here.
    """
    module = load()
    if module is None:
        raise RuntimeError(f"the C++ kernels are not available here: {error()}")
    if name is None:
        _state["isa_reason"] = "the widest this CPU supports"
        return module.set_isa("")
    active = _select(module, name, "name")
    _state["isa_reason"] = "chosen with sepconv._fused.set_isa"
    return active


def _out_size(op: str, dim: str, size: int, before: int, after: int, k: int, stride: int, dilation: int = 1) -> int:
    """An output size as the kernels compute it (``conv_out_size`` in ``csrc/common.h``), raising
    their error when the padded input does not hold the kernel, so that tracing with fake tensors
    refuses the same inputs as the kernels (floor division alone would predict an empty output)."""
    extent, padded = dilation * (k - 1) + 1, size + before + after
    if padded < extent:
        raise RuntimeError(f"{op}: input {dim} {size} padded to {padded} is smaller than the kernel's extent {extent}")
    return (padded - extent) // stride + 1


def _register_fake() -> None:
    """Output shapes of the ops for tracing with fake tensors (torch.compile); once, by load()."""
    import torch

    @torch.library.register_fake("sepconv::fused_dwpw")
    def _(x, dw, dw_bias, act_mid, pw, pw_bias, n_out, act_out, kh, kw, sh, sw, pt, pb, pl, pr, tile_bytes):
        ho = _out_size("fused_dwpw", "height", x.shape[2], pt, pb, kh, sh)
        wo = _out_size("fused_dwpw", "width", x.shape[3], pl, pr, kw, sw)
        return x.new_empty((x.shape[0], n_out, ho, wo)).contiguous(memory_format=torch.channels_last)

    @torch.library.register_fake("sepconv::blueprint_pwdw")
    def _(x, pw, pw_bias, act_mid, dw, dw_bias, act_out, kh, kw, sh, sw, pt, pb, pl, pr, tile_bytes):
        ho = _out_size("blueprint_pwdw", "height", x.shape[2], pt, pb, kh, sh)
        wo = _out_size("blueprint_pwdw", "width", x.shape[3], pl, pr, kw, sw)
        return x.new_empty((x.shape[0], dw.shape[2], ho, wo)).contiguous(memory_format=torch.channels_last)

    @torch.library.register_fake("sepconv::to_channels_last")
    def _(x):
        return x.new_empty(x.shape).contiguous(memory_format=torch.channels_last)

    @torch.library.register_fake("sepconv::conv2d_gemm")
    def _(x, w, bias, n_out, act, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr):
        ho = _out_size("conv2d_gemm", "height", x.shape[2], pt, pb, kh, sh, dh)
        wo = _out_size("conv2d_gemm", "width", x.shape[3], pl, pr, kw, sw, dw)
        return x.new_empty((x.shape[0], n_out, ho, wo)).contiguous(memory_format=torch.channels_last)

    @torch.library.register_fake("sepconv::linear_gemm")
    def _(x, w, bias, n_out, act):
        return x.new_empty((x.shape[0], n_out))

    @torch.library.register_fake("sepconv::separable_filter2d")
    def _(x, ky, kx, pt, pb, pl, pr, border):
        ho = _out_size("separable_filter2d", "height", x.shape[2], pt, pb, ky.shape[1], 1)
        wo = _out_size("separable_filter2d", "width", x.shape[3], pl, pr, kx.shape[1], 1)
        return x.new_empty((x.shape[0], x.shape[1], ho, wo))


def loaded():
    """The extension module if it is already built and loaded in this process, else ``None``
    (never compiles)."""
    return _state.get("module")


def error() -> Optional[str]:
    """Why the extension could not be built, if it could not."""
    return _state.get("error")


def directory() -> Optional[str]:
    """The build folder of the loaded extension, if it is loaded."""
    return _state.get("directory")
