"""The fused depthwise + pointwise kernel (``csrc/fused_dwpw.cpp``), compiled on first use.

Why a C++ extension: the point of fusion is that the depthwise tile is consumed by the pointwise
GEMM while it is still in cache, which needs control over loops and buffers that no PyTorch op
gives; a small C++ file built with ``torch.utils.cpp_extension.load`` at first use (cached under
``~/.cache/torch_extensions``) uses the machine's own vector width (``-march=native``), needs only
the compiler PyTorch's CPU wheels already expect, and keeps torch's thread pool. When it cannot be
built (no compiler, no ninja) :func:`load` returns ``None`` and callers keep the PyTorch path.
"""

import os
import sys
import threading
from typing import Optional

_lock = threading.Lock()
_state: dict = {}


def load():
    """The compiled extension module, or ``None`` if it cannot be built here (reason in :func:`error`)."""
    with _lock:
        if "module" in _state:
            return _state["module"]
        try:
            from torch.utils.cpp_extension import load as load_extension

            source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "fused_dwpw.cpp")
            # the pip-installed ninja lives next to this interpreter, which may not be on PATH
            bindir = os.path.dirname(sys.executable)
            if bindir not in os.environ.get("PATH", "").split(os.pathsep):
                os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
            _state["module"] = load_extension(name="sepconv_fused_dwpw", sources=[source],
                                              extra_cflags=["-O3", "-march=native"], verbose=False)
        except Exception as exc:  # no compiler / ninja: the PyTorch path remains
            _state["module"] = None
            _state["error"] = f"{type(exc).__name__}: {exc}"
        return _state["module"]


def error() -> Optional[str]:
    """Why the extension could not be built, if it could not."""
    return _state.get("error")
