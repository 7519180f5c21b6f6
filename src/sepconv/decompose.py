"""Pure tensor math for separable structures: composing factors into dense kernels, and back.

Nothing here knows about ``nn.Module``. Dense conv weights are ``W (N, C, *k)`` (output
channels, input channels per group, kernel). Each ``compose_*`` is the exact inverse of the
structure: the dense kernel whose convolution equals the two-factor convolution.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

import torch
from torch import Tensor

from ._checks import check_finite, check_real

__all__ = [
    "depthwise_separable",
    "blueprint_separable",
    "spatially_separable",
    "spectrum",
    "truncation_errors",
    "best_approximations",
    "kernel_rank",
    "separate_kernel",
    "compose_depthwise_separable",
    "compose_blueprint_separable",
    "compose_spatially_separable",
]


def _factor(name: str, weight: object, dims: tuple = (3, 4, 5)) -> Tensor:
    """Check a factor given to a ``compose_*`` function: a tensor with 1-3 spatial dims, no empty dim."""
    if not isinstance(weight, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() not in dims or 0 in weight.shape:
        raise ValueError(f"{name}: expected a non-empty conv weight with {' or '.join(str(d) for d in dims)} dims, "
                         f"got shape {tuple(weight.shape)}")
    return weight


def compose_depthwise_separable(depthwise_weight: Tensor, pointwise_weight: Tensor, depth_multiplier: int = 1) -> Tensor:
    """Dense kernel of depthwise ``(C*d, 1, *k)`` then pointwise ``(N, C*d, *1)``.

    ``W[n, c] = sum_j P[n, c*d + j] * D[c*d + j]`` (output channel ``c*d + j`` of a grouped conv
    with ``groups = C`` belongs to input channel ``c``).

    Returns:
        ``(N, C, *k)``.

    Example:
        >>> compose_depthwise_separable(torch.randn(6, 1, 3, 3), torch.randn(4, 6, 1, 1), 2).shape
        torch.Size([4, 3, 3, 3])
    """
    d = _check_rank("depth_multiplier", depth_multiplier)
    _factor("depthwise_weight", depthwise_weight)
    _factor("pointwise_weight", pointwise_weight)
    mid, n_out = depthwise_weight.shape[0], pointwise_weight.shape[0]
    if depthwise_weight.shape[1] != 1 or mid % d:
        raise ValueError(f"depthwise_weight: expected shape (C*d, 1, *k) with d={d}, got {tuple(depthwise_weight.shape)}")
    n = depthwise_weight.dim() - 2
    if pointwise_weight.dim() != n + 2 or tuple(pointwise_weight.shape[1:]) != (mid, *[1] * n):
        raise ValueError(f"pointwise_weight: expected shape (N, {mid}{', 1' * n}) for depthwise_weight "
                         f"{tuple(depthwise_weight.shape)}, got {tuple(pointwise_weight.shape)}")
    c = mid // d
    pw = pointwise_weight.reshape(n_out, c, d)
    dw = depthwise_weight.reshape(c, d, -1)
    return torch.einsum("ncj,cjk->nck", pw, dw).reshape(n_out, c, *depthwise_weight.shape[2:])


def compose_blueprint_separable(pointwise_weight: Tensor, depthwise_weight: Tensor) -> Tensor:
    """Dense kernel of pointwise ``(N*r, C, *1)`` then grouped ``(N, r, *k)`` (``groups = N``).

    ``W[n, c] = sum_j P[n*r + j, c] * B[n, j]``.

    Returns:
        ``(N, C, *k)``.

    Example:
        >>> compose_blueprint_separable(torch.randn(8, 3, 1, 1), torch.randn(4, 2, 5, 5)).shape
        torch.Size([4, 3, 5, 5])
    """
    _factor("pointwise_weight", pointwise_weight)
    _factor("depthwise_weight", depthwise_weight)
    n_out, r = depthwise_weight.shape[:2]
    c = pointwise_weight.shape[1]
    n = depthwise_weight.dim() - 2
    if pointwise_weight.dim() != n + 2 or tuple(pointwise_weight.shape) != (n_out * r, c, *[1] * n):
        raise ValueError(f"pointwise_weight: expected shape ({n_out * r}, C{', 1' * n}) for depthwise_weight "
                         f"{tuple(depthwise_weight.shape)}, got {tuple(pointwise_weight.shape)}")
    pw = pointwise_weight.reshape(n_out, r, c)
    dw = depthwise_weight.reshape(n_out, r, -1)
    return torch.einsum("njc,njk->nck", pw, dw).reshape(n_out, c, *depthwise_weight.shape[2:])


def compose_spatially_separable(vertical_weight: Tensor, horizontal_weight: Tensor, groups: int = 1) -> Tensor:
    """Dense kernel of vertical ``(r, C/g, kh, 1)`` then horizontal ``(N, r/g, 1, kw)`` filters.

    In each group: ``W[o, i, y, x] = sum_q H[o, q, 0, x] * V[q, i, y, 0]``.

    Returns:
        ``(N, C/g, kh, kw)``.

    Example:
        >>> compose_spatially_separable(torch.randn(2, 3, 3, 1), torch.randn(4, 2, 1, 3)).shape
        torch.Size([4, 3, 3, 3])
    """
    g = _check_rank("groups", groups)
    _factor("vertical_weight", vertical_weight, dims=(4,))
    _factor("horizontal_weight", horizontal_weight, dims=(4,))
    r, cg, kh = vertical_weight.shape[:3]
    n_out, _, _, kw = horizontal_weight.shape
    if vertical_weight.shape[3] != 1 or r % g:
        raise ValueError(f"vertical_weight: expected shape (r, C/groups, kh, 1) with r a multiple of groups={g}, "
                         f"got {tuple(vertical_weight.shape)}")
    if horizontal_weight.shape[2] != 1 or n_out % g or horizontal_weight.shape[1] != r // g:
        raise ValueError(f"horizontal_weight: expected shape (N, {r // g}, 1, kw) with N a multiple of groups={g}, "
                         f"got {tuple(horizontal_weight.shape)}")
    v = vertical_weight.reshape(g, r // g, cg, kh)
    h = horizontal_weight.reshape(g, n_out // g, r // g, kw)
    return torch.einsum("goqx,gqiy->goiyx", h, v).reshape(n_out, cg, kh, kw)


# --------------------------------------------------------------------------------------------
# Factorizations: optimal (Eckart-Young) splits of a dense kernel into separable factors
# --------------------------------------------------------------------------------------------
STRUCTURES = ("depthwise", "blueprint", "spatial")


def _check_weight(weight: Tensor, name: str = "weight", dims: tuple = (3, 4, 5)) -> Tensor:
    if not isinstance(weight, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() not in dims:
        raise ValueError(f"{name}: expected a conv weight with {' or '.join(str(d) for d in dims)} dims (N, C, *k), got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {weight.dtype}")
    if 0 in weight.shape:
        raise ValueError(f"{name}: expected a non-empty conv weight, got shape {tuple(weight.shape)}")
    return check_finite(name, weight)


def _finite_factors(*factors: Tensor) -> tuple:
    """Refuse factors that are not finite after the cast back to the weight's dtype (overflow)."""
    for f in factors:
        if not bool(torch.isfinite(f).all()):
            raise ValueError(f"weight: expected factors representable in {f.dtype}, got non-finite values after "
                             f"the cast (overflow); pass weight.double() and cast the factors yourself")
    return factors


