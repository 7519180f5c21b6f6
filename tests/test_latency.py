"""The latency table behind ``convert(cost="latency")``: which ranks are timed, interpolation,
candidate layers, and the on-disk cache. No timing asserts: only what is measured and stored."""

import json

import pytest
import torch
from torch import nn

from sepconv import layers as L
from sepconv import latency
from sepconv.latency import LatencyTable, _envelope, _interpolate, candidate_layer, fastest, machine_key, sample_ranks


def test_sample_ranks_keeps_both_ends_and_spreads_geometrically():
    assert sample_ranks([1, 2, 3], 6) == [1, 2, 3]
    assert sample_ranks([5, 1, 3, 3], 6) == [1, 3, 5]
    picked = sample_ranks(list(range(1, 97)), 6)
    assert picked[0] == 1 and picked[-1] == 96 and len(picked) == 6
    ratios = [b / a for a, b in zip(picked, picked[1:])]
    assert max(ratios) / min(ratios) < 1.6  # about evenly spaced on a log scale: 1, 2, 6, 15, 38, 96


def test_interpolation_is_linear_between_timed_ranks_and_flat_outside():
    points = {2: 1.0, 6: 3.0, 10: 3.0}
    assert _interpolate(points, 4) == pytest.approx(2.0)
    assert _interpolate(points, 8) == pytest.approx(3.0)
    assert _interpolate(points, 1) == 1.0 and _interpolate(points, 12) == 3.0
    assert _interpolate(points, 6) == 3.0


@pytest.mark.parametrize("structure,rank,cls", [
    ("dense", None, nn.Conv2d), ("depthwise", 2, L.SeparableConv2d),
    ("blueprint", 3, L.BlueprintSeparableConv2d), ("spatial", 4, L.SpatiallySeparableConv2d)])
def test_candidate_layers_have_the_convs_configuration(structure, rank, cls):
    conv = nn.Conv2d(6, 10, (3, 5), stride=2, padding=(1, 2), bias=False)
    layer = candidate_layer(structure, conv, rank, bias=True)
    assert type(layer) is cls
    x = torch.randn(2, 6, 17, 13)
    assert layer(x).shape == conv(x).shape


def test_candidate_layer_1d_and_3d_and_bad_structure():
    assert type(candidate_layer("depthwise", nn.Conv1d(4, 8, 3), 1, True)) is L.SeparableConv1d
    assert type(candidate_layer("blueprint", nn.Conv3d(4, 8, 3), 2, True)) is L.BlueprintSeparableConv3d
    with pytest.raises(ValueError, match=r"structure: expected 'dense', 'depthwise', 'blueprint' or 'spatial', got 'svd'"):
        candidate_layer("svd", nn.Conv2d(4, 8, 3), 1, True)
    with pytest.raises(ValueError, match="got 'spatial'"):  # a spatially separable 1-D conv does not exist
        candidate_layer("spatial", nn.Conv1d(4, 8, 3), 1, True)


@pytest.fixture
def quiet(monkeypatch):
    """The machine taken as quiet (what is tested is caching, not the busy check)."""
    monkeypatch.setattr(latency, "_busy", lambda times, fns, rounds: False)


def test_times_every_rank_timing_only_samples_and_caches(tmp_path, quiet):
    path = str(tmp_path / "table.json")
    conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
    ranks = {"depthwise": list(range(1, 10)), "spatial": [1, 2, 3, 4, 6, 8, 11, 16, 22]}
    table = LatencyTable(rounds=1, samples=3, path=path)
    ms = table.times(conv, (1, 8, 12, 12), ranks, bias=True)
    assert set(ms) == {("dense", None)} | {(s, r) for s, rs in ranks.items() for r in rs}
    assert all(v > 0 for v in ms.values())
    assert table.measured == 1 + 3 + 3  # dense and 3 ranks per structure; the rest interpolated
    table.save()
    stored = json.loads(open(path).read())
    assert len(stored["layers"]) == 1 and stored["threads"] == torch.get_num_threads()

    again = LatencyTable(rounds=1, samples=3, path=path)
    assert again.times(conv, (1, 8, 12, 12), ranks, bias=True) == ms and again.measured == 0
    again.times(conv, (2, 8, 12, 12), ranks, bias=True)  # another input shape: timed anew
    assert again.measured == 7


