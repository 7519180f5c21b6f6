"""What :func:`sepconv.convert` did: one :class:`LayerConversion` row per converted layer and the
model-level :class:`ConversionReport`, rendered as JSON, markdown or a ``rich`` table."""

import json
import warnings
from dataclasses import asdict, dataclass, field
from typing import Optional

__all__ = ["ConversionReport", "LayerConversion"]


@dataclass
class LayerConversion:
    """One row of the report. ``structure`` is ``'dense'`` when the layer was kept as it was."""

    name: str
    structure: str
    rank: Optional[int]
    macs_before: int
    macs_after: int
    weight_error: float
    output_error: Optional[float] = None
    note: str = ""


@dataclass
class ConversionReport:
    """What :func:`convert` did. Render with ``rich``, :meth:`to_json` or :meth:`to_markdown`."""

    layers: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # (name, reason)
    batchnorms: dict = field(default_factory=dict)  # name -> "folded into 'conv'" or why it was left alone
    macs_before: int = 0
    macs_after: int = 0
    params_before: int = 0
    params_after: int = 0
    output_error: Optional[float] = None
    budget: Optional[float] = None
    method: str = "auto"
    objective: str = "weight"
    inplace: bool = False
    message: str = ""
    cost: str = "macs"
    # cost="latency": original_ms, predicted_ms, measured_ms (optimized models, this machine), their
    # ratios, rounds (allocations built and measured) and trials (each one's ratios), batch and threads
    latency: Optional[dict] = None

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["macs_ratio"] = self.macs_ratio
        return d

    def warn_if_unusable(self, on: str, stacklevel: int = 3) -> None:
        """A ``RuntimeWarning`` where the converted model's output is no closer to the original's
        than all zeros would be (relative output error 1 or more, measured ``on`` some inputs)."""
        if self.output_error is not None and not self.output_error < 1.0:
            warnings.warn(f"convert: the converted model's output relative error is {self.output_error:.4f} on {on}: "
                          "no closer to the original's output than zeros; convert with calibration_data (your own "
                          "inputs), a larger budget, or distill it (sepconv.distill)", RuntimeWarning,
                          stacklevel=stacklevel)

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def _summary(self) -> str:
        s = (f"MACs {self.macs_before:,} -> {self.macs_after:,} ({self.macs_ratio:.1%}); "
             f"params {self.params_before:,} -> {self.params_after:,}")
        if self.output_error is not None:
            s += f"; model output relative error {self.output_error:.4f}"
        if self.latency:
            t = self.latency
            s += (f"; optimized latency {t['original_ms']:.2f} -> {t['measured_ms']:.2f} ms measured "
                  f"({t['measured_ratio']:.1%}; predicted {t['predicted_ms']:.2f} ms, {t['predicted_ratio']:.1%}; "
                  f"batch {t['batch']}, {t['threads']} threads"
                  + (f"; {t['rounds']} allocations measured" if t.get("rounds", 1) > 1 else "") + ")")
        if self.batchnorms:
            s += f"; BatchNorms folded {self._folded_count()} of {len(self.batchnorms)}"
        if self.inplace:
            s += "; the input model was modified in place (inplace=True)"
        return s + (f". {self.message}" if self.message else "")

    def _folded_count(self) -> int:
        return sum(why.startswith("folded into ") for why in self.batchnorms.values())

    def to_markdown(self) -> str:
        lines = [self._summary(), "", "| layer | structure | rank | MACs before | MACs after | weight error | output error |",
                 "|---|---|---:|---:|---:|---:|---:|"]
        for r in self.layers:
            out = "" if r.output_error is None else f"{r.output_error:.4f}"
            lines.append(f"| {r.name} | {r.structure} | {r.rank or ''} | {r.macs_before:,} | {r.macs_after:,} | "
                         f"{r.weight_error:.4f} | {out} |")
        if self.skipped:
            lines += ["", "| skipped layer | reason |", "|---|---|"] + [f"| {n} | {why} |" for n, why in self.skipped]
        if self.batchnorms:
            lines += ["", "| BatchNorm | folded, or why not |", "|---|---|"]
            lines += [f"| {n} | {why} |" for n, why in self.batchnorms.items()]
        return "\n".join(lines) + "\n"

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        t = Table(title="conversion (MACs = multiply-accumulates)")
        for col in ("layer", "structure", "rank", "MACs before", "MACs after", "weight err", "output err"):
            t.add_column(col, justify="left" if col in ("layer", "structure") else "right")
        for r in self.layers:
            t.add_row(r.name, r.structure, str(r.rank or ""), f"{r.macs_before:,}", f"{r.macs_after:,}",
                      f"{r.weight_error:.4f}", "" if r.output_error is None else f"{r.output_error:.4f}")
        parts = [t, Text(self._summary())]
        if self.skipped:
            s = Table(title="skipped")
            s.add_column("layer")
            s.add_column("reason")
            for n, why in self.skipped:
                s.add_row(n, why)
            parts.insert(1, s)
        if self.batchnorms:
            b = Table(title="BatchNorms")
            b.add_column("BatchNorm")
            b.add_column("folded, or why not")
            for n, why in self.batchnorms.items():
                b.add_row(n, why)
            parts.insert(-1, b)
        return Group(*parts)
