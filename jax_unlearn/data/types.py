"""The one in-memory representation every data set loader produces.

Images stay uint8 ``(N, 32, 32, 3)`` (NHWC) on host and on device; the model sees them normalised on the
fly by :meth:`Normalization.apply`, so a data set costs 3 KB per image wherever it lives.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Mapping

import numpy as np

SPLITS = ("retain", "forget", "validation", "test")
IMAGE_SHAPE = (32, 32, 3)


class DataError(ValueError):
    """Bad input data: the message names the file (and row) at fault."""


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-channel affine normalisation ``x = (u8 * scale - mean) / std``.

    ``scale`` lets us reproduce torchvision's ``ToTensor()`` + ``Normalize(mean, std)`` exactly
    (scale = 1/255) and the Kaggle loaders' raw 0–255 float pixels (scale = 1, mean 0, std 1).
    """

    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def apply(self, images, dtype=np.float32):
        """uint8 (..., 32, 32, 3) -> ``dtype`` (float32 unless a float64 model asks for float64) of the same
        shape. Works on NumPy and JAX arrays.

        Float64 models get float64 inputs so that a float64 run has no float32 rounding anywhere (that
        rounding depends on how XLA fuses the program, e.g. FMA contraction, so it differs between a
        vmapped and a single-seed compilation)."""
        xp = np if isinstance(images, np.ndarray) else _jnp()
        x = images.astype(dtype)
        if self.scale != 1.0:
            x = x * xp.asarray(self.scale, dtype)
        mean = xp.asarray(self.mean, dtype)
        std = xp.asarray(self.std, dtype)
        return (x - mean) / std

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _jnp():
    import jax.numpy as jnp

    return jnp


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: ``images`` uint8 (N, 32, 32, 3), ``labels`` int32 (N,), optional ``groups`` int32 (N,)
    (e.g. the person id, dense 0..G-1) and ``ids`` (N,) str (e.g. Kaggle ``image_id``)."""

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None = None
    ids: np.ndarray | None = None

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"images must be uint8 (N, 32, 32, 3), got {self.images.dtype} {self.images.shape}")
        n = len(self.images)
        if self.labels.shape != (n,):
            raise DataError(f"labels must have shape ({n},), got {self.labels.shape}")
        for name in ("groups", "ids"):
            value = getattr(self, name)
            if value is not None and value.shape != (n,):
                raise DataError(f"{name} must have shape ({n},), got {value.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> "Split":
        """The sub-split at integer ``index`` (order kept)."""
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        return Split(self.images[index], self.labels[index], pick(self.groups), pick(self.ids))


@dataclasses.dataclass(frozen=True)
class UnlearningData:
    """retain / forget / validation / test splits, the class count, the normalisation the model expects,
    and ``description``: a JSON-able record of where the data came from and how the forget set was chosen
    (written into every run folder so a run can be reproduced)."""

    retain: Split
    forget: Split
    validation: Split
    test: Split
    num_classes: int
    normalization: Normalization
    description: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if len(self.forget) == 0:
            raise DataError("the forget set is empty")
        if len(self.retain) == 0:
            raise DataError("the retain set is empty")
        for name in SPLITS:
            labels = getattr(self, name).labels
            if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise DataError(
                    f"{name} labels must lie in [0, {self.num_classes}), got [{labels.min()}, {labels.max()}]")

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {name: len(self.split(name)) for name in SPLITS}

    def digests(self) -> dict[str, str]:
        """A SHA-256 (hex, first 16 digits) of each split's contents — images, labels, groups, ids, in
        order — so a run folder records *which* examples it was run on, not only how many (two forget sets
        of the same size differ here)."""
        out = {}
        for name in SPLITS:
            split = self.split(name)
            h = hashlib.sha256()
            for part in (split.images, split.labels, split.groups, split.ids):
                if part is not None:
                    part = np.ascontiguousarray(part.astype(str) if part.dtype.kind in "OUS" else part)
                    h.update(str((part.dtype.str, part.shape)).encode())
                    h.update(part.tobytes())
            out[name] = h.hexdigest()[:16]
        return out
