"""Each separable structure's spectrum, computed once per layer and structure.

By Eckart-Young, the relative weight error of the best rank-r factorization is
``sqrt(sum of the squared singular values beyond r / sum of all of them)`` (over every slice), so
the errors of the whole rank grid follow from the singular values alone: no candidate kernel is
built. Only the rank that is chosen gets factors (:meth:`Spectrum.factors`); calibrated conversion's
output errors (:meth:`Spectrum.output_errors`) follow the factorization's components rank by rank.

The spatial structure's matrix ``(C*kh) x (N*kw)`` is large (1536 x 1536 for a 512 -> 512 3x3
conv). When its smaller side has at least ``_GRAM_MIN`` rows, its spectrum comes from the
eigendecomposition of the smaller Gram matrix (``A A^T`` or ``A^T A``, several times cheaper than
an SVD), and the chosen rank's factors from the same eigenvectors by projection
(``A_r = U_r U_r^T A``). The Gram matrix squares the condition number, so where a relative error
below ``_GRAM_SAFE`` shows up at a rank asked for (a numerically low-rank matrix, where squared
rounding would be visible), the spectrum is recomputed by an SVD and the factors come from
:mod:`sepconv.decompose` as for the other structures.
"""

import math
from typing import Optional

import torch
from torch import Tensor

from ..decompose import (
    _blueprint_factors,
    _depthwise_factors,
    _finite_factors,
    _rel_error,
    _spatial_factors,
    _spatial_matrix,
)

__all__ = ["Spectrum"]

_GRAM_MIN = 192
_GRAM_SAFE = 1e-3


def _matrices(weight: Tensor, structure: str) -> Tensor:
    """The float64 matrices whose truncated SVDs are the structure's best factorizations."""
    n, c = weight.shape[:2]
    w = weight.detach().double()
    if structure == "depthwise":
        return w.reshape(n, c, -1).transpose(0, 1)  # (C, N, K)
    if structure == "blueprint":
        return w.reshape(n, c, -1)  # (N, C, K)
    return _spatial_matrix(w, 1)  # (1, C*kh, N*kw)


def _tail_errors(energy: Tensor) -> Tensor:
    """Relative error at every rank 0..m from the per-rank energies (squared singular values)."""
    total = energy.sum()
    tail = torch.cat([energy.flip(0).cumsum(0).flip(0), energy.new_zeros(1)])
    return (tail / total).clamp_min(0).sqrt() if total > 0 else torch.zeros_like(tail)


