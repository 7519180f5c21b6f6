"""``--calibration-data PATH``: the user's own inputs, as one tensor of samples.

What is read:

* a ``.npy`` array (``numpy.load``, no pickles);
* a folder of images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif``, ``.tif``, ``.tiff``,
  ``.webp``; sub-folders too, in sorted path order): each converted to grey (``--input`` with 1
  channel) or RGB (3 channels), resized to ``--input``'s HxW (bilinear), scaled to [0, 1];
  needs Pillow (the ``images`` extra, or ``pip install pillow``);
* any other file with ``torch.load(weights_only=True)`` (no code runs): a tensor; or a dict whose
  ``'input'``, ``'inputs'``, ``'x'``, ``'images'`` or ``'data'`` entry (the first present) holds
  them, else all its tensor values; or a list or tuple of tensors (or of such lists, e.g.
  ``(inputs, labels)`` pairs). From a dict or list, the tensors whose samples have ``--input``'s
  shape are the inputs (concatenated in order); the others, such as labels, are ignored.

A tensor of samples has ``--input``'s shape but for its first size (the number of samples); a
single sample without that size is taken as one. Tensors and arrays are used as they are (no
scaling); ``--mean`` and ``--std`` (one value, or one per channel) are then subtracted and
divided, per channel, for every kind of data. Every sample must be finite.
"""

import math
import os
from typing import Optional

from .common import UsageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
INPUT_KEYS = ("input", "inputs", "x", "images", "data")
WHAT = "--calibration-data"


def parse_channels(text: Optional[str], what: str, channels: int, positive: bool = False) -> Optional[list[float]]:
    """``'0.485,0.456,0.406'`` -> floats: one, or one per channel; finite (and > 0 if ``positive``)."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{what}: expected numbers separated by ',' (one, or one per channel), got {text!r}") from None
    if len(values) not in (1, channels):
        raise UsageError(f"{what}: expected 1 or {channels} values (--input has {channels} channels), got "
                         f"{len(values)} in {text!r}")
    if not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
        raise UsageError(f"{what}: expected {'positive ' if positive else ''}finite numbers, got {text!r}")
    return values * channels if len(values) == 1 else values


def load_calibration(path: str, shape: tuple, mean: Optional[list] = None, std: Optional[list] = None,
                     dtype=None):
    """The samples in ``path`` as one tensor ``(N, *shape[1:])`` (see the module's docstring).

    Raises:
        UsageError: ``--calibration-data: ...`` for a missing path, an unreadable file, an empty
            folder, samples of another shape, non-finite values.
    """
    import torch

    if not os.path.exists(path):
        raise UsageError(f"{WHAT}: {path!r} not found")
    if os.path.isdir(path):
        data = _images(path, shape)
    elif path.lower().endswith(".npy"):
        data = _npy(path)
    else:
        data = _torch_file(path, shape)
    if data.is_complex() or data.dtype == torch.bool:
        raise UsageError(f"{WHAT}: expected real numbers, got {str(data.dtype).removeprefix('torch.')} in {path!r}")
    if data.dim() == len(shape) - 1:
        data = data.unsqueeze(0)
    if tuple(data.shape[1:]) != tuple(shape[1:]) or data.dim() != len(shape):
        want = "x".join(str(s) for s in shape[1:])
        raise UsageError(f"{WHAT}: expected samples of shape {want} (--input without its batch size), got "
                         f"{'x'.join(str(s) for s in data.shape) or 'a scalar'} in {path!r}")
    if data.shape[0] == 0:
        raise UsageError(f"{WHAT}: expected at least one sample, got none in {path!r}")
    data = data.to(dtype or torch.float32)
    if not bool(torch.isfinite(data).all()):
        bad = int((~torch.isfinite(data)).flatten(1).any(1).nonzero()[0])
        raise UsageError(f"{WHAT}: expected finite values, got NaN or Inf in {path!r} (sample {bad})")
    if mean is not None or std is not None:
        view = (1, -1) + (1,) * (len(shape) - 2)
        if mean is not None:
            data = data - torch.tensor(mean, dtype=data.dtype).view(view)
        if std is not None:
            data = data / torch.tensor(std, dtype=data.dtype).view(view)
    return data.contiguous()


def _npy(path: str):
    import numpy as np
    import torch

    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{WHAT}: cannot read {path!r} as a .npy array ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if array.dtype.kind not in "biuf":
        raise UsageError(f"{WHAT}: expected a numeric array, got dtype {array.dtype} in {path!r}")
    return torch.from_numpy(np.ascontiguousarray(array))


def _torch_file(path: str, shape: tuple):
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file is the same mistake
        raise UsageError(f"{WHAT}: cannot read {path!r}: expected a tensor (or a dict or list of tensors) saved "
                         f"with torch.save, a .npy array or a folder of images") from None
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        key = next((k for k in INPUT_KEYS if k in obj), None)
        items = [obj[key]] if key is not None else list(obj.values())
    elif isinstance(obj, (list, tuple)):
        items = list(obj)
    else:
        raise UsageError(f"{WHAT}: {path!r} holds a {type(obj).__name__}, expected a tensor or a dict or list of tensors")
    flat = []
    for item in items:
        flat += list(item) if isinstance(item, (list, tuple)) else [item]
    tensors = [t for t in flat if isinstance(t, torch.Tensor)]
    inputs = [t if t.dim() == len(shape) else t.unsqueeze(0) for t in tensors
              if tuple(t.shape[-(len(shape) - 1):]) == tuple(shape[1:]) and t.dim() in (len(shape) - 1, len(shape))]
    if not inputs:
        want = "x".join(str(s) for s in shape[1:])
        got = ", ".join("x".join(str(s) for s in t.shape) or "scalar" for t in tensors[:4]) or "no tensor"
        raise UsageError(f"{WHAT}: expected tensors of samples of shape {want} (--input without its batch size) in "
                         f"{path!r}, got {got}")
    return torch.cat(inputs)


def _images(folder: str, shape: tuple):
    import numpy as np
    import torch

    if len(shape) != 4 or shape[1] not in (1, 3):
        raise UsageError(f"{WHAT}: a folder of images needs --input Bx1xHxW (grey) or Bx3xHxW (RGB), got "
                         f"{'x'.join(str(s) for s in shape)}")
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                   if name.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise UsageError(f"{WHAT}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder {folder!r}")
    try:
        from PIL import Image
    except ImportError:
        raise UsageError(f"{WHAT}: reading a folder of images needs Pillow: pip install pillow") from None
    h, w = shape[2], shape[3]
    samples = []
    for file in files:
        try:
            with Image.open(file) as image:
                image = image.convert("L" if shape[1] == 1 else "RGB").resize((w, h), Image.BILINEAR)
                array = np.asarray(image, dtype=np.float32) / 255.0
        except (OSError, ValueError) as exc:
            raise UsageError(f"{WHAT}: cannot read the image {file!r} ({type(exc).__name__})") from None
        samples.append(torch.from_numpy(array).reshape(h, w, shape[1]).permute(2, 0, 1))
    return torch.stack(samples)
