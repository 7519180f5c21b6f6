"""optimize_for_inference runs a separable layer as the dense conv it composes to where that
measures clearly faster (timings mocked here: no timing asserts), with the same outputs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sepconv
from sepconv.optimize import densify as D
from sepconv.optimize import optimize_for_inference


def _model():
    torch.manual_seed(0)
    return nn.Sequential(sepconv.SeparableConv2d(8, 16, 3, padding=1, depth_multiplier=4), nn.ReLU(),
                         sepconv.BlueprintSeparableConv2d(16, 16, 3, padding=1, rank=2), nn.ReLU(),
                         sepconv.SpatiallySeparableConv2d(16, 8, 3, rank=3, padding=1),
                         sepconv.SeparableConv2d(8, 8, 3, padding=1, act_layer=nn.ReLU)).eval()


def _clock(monkeypatch, dense_ms: float):
    """interleaved() as if the dense equivalent took ``dense_ms`` and every other way 1 ms."""
    def fake(fns, rounds, warmup=0, **kwargs):
        for f in fns.values():
            f()
        return {k: (dense_ms if k == "dense" else 1.0) for k in fns}

    monkeypatch.setattr(D, "interleaved", fake)


def _reference(model, x):
    """float64: each separable layer through its factors as F.conv2d calls (the layer in float64)."""
    m = model.double()
    with torch.no_grad():
        return m(x.double())


@pytest.mark.parametrize("dense_ms,expected", [(0.5, ["0", "2", "4"]), (0.95, [])])
def test_dense_equivalent_runs_only_where_clearly_faster(monkeypatch, dense_ms, expected):
    _clock(monkeypatch, dense_ms)
    model = _model()
    x = torch.randn(2, 8, 12, 12)
    fast = optimize_for_inference(model, x, rounds=2)
    assert fast.densified == expected  # layer 5 has an activation between its factors: no dense equivalent
    with torch.no_grad():
        out = fast(x)
    torch.testing.assert_close(out.double(), _reference(_model(), x), rtol=1e-4, atol=1e-4)


def test_densify_replaces_with_the_exact_dense_conv(monkeypatch):
    _clock(monkeypatch, 0.1)
    layer = sepconv.SeparableConv2d(4, 6, 3, stride=2, padding=1, depth_multiplier=2).eval()
    model = nn.Sequential(layer).to(memory_format=torch.channels_last)
    x = torch.randn(1, 4, 9, 9).contiguous(memory_format=torch.channels_last)
    new, names = D.densify(model, x, rounds=1)
    assert names == ["0"] and type(new[0]) is nn.Conv2d
    w = sepconv.decompose.compose_depthwise_separable(layer.depthwise.weight.double(), layer.pointwise.weight.double(), 2)
    ref = F.conv2d(x.double(), w, layer.pointwise.bias.double(), stride=2, padding=1)
    with torch.no_grad():
        torch.testing.assert_close(new(x).double(), ref, rtol=1e-5, atol=1e-5)


def test_a_saved_module_without_the_attribute_loads_with_none_densified(tmp_path):
    fast = optimize_for_inference(nn.Sequential(nn.Conv2d(3, 4, 3)).eval(), torch.randn(1, 3, 8, 8), rounds=1)
    del fast.__dict__["densified"]
    torch.save(fast, tmp_path / "m.pt")
    assert torch.load(tmp_path / "m.pt", weights_only=False).densified == []


def test_a_densified_model_runs_other_input_sizes(monkeypatch):
    """Padding that depends on the input size ('same' with stride 2) is never baked into a dense
    conv: the optimized model stays correct at every input size."""
    _clock(monkeypatch, 0.1)
    torch.manual_seed(0)
    model = nn.Sequential(sepconv.SeparableConv2d(3, 8, 3, stride=2, padding="same", depth_multiplier=2),
                          sepconv.SeparableConv2d(8, 8, 3, padding=1, depth_multiplier=2)).eval()
    fast = optimize_for_inference(model, torch.randn(1, 3, 16, 16), rounds=1)
    assert fast.densified == ["1"]
    x = torch.randn(2, 3, 19, 21)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)