class Spectrum:
    """The singular values of one structure of one conv weight (see the module docstring).

    Args:
        weight: the (BatchNorm-folded) conv weight ``(N, C, *k)``; spatial needs 2-D and groups 1.
        structure: ``'depthwise'``, ``'blueprint'`` or ``'spatial'``.
        ranks: the ranks whose errors will be asked for (the Gram route is taken only where all of
            them are accurate, and builds factors only for them).
    """

    def __init__(self, weight: Tensor, structure: str, ranks: list[int]) -> None:
        self.structure = structure
        self.shape = tuple(weight.shape)
        self._basis: Optional[tuple[Tensor, bool]] = None  # (eigenvectors, rows side) of the Gram matrix
        self._svd: Optional[tuple[Tensor, Tensor]] = None  # (u, vh) of the matrices, on the SVD route
        self._weight = weight  # (a reference) for output_errors to know its SVD is this one
        m = _matrices(weight, structure)
        if structure == "spatial" and min(m.shape[-2:]) >= _GRAM_MIN:
            a = m[0]
            rows = a.shape[0] <= a.shape[1]
            lam, q = torch.linalg.eigh(a @ a.T if rows else a.T @ a)
            lam, q = lam.flip(0).clamp_min(0), q.flip(1)
            errors = _tail_errors(lam)
            self._ranks = {r for r in ranks if r < lam.shape[0]}
            if all(float(errors[r]) >= _GRAM_SAFE for r in self._ranks):
                self.s, self._basis = lam.sqrt().unsqueeze(0), (q, rows)
                return
        u, self.s, vh = torch.linalg.svd(m, full_matrices=False)  # s: (slices, min(rows, cols)), float64
        self._svd = (u, vh)

    @property
    def max_rank(self) -> int:
        """The rank at which the factorization is exact."""
        return self.s.shape[-1]

    def error(self, rank: int) -> float:
        """Relative Frobenius error ``||W - W_r|| / ||W||`` of the best rank-``rank`` factorization."""
        return _rel_error(self.s, min(rank, self.max_rank))

    def factors(self, weight: Tensor, rank: int) -> Optional[tuple[Tensor, Tensor]]:
        """The structure's two factors at ``rank`` in ``weight``'s dtype, in the order and shapes of
        :mod:`sepconv.decompose` (e.g. spatial ``(vertical (r, C, kh, 1), horizontal (N, r, 1, kw))``);
        ``weight`` is the one the spectrum was computed from. None where the spectrum cannot give
        them (a Gram spectrum asked for a rank it was not built for)."""
        if self._svd is not None:
            u, vh = self._svd
            build = {"depthwise": _depthwise_factors, "blueprint": _blueprint_factors, "spatial": _spatial_factors}
            return build[self.structure](u, self.s, vh, weight, rank)
        if self._basis is None or (rank not in self._ranks and rank != self.max_rank):
            return None
        q, rows = self._basis
        a = _matrices(weight, "spatial")[0]
        if rows:  # U_r from the eigenvectors, S_r V_r^T = U_r^T A
            u = q[:, :rank]
            b = u.T @ a
            root = b.norm(dim=1).sqrt()
            left, right = u * root, b / root.clamp_min(torch.finfo(b.dtype).tiny).unsqueeze(1)
        else:  # V_r from the eigenvectors, U_r S_r = A V_r
            v = q[:, :rank]
            b = a @ v
            root = b.norm(dim=0).sqrt()
            left, right = b / root.clamp_min(torch.finfo(b.dtype).tiny), root.unsqueeze(1) * v.T
        n, c, kh, kw = self.shape
        vertical = left.reshape(c, kh, rank).permute(2, 0, 1).reshape(rank, c, kh, 1)
        horizontal = right.reshape(rank, n, kw).permute(1, 0, 2).reshape(n, rank, 1, kw)
        return _finite_factors(vertical.to(weight.dtype), horizontal.to(weight.dtype))

    def approximation(self, weight: Tensor, rank: int) -> Optional[Tensor]:
        """The best rank-``rank`` approximation of ``weight`` (the weight the spectrum was computed
        from) as a dense conv weight of its shape and dtype: ``U_r S_r V_r^T`` of its matrices
        (``U_r U_r^T A`` on the Gram route), read back as a conv weight and computed in the
        weight's precision; None where the spectrum cannot give it (a Gram spectrum asked for a
        rank it was not built for)."""
        dt = weight.dtype  # computed in the weight's precision (a float32 model's trial needs no more)
        if self._svd is not None:
            u, vh = self._svd
            r = min(rank, self.max_rank)
            m = (u[..., :r] * self.s[..., None, :r]).to(dt) @ vh[..., :r, :].to(dt)
        elif self._basis is not None and (rank in self._ranks or rank >= self.max_rank):
            q, rows = self._basis
            a = _matrices(weight, "spatial").to(dt)
            q = q[:, :min(rank, self.max_rank)].to(dt)
            m = q @ (q.T @ a) if rows else (a @ q) @ q.T
        else:
            return None
        n, c, *k = self.shape
        if self.structure == "depthwise":  # (C, N, K)
            w = m.transpose(0, 1)
        elif self.structure == "blueprint":  # (N, C, K)
            w = m
        else:  # (1, C*kh, N*kw): A[(c, y), (n, x)] = W[n, c, y, x]
            w = m.reshape(c, k[0], n, k[1]).permute(2, 0, 1, 3)
        return w.reshape(n, c, *k).to(weight.dtype)

    def output_errors(self, weight: Tensor, ranks: list[int], cov: Tensor) -> dict[int, float]:
        """Relative output error ``sqrt(tr(dW S dW^T) / tr(W S W^T))`` of the best factorization at
        each of ``ranks`` (``W`` as ``(N, C*K)``, ``S`` the covariance of the layer's input patches).

        From one SVD: ``dW`` and ``dW S`` are updated rank by rank with the components added, and
        ``(components) S`` is formed through the structure (for depthwise and spatial, a
        product with S's rows of one channel or one kernel column), never a candidate kernel times S.
        """
        if self._svd is not None and weight is self._weight:  # the SVD this spectrum came from
            (u, vh), s = self._svd, self.s
        else:
            u, s, vh = torch.linalg.svd(_matrices(weight, self.structure), full_matrices=False)
        cov = cov.double()
        dw = weight.detach().double().reshape(self.shape[0], -1).clone()
        dws = dw @ cov
        den = float((dw * dws).sum())
        out, done = {}, 0
        for r in sorted(set(ranks)):
            q = min(r, s.shape[-1])
            if q > done:
                delta, delta_s = self._components(u, s, vh, done, q, cov)
                dw -= delta
                dws -= delta_s
                done = q
            out[r] = math.sqrt(max(float((dw * dws).sum()), 0.0) / den) if den > 0 else 0.0
        return out

    def _components(self, u: Tensor, s: Tensor, vh: Tensor, p: int, q: int, cov: Tensor) -> tuple[Tensor, Tensor]:
        """The components ``p..q-1`` of the factorization as ``(N, C*K)`` and times ``cov``."""
        n, c = self.shape[:2]
        if self.structure == "depthwise":  # (C, N, m), (C, m), (C, m, K)
            us, v = u[:, :, p:q] * s[:, None, p:q], vh[:, p:q, :]
            delta = torch.einsum("cnj,cjk->nck", us, v).reshape(n, -1)
            rows = torch.einsum("cjk,ckf->cjf", v, cov.reshape(c, v.shape[-1], -1))
            return delta, torch.einsum("cnj,cjf->nf", us, rows)
        if self.structure == "blueprint":  # (N, C, m), (N, m), (N, m, K): no cheaper product than the dense one
            delta = torch.einsum("ncj,njk->nck", u[:, :, p:q] * s[:, None, p:q], vh[:, p:q, :]).reshape(n, -1)
            return delta, delta @ cov
        kw = self.shape[3]  # spatial: (1, C*kh, m), (1, m), (1, m, N*kw)
        left, right = u[0, :, p:q], (s[0, p:q, None] * vh[0, p:q, :]).reshape(q - p, n, kw)
        delta = torch.einsum("aj,jnx->nax", left, right).reshape(n, -1)
        rows = torch.einsum("aj,axf->jxf", left, cov.reshape(left.shape[0], kw, -1))
        return delta, torch.einsum("jnx,jxf->nf", right, rows)