def _check_rank(name: str, rank: int) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"{name}: expected a positive int, got {rank!r}")
    if rank < 1:
        raise ValueError(f"{name}: expected a positive int, got {rank}")
    return rank


def _svd(m: Tensor):
    """Batched SVD in float64 (exact enough to test optimality), results in m's dtype."""
    u, s, vh = torch.linalg.svd(m.double(), full_matrices=False)
    return u, s, vh


def _truncate(u: Tensor, s: Tensor, vh: Tensor, r: int):
    """Best rank-r factors ``(a, b)`` with ``a @ b`` the truncation; singular values split as sqrt."""
    k = min(r, s.shape[-1])
    root = s[..., :k].sqrt()
    a = u[..., :, :k] * root.unsqueeze(-2)
    b = vh[..., :k, :] * root.unsqueeze(-1)
    if k < r:  # more rank than the slice has: pad with zero factors (still exact)
        pad_a = a.new_zeros(*a.shape[:-1], r - k)
        pad_b = b.new_zeros(*b.shape[:-2], r - k, b.shape[-1])
        a, b = torch.cat([a, pad_a], -1), torch.cat([b, pad_b], -2)
    return a, b


def _rel_error(s: Tensor, r: int) -> float:
    s = s.detach()  # a number for the caller: no autograd (factors of a Parameter still carry theirs)
    total = float((s**2).sum())
    if total == 0.0:
        return 0.0
    return float((s[..., r:] ** 2).sum() / total) ** 0.5


