"""Saving a converted or optimized model so that it runs where its Python code is not, and the
recipe that puts converted weights back into the user's own model class.

Two files, two uses:

* **The archive** (:func:`save`, :func:`load`): a self-contained program for production. It is a
  zip file holding ``sepconv-model.json`` (what it is, the input size it was saved with, whether
  it needs the C++ kernels) and the model as a ``torch.export`` program (``program.pt2``).
  ``sepconv.load(path)`` returns a runnable ``nn.Module`` in any process with torch and sepconv,
  without the model's own code. Why ``torch.export`` and not TorchScript: TorchScript is
  deprecated in current torch (``torch.jit`` warns on load), ``torch.jit.trace`` silently bakes
  in whatever its example specialised, while ``torch.export`` records the batch size as a
  symbolic dimension and checks it (an export that cannot keep it dynamic is refused rather than
  silently fixed), and it is the format torch's own deployment tools read. The batch size is
  dynamic; the other input sizes are those of the example.

  A program that calls the fused kernels (``torch.ops.sepconv.*``, from
  :func:`~sepconv.optimize_for_inference`) needs them where it is loaded: :func:`load` builds or
  loads them first. The archive then also holds a portable program of the same model on plain
  PyTorch operators (``portable.pt2``); where the kernels cannot be built, :func:`load` runs that
  one instead, with a ``RuntimeWarning``.

* **The recipe** (:func:`make_recipe`, :func:`apply_recipe`): a small ``torch.save`` file (read
  back with ``weights_only=True``: no code runs) saying which conv became which separable
  structure and rank, which BatchNorms were folded (into which conv), which convs gained a bias,
  and the converted ``state_dict``. :func:`apply_recipe` replays it on a fresh instance of the
  user's own class, so the converted weights load into their code (strictly: every key).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import re
import warnings
import zipfile
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ._checkpoint import _describe_mismatch
from ._checks import check_module
from ._io import write_atomic

ARCHIVE_FORMAT, RECIPE_FORMAT, FORMAT_VERSION = "sepconv-model", "sepconv-recipe", 1
_META, _PROGRAM, _PORTABLE = "sepconv-model.json", "program.pt2", "portable.pt2"
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

PathLike = Union[str, os.PathLike]


def _structures() -> dict:
    from . import layers as L

    return {"depthwise": (L.SeparableConv1d, L.SeparableConv2d, L.SeparableConv3d),
            "blueprint": (L.BlueprintSeparableConv1d, L.BlueprintSeparableConv2d, L.BlueprintSeparableConv3d),
            "spatial": (L.SpatiallySeparableConv2d,)}


def _check_path(path: Any, what: str) -> str:
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
        raise TypeError(f"{what}: expected a file path, got {path!r} ({type(path).__name__})")
    return os.fspath(path)


# --------------------------------------------------------------------------------------------
# the self-contained archive
# --------------------------------------------------------------------------------------------
def export_program(model: nn.Module, example_input: Tensor) -> "torch.export.ExportedProgram":
    """``model`` (eval mode) as a ``torch.export`` program with a dynamic batch size.

    Raises:
        ValueError: the model cannot be exported (e.g. Python control flow on the input's values),
            or its code fixes the batch size.
    """
    from torch.export import Dim, export

    check_module("model", model)
    if not isinstance(example_input, Tensor) or example_input.dim() == 0 or 0 in example_input.shape:
        raise ValueError(f"example_input: expected a non-empty batched tensor, got "
                         f"{getattr(example_input, 'shape', type(example_input).__name__)}")
    # torch.export treats a size of 1 as a constant: export on two samples
    x = example_input if example_input.shape[0] > 1 else torch.cat([example_input, example_input])
    was, quiet = model.training, logging.root.manager.disable
    model.eval()
    logging.disable(logging.CRITICAL)  # torch logs (and prints) the partial graph of a failed export
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            return export(model, (x,), dynamic_shapes=({0: Dim("batch")},))
    except Exception as exc:  # noqa: BLE001 - torch.export raises many types; the reason is the first line
        line = next((s.strip() for s in str(exc).splitlines() if s.strip()), "")
        raise ValueError(f"model: cannot be saved as a self-contained program: torch.export failed "
                         f"({type(exc).__name__}: {line[:300]})") from exc
    finally:
        logging.disable(quiet)
        model.train(was)


def _uses_kernels(program) -> bool:
    return any(getattr(node.target, "namespace", None) == "sepconv" for node in program.graph.nodes)


def _program_bytes(program) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notes about how it groups the weights on CPU
        torch.export.save(program, buffer)
    return buffer.getvalue()


def save(model: nn.Module, path: PathLike, example_input: Tensor, portable: Optional[nn.Module] = None) -> dict:
    """Write ``model`` as a self-contained archive that :func:`load` runs without its code.

    Args:
        model: the model to save (e.g. what :func:`sepconv.convert` or
            :func:`sepconv.optimize_for_inference` returned); exported in eval mode.
        path: the archive to write (atomically).
        example_input: a batch of the input the model takes; the saved program takes any batch
            size and these other sizes.
        portable: for a model that calls the fused kernels, an equivalent model on plain PyTorch
            operators (e.g. the model before ``optimize_for_inference``), saved alongside and run
            by :func:`load` where the kernels cannot be built. Without it, such an archive loads
            only where the kernels can be built.

    Returns:
        The archive's description (the content of its ``sepconv-model.json``).

    Raises:
        ValueError: the model cannot be exported (see :func:`export_program`).
        OSError: ``path`` cannot be written.
    """
    path = _check_path(path, "path")
    program = export_program(model, example_input)
    files = {_PROGRAM: _program_bytes(program)}
    needs = _uses_kernels(program)
    if needs and portable is not None:
        files[_PORTABLE] = _program_bytes(export_program(portable, example_input))
    from . import __version__

    meta = {"format": ARCHIVE_FORMAT, "version": FORMAT_VERSION, "sepconv": __version__, "torch": torch.__version__,
            "input_shape": [None, *example_input.shape[1:]], "dtype": str(example_input.dtype).removeprefix("torch."),
            "needs_kernels": needs, "portable": _PORTABLE in files}

    def write(f) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
            z.writestr(_META, json.dumps(meta, indent=2))
            for name, data in files.items():
                z.writestr(name, data)

    write_atomic(path, write)
    return meta


def _read_archive(path: str) -> tuple[dict, zipfile.ZipFile]:
    if not os.path.isfile(path):
        raise ValueError(f"path: {path!r} " + ("is not a file" if os.path.exists(path) else "not found"))
    if not zipfile.is_zipfile(path):
        raise ValueError(f"path: {path!r} is not a model saved by sepconv (sepconv convert/optimize --output, "
                         f"sepconv.save): not a zip archive")
    z = zipfile.ZipFile(path)
    try:
        meta = json.loads(z.read(_META))
    except (KeyError, ValueError) as exc:
        z.close()
        raise ValueError(f"path: {path!r} is not a model saved by sepconv: no readable {_META}") from exc
    if not isinstance(meta, dict) or meta.get("format") != ARCHIVE_FORMAT:
        z.close()
        raise ValueError(f"path: {path!r} is not a model saved by sepconv: {_META} says {meta!r:.100}")
    if meta.get("version") != FORMAT_VERSION:
        z.close()
        raise ValueError(f"path: {path!r} was saved in format version {meta.get('version')!r}; this sepconv "
                         f"reads version {FORMAT_VERSION}")
    return meta, z


def load(path: PathLike) -> nn.Module:
    """The runnable module saved by :func:`save` (or ``sepconv convert/optimize --output``).

    Needs neither the model's code nor the class it was built from. It takes inputs of any batch
    size with the other sizes of the saved example (``info["input_shape"]``); other sizes raise a
    ``ValueError`` naming both, another dtype than the example's (``info["dtype"]``) a ``TypeError``.
    If the program calls the fused C++ kernels, they are built or loaded first; where they cannot
    be, the portable program saved with it runs instead (``RuntimeWarning``), and without one a
    ``RuntimeError`` says why.

    Args:
        path: the archive.

    Returns:
        An ``nn.Module`` (a ``torch.fx.GraphModule``) with an ``info`` dict attribute: the
        archive's description, plus ``"program"`` (``'program.pt2'`` or ``'portable.pt2'``).

    Raises:
        ValueError: ``path`` is missing or is not an archive sepconv saved.
        RuntimeError: the program needs the fused kernels, they cannot be built here, and the
            archive holds no portable program.

    Example:
        >>> model = sepconv.load("small.pt2")  # doctest: +SKIP
        >>> model(torch.randn(8, 3, 32, 32)).shape  # doctest: +SKIP
    """
    path = _check_path(path, "path")
    meta, z = _read_archive(path)
    with z:
        name = _PROGRAM
        if meta.get("needs_kernels"):
            from . import _fused

            if _fused.load() is None:
                if not meta.get("portable"):
                    raise RuntimeError(f"sepconv.load: {path!r} runs the fused C++ kernels, which cannot be built here "
                                       f"({_fused.error()}), and holds no portable program; save it again with "
                                       f"portable=, or install a C++ compiler")
                warnings.warn(f"sepconv.load: the fused C++ kernels cannot be built here ({_fused.error()}); "
                              f"running the portable program saved in {path!r} (plain PyTorch operators)",
                              RuntimeWarning, stacklevel=2)
                name = _PORTABLE
        data = z.read(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.export.load(io.BytesIO(data)).module()
    module.info = {**meta, "program": name}
    if isinstance(meta.get("input_shape"), list):
        dtype = getattr(torch, meta["dtype"], None) if isinstance(meta.get("dtype"), str) else None
        module.register_forward_pre_hook(_shape_check(meta["input_shape"], path,
                                                      dtype if isinstance(dtype, torch.dtype) else None))
    return module


def _shape_check(shape: list, path: str, dtype: Optional[torch.dtype] = None):
    """A forward pre-hook refusing an input of other sizes than the saved program's (any batch):
    a ``ValueError`` saying which, where the program's own guard raised a bare AssertionError; and
    one of another dtype than the saved example's: a ``TypeError`` (a kernel's RuntimeError before)."""
    expected = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"

    def hook(_module, args):
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and dtype is not None and x.dtype != dtype:
            raise TypeError(f"input: expected dtype {dtype} (the example input's, which the program in {path!r} was "
                            f"saved for), got {x.dtype}")
        if isinstance(x, torch.Tensor) and (x.dim() != len(shape) or
                                            any(s is not None and s != n for s, n in zip(shape, x.shape))):
            raise ValueError(f"input: expected shape {expected} (any batch size; the program in {path!r} was saved "
                             f"for these sizes: convert or optimize again with an example of the size you need), "
                             f"got {tuple(x.shape)}")
    return hook


# --------------------------------------------------------------------------------------------
# the recipe
# --------------------------------------------------------------------------------------------
def _structure_of(module: nn.Module) -> Optional[tuple[str, int]]:
    for structure, classes in _structures().items():
        if type(module) in classes:
            return structure, int(getattr(module, "depth_multiplier", None) or module.rank)
    return None


def make_recipe(original: nn.Module, converted: nn.Module, batchnorms: Optional[dict] = None) -> dict:
    """The recipe that turns a fresh ``original`` into ``converted`` (see :func:`apply_recipe`).

    Found by comparing the two models module by module: a conv that became a separable layer, a
    BatchNorm that became ``nn.Identity`` (folded), a conv that gained a bias (a BatchNorm folded
    into it). The recipe is checked by replaying it on a copy of ``original``.

    Args:
        original: the model before :func:`sepconv.convert`.
        converted: what it returned.
        batchnorms: the report's ``batchnorms`` (``{bn: "folded into 'conv'"}``), to record into
            which conv each BatchNorm was folded.

    Returns:
        ``{"format", "version", "layers", "batchnorms", "biases", "state_dict"}``.
    """
    check_module("original", original)
    check_module("converted", converted)
    now = dict(converted.named_modules())
    layers, folded, biases = [], {}, []
    into = {bn: m.group(1) for bn, why in (batchnorms or {}).items()
            if isinstance(why, str) and (m := re.fullmatch(r"folded into '(.+)'", why))}
    for name, module in original.named_modules():
        new = now.get(name)
        if not name or new is None or new is module:
            continue
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and isinstance(new, nn.Identity):
            folded[name] = into.get(name)
        elif isinstance(module, _CONVS) and _structure_of(new) is not None:
            structure, rank = _structure_of(new)
            layers.append({"name": name, "structure": structure, "rank": rank, "bias": new.bias is not None})
        elif isinstance(module, _CONVS) and isinstance(new, _CONVS) and module.bias is None and new.bias is not None:
            biases.append(name)
    recipe = {"format": RECIPE_FORMAT, "version": FORMAT_VERSION, "layers": layers, "batchnorms": folded,
              "biases": biases, "state_dict": {k: v.detach().clone() for k, v in converted.state_dict().items()}}
    apply_recipe(original, recipe)  # it reproduces the converted model's structure, or this raises
    return recipe


def save_recipe(recipe: dict, path: PathLike) -> None:
    """Write ``recipe`` (from :func:`make_recipe`) atomically with ``torch.save``."""
    path = _check_path(path, "path")
    write_atomic(path, lambda f: torch.save(recipe, f))


def _read_recipe(recipe: Any) -> dict:
    if isinstance(recipe, (str, os.PathLike)):
        path = _check_path(recipe, "recipe")
        if not os.path.isfile(path):
            raise ValueError(f"recipe: {path!r} " + ("is not a file" if os.path.exists(path) else "not found"))
        try:
            recipe = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same mistake
            raise ValueError(f"recipe: cannot read {path!r}: not a recipe saved by sepconv, or corrupt "
                             f"({type(exc).__name__})") from None
    if not isinstance(recipe, dict) or recipe.get("format") != RECIPE_FORMAT:
        raise ValueError(f"recipe: expected a recipe saved by sepconv (sepconv convert --recipe), got "
                         f"{type(recipe).__name__ if not isinstance(recipe, dict) else 'a dict without format ' + repr(RECIPE_FORMAT)}")
    if recipe.get("version") != FORMAT_VERSION:
        raise ValueError(f"recipe: format version {recipe.get('version')!r}; this sepconv reads version {FORMAT_VERSION}")
    return recipe


def _module(model: nn.Module, name: str, kinds: tuple, what: str) -> nn.Module:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"recipe: does not fit this model: it has no layer '{name}' ({what})") from None
    if not isinstance(module, kinds):
        raise ValueError(f"recipe: does not fit this model: layer '{name}' is a {type(module).__name__}, expected "
                         f"{' or '.join(k.__name__ for k in kinds)} ({what})")
    return module


def apply_recipe(model: nn.Module, recipe: Union[PathLike, dict]) -> nn.Module:
    """Replay a conversion on a fresh instance of the user's own model class.

    The BatchNorms the recipe folded become ``nn.Identity``, its convs become the separable layers
    of the recorded structure and rank (or gain the recorded bias), and the converted weights are
    loaded strictly. The returned model computes what the converted model computed, in the user's
    own class and module names.

    Args:
        model: a fresh instance of the class that was converted (its weights do not matter); not
            modified.
        recipe: the recipe file (``sepconv convert --recipe``) or the dict :func:`make_recipe`
            returned.

    Returns:
        A new model (a deep copy of ``model``) with the converted structure and weights.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: the recipe cannot be read, or does not fit ``model`` (a missing or different
            layer, or weights of other names or shapes).

    Example:
        >>> net = apply_recipe(MyNet(), "small.recipe.pt")  # doctest: +SKIP
    """
    from .convert import _build, _set_module

    check_module("model", model)
    recipe = _read_recipe(recipe)
    new = copy.deepcopy(model)
    for bn, conv in recipe["batchnorms"].items():
        _module(new, bn, (nn.modules.batchnorm._BatchNorm,), "a folded BatchNorm")
        _set_module(new, bn, nn.Identity())
    for entry in recipe["layers"]:
        name = entry["name"]
        conv = _module(new, name, _CONVS, f"converted to {entry['structure']} rank {entry['rank']}")
        bias = torch.zeros(conv.out_channels, dtype=conv.weight.dtype) if entry["bias"] else None
        try:
            layer = _build(entry["structure"], conv, conv.weight.detach(), bias, entry["rank"])
        except (ValueError, TypeError) as exc:
            raise ValueError(f"recipe: does not fit this model: layer '{name}' cannot become {entry['structure']} "
                             f"rank {entry['rank']}: {exc}") from None
        _set_module(new, name, layer)
    for name in recipe["biases"]:
        conv = _module(new, name, _CONVS, "a conv with a BatchNorm folded in")
        if conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype),
                                     requires_grad=conv.weight.requires_grad)
    for key, value in recipe["state_dict"].items():
        if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"recipe: expected finite weights, got NaN or Inf in '{key}'")
    mismatch = _describe_mismatch(new.state_dict(), recipe["state_dict"])
    if mismatch:
        raise ValueError(f"recipe: does not fit this model: its weights differ ({mismatch})")
    new.load_state_dict(recipe["state_dict"], strict=True)
    return new
