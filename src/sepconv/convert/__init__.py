"""Model surgery: replace a trained model's convolutions by separable ones, keeping what it learned.

``convert(model, ...)`` returns a new model (unless ``inplace=True``) and a
:class:`ConversionReport`. Each eligible convolution (``nn.Conv1d/2d/3d`` with ``groups == 1`` and
a kernel larger than 1 in some dimension) is factorized by the optimal truncated SVD of
:mod:`sepconv.decompose` into one of three structures, at a rank chosen by one of:

* ``rank``: one rank everywhere;
* ``tolerance``: per layer, the cheapest factorization whose relative error is <= tolerance;
* ``budget``: the fraction of the model's MACs to keep, with ranks allocated **globally**;
* none of them: lossless — only exact factorizations (relative error <= 100 x the dtype's eps).

Allocation objective (``budget``)
---------------------------------
Minimize ``sum_l e_l**2`` subject to ``sum_l macs_l <= budget * macs(model)``, where ``e_l`` is
layer l's relative error (weight error ``||W - W_r|| / ||W||``; with ``calibration_data``, the
relative output error ``sqrt(tr(dW S dW^T) / tr(W S W^T))`` with ``S`` the covariance of the
layer's input patches). Relative errors make layers of different scales comparable (BatchNorm
folding rescales weights arbitrarily), and squared errors of different layers add up like
independent noise energies in the output, to first order. Each layer's (MACs, e**2) candidates
are reduced to their lower convex hull; starting from every layer's cheapest point, the move with
the largest error decrease per added MAC is taken while it fits the budget (greedy marginal
analysis, optimal on the convex hulls up to the last move). ``allocation='uniform'`` instead gives
every layer the same fraction of its own MACs, for comparison.

MACs are counted like :func:`sepconv.profile` (convolutions and linear layers); layers that cannot
be factorized count at their full cost against the budget.

Layout: :mod:`.api` (``convert``, the recipe), :mod:`.candidates` (structures, rank grid, MACs and
errors of each candidate), :mod:`.spectra` (one SVD per layer and structure: every rank's error from
the singular values, factors only for the chosen rank), :mod:`.allocate` (hull, global / uniform
allocation, lossless / tolerance / rank choice), :mod:`.calibrate` (calibration batches, layer
inputs, covariances, least-squares refit), :mod:`.surgery` (building and placing the separable
layers), :mod:`.report`. The BatchNorm math is :mod:`sepconv.fold`.
"""

from .allocate import _allocate_global, _allocate_uniform, _choose, _hull
from .api import ALLOCATIONS, COSTS, METHODS, _check_args, convert
from .calibrate import (
    _COV_ROWS,
    _MAX_COV,
    _batches,
    _capture_inputs,
    _check_input,
    _check_runs,
    _chunks,
    _dense_apply,
    _patches,
    _refit_last,
    _rel,
)
from .candidates import (
    NOMINAL_SIZE,
    _Candidate,
    _candidates,
    _Layer,
    _max_rank,
    _nominal_shape,
    _output_error,
    _padding_arg,
    _rank_grid,
    _skip_reason,
    _structure_macs,
    _structures,
)
from .report import ConversionReport, LayerConversion
from .spectra import Spectrum
from .surgery import _build, _set_module, fold_batchnorm

__all__ = ["convert", "ConversionReport", "LayerConversion", "fold_batchnorm", "METHODS"]
