"""BatchNorm-derived input statistics (the data-free objective of convert), against sampling."""

import math

import pytest
import torch
from torch import nn

from sepconv.prior import input_moments, input_scales, rectified_moments


def _bn(c: int, seed: int) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.running_mean.normal_(0, 1, generator=g)
        bn.running_var.uniform_(0.5, 2, generator=g)
        bn.weight.uniform_(0.3, 1.5, generator=g)
        bn.bias.normal_(0, 1, generator=g)
    return bn.eval()


def _matching_input(bn: nn.BatchNorm2d, n: int, *rest: int) -> torch.Tensor:
    """Inputs with the BatchNorm's running statistics (what it was trained on)."""
    c = bn.num_features
    x = torch.randn(n, c, *rest, dtype=torch.float64)
    return x * bn.running_var.double().sqrt().view(1, c, 1, 1) + bn.running_mean.double().view(1, c, 1, 1)


@pytest.mark.parametrize("m,v", [(0.0, 1.0), (1.3, 0.4), (-2.0, 2.5), (0.5, 0.0), (-0.5, 0.0)])
def test_rectified_moments_match_sampling(m, v):
    g = torch.Generator().manual_seed(0)
    y = torch.relu(m + math.sqrt(v) * torch.randn(2_000_000, generator=g, dtype=torch.float64))
    mean, var = rectified_moments(torch.tensor([m]), torch.tensor([v]))
    assert float(mean) == pytest.approx(float(y.mean()), abs=3e-3)
    assert float(var) == pytest.approx(float(y.var()), abs=5e-3)


class _Block(nn.Module):
    """bn -> relu -> conv_a; a residual add of two BatchNorm branches -> torch.relu -> conv_b;
    conv_c reads the model input (no statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn1, self.bn2 = _bn(4, 1), _bn(4, 2)
        self.act = nn.ReLU()
        self.conv_a = nn.Conv2d(4, 3, 3)
        self.conv_b = nn.Conv2d(4, 3, 3)
        self.conv_c = nn.Conv2d(4, 3, 3)

    def forward(self, x, z):
        a = self.conv_a(self.act(self.bn1(x)))
        b = self.conv_b(torch.relu(self.bn1(x) + self.bn2(z)))
        return a + b + self.conv_c(x)


def test_input_moments_follow_batchnorm_relu_and_adds_and_match_sampling():
    net = _Block().double().eval()
    got = input_moments(net)
    assert sorted(got) == ["conv_a", "conv_b"]  # conv_c reads the raw input: nothing known
    x, z = _matching_input(net.bn1, 4000, 4, 4), _matching_input(net.bn2, 4000, 4, 4)
    seen = {}
    hooks = [getattr(net, n).register_forward_pre_hook(lambda m, a, n=n: seen.setdefault(n, a[0]))
             for n in ("conv_a", "conv_b")]
    with torch.no_grad():
        net(x, z)
    for h in hooks:
        h.remove()
    for name, (mean, var) in got.items():
        t = seen[name].transpose(0, 1).reshape(4, -1)
        torch.testing.assert_close(mean, t.mean(1), atol=0.03, rtol=0.03)
        torch.testing.assert_close(var, t.var(1), atol=0.05, rtol=0.05)


def test_input_scales_are_root_second_moments_normalized():
    net = nn.Sequential(nn.Conv2d(2, 4, 1), _bn(4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3)).eval()
    mean, var = input_moments(net)["3"]
    s = (mean ** 2 + var).sqrt()
    torch.testing.assert_close(input_scales(net)["3"], (s / s.mean()).clamp_min(1e-3))


def test_training_mode_batchnorm_and_untraceable_models_give_nothing():
    net = nn.Sequential(_bn(4, 0).train(), nn.ReLU(), nn.Conv2d(4, 4, 3))
    assert input_moments(net) == {}

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn, self.conv = _bn(4, 0), nn.Conv2d(4, 4, 3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                x = -x
            return self.conv(self.bn(x))

    assert input_moments(Branchy()) == {}


@pytest.mark.parametrize("method", ["depthwise", "blueprint", "spatial"])
def test_data_free_convert_is_optimal_for_the_input_weighted_error(method):
    """With BatchNorm statistics before a conv, convert factorizes W * s and unscales the input
    factor: its weighted error ||(W - W_hat) s|| is no larger than the plain SVD's, and the report
    gives the built layer's plain weight error."""
    from sepconv.convert import convert

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _bn(8, 5), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1)).double().eval()
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    s = input_scales(net)["3"].view(1, -1, 1, 1)
    w = net[3].weight.detach()
    results = {}
    for flag in (True, False):
        small, report = convert(net, method=method, rank=2, example_input=x, input_statistics=flag)
        w_hat = small[3].to_dense().weight.detach()
        results[flag] = float(((w - w_hat) * s).norm() / (w * s).norm())
        row = next(r for r in report.layers if r.name == "3")
        assert row.weight_error == pytest.approx(float((w - w_hat).norm() / w.norm()), rel=1e-9)
        z = torch.randn(2, 8, 10, 10, dtype=torch.float64)
        with torch.no_grad():  # the converted layer computes what its dense form computes
            torch.testing.assert_close(small[3](z), small[3].to_dense()(z))
    assert results[True] <= results[False] + 1e-12
    if method != "depthwise":  # per-channel scaling changes these structures' optimum
        assert results[True] < results[False]


def test_input_statistics_is_opt_in_and_checked():
    from sepconv.convert import convert

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _bn(8, 5), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1)).eval()
    x = torch.randn(1, 3, 10, 10)
    assert convert(net, rank=2, example_input=x)[1].objective == "weight"
    assert convert(net, rank=2, example_input=x, input_statistics=True)[1].objective == "weighted"
    with pytest.raises(TypeError, match=r"^input_statistics: expected a bool, got 1$"):
        convert(net, rank=2, example_input=x, input_statistics=1)
