"""Candidate errors from singular values alone: equal to independent reconstructions, no per-rank
kernel built; the chosen rank's factors are the optimal ones."""

import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sepconv import decompose as D
from sepconv.convert import _build, _candidates, _Layer, _rank_grid, _structures, convert
from sepconv.convert import spectra as S

F64 = torch.float64
COMPOSE = {
    "depthwise": lambda w, r: D.compose_depthwise_separable(*D.depthwise_separable(w, r)[:2], r),
    "blueprint": lambda w, r: D.compose_blueprint_separable(*D.blueprint_separable(w, r)[:2]),
    "spatial": lambda w, r: D.compose_spatially_separable(*D.spatially_separable(w, r)[:2]),
}


def _conv_layer(cin, cout, k, seed):
    conv = nn.Conv2d(cin, cout, k, padding=k // 2).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=torch.Generator().manual_seed(seed), dtype=F64))
    in_shape = (1, cin, 8, 8)
    return _Layer("conv", conv, conv.weight.detach(), conv.bias.detach(), in_shape, 0, [])


@pytest.mark.parametrize("cin,cout,k", [(96, 96, 3), (70, 40, 3), (3, 16, 5)])
def test_candidate_errors_equal_independent_reconstructions(cin, cout, k):
    layer = _conv_layer(cin, cout, k, seed=cin)
    if cin == 96:  # the spatial matrix (288 x 288) takes the Gram route
        assert S._GRAM_MIN <= 3 * 96
    cands = _candidates(layer, _structures(layer.conv, "auto")[0], None)
    w = layer.weight
    checked = 0
    for c in cands:
        if c.rank not in (1, 2, 5, _rank_grid(c.rank)[-1]) and c.rank % 7:
            continue
        ref = (w - COMPOSE[c.structure](w, c.rank)).norm() / w.norm()
        assert abs(c.weight_error - float(ref)) < 1e-12, (c.structure, c.rank)
        checked += 1
    assert checked >= 9
    assert {c.structure for c in cands} == {"depthwise", "blueprint", "spatial"}


def test_gram_factors_are_the_optimal_ones():
    layer = _conv_layer(96, 96, 3, seed=1)
    spectrum = S.Spectrum(layer.weight, "spatial", [40])
    assert spectrum._basis is not None  # the Gram route
    built = _build("spatial", layer.conv, layer.weight, layer.bias, 40, spectrum)
    w_hat = COMPOSE["spatial"](layer.weight, 40)  # an independent SVD
    x = torch.randn(2, 96, 9, 9, dtype=F64)
    ref = F.conv2d(x, w_hat, layer.bias, padding=1)
    torch.testing.assert_close(built(x), ref, rtol=1e-9, atol=1e-9)
    rel = float((built.to_dense().weight.detach() - layer.weight).norm() / layer.weight.norm())
    assert abs(rel - spectrum.error(40)) < 1e-12


def test_data_free_candidates_build_no_kernel_per_rank(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a candidate kernel was materialized")

    monkeypatch.setattr(D, "best_approximations", refuse)
    monkeypatch.setattr(S.Spectrum, "output_errors", refuse)
    package = sys.modules["sepconv.convert"]
    if hasattr(package, "best_approximations"):  # where the materializing version took it from
        monkeypatch.setattr(package, "best_approximations", refuse)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    new, report = convert(net, budget=0.5, example_input=torch.randn(1, 3, 16, 16))
    assert report.macs_after <= 0.5 * report.macs_before


def test_numerically_low_rank_spatial_layer_is_found_exactly():
    # a 96 -> 96 bank of spatial rank 16: the Gram spectrum would show ~1e-8 where the SVD shows 1e-15
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(96 * 3, 16, generator=g, dtype=F64), torch.randn(16, 96 * 3, generator=g, dtype=F64)
    weight = (a @ b).reshape(96, 3, 96, 3).permute(2, 0, 1, 3).contiguous()  # W[n, c, y, x] = A[(c, y), (n, x)]
    net = nn.Sequential(nn.Conv2d(96, 96, 3, padding=1, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(weight)
    x = torch.randn(1, 96, 10, 10, dtype=F64)
    new, report = convert(net, example_input=x)
    assert [(r.structure, r.rank) for r in report.layers] == [("spatial", 16)]
    assert report.layers[0].weight_error < 1e-13 and report.output_error < 1e-10
    torch.testing.assert_close(new(x), net(x))


@pytest.mark.parametrize("cin,cout,k", [(12, 20, 3), (20, 6, 3), (5, 7, 5)])
def test_output_errors_equal_the_materialized_ones(cin, cout, k):
    from sepconv.convert import _output_error

    layer = _conv_layer(cin, cout, k, seed=cin + cout)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4 * cin * k * k, cin * k * k, generator=g, dtype=F64) * torch.rand(cin * k * k, generator=g, dtype=F64)
    cov = x.T @ x  # correlated, badly scaled patches
    for structure in ("depthwise", "blueprint", "spatial"):
        spectrum = S.Spectrum(layer.weight, structure, [])
        ranks = _rank_grid(spectrum.max_rank)
        got = spectrum.output_errors(layer.weight, ranks, cov)
        for r, approx in D.best_approximations(layer.weight, structure, ranks).items():
            assert abs(got[r] - _output_error(layer.weight, approx[0], cov)) < 1e-12, (structure, r)


@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (96, 96, 3, 3), (5, 3, 5, 5)])
def test_approximation_is_the_composed_factors(shape):
    """auto's trials use each candidate's dense equivalent: it equals the composition of the very
    factors the surgery builds (SVD route, and the Gram route of the 96 -> 96 spatial matrix)."""
    w = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(3))
    compose = {"depthwise": lambda f, r: D.compose_depthwise_separable(f[0], f[1], r),
               "blueprint": lambda f, r: D.compose_blueprint_separable(*f),
               "spatial": lambda f, r: D.compose_spatially_separable(*f)}
    for structure, build in compose.items():
        for r in (1, 2, 5, 40):
            spectrum = S.Spectrum(w, structure, [r])
            got = spectrum.approximation(w, r)
            torch.testing.assert_close(got, build(spectrum.factors(w, r), r), rtol=0, atol=1e-10)
            torch.testing.assert_close(got, COMPOSE[structure](w, r), rtol=0, atol=1e-9)  # an independent SVD
