"""Real data that ships inside a dependency: scikit-learn's 1,797 handwritten 8x8 digits.

Nothing is downloaded: ``sklearn.datasets.load_digits`` reads a file bundled with scikit-learn
(the ``demo`` extra). The split is stratified and fixed by ``seed``.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["DigitsDataset"]

SPLITS = ("train", "test")


class DigitsDataset(Dataset):
    """scikit-learn's digits as ``(image (1, S, S) float in [0, 1], label int64)`` pairs.

    Args:
        split: ``'train'`` (75%) or ``'test'`` (25%), stratified by label.
        image_size: 8 (native) or larger, upsampled bilinearly (e.g. 16).
        seed: fixes the split.
        test_fraction: share of the test split.

    Example:
        >>> ds = DigitsDataset('train', image_size=16)
        >>> len(ds), ds[0][0].shape
        (1347, torch.Size([1, 16, 16]))
    """

    def __init__(self, split: str = "train", image_size: int = 8, seed: int = 0, test_fraction: float = 0.25) -> None:
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size: expected an int >= 8, got {image_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int, got {seed!r} ({type(seed).__name__})")
        if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
            raise TypeError(f"test_fraction: expected a fraction in (0, 1), got {test_fraction!r} ({type(test_fraction).__name__})")
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction: expected a fraction in (0, 1), got {test_fraction!r}")
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("DigitsDataset needs scikit-learn: pip install scikit-learn") from exc
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.int64)
        g = torch.Generator().manual_seed(seed)
        test_idx = []
        for c in range(10):  # stratified: the same share of every class
            idx = (labels == c).nonzero().flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            test_idx.append(idx[: round(len(idx) * test_fraction)])
        test = torch.zeros(len(labels), dtype=torch.bool)
        test[torch.cat(test_idx)] = True
        keep = test if split == "test" else ~test
        images, labels = images[keep], labels[keep]
        if image_size != 8:
            images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
        self.images, self.labels = images.contiguous(), labels
        self.split, self.image_size = split, image_size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]

    def tensors(self, limit: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All (or the first ``limit``) images and labels as two tensors."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit: expected None or a non-negative int, got {limit!r}")
        return self.images[:limit], self.labels[:limit]
