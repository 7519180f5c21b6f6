"""The read-only ``weight`` of two-factor layers.

``SeparableConv2d.weight`` (and the blueprint and spatially separable layers' ``weight``) is the
equivalent dense kernel, composed from the factors on every access. It is not a parameter:
``nn.init.zeros_(layer.weight)`` would zero a temporary tensor and leave the layer unchanged. To
make that impossible to miss, the composed kernel is a :class:`ComputedWeight`, a tensor that
raises on any in-place change of itself or of a view of it, and says which factors to change.
Everything else (reading, arithmetic, autograd through the factors) works as on a plain tensor,
and results that do not share its memory are plain tensors.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["ComputedWeight", "computed_weight"]

_INPLACE_DUNDERS = frozenset({
    "__setitem__", "__set__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__",
    "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__imatmul__",
})
_ALLOWED = frozenset({"requires_grad_", "retain_grad"})  # flag changes, not data changes


def _is_inplace(name: str) -> bool:
    if name in _INPLACE_DUNDERS:
        return True
    return name.endswith("_") and not name.endswith("__") and name not in _ALLOWED


def _shares_memory(a: Tensor, b: Tensor) -> bool:
    try:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() and a.numel() > 0
    except (RuntimeError, NotImplementedError):  # tensors without storage
        return False


class ComputedWeight(Tensor):
    """A dense kernel computed from a layer's factors: reading works, in-place changes raise.

    Raises:
        ValueError: on any in-place operation (``nn.init.*_``, ``copy_``, ``zero_``, ``+=``,
            item assignment, ``.data = ...``) on it or on a view of it (``.data``, ``detach()``,
            indexing), naming the factors to initialize instead.
    """

    _source: tuple = ("the layer", ("its factors",))

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        kwargs = kwargs or {}
        # the tensor an in-place op changes comes first (nn.init.* pass it as the keyword ``tensor``)
        target = args[0] if args else next(iter(kwargs.values()), None)
        if isinstance(target, cls) and _is_inplace(name):
            layer, factors = target._source
            weights = " and ".join(f"{f}.weight" for f in factors)
            raise ValueError(
                f"weight: expected no in-place change ({layer}.weight is computed from {weights} on every access, "
                f"so changing it would change nothing), got {name}(); change the factors instead, "
                f"e.g. nn.init.zeros_(layer.{factors[-1]}.weight)"
            )
        out = super().__torch_function__(func, types, args, kwargs)
        return _unwrap(out, target)


def _unwrap(out, source):
    """Keep :class:`ComputedWeight` only for results sharing the source's memory (views)."""
    if isinstance(out, ComputedWeight):
        if isinstance(source, ComputedWeight) and _shares_memory(out, source):
            out._source = source._source
            return out
        return out.as_subclass(Tensor)
    if isinstance(out, (tuple, list)):
        return type(out)(_unwrap(o, source) for o in out)
    return out


def computed_weight(weight: Tensor, layer: str, factors: tuple) -> ComputedWeight:
    """Wrap a composed kernel; ``layer`` and ``factors`` (child names) go into the error message."""
    out = weight.as_subclass(ComputedWeight)
    out._source = (layer, tuple(factors))
    return out
