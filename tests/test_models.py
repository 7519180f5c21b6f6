"""Models: forward/backward of each, the architecture tables' validation, built-in names."""

import pytest
import torch
from torch import nn

import sepconv
from sepconv.models import (
    MOBILENET_V1,
    MobileNetV1,
    build,
    conv_mobilenet_v1,
    digits_cnn,
    digits_separable_cnn,
    mobilenet_v1,
)


@pytest.mark.parametrize("make,shape,classes", [
    (lambda: mobilenet_v1(0.25, num_classes=7), (2, 3, 96, 96), 7),
    (lambda: conv_mobilenet_v1(0.25, num_classes=5), (2, 3, 64, 64), 5),
    (lambda: mobilenet_v1(0.5, num_classes=3, act_layer=nn.ReLU6, norm_layer=lambda c: nn.GroupNorm(1, c)), (2, 3, 64, 64), 3),
    (digits_cnn, (4, 1, 16, 16), 10),
    (digits_separable_cnn, (4, 1, 16, 16), 10),
])
def test_forward_backward(make, shape, classes):
    torch.manual_seed(0)
    model = make()
    out = model(torch.randn(shape))
    assert out.shape == (shape[0], classes)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_mobilenet_structure():
    model = mobilenet_v1()
    blocks = [b for b in model.features]
    assert isinstance(blocks[0][0], nn.Conv2d) and blocks[0][0].stride == (2, 2)
    seps = [b[0] for b in blocks[1:]]
    assert all(isinstance(s, sepconv.SeparableConv2d) for s in seps) and len(seps) == 13
    assert [s.stride[0] for s in seps] == [r[2] for r in MOBILENET_V1[1:]]
    assert seps[-1].stride == (1, 1)  # the last depthwise at stride 1, as every implementation
    assert all(isinstance(s.norm, nn.BatchNorm2d) and isinstance(s.act, nn.ReLU) for s in seps)
    assert all(isinstance(b[1], nn.BatchNorm2d) and isinstance(b[2], nn.ReLU) for b in blocks)
    assert sum(p.numel() for p in model.parameters()) == 4_231_976  # Keras' trainable count
    assert model.dropout.p == 1e-3 and model.classifier.in_features == 1024
    assert mobilenet_v1(0.75).num_features == 768 and mobilenet_v1(0.25).num_features == 256


@pytest.mark.parametrize("kwargs,msg", [
    (dict(width_mult=0), "width_mult: expected a positive number, got 0"),
    (dict(num_classes=0), "num_classes: expected a positive int, got 0"),
    (dict(dropout=1.0), r"dropout: expected a probability in \[0, 1\), got 1.0"),
    (dict(arch=()), r"arch: expected at least one \(kind, out_channels, stride\) row, got none"),
    (dict(arch=(("conv", 32, 3),)), "arch\\[0\\]: expected stride 1 or 2, got 3"),
    (dict(arch=(("pool", 32, 1),)), "arch\\[0\\]: expected kind 'conv' or 'dws', got 'pool'"),
    (dict(arch=(("conv", 0, 1),)), "arch\\[0\\] out_channels: expected a positive int, got 0"),
])
def test_mobilenet_validation(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        MobileNetV1(**kwargs)


def test_digits_validation_and_builtin_names():
    with pytest.raises(ValueError, match=r"arch\[0\]: expected \('conv', multiple\) or \('pool', 0\), got \('dws', 1\)"):
        digits_cnn(arch=(("dws", 1),))
    assert isinstance(build("mobilenet_v1:0.5"), MobileNetV1) and build("mobilenet_v1:0.5").width_mult == 0.5
    assert build("digits_separable_cnn:8").classifier.in_features == 32
    with pytest.raises(ValueError, match="model: expected one of"):
        build("resnet50")
