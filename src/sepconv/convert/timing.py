"""``cost="latency"``: each candidate's measured time on this machine, and the model's own.

The candidates' times come from :class:`sepconv.latency.LatencyTable` (measured through
``optimize_for_inference``'s eager and fused paths on an input of the layer's shape, a few ranks
per structure timed and the rest interpolated, cached on disk per machine). The model's time is
that of ``optimize_for_inference(model, example_input)``, the path a user deploys; the predicted
time of a conversion is the model's time with each converted layer's dense time replaced by its
candidate's (:func:`~sepconv.convert.allocate.predicted_ms`), and after the surgery the converted
model is optimized and measured side by side with the original (interleaved blocks, medians).
"""

from typing import Optional

from torch import Tensor, nn

from .._timing import interleaved
from ..latency import LatencyTable
from .candidates import _Layer

ROUNDS = 10  # interleaved rounds of whole-model timings
BLOCK = 3  # back-to-back calls per round


def attach_latencies(layers: list[_Layer], table: Optional[LatencyTable] = None) -> LatencyTable:
    """Set ``ms`` of every candidate of every layer (dense included); returns the table used."""
    table = table or LatencyTable()
    for l in layers:
        ranks: dict = {}
        for c in l.candidates:
            if c.structure != "dense":
                ranks.setdefault(c.structure, []).append(c.rank)
        times = table.times(l.conv, l.in_shape, ranks, bias=l.bias is not None)
        for c in l.candidates:
            c.ms = times[(c.structure, c.rank)]
    table.save()
    return table


def optimized(model: nn.Module, x: Tensor) -> nn.Module:
    from ..optimize import optimize_for_inference

    return optimize_for_inference(model, x)


def model_ms(fast: nn.Module, x: Tensor) -> float:
    """Median ms of one call of the optimized model ``fast`` on ``x``."""
    return interleaved({"model": lambda: fast(x)}, ROUNDS, warmup=2, block=BLOCK)["model"]


def side_by_side(original: nn.Module, converted: nn.Module, x: Tensor) -> tuple[float, float]:
    """Median ms of the optimized original and converted models, interleaved in one run."""
    t = interleaved({"original": lambda: original(x), "converted": lambda: converted(x)}, ROUNDS, warmup=2,
                    block=BLOCK)
    return t["original"], t["converted"]