def spectrum(weight: Tensor, structure: str, groups: int = 1) -> Tensor:
    """Singular values that govern each separable structure of a conv weight ``(N, C, *k)``.

    * ``'depthwise'``: per input channel c, the ``N x K`` slice ``W[:, c]`` -> ``(C, min(N, K))``.
    * ``'blueprint'``: per output channel n, the ``C x K`` slice ``W[n]`` -> ``(N, min(C, K))``.
    * ``'spatial'`` (2-D): ``W`` as the ``(C*kh) x (N*kw)`` matrix -> ``(groups, min(C*kh, N*kw))``
      (per group for a grouped conv).

    The squared relative error of the best rank-r factorization is the sum of the squared values
    beyond r (over all slices) divided by the sum of all of them.

    Example:
        >>> spectrum(torch.randn(8, 4, 3, 3), 'depthwise').shape
        torch.Size([4, 8])
    """
    weight = _check_weight(weight)
    if structure == "depthwise":
        n, c = weight.shape[:2]
        return _svd(weight.reshape(n, c, -1).transpose(0, 1))[1]
    if structure == "blueprint":
        n, c = weight.shape[:2]
        return _svd(weight.reshape(n, c, -1))[1]
    if structure == "spatial":
        return _svd(_spatial_matrix(weight, groups))[1]
    raise ValueError(f"structure: expected one of {STRUCTURES}, got {structure!r}")


def truncation_errors(weight: Tensor, structure: str, groups: int = 1) -> Tensor:
    """Relative Frobenius error of the best factorization at every rank 0..max (float64).

    ``errors[r]`` is the error at rank r (``errors[0] == 1``, the last entry is 0).

    Example:
        >>> truncation_errors(torch.randn(4, 2, 3, 3), 'depthwise').shape   # ranks 0..4
        torch.Size([5])
    """
    s = spectrum(weight, structure, groups)
    energy = (s**2).sum(0) if s.dim() > 1 else s**2  # per rank, summed over slices / groups
    total = energy.sum()
    if total == 0:
        return torch.zeros(energy.shape[0] + 1, dtype=torch.float64)
    tail = torch.cat([energy.flip(0).cumsum(0).flip(0), energy.new_zeros(1)])
    return (tail / total).clamp_min(0).sqrt()


def depthwise_separable(weight: Tensor, depth_multiplier: int = 1) -> tuple[Tensor, Tensor, float]:
    """Best depthwise + pointwise factorization of a dense conv weight (Frobenius norm).

    For each input channel c the ``N x K`` slice ``W[:, c]`` is replaced by its best rank-d
    approximation (truncated SVD, optimal by Eckart-Young), written as ``d`` depthwise filters
    ``D[c*d + j]`` and pointwise weights ``P[:, c*d + j]``. Exact iff every slice has rank <= d
    (the output filters are linearly dependent channel by channel), in particular always at
    ``d >= min(N, K)``.

    Args:
        weight: ``(N, C, *k)``, 1-3 spatial dims.
        depth_multiplier: d.

    Returns:
        ``(depthwise_weight (C*d, 1, *k), pointwise_weight (N, C*d, *1), rel_error)`` with
        ``rel_error = ||W - W_d|| / ||W||`` (the discarded singular energy).

    Example:
        >>> w = torch.randn(8, 3, 3, 3)
        >>> dw, pw, err = depthwise_separable(w, depth_multiplier=8)
        >>> err < 1e-6, torch.allclose(compose_depthwise_separable(dw, pw, 8), w, atol=1e-5)
        (True, True)
    """
    weight = _check_weight(weight)
    d = _check_rank("depth_multiplier", depth_multiplier)
    n, c = weight.shape[:2]
    u, s, vh = _svd(weight.reshape(n, c, -1).transpose(0, 1))  # (C, N, K)
    return (*_depthwise_factors(u, s, vh, weight, d), _rel_error(s, d))


