"""The allocations measured under a time budget (:class:`Trial`), which one to keep
(:func:`keep`), and where to aim the next allocation by MACs (:func:`next_fraction`): the
decisions of :func:`sepconv.convert.timing.within_budget` on what it measured, no timing here."""

from dataclasses import dataclass, field
from typing import Callable, Optional

# a measured ratio up to 2% over the budget counts as within it: two side-by-side runs of the same
# model differ by about that much here (and an all-dense result would otherwise "miss" a budget of 1)
NOISE = 0.02
# a result measured faster than this fraction of its budget is allocated again with the times
# corrected downward (less error for the time the budget allows)
UNDER = 0.9
# re-measurements of the allocation to keep, at most (see keep): the most exact of several models
# measured within the budget is also the one whose measurement most likely erred low
CONFIRMS = 2


@dataclass
class Trial:
    """One allocation, built and measured side by side with the original."""

    choice: dict  # layer name -> _Candidate
    message: str  # what the allocation says about itself (auto's comparison), or ""
    predicted_ratio: float  # predicted time / the original's, with the corrections of its round
    original_ms: float  # measured side by side (medians)
    measured_ms: float
    error: float  # the model output's relative error on the example input
    macs_fraction: Optional[float] = None  # an allocation by MACs (at this fraction of them), not by time
    rejected: bool = False  # measured again (keep) and that run missed the budget
    ratios: list = field(default_factory=list)  # each side-by-side run's measured ratio, in order

    def __post_init__(self) -> None:
        if not self.ratios:
            self.ratios = [self.ratio]

    @property
    def runs(self) -> int:
        """Side-by-side runs: ``original_ms`` and ``measured_ms`` are their means."""
        return len(self.ratios)

    def met(self, budget: float) -> bool:
        """Whether it counts as within ``budget``: its mean ratio within it (:func:`within`), and
        not passed over by :func:`keep` for a run that missed."""
        return not self.rejected and self.ratio <= within(budget)

    @property
    def ratio(self) -> float:
        return self.measured_ms / self.original_ms

    def add_run(self, original_ms: float, measured_ms: float) -> None:
        """Fold in one more side-by-side run (the times become the means over the runs)."""
        self.original_ms = (self.original_ms * self.runs + original_ms) / (self.runs + 1)
        self.measured_ms = (self.measured_ms * self.runs + measured_ms) / (self.runs + 1)
        self.ratios.append(measured_ms / original_ms)

    def doubtful(self, budget: float) -> bool:
        """Whether one measurement within ``budget`` is not enough to keep it: it was measured close
        to the budget (:func:`near`), where run-to-run noise decides; or its prediction said it
        misses the budget, so the measurement contradicts the table (other work on the machine
        slows one model's timed blocks more than the other's: a model predicted at 0.81 of the
        time measured 0.49 on a busy machine, 0.68 on a quiet one)."""
        return near(self.ratio, budget) or self.predicted_ratio > within(budget)

    def varied(self, tolerance: float = 0.25) -> bool:
        """Whether its runs' ratios differ by more than ``tolerance`` (relative): quiet, two runs
        of the same models agree within a few percent."""
        return max(self.ratios) > (1.0 + tolerance) * min(self.ratios)


def within(budget: float) -> float:
    """The largest measured ratio that counts as meeting ``budget`` (:data:`NOISE`)."""
    return budget * (1.0 + NOISE)


def near(ratio: float, budget: float) -> bool:
    """Whether a measured ratio is within ``budget`` (:func:`within`) and not far under it (at
    least :data:`UNDER` of it): where the search stops, and where a kept model is measured again.

    Example:
        >>> near(0.48, 0.5), near(0.44, 0.5), near(0.52, 0.5)
        (True, False, False)
    """
    return UNDER * budget <= ratio <= within(budget)


def keep(trials: list[Trial], budget: float, remeasure: Callable[[Trial], bool]) -> Optional[Trial]:
    """The most exact of ``trials`` within the budget as measured, confirmed where in doubt.

    Of several models measured once each, the one kept as the most exact within the budget is
    also the one whose measurement most likely erred low: a model measured near the budget (above
    :data:`UNDER` of it), or measured within it against its prediction (:meth:`Trial.doubtful`), is
    measured again (``remeasure`` folds in one more run and says whether that run alone met the
    budget), and where the new run misses, it is marked ``rejected`` and the next most exact is
    taken, at most :data:`CONFIRMS` runs in all. A model predicted and measured far under the
    budget is kept without one (run-to-run noise does not move it over). None where nothing within
    the budget holds.

    Example:
        >>> t = Trial({}, "", 0.5, 10.0, 4.0, 0.1)  # 0.4 of the original's time: far under 0.5
        >>> keep([t], 0.5, remeasure=lambda t: False) is t
        True
        >>> t = Trial({}, "", 0.8, 10.0, 4.0, 0.1)  # the same, but predicted at 0.8: measured again
        >>> keep([t], 0.5, remeasure=lambda t: False) is None
        True
    """
    confirms = CONFIRMS
    for t in sorted((t for t in trials if t.met(budget)), key=lambda t: t.error):
        if not t.doubtful(budget):
            return t
        if confirms == 0:
            continue
        confirms -= 1
        if remeasure(t):
            return t
        t.rejected = True
    return None


def next_fraction(points: list[tuple[float, float]], budget: float) -> float:
    """The fraction of the MACs at which to measure the next allocation by MACs, from the
    ``(fraction, measured ratio)`` points measured so far (in order).

    After one point: where a model whose time fell in proportion to its MACs would meet the budget
    (``fraction x budget / ratio``). After more: the secant through the two points nearest the
    budget on either side of it (regula falsi), else through the last two. A network's time falls
    with its MACs along a curve, not the line to the original's (all the MACs, the whole time): on
    ResNet-50 at batch 1, 0.75 of the MACs measured 0.87 of the time and 0.6 measured 0.70, where
    that line aimed at 0.52 for a budget of 0.75. The result may lie outside (0, 1).

    Example:
        >>> next_fraction([(0.75, 0.9)], 0.75)  # 0.75 x 0.75 / 0.9
        0.625
        >>> round(next_fraction([(0.75, 0.9), (0.625, 0.7)], 0.75), 4)  # between the two
        0.6562
    """
    f, r = points[-1]
    if len(points) == 1:
        return f * budget / r
    over = [p for p in points if p[1] > budget]
    under = [p for p in points if p[1] <= budget]
    if over and under:
        (f0, r0), (f1, r1) = min(over, key=lambda p: p[1]), max(under, key=lambda p: p[1])
    else:
        (f0, r0), (f1, r1) = points[-2], points[-1]
    if r1 == r0:
        return f1 if r1 <= budget else 0.0
    return f0 + (budget - r0) * (f1 - f0) / (r1 - r0)
