"""Data sets for unlearning, all loaded into one representation: :class:`UnlearningData`.

Every format has one loader in :data:`LOADERS`, called as ``loader(path, **options)``;
:func:`load_dataset` looks a name up there. Loaders share the seeded split helpers of
:mod:`jax_unlearn.data.splits` and the forget selection of :mod:`jax_unlearn.data.forget`.

- ``fashion-mnist``: the Debian package ``dataset-fashion-mnist`` (the offline default); forget set
  chosen by a :class:`ForgetSpec`.
- ``idx``: any IDX directory (MNIST, ...); forget set by a :class:`ForgetSpec`.
- ``kaggle``: the competition's Kaggle folder; forget set from ``forget.csv``.
- ``cifar10``: CIFAR-10 python pickles; forget set from the starting kit's ``forget_idx.npy`` or a
  :class:`ForgetSpec`.
"""
from __future__ import annotations

import inspect
import os
from typing import Any, Callable

from jax_unlearn.data.cifar import CIFAR10_NORMALIZATION, load_cifar10
from jax_unlearn.data.forget import ForgetSpec, select_forget, split_train
from jax_unlearn.data.idx import (DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_NORMALIZATION, load_fashion_mnist,
                                  load_idx)
from jax_unlearn.data.kaggle_folder import KAGGLE_NORMALIZATION, load_class_counts, load_kaggle
from jax_unlearn.data.splits import check_disjoint_ids, halve, subsample
from jax_unlearn.data.types import SPLITS, DataError, Normalization, Split, UnlearningData

LOADERS: dict[str, Callable[..., UnlearningData]] = {
    "fashion-mnist": load_fashion_mnist,
    "idx": load_idx,
    "kaggle": load_kaggle,
    "cifar10": load_cifar10,
}


def load_dataset(name: str, path: str | os.PathLike | None = None, **options: Any) -> UnlearningData:
    """``LOADERS[name](path, **options)``; ``path`` may be omitted only for loaders with a default
    location (``fashion-mnist``). An unknown ``name`` raises ValueError listing the valid names."""
    if name not in LOADERS:
        raise ValueError(f"unknown data set {name!r}; valid: {', '.join(LOADERS)}")
    loader = LOADERS[name]
    if path is None:
        first = next(iter(inspect.signature(loader).parameters.values()))
        if first.default is inspect.Parameter.empty:
            raise ValueError(f"data set {name!r} needs a path")
        return loader(**options)
    return loader(path, **options)


__all__ = [
    "CIFAR10_NORMALIZATION", "DEFAULT_FASHION_MNIST_DIR", "FASHION_MNIST_NORMALIZATION", "KAGGLE_NORMALIZATION",
    "LOADERS", "SPLITS", "DataError", "ForgetSpec", "Normalization", "Split", "UnlearningData",
    "check_disjoint_ids", "halve", "load_cifar10", "load_class_counts", "load_dataset", "load_fashion_mnist",
    "load_idx", "load_kaggle", "select_forget", "split_train", "subsample",
]
