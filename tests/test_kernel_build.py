"""How the C++ kernels are built and found: a folder private to the environment, torch version and
CPU; the first build announced; a stale lock of a killed build never blocks; ``sepconv doctor``."""

import os
import platform
import subprocess
import sys

import pytest

from sepconv import _fused, cli
from sepconv.doctor import cpu_model, report, vector_isa


def test_build_directory_is_private_to_the_environment_and_the_checkout(monkeypatch):
    here = _fused.build_directory()
    monkeypatch.setattr(sys, "prefix", "/some/other/venv")
    other = _fused.build_directory()
    assert os.path.dirname(here) == os.path.dirname(other) and here != other
    monkeypatch.setattr(_fused, "cpu_signature", lambda: "Another CPU [avx2 fma]")
    third = _fused.build_directory()
    assert third not in (here, other)
    monkeypatch.setattr(_fused, "_csrc", lambda: "/another/checkout/src/sepconv/csrc")  # installed in the same environment
    assert _fused.build_directory() not in (here, other, third)


def test_build_directory_honours_torch_extensions_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert os.path.dirname(_fused.build_directory()) == str(tmp_path)
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert os.path.dirname(_fused.build_directory()) == str(tmp_path / "cache" / "sepconv" / "kernels")


@pytest.mark.parametrize("flags,isa", [
    ("sse sse2 avx avx2 fma avx512f avx512bw amx_tile", "AVX-512 (+AMX)"),
    ("sse sse2 avx avx2 fma avx512f", "AVX-512"),
    ("sse sse2 avx avx2 fma", "AVX2 + FMA"),
    ("sse sse2 avx", "AVX"),
    ("fp asimd evtstrm", "NEON"),
    ("sse sse2", "SSE"),
    ("", "unknown"),
])
def test_vector_isa(flags, isa):
    assert vector_isa(flags) == isa


_CPUINFO = "processor\t: {i}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: {model}\nmodel name\t: {name}\nflags\t\t: fpu avx2\n\n"


@pytest.mark.parametrize("name,model,expected", [
    ("AMD EPYC", 17, "AMD EPYC (family 25, model 17)"),  # a virtual machine's generic name: Zen 4
    ("AMD EPYC", 1, "AMD EPYC (family 25, model 1)"),  # and Zen 3, told apart
    ("AMD EPYC 7B13 64-Core Processor", 1, "AMD EPYC 7B13 64-Core Processor"),  # a model number: as it is
])
def test_cpu_model_tells_generic_names_apart(tmp_path, name, model, expected):
    path = tmp_path / "cpuinfo"
    # two processors: the first one's block is read (the second's model differs on purpose)
    path.write_text(_CPUINFO.format(i=0, model=model, name=name) + _CPUINFO.format(i=1, model=99, name="other"))
    assert cpu_model(str(path)) == expected


def test_cpu_model_without_cpuinfo_names_the_platform(tmp_path):
    assert cpu_model(str(tmp_path / "missing")) == (platform.processor() or platform.machine())


def test_a_stale_build_lock_does_not_block_a_new_process():
    """A build killed mid-way leaves torch's lock file behind; without care every later process
    waits for it forever (torch takes that lock even to load a finished build)."""
    assert _fused.load() is not None, _fused.error()
    lock = os.path.join(_fused.build_directory(), "lock")
    open(lock, "w").close()
    code = "from sepconv import _fused; m = _fused.load(); print(m is not None, _fused.error())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split()[0] == "True", done.stdout + done.stderr
    assert not os.path.exists(lock)


def test_a_finished_build_is_not_announced_again():
    assert _fused.load() is not None, _fused.error()
    code = "from sepconv import _fused; _fused.load()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "building" not in done.stderr and done.returncode == 0, done.stderr


def test_doctor_names_the_cpu_isa_and_kernels(capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("sepconv 0.1.0 (")
    assert out[1].startswith("python ") and ", torch " in out[1]
    assert out[2].startswith("cpu: ") and ", vector ISA " in out[2]
    assert out[3] == (f"kernels: active (fused depthwise+pointwise, fused blueprint, dense/linear GEMM, separable filter; "
                      f"built in {_fused.build_directory()})")
    assert out[4].startswith(f"kernel ISA: {_fused.load().isa()} (") and out[4].endswith("; SEPCONV_ISA forces one)")


def test_doctor_says_why_without_kernels(monkeypatch, tmp_path):
    monkeypatch.setattr(_fused, "_state", {"module": None, "error": "CalledProcessError: no compiler\nmore"})
    assert report()[-1] == "kernels: not available, the PyTorch path is used (CalledProcessError: no compiler)"
    monkeypatch.setattr(_fused, "_state", {})
    where, marker = _fused.build_directory(), tmp_path / "built-these-sources"
    monkeypatch.setattr(_fused, "_marker", lambda directory: str(marker))  # what a finished build leaves
    marker.touch()
    assert report(build=False)[-1] == f"kernels: built in {where}, not loaded in this process"
    marker.unlink()
    assert report(build=False)[-1] == f"kernels: not built yet (built on first use, or by sepconv doctor, in {where})"


def test_version_needs_no_torch_import():
    code = "import sys; from sepconv import cli\ntry: cli.main(['--version'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    first, last = done.stdout.splitlines()[0], done.stdout.splitlines()[-1]
    assert first.startswith("sepconv 0.1.0 (torch ") and last == "False"
