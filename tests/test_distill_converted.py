"""distill() on a converted model must not undo the conversion's fit in its first step."""

import torch
from torch.utils.data import TensorDataset

import sepconv
from _tiny_resnet import factory, samples


def _error(student, teacher, x) -> float:
    with torch.no_grad():
        out, ref = student(x).double(), teacher(x).double()
    return float((out - ref).norm() / ref.norm())


def test_one_distillation_step_does_not_blow_up_a_converted_bn_resnet():
    # Adam's first step moves every weight by ~lr whatever the gradient: 0.0149 -> 0.0729 here
    teacher, x = factory(), samples()
    student, _ = sepconv.convert(teacher, budget=0.5, example_input=x[:1], calibration_data=[x])
    before = _error(student, teacher, x)
    sepconv.distill(student, teacher, TensorDataset(x), epochs=1, lr=3e-4, batch_size=32, progress=False)
    after = _error(student, teacher, x)
    assert 0 < before < 0.1
    assert after <= before * 1.001