def test_an_unreadable_cache_is_measured_again(tmp_path, quiet):
    path = tmp_path / "table.json"
    path.write_text("{not json")
    table = LatencyTable(rounds=1, samples=2, path=str(path))
    table.times(nn.Conv2d(4, 4, 3), (1, 4, 8, 8), {"depthwise": [1, 2]}, bias=False)
    assert table.measured == 3
    table.save()
    assert "layers" in json.loads(path.read_text())


def test_the_machine_key_depends_on_threads_and_forced_isa(monkeypatch):
    monkeypatch.delenv("SEPCONV_ISA", raising=False)
    plain = machine_key(2)
    assert machine_key(1) != plain
    monkeypatch.setenv("SEPCONV_ISA", "avx2")
    assert machine_key(2) != plain


def test_fastest_keeps_each_functions_least_time_over_the_rounds(monkeypatch):
    """A busy machine only adds time: of rounds taking 5, 1 and 7 ms (and 4, 4, 40 ms), the table
    keeps 1 (and 4), where a median would keep 5 (and 4). A fake clock, no real timing."""
    clock = [0.0]
    durations = {"a": iter([0, 5, 0, 1, 0, 7]), "b": iter([0, 4, 0, 4, 0, 40])}  # untimed warm call, then timed

    def run(name):
        def f():
            clock[0] += next(durations[name]) / 1e3
        return f

    monkeypatch.setattr(latency.time, "perf_counter", lambda: clock[0])
    assert fastest({"a": run("a"), "b": run("b")}, rounds=3, block=1) == pytest.approx({"a": 1.0, "b": 4.0})


def test_the_machine_key_depends_on_how_the_table_is_measured(monkeypatch):
    """A table measured with another statistic (medians, inflated on a busy machine) is not reused."""
    plain = machine_key(2)
    monkeypatch.setattr(latency, "TABLE_FORMAT", latency.TABLE_FORMAT + 1)
    assert machine_key(2) != plain


def test_a_smaller_rank_measured_slower_than_a_larger_one_gets_the_larger_ones_time(monkeypatch, tmp_path):
    """A spike (rank 2 timed at 5.2 ms while a busy neighbour ran, ranks 1 and 4 at 0.6 and 0.7)
    would make the allocation skip rank 2 and the ranks interpolated next to it."""
    assert _envelope({1: 0.6, 2: 5.2, 4: 0.7, 8: 1.1}) == {1: 0.6, 2: 0.7, 4: 0.7, 8: 1.1}
    measured = {"dense": 3.0, "depthwise:1": 0.6, "depthwise:2": 5.2, "depthwise:4": 0.7}
    monkeypatch.setattr(LatencyTable, "_measure",
                        lambda self, conv, shape, bias, which: ({n: measured[n] for n in which}, False))
    table = LatencyTable(samples=3, path=str(tmp_path / "t.json"))
    ms = table.times(nn.Conv2d(4, 4, 3), (1, 4, 8, 8), {"depthwise": [1, 2, 3, 4]}, bias=False)
    assert ms == {("dense", None): 3.0, ("depthwise", 1): 0.6, ("depthwise", 2): 0.7, ("depthwise", 3): 0.7,
                  ("depthwise", 4): 0.7}


def test_candidates_are_timed_on_a_channels_last_input_as_in_the_optimized_model(monkeypatch, tmp_path):
    """Inside the optimized model a layer gets a channels_last tensor; a contiguous one would add a
    layout copy to every timed call (about 12% of a 64-channel 56x56 conv here)."""
    seen = []

    def fake(layer, x):
        seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return {"eager": lambda x: x}

    monkeypatch.setattr(latency, "candidate_paths", fake)
    LatencyTable(rounds=1, path=str(tmp_path / "t.json")).times(nn.Conv2d(4, 4, 3), (1, 4, 8, 8), {"depthwise": [1]},
                                                                 bias=False)
    assert seen == [True, True]


