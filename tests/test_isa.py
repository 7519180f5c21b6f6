"""The kernels' instruction sets: chosen at run time from what the CPU supports, forced with
SEPCONV_ISA, and kept apart in the one build (no AVX-512 instruction outside the AVX-512 code, no
AVX2/FMA instruction in the code every CPU runs). The numbers of each path against float64
references are in test_optimize.py, test_kernel_checks.py and test_filter_paths.py (``isa`` fixture)."""

import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from sepconv import _fused
from sepconv.doctor import report


@pytest.fixture(scope="module")
def ext():
    module = _fused.load()
    assert module is not None, f"the C++ kernels failed to build: {_fused.error()}"
    return module


def _cpu_flags() -> set:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def test_the_widest_supported_isa_is_active_by_default(ext):
    flags = _cpu_flags()
    expected = ["generic"]
    if {"avx2", "fma"} <= flags:
        expected.insert(0, "avx2")
        if {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= flags:
            expected.insert(0, "avx512")
    assert list(ext.supported_isas()) == expected
    if "SEPCONV_ISA" not in os.environ:
        assert _fused.isa() == (expected[0], "the widest this CPU supports")


def test_blocking_follows_the_vector_width_and_the_caches(ext, isa):
    vl, mr, cols, kc = ext.blocking()
    assert (vl, mr, cols) == {"avx512": (16, 6, 64), "avx2": (8, 6, 16), "generic": (8, 6, 16)}[isa]
    l2 = ext.cache_sizes()[1]
    # a block of weight panels in a quarter of L2 (streamed from there), whatever the width
    assert kc == max(64, l2 // 4 // (cols * 4) // 16 * 16)


def _sys_cache(level: int) -> int:
    """The CPU's L`level` data cache size from /sys, 0 if not listed."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    for entry in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        path = os.path.join(base, entry)
        try:
            with open(os.path.join(path, "level")) as f1, open(os.path.join(path, "type")) as f2, \
                    open(os.path.join(path, "size")) as f3:
                lvl, kind, size = int(f1.read()), f2.read().strip(), f3.read().strip()
        except (OSError, ValueError):
            continue
        if lvl == level and kind != "Instruction":
            return int(size[:-1]) * {"K": 1024, "M": 1024 ** 2}[size[-1]] if size[-1] in "KM" else int(size)
    return 0


def test_cache_sizes_come_from_the_os(ext):
    l1, l2 = ext.cache_sizes()
    if not _sys_cache(1) or not _sys_cache(2):
        pytest.skip("the OS does not list the caches in /sys")
    assert (l1, l2) == (_sys_cache(1), _sys_cache(2))


def _run(code: str, isa_env: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SEPCONV_ISA=isa_env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.parametrize("name", ["avx512", "avx2", "generic"])
def test_sepconv_isa_forces_a_path(ext, name):
    if name not in ext.supported_isas():
        pytest.skip(f"this CPU does not support {name}")
    code = ("import torch; from sepconv import _fused; m = _fused.load(); print(_fused.isa()); "
            "x = torch.randn(2, 64); w = torch.randn(4, 64, 16)\n"
            "print(torch.allclose(torch.ops.sepconv.linear_gemm(x, w, torch.zeros(0), 64, 0), "
            "x @ w.permute(1, 0, 2).reshape(64, 64), atol=1e-4))")
    done = _run(code, name)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"('{name}', 'forced by SEPCONV_ISA={name}')", "True"]


def test_sepconv_isa_refuses_an_unknown_name():
    done = _run("from sepconv import _fused; _fused.load()", "avx1024")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == "ValueError: SEPCONV_ISA: expected 'avx512', 'avx2' or 'generic', got 'avx1024'"
    done = _run("from sepconv.doctor import report; print(report()[-1])", "avx1024")
    assert done.stdout.strip() == "kernels: not active: SEPCONV_ISA: expected 'avx512', 'avx2' or 'generic', got 'avx1024'"


def test_an_isa_the_cpu_lacks_is_refused(ext):
    avx2_only = SimpleNamespace(supported_isas=lambda: ["avx2", "generic"], set_isa=lambda name: name)
    with pytest.raises(ValueError, match=re.escape("SEPCONV_ISA: this CPU does not support 'avx512' (it supports 'avx2', 'generic')")):
        _fused._select(avx2_only, "avx512", "SEPCONV_ISA")
    with pytest.raises(ValueError, match=re.escape("name: expected 'avx512', 'avx2' or 'generic', got 'sse'")):
        _fused.set_isa("sse")
    # the C++ side refuses on its own too
    if "avx512" not in ext.supported_isas():
        with pytest.raises(RuntimeError, match="isa: this CPU does not support 'avx512'"):
            ext.set_isa("avx512")
    with pytest.raises(RuntimeError, match="isa: expected one of 'avx512', 'avx2', 'generic', got 'neon'"):
        ext.set_isa("neon")


def test_doctor_says_which_isa_and_why(ext, isa):
    line = report()[-1]
    vl, mr, cols, kc = ext.blocking()
    assert line.startswith(f"kernel ISA: {isa} ({vl}-float vectors, GEMM blocks {mr}x{cols}, channel blocks of {kc}; caches L1d ")
    assert f"; chosen with sepconv._fused.set_isa, of {', '.join(ext.supported_isas())}; SEPCONV_ISA forces one)" in line


# AVX-512 code: zmm registers, the upper 16 xmm/ymm registers, mask registers, embedded broadcasts
AVX512 = re.compile(r"%zmm|%[xy]mm(1[6-9]|2\d|3[01])\b|%k[0-7]\b|\{1to\d+\}")
# AVX2 / FMA code: ymm registers, FMA instructions
AVX2 = re.compile(r"%ymm|\bvfn?m(add|sub)")


def _functions(path: str) -> dict:
    """Disassembly lines of each function of the shared object at `path` (demangled names)."""
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", path], capture_output=True, text=True,
                          check=True).stdout
    functions, current = {}, None
    for line in text.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if head:
            current = functions.setdefault(head.group(1), [])
        elif current is not None and "\t" in line:
            current.append(line)
    return functions


def test_avx512_code_only_in_the_avx512_kernels(ext):
    """An inline function compiled for AVX-512 in one file and without it in another is one symbol
    that the linker keeps once: the AVX2 path could run AVX-512 instructions (SIGILL on an AVX2-only
    CPU). Here every function with AVX-512 instructions is one of sepconv::avx512's, every one with
    AVX2/FMA instructions one of sepconv::avx512's or sepconv::avx2's: the rest runs on any x86-64."""
    if shutil.which("objdump") is None:
        pytest.skip("objdump (binutils) is not installed")
    if not re.match(r"x86_64|amd64", os.uname().machine, re.I):
        pytest.skip("not an x86-64 machine")
    functions = _functions(ext.__file__)
    avx512 = {name for name, lines in functions.items() if any(AVX512.search(x) for x in lines)}
    avx2 = {name for name, lines in functions.items() if any(AVX2.search(x) for x in lines)}
    assert avx512 and avx2  # the disassembly was read, and the wide kernels are there
    assert {n for n in avx512 if "sepconv::avx512::" not in n} == set()
    assert {n for n in avx2 if "sepconv::avx512::" not in n and "sepconv::avx2::" not in n} == set()
    # and the kernels of each are there: the GEMM, depthwise, conv rows and filter passes
    for isa in ("avx512", "avx2"):
        for kernel in ("gemm", "depthwise", "conv_row", "filter_rows", "filter_shift"):
            assert any(f"sepconv::{isa}::{kernel}(" in n for n in functions), (isa, kernel)