def _depthwise_factors(u: Tensor, s: Tensor, vh: Tensor, weight: Tensor, d: int) -> tuple[Tensor, Tensor]:
    """``(depthwise (C*d, 1, *k), pointwise (N, C*d, *1))`` in ``weight``'s dtype from the SVD of
    ``weight``'s ``(C, N, K)`` slices."""
    n, c, *k = weight.shape
    a, b = _truncate(u, s, vh, d)  # a: (C, N, d), b: (C, d, K)
    dw = b.reshape(c * d, 1, *k)
    pw = a.permute(1, 0, 2).reshape(n, c * d, *[1] * len(k))
    return _finite_factors(dw.to(weight.dtype), pw.to(weight.dtype))


def blueprint_separable(weight: Tensor, rank: int = 1) -> tuple[Tensor, Tensor, float]:
    """Best blueprint (pointwise then per-output spatial) factorization of a dense conv weight.

    For each output channel n the ``C x K`` slice ``W[n]`` is replaced by its best rank-r
    approximation: ``W[n, c] ~ sum_j P[n*r + j, c] B[n, j]``.

    Args:
        weight: ``(N, C, *k)``.
        rank: r, blueprints per output channel.

    Returns:
        ``(pointwise_weight (N*r, C, *1), depthwise_weight (N, r, *k), rel_error)``.

    Example:
        >>> pw, dw, err = blueprint_separable(torch.randn(4, 2, 3, 3), rank=2)
        >>> pw.shape, dw.shape, err < 1e-6
        (torch.Size([8, 2, 1, 1]), torch.Size([4, 2, 3, 3]), True)
    """
    weight = _check_weight(weight)
    r = _check_rank("rank", rank)
    n, c = weight.shape[:2]
    u, s, vh = _svd(weight.reshape(n, c, -1))  # (N, C, K)
    return (*_blueprint_factors(u, s, vh, weight, r), _rel_error(s, r))


