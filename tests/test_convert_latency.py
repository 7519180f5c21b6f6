"""convert(cost="latency"): allocation under a time budget from a per-machine latency table.

The table's measurements are replaced by fixed synthetic times here (no timing asserts): what is
tested is that the allocation honours the predicted time, avoids what the table says is slow,
and that the report carries the predicted and measured times.
"""

import re

import pytest
import torch
from torch import nn

from sepconv.convert import timing
from sepconv.convert import convert
from sepconv.latency import LatencyTable


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1)).eval()


def _fake_times(slow: str, dense_ms: float = 10.0):
    """Dense 10 ms per layer; every structure 1 ms + 0.2 ms per rank, ``slow`` 30 ms."""
    def times(self, conv, in_shape, ranks, bias):
        out = {("dense", None): dense_ms}
        for structure, rs in ranks.items():
            for r in rs:
                out[(structure, r)] = 30.0 if structure == slow else 1.0 + 0.2 * r
        return out
    return times


@pytest.fixture
def fake_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("SEPCONV_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(timing, "optimized", lambda model, x: model)
    monkeypatch.setattr(timing, "model_ms", lambda fast, x: 35.0)  # 3 x 10 ms of convs + 5 ms of the rest
    monkeypatch.setattr(timing, "side_by_side", lambda a, b, x: (35.0, 20.0))


@pytest.mark.parametrize("slow", ["spatial", "blueprint", "depthwise"])
@pytest.mark.parametrize("budget", [0.4, 0.6])
def test_the_allocation_honours_the_predicted_time_and_avoids_slow_structures(monkeypatch, fake_machine, slow, budget):
    monkeypatch.setattr(LatencyTable, "times", _fake_times(slow))
    x = torch.randn(1, 3, 16, 16)
    small, report = convert(_net(), budget=budget, cost="latency", example_input=x)
    t = report.latency
    assert t["original_ms"] == 35.0 and t["measured_ms"] == 20.0
    assert t["predicted_ms"] <= budget * 35.0 + 1e-9
    chosen = {r.structure for r in report.layers}
    assert slow not in chosen
    # the prediction is the model's time with each converted layer's dense 10 ms replaced
    expected = 35.0 + sum((1.0 + 0.2 * r.rank) - 10.0 for r in report.layers if r.structure != "dense")
    assert t["predicted_ms"] == pytest.approx(expected)
    assert report.cost == "latency" and "predicted" in report.to_markdown()


def test_a_structure_slower_than_dense_everywhere_keeps_the_model_dense(monkeypatch, fake_machine):
    def times(self, conv, in_shape, ranks, bias):
        return {("dense", None): 10.0, **{(s, r): 12.0 for s, rs in ranks.items() for r in rs}}
    monkeypatch.setattr(LatencyTable, "times", times)
    _, report = convert(_net(), budget=1.0, cost="latency", example_input=torch.randn(1, 3, 16, 16))
    assert {r.structure for r in report.layers} == {"dense"}  # nothing is both faster and as exact


def test_an_unreachable_time_budget_says_what_is_reachable(monkeypatch, fake_machine):
    monkeypatch.setattr(LatencyTable, "times", _fake_times("none"))
    # fastest: 5 ms of the rest + 3 x 1.2 ms = 8.6 ms of 35 ms
    with pytest.raises(ValueError, match=re.escape("budget: expected at least 0.2457, the fastest candidate of every "
                                                   "layer (predicted 8.600 ms of the optimized model's 35.000 ms on "
                                                   "this machine), got 0.1")):
        convert(_net(), budget=0.1, cost="latency", example_input=torch.randn(1, 3, 16, 16))


def test_cost_arguments_are_checked():
    net, x = _net(), torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match=re.escape("cost: expected one of ('macs', 'latency'), got 'flops'")):
        convert(net, budget=0.5, cost="flops", example_input=x)
    with pytest.raises(ValueError, match=re.escape("cost: 'latency' is a budget of time; expected a budget (a fraction "
                                                   "of the optimized model's measured time), got none")):
        convert(net, rank=2, cost="latency", example_input=x)
    with pytest.raises(ValueError, match=re.escape("allocation: expected 'global' with cost='latency' (a uniform share "
                                                   "is a share of MACs), got 'uniform'")):
        convert(net, budget=0.5, cost="latency", allocation="uniform", example_input=x)
    with pytest.raises(ValueError, match="a budget is a fraction of the model's measured time"):
        convert(net, budget=0.5, cost="latency")


def test_a_real_latency_conversion_measures_and_caches(monkeypatch, tmp_path):
    """Unmocked, on a tiny model: every candidate gets a time, the table is cached on disk, and the
    output equals the MAC-budget conversion's structure for the same choice (the surgery is shared)."""
    monkeypatch.setenv("SEPCONV_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(timing, "ROUNDS", 2)
    x = torch.randn(1, 3, 16, 16)
    net = _net()
    small, report = convert(net, budget=1.0, cost="latency", example_input=x)
    t = report.latency
    assert all(t[k] > 0 for k in ("original_ms", "predicted_ms", "measured_ms"))
    assert t["batch"] == 1 and t["threads"] == torch.get_num_threads()
    assert len(list((tmp_path / "latency").glob("*.json"))) == 1
    with torch.no_grad():
        assert (small(x) - net(x)).norm() / net(x).norm() == pytest.approx(report.output_error, rel=1e-5, abs=1e-7)


def test_layer_times_longer_than_the_model_are_scaled_so_a_budget_of_one_is_reachable(monkeypatch, fake_machine):
    """Dense layers timed alone: 3 x 10 ms, but the whole model measures 20 ms (per-call overhead the
    model does not pay): the times are scaled by 2/3, all-dense is predicted at 20 ms, budget 1 works."""
    monkeypatch.setattr(timing, "model_ms", lambda fast, x: 20.0)
    monkeypatch.setattr(LatencyTable, "times", _fake_times("none"))
    _, report = convert(_net(), budget=1.0, cost="latency", example_input=torch.randn(1, 3, 16, 16))
    expected = 20.0 + sum((1.0 + 0.2 * r.rank - 10.0) * 2 / 3 for r in report.layers if r.structure != "dense")
    assert report.latency["predicted_ms"] == pytest.approx(expected)
    assert report.latency["predicted_ms"] <= 20.0
