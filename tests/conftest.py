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
