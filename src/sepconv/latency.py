"""Measured latency of a convolution's candidate replacements on this machine, cached on disk.

``convert(..., cost="latency")`` allocates a time budget instead of a MAC budget. Time is what a
candidate layer (a structure at a rank, or the dense conv itself) takes on this CPU through the
path the converted model will use, :func:`~sepconv.optimize.optimize_for_inference`'s per-layer
choice: each candidate is built on PyTorch's channels_last path and, where a fused kernel takes it
(and matches it), on the fused kernel too (:func:`candidate_paths`); both are timed in the same
run on an input of the layer's own shape, and the candidate's time is the faster one's, the path
``optimize_for_inference`` keeps for such a layer. (Not ``optimize_for_inference`` itself per
candidate: its own correctness checks and timings of each path cost more than the table's timing;
the converted model is optimized, checked and measured whole afterwards.)

Measuring smartly: latency is close to affine in the rank for one structure and shape, so only a
few ranks per structure are timed (about ``samples``, spread geometrically over the ranks that
are cheaper than the dense layer in MACs, always the smallest and the largest) and the others are
interpolated linearly between them (a smaller rank never predicted slower than a larger one:
:func:`_envelope`). Every timed candidate of a layer shape is timed in the same
interleaved run as the dense layer, so the ratios within a layer are fair; each candidate's time is
the least over the rounds of a warm block of calls (:func:`fastest`): another process on a shared
machine only ever adds time, and on 2 busy cores a median can be a multiple of the quiet time (a
2-thread kernel waits a whole scheduler slice for a descheduled thread), which a cached table would
then keep. Where even the least is inflated (the first candidate's multi-threaded time well above
its single-threaded one, :func:`_busy`), the machine is busy: each candidate's time is the least of
its multi- and single-threaded times, used for this conversion only and not cached (``busy``).
The table is cached per machine (CPU model and flags), torch and sepconv version, kernel sources and thread
count, in ``$SEPCONV_CACHE_DIR`` or ``~/.cache/sepconv/latency``; a second conversion of a model
with the same layer shapes times nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Optional

import torch
from torch import nn

from . import _fused
from ._io import write_atomic
__all__ = ["LatencyTable", "candidate_layer", "candidate_paths", "fastest", "sample_ranks"]

# how the table's times are measured; part of the cache key, so that a table measured another way
# (format 1: medians, which a busy machine inflates several-fold) is measured again, not reused
TABLE_FORMAT = 3  # 2: least times, inputs in channels_last; 3: each candidate's faster path timed directly


def cache_directory() -> str:
    """``$SEPCONV_CACHE_DIR/latency`` or ``~/.cache/sepconv/latency`` (``$XDG_CACHE_HOME`` honoured)."""
    base = os.environ.get("SEPCONV_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "sepconv")
    return os.path.join(base, "latency")


def machine_key(threads: Optional[int] = None) -> str:
    """What a timing depends on besides the layer: CPU, versions, kernel sources and threads."""
    from . import __version__

    threads = torch.get_num_threads() if threads is None else threads
    try:
        kernels = _fused._fingerprint([])
    except OSError:
        kernels = "no-kernel-sources"
    text = "\0".join((_fused.cpu_signature(), torch.__version__, __version__, kernels, str(threads),
                      os.environ.get("SEPCONV_ISA", ""), f"format {TABLE_FORMAT}"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sample_ranks(ranks: Sequence[int], samples: int = 6) -> list[int]:
    """About ``samples`` of ``ranks`` (sorted), spread geometrically, with the first and the last.

    Example:
        >>> sample_ranks([1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 13, 16], samples=4)
        [1, 3, 6, 16]
    """
    ranks = sorted(set(ranks))
    if len(ranks) <= samples:
        return ranks
    lo, hi = ranks[0], ranks[-1]
    picks = {lo, hi}
    for i in range(1, samples - 1):
        target = lo * (hi / lo) ** (i / (samples - 1))
        picks.add(min(ranks, key=lambda r: abs(r - target)))
    return sorted(picks)


def _envelope(points: dict[int, float]) -> dict[int, float]:
    """Each rank's time at most that of any larger rank of the same structure: a larger rank does
    more work, so a smaller rank measured slower was slowed by something else on the machine (a
    spike that would make the allocation skip a good rank).

    Example:
        >>> _envelope({1: 0.6, 2: 5.2, 4: 0.7, 8: 1.1})
        {1: 0.6, 2: 0.7, 4: 0.7, 8: 1.1}
    """
    out, least = {}, float("inf")
    for r in sorted(points, reverse=True):
        least = min(least, points[r])
        out[r] = least
    return dict(sorted(out.items()))


def _interpolate(points: dict[int, float], rank: int) -> float:
    """Piecewise-linear in the rank between timed ranks; flat beyond the ends."""
    xs = sorted(points)
    if rank <= xs[0]:
        return points[xs[0]]
    if rank >= xs[-1]:
        return points[xs[-1]]
    for a, b in zip(xs, xs[1:]):
        if a <= rank <= b:
            return points[a] + (points[b] - points[a]) * (rank - a) / (b - a)
    raise AssertionError("unreachable")


def fastest(fns: dict[str, Callable[[], object]], rounds: int, block: int = 2) -> dict[str, float]:
    """Least ms per call of each function over ``rounds`` interleaved rounds.

    Each round runs the functions in turn (a fresh, seeded random order), each as one untimed call
    (warm again after the others) then ``block`` timed calls back to back; a round's time is the
    block's mean, and the result the least over the rounds. Other work on the machine only adds
    time, so the least is the best estimate of the time on a quiet machine, where a median taken on
    a busy one is not (see the module docstring).

    Example:
        >>> sorted(fastest({"a": lambda: sum(range(100)), "b": lambda: sum(range(1000))}, rounds=2))
        ['a', 'b']
    """
    best = {k: float("inf") for k in fns}
    names, order = list(fns), random.Random(0)
    with torch.inference_mode():
        for _ in range(rounds):
            order.shuffle(names)
            for k in names:
                fns[k]()
                t = time.perf_counter()
                for _ in range(block):
                    fns[k]()
                best[k] = min(best[k], (time.perf_counter() - t) * 1e3 / block)
    return best


def candidate_layer(structure: str, conv: nn.Module, rank: Optional[int], bias: bool) -> nn.Module:
    """A module with ``conv``'s configuration in ``structure`` at ``rank``, random weights (timing
    does not depend on the values): ``'dense'``, ``'depthwise'``, ``'blueprint'`` or ``'spatial'``."""
    from . import layers as L

    n = conv.weight.dim() - 2
    cfg = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, bias=bias,
               padding_mode=conv.padding_mode, dtype=conv.weight.dtype)
    cin, cout, k = conv.in_channels, conv.out_channels, conv.kernel_size
    if structure == "dense":
        return (nn.Conv1d, nn.Conv2d, nn.Conv3d)[n - 1](cin, cout, k, **cfg)
    if structure == "depthwise":
        return (L.SeparableConv1d, L.SeparableConv2d, L.SeparableConv3d)[n - 1](cin, cout, k, depth_multiplier=rank, **cfg)
    if structure == "blueprint":
        cls = (L.BlueprintSeparableConv1d, L.BlueprintSeparableConv2d, L.BlueprintSeparableConv3d)[n - 1]
        return cls(cin, cout, k, rank=rank, **cfg)
    if structure == "spatial" and n == 2:
        return L.SpatiallySeparableConv2d(cin, cout, k, rank, **cfg)
    raise ValueError(f"structure: expected 'dense', 'depthwise', 'blueprint' or 'spatial', got {structure!r}")


def candidate_paths(layer: nn.Module, x: torch.Tensor) -> dict[str, nn.Module]:
    """The paths ``optimize_for_inference`` chooses between for ``layer`` inside a model, ready to
    call on ``x`` (channels_last where 4-D): ``'eager'`` (BatchNorm folded, lowered, channels_last)
    and, where fused kernels take the layer or its parts (a spatially separable layer's thin conv
    is a stem-like dense conv) and reproduce them (relative error <= 1e-4, as the dispatch checks),
    ``'fused'`` with every such part fused.

    Example:
        >>> from sepconv.layers import SeparableConv2d
        >>> x = torch.randn(1, 8, 16, 16).contiguous(memory_format=torch.channels_last)
        >>> paths = candidate_paths(SeparableConv2d(8, 16, 3, padding=1).eval(), x)
        >>> "eager" in paths
        True
    """
    from .optimize import _fuse, _lower
    from .optimize.rewrite import _fold

    folded, _ = _fold(layer)
    if x.dim() == 4:
        folded = folded.to(memory_format=torch.channels_last)
    fused = _fuse(folded, x, rounds=None) if x.dim() == 4 and x.dtype == torch.float32 else None  # on its own copy
    paths = {"eager": _lower(folded)}
    if fused is not None:
        paths["fused"] = _lower(fused)
    return paths


def _layer_key(conv: nn.Module, in_shape: Sequence[int], bias: bool) -> str:
    return json.dumps([list(in_shape), conv.out_channels, list(conv.kernel_size), list(conv.stride),
                       conv.padding if isinstance(conv.padding, str) else list(conv.padding), list(conv.dilation),
                       conv.padding_mode, bool(bias), str(conv.weight.dtype)])


def _one_thread(fns: dict, rounds: int) -> dict[str, float]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fastest(fns, rounds)
    finally:
        torch.set_num_threads(threads)


def _busy(times: dict[str, float], fns: dict, rounds: int) -> bool:
    """Whether other work on the machine slowed the multi-threaded timings: the first candidate
    took more than 1.5x (+ 50 us) its single-threaded time. On a quiet machine more threads are
    never that much slower; on busy cores every parallel call waits a scheduler slice (several
    ms) for a descheduled thread, so that even the least of many rounds is inflated (a 256-channel
    14x14 conv: 16 ms with 2 threads, 1 ms quiet)."""
    first = next(iter(fns))
    return times[first] > 1.5 * _one_thread({first: fns[first]}, min(rounds, 3))[first] + 0.05


class LatencyTable:
    """Milliseconds per candidate layer on this machine, measured once and cached on disk.

    Args:
        rounds: interleaved timing rounds per layer shape (the least of each candidate's kept).
        samples: ranks timed per structure; the others are interpolated.
        path: the cache file (default: one per machine key in :func:`cache_directory`); ``None``
            with ``cache=False`` keeps the table in memory only.
        cache: read and write the cache file.

    Example:
        >>> table = LatencyTable(rounds=2, cache=False)
        >>> conv = nn.Conv2d(8, 8, 3, padding=1)
        >>> ms = table.times(conv, (1, 8, 16, 16), {"depthwise": [1, 2]}, bias=True)
        >>> sorted(ms)
        [('dense', None), ('depthwise', 1), ('depthwise', 2)]
    """

    def __init__(self, rounds: int = 7, samples: int = 6, path: Optional[str] = None, cache: bool = True) -> None:
        self.rounds, self.samples, self.cache = rounds, samples, cache
        self.path = path or os.path.join(cache_directory(), f"{machine_key()}.json")
        self.entries: dict[str, dict[str, float]] = {}
        self.measured = 0  # candidates timed by this table (not read from the cache)
        # layer key -> candidates timed while the machine was busy: used for this conversion (the
        # least of the 2-thread and 1-thread times), never written to the cache
        self.busy: dict[str, set] = {}
        if cache:
            try:
                with open(self.path) as f:
                    data = json.load(f)
                if isinstance(data, dict) and isinstance(data.get("layers"), dict):
                    self.entries = data["layers"]
            except (OSError, ValueError):
                pass  # no cache yet, or an unreadable one: measured again and rewritten

    def times(self, conv: nn.Module, in_shape: Sequence[int], ranks: dict[str, Sequence[int]],
              bias: bool) -> dict[tuple, float]:
        """Milliseconds of the dense layer and of every ``(structure, rank)`` in ``ranks`` on an
        input of ``in_shape`` (timed or interpolated); keys ``('dense', None)`` and ``(structure, rank)``."""
        key = _layer_key(conv, in_shape, bias)
        known = self.entries.setdefault(key, {})
        wanted = {"dense": None}
        for structure, rs in ranks.items():
            for r in sample_ranks(rs, self.samples):
                wanted[f"{structure}:{r}"] = (structure, r)
        missing = [name for name in wanted if name not in known]
        if missing:
            times, busy = self._measure(conv, in_shape, bias, {n: wanted[n] for n in missing})
            known.update(times)
            if busy:
                self.busy.setdefault(key, set()).update(times)
        out = {("dense", None): known["dense"]}
        for structure, rs in ranks.items():
            points = _envelope({int(n.split(":")[1]): v for n, v in known.items() if n.startswith(structure + ":")})
            for r in rs:
                out[(structure, r)] = points[r] if r in points else _interpolate(points, r)
        return out

    def _measure(self, conv, in_shape, bias, which: dict) -> tuple[dict[str, float], bool]:
        """The candidates' times, and whether the machine was found busy (see :func:`_busy`)."""
        torch.manual_seed(0)
        x = torch.randn(*in_shape, dtype=conv.weight.dtype)
        if x.dim() == 4:  # as the layer gets it inside the optimized model (channels_last from its
            # input on): not a layout copy of its input in every timed call, which the model does not pay
            x = x.contiguous(memory_format=torch.channels_last)
        fns, paths_of = {}, {}
        for name, spec in which.items():
            structure, rank = spec if spec is not None else ("dense", None)
            paths = candidate_paths(candidate_layer(structure, conv, rank, bias).eval(), x)
            paths_of[name] = [f"{name}|{p}" for p in paths]
            fns.update({f"{name}|{p}": (lambda m=m: m(x)) for p, m in paths.items()})
        self.measured += len(which)
        times = fastest(fns, self.rounds)
        busy = torch.get_num_threads() > 1 and _busy(times, fns, self.rounds)
        if busy:
            single = _one_thread(fns, self.rounds)
            times = {k: min(v, single[k]) for k, v in times.items()}
        return {name: min(times[k] for k in keys) for name, keys in paths_of.items()}, busy

    def save(self) -> None:
        """Write the table to its cache file (atomically); errors are reported, never raised."""
        if not self.cache:
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            layers = {k: {n: v for n, v in entry.items() if n not in self.busy.get(k, ())}
                      for k, entry in self.entries.items()}
            text = json.dumps({"machine": _fused.cpu_signature(), "torch": torch.__version__,
                               "threads": torch.get_num_threads(),
                               "layers": {k: entry for k, entry in layers.items() if entry}}, indent=1)
            write_atomic(self.path, lambda f: f.write(text.encode()))
        except OSError as exc:
            print(f"sepconv: could not cache the latency table in {self.path}: {exc}", file=sys.stderr)