def _blueprint_factors(u: Tensor, s: Tensor, vh: Tensor, weight: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """``(pointwise (N*r, C, *1), depthwise (N, r, *k))`` in ``weight``'s dtype from the SVD of
    ``weight``'s ``(N, C, K)`` slices."""
    n, c, *k = weight.shape
    a, b = _truncate(u, s, vh, r)  # a: (N, C, r), b: (N, r, K)
    pw = a.transpose(1, 2).reshape(n * r, c, *[1] * len(k))
    dw = b.reshape(n, r, *k)
    return _finite_factors(pw.to(weight.dtype), dw.to(weight.dtype))


def _spatial_matrix(weight: Tensor, groups: int) -> Tensor:
    """``W (N, C/g, kh, kw)`` -> per group the ``(C/g*kh) x (N/g*kw)`` matrix ``A[(c,y),(n,x)]``."""
    if weight.dim() != 4:
        raise ValueError(f"weight: expected a 2-D conv weight (N, C, kh, kw) for a spatial factorization, got shape {tuple(weight.shape)}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or weight.shape[0] % groups:
        raise ValueError(f"groups: expected a positive divisor of out_channels={weight.shape[0]}, got {groups!r}")
    n, cg, kh, kw = weight.shape
    w = weight.reshape(groups, n // groups, cg, kh, kw)
    return w.permute(0, 2, 3, 1, 4).reshape(groups, cg * kh, (n // groups) * kw)


def spatially_separable(weight: Tensor, rank: int = 1, groups: int = 1) -> tuple[Tensor, Tensor, float]:
    """Best vertical ``(kh x 1)`` + horizontal ``(1 x kw)`` factorization (Jaderberg et al. 2014).

    ``W`` read as the ``(C*kh) x (N*kw)`` matrix ``A[(c, y), (n, x)] = W[n, c, y, x]`` is replaced
    by its truncated SVD (closed form, optimal in Frobenius norm): rank ``r`` vertical filters
    ``V[q, c, :, 0]`` then horizontal filters ``H[n, q, 0, :]``. Grouped convs are factorized
    per group (``r`` must be a multiple of ``groups``).

    Args:
        weight: ``(N, C/groups, kh, kw)``.
        rank: r intermediate channels in total.
        groups: the conv's groups.

    Returns:
        ``(vertical_weight (r, C/g, kh, 1), horizontal_weight (N, r/g, 1, kw), rel_error)``.

    Example:
        >>> sobel = torch.tensor([[-1., 0., 1.], [-2., 0., 2.], [-1., 0., 1.]]).reshape(1, 1, 3, 3)
        >>> v, h, err = spatially_separable(sobel, rank=1)
        >>> err < 1e-6
        True
    """
    weight = _check_weight(weight, dims=(4,))
    r = _check_rank("rank", rank)
    groups = _check_rank("groups", groups)
    if r % groups:
        raise ValueError(f"rank: expected a multiple of groups={groups}, got {r}")
    u, s, vh = _svd(_spatial_matrix(weight, groups))  # (g, C/g*kh, m), (g, m), (g, m, N/g*kw)
    return (*_spatial_factors(u, s, vh, weight, r), _rel_error(s, r // groups))


def _spatial_factors(u: Tensor, s: Tensor, vh: Tensor, weight: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """``(vertical (r, C/g, kh, 1), horizontal (N, r/g, 1, kw))`` in ``weight``'s dtype from the SVD
    of ``weight``'s spatial matrices (one per group, the groups read from ``u``)."""
    groups = u.shape[0]
    n, cg, kh, kw = weight.shape
    rg = r // groups
    a, b = _truncate(u, s, vh, rg)  # a: (g, cg*kh, rg), b: (g, rg, ng*kw)
    v = a.reshape(groups, cg, kh, rg).permute(0, 3, 1, 2).reshape(r, cg, kh, 1)
    h = b.reshape(groups, rg, n // groups, kw).permute(0, 2, 1, 3).reshape(n, rg, 1, kw)
    return _finite_factors(v.to(weight.dtype), h.to(weight.dtype))


def _check_kernel(kernel: object) -> Tensor:
    """A non-empty, finite 2-D kernel of real numbers."""
    if not isinstance(kernel, Tensor):
        raise TypeError(f"kernel: expected a torch.Tensor, got {type(kernel).__name__}")
    if kernel.dim() != 2:
        raise ValueError(f"kernel: expected a 2-D tensor (kh, kw), got shape {tuple(kernel.shape)}")
    if 0 in kernel.shape:
        raise ValueError(f"kernel: expected a non-empty 2-D tensor (kh, kw), got shape {tuple(kernel.shape)}")
    if kernel.is_complex() or kernel.dtype == torch.bool:
        raise TypeError(f"kernel: expected real numbers, got {kernel.dtype}")
    return check_finite("kernel", kernel)


def kernel_rank(kernel: Tensor, rtol: float = 1e-6) -> int:
    """Numerical rank of a 2-D kernel: singular values above ``rtol * largest``.

    Raises:
        ValueError: for a kernel that is not a non-empty, finite 2-D tensor, or a negative ``rtol``.

    Example:
        >>> kernel_rank(torch.tensor([[1., 2., 1.], [2., 4., 2.], [1., 2., 1.]]))
        1
    """
    _check_kernel(kernel)
    rtol = check_real("rtol", rtol)
    s = torch.linalg.svdvals(kernel.detach().double())
    if s.numel() == 0 or float(s[0]) == 0.0:
        return 0
    return int((s > rtol * s[0]).sum())


def separate_kernel(kernel: Tensor, rtol: float = 1e-6) -> Optional[tuple[Tensor, Tensor]]:
    """Split a 2-D kernel exactly into ``outer(column, row)``, or ``None`` if it has rank > 1.

    The scale is put on the column; the row is scaled so its largest magnitude entry is positive
    and its entries are the smallest integers when the kernel is an integer one (Sobel ->
    ``[1, 2, 1]`` and ``[-1, 0, 1]`` up to sign conventions).

    Returns:
        ``(column (kh,), row (kw,))`` with ``outer(column, row) == kernel`` to rounding, in the
        kernel's dtype (the default float dtype for an integer kernel, whose factors need not be
        integers).

    Raises:
        ValueError: for a kernel that is not a non-empty, finite 2-D tensor, or a negative ``rtol``.

    Example:
        >>> sobel = torch.tensor([[-1., 0., 1.], [-2., 0., 2.], [-1., 0., 1.]])
        >>> col, row = separate_kernel(sobel)
        >>> col.tolist(), row.tolist()
        ([1.0, 2.0, 1.0], [-1.0, 0.0, 1.0])
        >>> torch.equal(torch.outer(col, row), sobel)
        True
    """
    if kernel_rank(kernel, rtol) > 1:
        return None
    k = kernel.double()
    u, s, vh = torch.linalg.svd(k)
    col, row = u[:, 0] * s[0], vh[0]
    # normalize: row's first non-negligible entry sets the scale (smallest |entry| -> +/-1)
    nz = row.abs() > rtol * row.abs().max()
    scale = row[nz].abs().min()
    sign = torch.sign(row[nz][-1])  # the last non-zero entry positive: [-1, 0, 1], not [1, 0, -1]
    row, col = row / (scale * sign), col * (scale * sign)
    dtype = kernel.dtype if kernel.is_floating_point() else torch.get_default_dtype()
    # + 0.0 turns a -0.0 (a zero tap times a negative sign) into 0.0, as the kernel writes it
    return col.to(dtype) + 0.0, row.to(dtype) + 0.0


def best_approximations(weight: Tensor, structure: str, ranks, groups: int = 1) -> dict:
    """The dense kernel of the best factorization at each rank, from one SVD (float64).

    Equivalent to composing the factors of :func:`depthwise_separable` /
    :func:`blueprint_separable` / :func:`spatially_separable` at every rank, without repeating
    the decomposition.

    Returns:
        ``{rank: (approximation (N, C, *k) float64, rel_error)}``.

    Example:
        >>> w = torch.randn(4, 3, 3, 3)
        >>> approx = best_approximations(w, 'depthwise', [1, 4])
        >>> approx[4][1] < 1e-6
        True
    """
    weight = _check_weight(weight)
    n, c, *k = weight.shape
    w = weight.double()
    if structure == "depthwise":
        m = w.reshape(n, c, -1).transpose(0, 1)
        back = lambda a: a.transpose(0, 1).reshape(weight.shape)  # noqa: E731
    elif structure == "blueprint":
        m = w.reshape(n, c, -1)
        back = lambda a: a.reshape(weight.shape)  # noqa: E731
    elif structure == "spatial":
        m = _spatial_matrix(w, groups)
        kh, kw = k
        back = lambda a: a.reshape(groups, c, kh, n // groups, kw).permute(0, 3, 1, 2, 4).reshape(weight.shape)  # noqa: E731
    else:
        raise ValueError(f"structure: expected one of {STRUCTURES}, got {structure!r}")
    if isinstance(ranks, (str, Tensor)) or not isinstance(ranks, Iterable):
        raise TypeError(f"ranks: expected an iterable of positive ints, got {ranks!r}")
    ranks = [_check_rank("rank", r) for r in ranks]
    per = groups if structure == "spatial" else 1
    for r in ranks:
        if r % per:
            raise ValueError(f"rank: expected a multiple of groups={per}, got {r}")
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    out = {}
    for r in ranks:
        r_slice = r // per
        q = min(r_slice, s.shape[-1])
        approx = (u[..., :q] * s[..., None, :q]) @ vh[..., :q, :]
        out[r] = (back(approx), _rel_error(s, q))
    return out