def test_a_candidates_time_is_its_faster_path(monkeypatch, tmp_path, quiet):
    """optimize_for_inference keeps the fused kernel for a layer only where it is faster: each
    candidate's paths are timed in one run and the faster one's time is the candidate's."""
    clock = {"dense|eager": 5.0, "dense|fused": 7.0, "depthwise:1|eager": 3.0, "depthwise:1|fused": 2.0}
    monkeypatch.setattr(latency, "candidate_paths", lambda layer, x: {"eager": None, "fused": None})
    monkeypatch.setattr(latency, "fastest", lambda fns, rounds, block=2: {k: clock[k] for k in fns})
    table = LatencyTable(rounds=1, path=str(tmp_path / "t.json"))
    ms = table.times(nn.Conv2d(4, 4, 3), (1, 4, 8, 8), {"depthwise": [1]}, bias=False)
    assert ms == {("dense", None): 5.0, ("depthwise", 1): 2.0}
    assert table.measured == 2  # candidates, not paths


@pytest.mark.parametrize("structure,rank,expected", [
    ("dense", None, {"eager"}),                 # 16 x 3 x 3 inputs per output: not a stem-like conv
    ("depthwise", 2, {"eager", "fused"}),
    ("blueprint", 2, {"eager", "fused"}),
    ("spatial", 2, {"eager", "fused"}),         # its (1, 3) conv has 2 x 3 inputs per output: the stem kernel
])
def test_candidate_paths_are_the_dispatchs_and_compute_the_layer(structure, rank, expected):
    from sepconv import _fused

    if _fused.load() is None:
        pytest.skip(f"the fused kernels are not available here: {_fused.error()}")
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 3, stride=2, padding=1)
    layer = candidate_layer(structure, conv, rank, bias=True).eval()
    with torch.no_grad():  # a BatchNorm-free layer with nonzero biases, in float64 as the reference
        for p in layer.parameters():
            p.normal_()
    x = torch.randn(2, 16, 15, 11).contiguous(memory_format=torch.channels_last)
    paths = latency.candidate_paths(layer, x)
    assert set(paths) == expected
    want = layer.double()(x.double())
    for name, m in paths.items():
        with torch.inference_mode():
            got = m(x)
        assert got.shape == want.shape
        assert ((got.double() - want).norm() / want.norm()).item() < 1e-5, name


def _threaded_clock(monkeypatch, ms_by_threads):
    """``fastest`` replaced: every candidate takes ``ms_by_threads[torch.get_num_threads()]``."""
    monkeypatch.setattr(latency, "fastest", lambda fns, rounds, block=2: {
        k: ms_by_threads[torch.get_num_threads()] for k in fns})


@pytest.mark.parametrize("ms_by_threads,busy", [({2: 16.0, 1: 2.0}, True), ({2: 1.1, 1: 2.0}, False)])
def test_times_taken_on_a_busy_machine_are_used_but_not_cached(monkeypatch, request, tmp_path, ms_by_threads, busy):
    """2 threads 8x slower than 1: the machine is busy (every parallel call waited for a
    descheduled thread); the layer's times are the least of both and kept out of the cache file."""
    request.addfinalizer(lambda threads=torch.get_num_threads(): torch.set_num_threads(threads))
    torch.set_num_threads(2)
    _threaded_clock(monkeypatch, ms_by_threads)
    path = tmp_path / "t.json"
    table = LatencyTable(path=str(path))
    conv = nn.Conv2d(4, 4, 3)
    ms = table.times(conv, (1, 4, 8, 8), {"depthwise": [1]}, bias=False)
    assert ms == {("dense", None): min(ms_by_threads.values()), ("depthwise", 1): min(ms_by_threads.values())}
    assert bool(table.busy) is busy
    table.save()
    stored = json.loads(path.read_text())["layers"]
    assert len(stored) == (0 if busy else 1)
    assert LatencyTable(path=str(path)).times(conv, (1, 4, 8, 8), {"depthwise": [1]}, bias=False) == ms
