"""The MODEL argument: a built-in name, ``FILE.py:FACTORY`` or a ``torch.save``'d model."""

import os
import sys
from typing import TYPE_CHECKING, Optional

from .common import UsageError, _guarded

if TYPE_CHECKING:
    from torch import nn


# file name endings of saved models: a MODEL argument ending so that does not exist is a missing file
SAVED_SUFFIXES = (".pt", ".pth", ".pt2", ".pkl", ".ckpt", ".bin", ".tar")


def load_model(spec: str) -> tuple["nn.Module", Optional[tuple[int, ...]], str]:
    """A built-in name (``mobilenet_v1:0.5``), ``file.py:factory``, or a ``torch.save``'d model.

    Returns ``(model, default input size or None, label)``. Loading a saved model unpickles it:
    only load files you trust.
    """
    from ..models import BUILTIN, build

    base = spec.partition(":")[0]
    if base in BUILTIN:
        try:
            return build(spec), BUILTIN[base][1], spec
        except (ValueError, TypeError) as exc:
            raise UsageError(str(exc)) from None
    path, sep, factory = spec.rpartition(":")
    if sep and path.endswith(".py"):
        return _from_factory(path, factory, spec), None, spec
    if spec.endswith(".py"):
        raise UsageError(f"model: expected FILE.py:FACTORY (the function that builds the model), got {spec!r}")
    if os.path.isdir(spec):
        raise UsageError(f"model: {spec!r} is a directory, expected a file saved with torch.save(model, path)")
    if os.path.exists(spec):
        return _from_saved(spec), None, os.path.basename(spec)
    if os.sep in spec or os.path.splitext(spec)[1].lower() in SAVED_SUFFIXES:  # a path, not a misspelt built-in name
        raise UsageError(f"model: file {spec!r} not found (expected a model saved with torch.save, a built-in name or "
                         "FILE.py:FACTORY)")
    raise UsageError(
        f"model: expected a built-in name ({', '.join(sorted(BUILTIN))}; each takes an optional :WIDTH), FILE.py:FACTORY or a torch.save file, got {spec!r}"
    )


def _from_factory(path: str, factory: str, spec: str) -> "nn.Module":
    import importlib.util

    from torch import nn

    if not os.path.isfile(path):
        raise UsageError(f"model: file {path!r} not found" if not os.path.exists(path) else f"model: {path!r} is not a file")
    # imported as `python FILE.py` would run it: modules next to it importable (its folder first on
    # sys.path, for the rest of this process: the factory may import them when it is called)
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module_spec = importlib.util.spec_from_file_location("_sepconv_user_model", path)
    module = importlib.util.module_from_spec(module_spec)
    _guarded(lambda: module_spec.loader.exec_module(module), f"model: could not import {path!r}")
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise UsageError(f"model: {path!r} has no callable {factory!r}")
    model = _guarded(fn, f"model: {factory}() in {path!r} failed")
    if not isinstance(model, nn.Module):
        raise UsageError(f"model: {spec!r} returned {type(model).__name__}, expected an nn.Module")
    return model


def _is_sepconv_archive(path: str) -> bool:
    """Whether ``path`` is a program saved by sepconv (``sepconv.save``: a zip with its metadata)."""
    import zipfile

    from ..serialize import _META

    try:
        with zipfile.ZipFile(path) as z:
            return _META in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def _from_saved(path: str) -> "nn.Module":
    import torch
    from torch import nn

    if _is_sepconv_archive(path):
        raise UsageError(f"model: {path!r} is a program saved by sepconv (convert/optimize --output), optimized for "
                         "inference already: run it with sepconv.load; convert and optimize need the model's modules "
                         "(a built-in name, FILE.py:FACTORY, or a torch.save'd model; for a converted one, "
                         "sepconv.apply_recipe on your model class)")

    # the pickle names the module of the model's class: importable, as in the script that saved it
    # (`python script.py` or `python -m`), from the current folder or from the file's folder (the
    # `sepconv` command's own sys.path has neither)
    for folder in (os.path.dirname(os.path.abspath(path)), os.getcwd()):
        if folder not in sys.path:
            sys.path.insert(0, folder)

    def read():
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(f"{exc} (the model's class must be importable: it is looked for in the current "
                                      "folder and the model file's folder; add the folder of its module to "
                                      "PYTHONPATH)") from None

    obj = _guarded(read, f"model: could not read {path!r} with torch.load")
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], nn.Module):
        obj = obj["model"]
    if not isinstance(obj, nn.Module):
        raise UsageError(f"model: {path!r} holds a {type(obj).__name__}, expected a whole nn.Module saved with torch.save(model, path)")
    return obj
