"""profile() on the meta device: no parameter data copied, repeated meta ops answered from a cache
keyed by every argument, with the counts of a real run."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import sepconv


class _Repeats(nn.Module):
    """The same input shape through ops whose output shapes differ only by non-tensor arguments."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=2)

    def forward(self, x):
        a = F.avg_pool2d(x, 2).flatten(1)
        b = F.avg_pool2d(x, 3).flatten(1)
        c = F.pad(x, (1, 1, 1, 1)) * 2
        d = F.pad(x, (0, 2, 0, 0)) * 2.0
        e = self.conv(x).flatten(1)
        f = self.conv2(x).flatten(1)
        return torch.cat([a, b, c.flatten(1), d.flatten(1), e, f, self.conv(c).flatten(1)], 1)


def test_profile_op_cache_keeps_every_shape():
    model = _Repeats()
    cost = sepconv.profile(model, (2, 4, 12, 12))
    with FlopCounterMode(display=False) as counter:
        y = model(torch.randn(2, 4, 12, 12))
    assert y.shape == (2, 3424)
    rows = {r.name: r for r in cost.layers}
    assert rows["conv"].output_shape == (2, 4, 12, 12)  # its last call (on the padded input)
    assert rows["conv2"].output_shape == (2, 4, 14, 14)
    assert cost.macs == 4 * 4 * 9 * 2 * (10 * 10 + 12 * 12 + 14 * 14) == counter.get_total_flops() // 2


def test_profile_copies_no_parameter_data_and_keeps_ties():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    model[2].weight = model[0].weight  # tied
    before = [p.clone() for p in model.parameters()]
    cost = sepconv.profile(model, (3, 8))
    assert cost.params == 8 * 8 + 8 + 8 and cost.macs == 2 * 3 * 8 * 8
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(not p.is_meta for p in model.parameters())
