import os

import torch
from hypothesis import settings

torch.set_num_threads(min(2, os.cpu_count() or 1))
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.load_profile("ci")

import pytest


@pytest.fixture(scope="session")
def digits():
    """The bundled digits, upsampled to 16x16: (train, test) datasets."""
    from sepconv.data import DigitsDataset

    return DigitsDataset("train", image_size=16), DigitsDataset("test", image_size=16)


@pytest.fixture(scope="session")
def trained_digits_cnn(digits):
    """A digits CNN trained here on real data (~99% test accuracy); tests must not modify it."""
    from sepconv.models import digits_cnn
    from sepconv.train import train

    torch.manual_seed(0)
    model = digits_cnn(32)
    history = train(model, digits[0], epochs=6, eval_data=digits[1], progress=False)
    assert history.eval_accuracy[-1] > 0.97
    return model.eval()


ISAS = ("avx512", "avx2", "generic")  # the C++ kernels' instruction sets (sepconv._fused)


@pytest.fixture(params=ISAS)
def isa(request):
    """Each instruction set's kernels in turn, skipped where this CPU lacks it (the widest again after)."""
    from sepconv import _fused

    module = _fused.load()
    if module is None:
        pytest.skip(f"the C++ kernels are not available here: {_fused.error()}")
    if request.param not in module.supported_isas():
        pytest.skip(f"this CPU does not support {request.param} (it supports {', '.join(module.supported_isas())})")
    assert _fused.set_isa(request.param) == module.isa() == request.param
    yield request.param
    _fused.set_isa(None)
