"""Exactness and optimality of the factorizations."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sepconv import decompose as D

F64 = torch.float64


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_dependent_filters_are_exactly_depthwise_separable():
    # each input channel's N x K slice has rank 1: the output filters are linearly dependent
    # channel by channel (the seeds' comment thread)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 5, generator=g, dtype=F64), torch.randn(5, 9, generator=g, dtype=F64)
    w = torch.einsum("nc,ck->nck", a, b).reshape(8, 5, 3, 3)
    dw, pw, err = D.depthwise_separable(w, 1)
    assert err < 1e-12
    torch.testing.assert_close(D.compose_depthwise_separable(dw, pw, 1), w)
    # and not exactly at d = 1 for generic filters
    assert D.depthwise_separable(torch.randn(8, 5, 3, 3, dtype=F64), 1)[2] > 0.1


def test_rank1_kernel_bank_is_exactly_spatially_separable():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 5, generator=g, dtype=F64)  # (C, kh)
    b = torch.randn(6, 3, generator=g, dtype=F64)  # (N, kw)
    w = torch.einsum("cy,nx->ncyx", a, b)
    v, h, err = D.spatially_separable(w, 1)
    assert err < 1e-12 and v.shape == (1, 4, 5, 1) and h.shape == (6, 1, 1, 3)
    torch.testing.assert_close(D.compose_spatially_separable(v, h), w)


@pytest.mark.parametrize("shape", [(6, 4, 3, 3), (5, 3, 5), (4, 2, 3, 3, 3), (16, 8, 3, 3), (3, 7, 2, 5)])
def test_full_rank_is_exact_for_any_filters(shape):
    w = torch.randn(shape, dtype=F64)
    n, c, *k = shape
    kk = torch.tensor(k).prod().item()
    d = min(n, kk)
    dw, pw, err = D.depthwise_separable(w, d)
    assert err < 1e-12 and rel(D.compose_depthwise_separable(dw, pw, d), w) < 1e-12
    r = min(c, kk)
    pw, bw, err = D.blueprint_separable(w, r)
    assert err < 1e-12 and rel(D.compose_blueprint_separable(pw, bw), w) < 1e-12
    if len(k) == 2:
        r = min(c * k[0], n * k[1])
        v, h, err = D.spatially_separable(w, r)
        assert err < 1e-12 and rel(D.compose_spatially_separable(v, h), w) < 1e-12
    # more rank than needed pads with zero factors, still exact
    dw, pw, err = D.depthwise_separable(w, d + 2)
    assert err < 1e-12 and dw.shape[0] == c * (d + 2)


def test_sobel_separates_exactly():
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    col, row = D.separate_kernel(sobel_x)
    assert col.tolist() == pytest.approx([1.0, 2.0, 1.0]) and row.tolist() == pytest.approx([-1.0, 0.0, 1.0])
    assert not torch.signbit(row[1])  # 0.0 as the kernel writes it, not -0.0 (printed "-0.")
    torch.testing.assert_close(torch.outer(col, row), sobel_x)
    col, row = D.separate_kernel(sobel_x.T)  # Sobel-y
    torch.testing.assert_close(torch.outer(col, row), sobel_x.T)
    assert D.kernel_rank(sobel_x) == 1
    gauss = torch.outer(torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]), torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]))
    col, row = D.separate_kernel(gauss)
    torch.testing.assert_close(torch.outer(col, row), gauss)
    laplace = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
    assert D.separate_kernel(laplace) is None and D.kernel_rank(laplace) == 2
    assert D.kernel_rank(torch.zeros(3, 3)) == 0


@given(st.integers(1, 6), st.integers(1, 6), st.sampled_from([(1,), (3,), (2, 3), (3, 3), (2, 2, 2)]),
       st.integers(1, 5), st.integers(0, 10**6))
def test_error_is_the_discarded_singular_energy(n, c, k, r, seed):
    w = torch.randn(n, c, *k, generator=torch.Generator().manual_seed(seed), dtype=F64)
    dw, pw, err = D.depthwise_separable(w, r)
    assert abs(rel(D.compose_depthwise_separable(dw, pw, r), w) - err) < 1e-9
    assert abs(float(D.truncation_errors(w, "depthwise")[min(r, min(n, dw[0].numel()))]) - err) < 1e-9
    pw2, bw, err2 = D.blueprint_separable(w, r)
    assert abs(rel(D.compose_blueprint_separable(pw2, bw), w) - err2) < 1e-9
    if len(k) == 2:
        v, h, err3 = D.spatially_separable(w, r)
        assert abs(rel(D.compose_spatially_separable(v, h), w) - err3) < 1e-9


def _fit_by_gradient_descent(w, structure, r, steps=1500):
    """An independent optimizer: Adam on the factors from a random start."""
    torch.manual_seed(0)
    n, c, *k = w.shape
    if structure == "depthwise":
        a = torch.randn(c * r, 1, *k, dtype=F64, requires_grad=True)
        b = torch.randn(n, c * r, *[1] * len(k), dtype=F64, requires_grad=True)
        compose = lambda: D.compose_depthwise_separable(a, b, r)  # noqa: E731
    elif structure == "blueprint":
        a = torch.randn(n * r, c, *[1] * len(k), dtype=F64, requires_grad=True)
        b = torch.randn(n, r, *k, dtype=F64, requires_grad=True)
        compose = lambda: D.compose_blueprint_separable(a, b)  # noqa: E731
    else:
        a = torch.randn(r, c, k[0], 1, dtype=F64, requires_grad=True)
        b = torch.randn(n, r, 1, k[1], dtype=F64, requires_grad=True)
        compose = lambda: D.compose_spatially_separable(a, b)  # noqa: E731
    opt = torch.optim.Adam([a, b], lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((compose() - w) ** 2).sum()
        loss.backward()
        opt.step()
        sched.step()
    return rel(compose().detach(), w)


def _trained_weights(model):
    return [m.weight.detach().double() for m in model.modules()
            if isinstance(m, torch.nn.Conv2d) and m.groups == 1 and m.kernel_size != (1, 1)]


@pytest.mark.parametrize("structure,r", [("depthwise", 1), ("depthwise", 2), ("blueprint", 1), ("blueprint", 3),
                                         ("spatial", 2), ("spatial", 5)])
def test_optimality_random_filters(structure, r):
    w = torch.randn(6, 4, 3, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    fn = {"depthwise": D.depthwise_separable, "blueprint": D.blueprint_separable, "spatial": D.spatially_separable}[structure]
    compose = {"depthwise": lambda a, b: D.compose_depthwise_separable(a, b, r),
               "blueprint": D.compose_blueprint_separable, "spatial": D.compose_spatially_separable}[structure]
    a, b, err = fn(w, r)
    # no gradient-descent fit of the same shapes does better
    assert _fit_by_gradient_descent(w, structure, r) >= err - 1e-6
    # and no random perturbation of the optimum does better
    g = torch.Generator().manual_seed(4)
    for scale in (1e-1, 1e-3):
        for _ in range(50):
            pa = a + scale * torch.randn(a.shape, generator=g, dtype=F64)
            pb = b + scale * torch.randn(b.shape, generator=g, dtype=F64)
            assert rel(compose(pa, pb), w) >= err - 1e-12


def test_optimality_trained_filters(trained_digits_cnn):
    weights = _trained_weights(trained_digits_cnn)
    assert len(weights) == 4
    w = weights[2][:16, :16]  # a trained 3x3 bank, kept small for the gradient-descent reference
    for structure, fn, r in [("depthwise", D.depthwise_separable, 1), ("blueprint", D.blueprint_separable, 2),
                             ("spatial", D.spatially_separable, 4)]:
        err = fn(w, r)[2]
        assert 0 < err < 1
        assert _fit_by_gradient_descent(w, structure, r, steps=1000) >= err - 1e-6


def test_spectrum_shapes_and_grouped_spatial():
    w = torch.randn(8, 4, 3, 5, dtype=F64)
    assert D.spectrum(w, "depthwise").shape == (4, 8)
    assert D.spectrum(w, "blueprint").shape == (8, 4)
    assert D.spectrum(w, "spatial").shape == (1, 12)
    s = D.spectrum(w, "spatial")
    e = D.truncation_errors(w, "spatial")
    assert float(e[0]) == pytest.approx(1.0) and float(e[-1]) == pytest.approx(0.0, abs=1e-12)
    assert float(e[3]) == pytest.approx(float((s[0, 3:] ** 2).sum() / (s**2).sum()) ** 0.5)
    wg = torch.randn(6, 2, 3, 3, dtype=F64)  # a grouped conv, groups = 3
    v, h, err = D.spatially_separable(wg, rank=18, groups=3)  # full rank: 6 per group
    assert err < 1e-12 and v.shape == (18, 2, 3, 1) and h.shape == (6, 6, 1, 3)
    torch.testing.assert_close(D.compose_spatially_separable(v, h, 3), wg)
    v, h, err = D.spatially_separable(wg, rank=3, groups=3)
    per_group = [D.spatially_separable(wg[2 * i:2 * i + 2], 1)[2] for i in range(3)]
    assert 0 < err < 1 and min(per_group) <= err <= max(per_group)


def test_decompose_bad_input():
    with pytest.raises(ValueError, match=r"weight: expected finite values, got nan at index \(0, 0, 0, 0\)"):
        D.depthwise_separable(torch.tensor([float("nan")]).expand(2, 2, 3, 3).clone())
    with pytest.raises(ValueError, match="depth_multiplier: expected a positive int, got 0"):
        D.depthwise_separable(torch.randn(2, 2, 3, 3), 0)
    with pytest.raises(ValueError, match="rank: expected a positive int, got -1"):
        D.blueprint_separable(torch.randn(2, 2, 3, 3), -1)
    with pytest.raises(ValueError, match=r"weight: expected a conv weight with 4 dims \(N, C, \*k\), got shape \(2, 2, 3\)"):
        D.spatially_separable(torch.randn(2, 2, 3), 1)
    with pytest.raises(ValueError, match=r"structure: expected one of \('depthwise', 'blueprint', 'spatial'\), got 'tucker'"):
        D.spectrum(torch.randn(2, 2, 3, 3), "tucker")
    with pytest.raises(TypeError, match="weight: expected a floating-point tensor, got torch.int64"):
        D.depthwise_separable(torch.ones(2, 2, 3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="rank: expected a multiple of groups=2, got 3"):
        D.spatially_separable(torch.randn(4, 2, 3, 3), 3, groups=2)


@pytest.mark.parametrize("structure,shape,groups", [("depthwise", (6, 4, 3, 3), 1), ("blueprint", (5, 3, 2, 3, 3), 1),
                                                    ("spatial", (6, 4, 3, 5), 1), ("spatial", (6, 2, 3, 3), 3)])
def test_best_approximations_equal_composed_factors(structure, shape, groups):
    w = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(5))
    ranks = [3, 6] if structure == "spatial" and groups == 3 else [1, 2, 5]
    approx = D.best_approximations(w, structure, ranks, groups=groups)
    for r in ranks:
        if structure == "depthwise":
            dw, pw, err = D.depthwise_separable(w, r)
            dense = D.compose_depthwise_separable(dw, pw, r)
        elif structure == "blueprint":
            pw, bw, err = D.blueprint_separable(w, r)
            dense = D.compose_blueprint_separable(pw, bw)
        else:
            v, h, err = D.spatially_separable(w, r, groups)
            dense = D.compose_spatially_separable(v, h, groups)
        torch.testing.assert_close(approx[r][0], dense)
        assert approx[r][1] == pytest.approx(err, abs=1e-12)


def test_a_layers_own_parameter_decomposes_without_autograd_warnings():
    """``D.depthwise_separable(conv.weight)`` as the README writes it: the error is a plain number
    (no "requires_grad=True to a scalar" warning); the factors still carry autograd, as functions
    of the parameter."""
    import warnings

    conv = torch.nn.Conv2d(4, 6, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fn, arg in ((D.depthwise_separable, 1), (D.blueprint_separable, 2), (D.spatially_separable, 2)):
            a, b, err = fn(conv.weight, arg)
            assert isinstance(err, float) and a.requires_grad and b.requires_grad
        assert D.kernel_rank(torch.nn.Parameter(torch.ones(3, 3))) == 1
