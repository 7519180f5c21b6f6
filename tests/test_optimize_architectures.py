"""optimize_for_inference on common architectures (tests/architectures.py) at several input
sizes: the optimized model equals the original, on the example's batch size and another, and
every candidate path is either measured or reported with the reason it was dropped."""

import sys
from pathlib import Path

import pytest
import torch

from sepconv.optimize import optimize_for_inference
from sepconv.optimize.checks import relative_error

sys.path.insert(0, str(Path(__file__).parent))
from architectures import ARCHITECTURES, SIZES  # noqa: E402

DEFAULT = ("eager", "fused", "torchscript")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_optimized_architecture_equals_original(arch, size):
    # prepared at batch 2 (optimizing at batch 1 as well doubled this file's ~6 min on a loaded
    # 2-core machine), called at batch 2 and 1: a traced graph also serves other batch sizes
    torch.manual_seed(size)
    model = ARCHITECTURES[arch]()
    x = torch.randn(2, 3, size, size)
    fast = optimize_for_inference(model, x, rounds=1)
    for inp in (x, torch.randn(1, 3, size, size)):
        with torch.no_grad():
            ref = model(inp)
        assert relative_error(fast(inp), ref) <= 1e-4, (fast.backend, inp.shape)
    # every default candidate is measured, reported as dropped, or the one path left
    accounted = set(fast.timings) | set(fast.rejected) | {fast.backend}
    assert set(DEFAULT) <= accounted, (fast.timings, fast.rejected)
    if "fused" in fast.timings or fast.backend == "fused":  # the fused model's graph was tried too
        assert "fused+torchscript" in accounted
    assert all(isinstance(r, str) and r for r in fast.rejected.values())


def test_vgg_bn_torchscript_failure_is_reported_with_its_reason():
    """torchvision's vgg11_bn pools to 7x7 adaptively; oneDNN's pool in the TorchScript graph
    refuses a 2x2 input to it (64x64 images). Before: the call raised from the interpreter."""
    model = ARCHITECTURES["vgg_bn"]()
    x = torch.randn(1, 3, 64, 64)
    fast = optimize_for_inference(model, x, rounds=1, candidates=("eager", "torchscript"))
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) <= 1e-4
    if "torchscript" not in fast.timings:  # a later oneDNN may take it
        assert fast.backend == "eager"
        assert fast.rejected["torchscript"] == ("failed on the example input: RuntimeError: input size is not "
                                                "divisible by the output size is not supported yet")
