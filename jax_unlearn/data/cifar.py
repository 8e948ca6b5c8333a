"""CIFAR-10 from the python pickle directory (``cifar-10-batches-py``), split as the starting kit does.

Follows the NeurIPS 2023 unlearning starting kit (``unlearning-CIFAR10.ipynb``): the 50k train set is
cut into retain/forget by the kit's ``forget_idx.npy`` (indices into the train set) or, without that
file, by a :class:`~jax_unlearn.data.forget.ForgetSpec`; the 10k test set is halved into test/validation
by a seeded permutation; inputs are normalised like ``ToTensor()`` + ``Normalize(mean, std)`` with the
kit's constants (:data:`CIFAR10_NORMALIZATION`).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from jax_unlearn.data.forget import ForgetSpec, split_train
from jax_unlearn.data.splits import assemble, halve, subsample
from jax_unlearn.data.types import DataError, Normalization, Split, UnlearningData

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
NUM_CLASSES = 10
CIFAR10_NORMALIZATION = Normalization(scale=1 / 255, mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010))


def read_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch pickle: ``{b'data': uint8 (n, 3072) in CHW order, b'labels': n ints}``.

    ``pickle.load(..., encoding='bytes')`` is how the data set itself is distributed; the result is
    checked before use.

    Returns:
      ``(images uint8 (n, 32, 32, 3) NHWC, labels int32 (n,))``.

    Raises:
      DataError naming the file: missing, not a pickle, not a dict with those keys, wrong shapes or dtype,
      labels outside ``[0, 10)``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise DataError(f"{path}: CIFAR-10 batch file not found") from None
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as error:
        raise DataError(f"{path}: not a CIFAR-10 batch pickle ({error!r})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{path}: expected a dict with keys b'data' and b'labels', got {keys}")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: b'data' must be uint8 (n, 3072), got "
                        f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
    try:
        labels = np.asarray(labels, np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: b'labels' is not a list of integers") from None
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {labels.shape} labels for {len(data)} images")
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if bad.size:
        raise DataError(f"{path}: label {labels[bad[0]]} at row {bad[0]} is outside [0, {NUM_CLASSES})")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int32)


def read_cifar10(data_dir: str | os.PathLike, train: bool) -> Split:
    """The train (50k; ``data_batch_1..5`` concatenated in order) or test (10k) set as a :class:`Split`
    with ids ``'train-<i>'`` / ``'test-<i>'`` (position in that set, as ``forget_idx.npy`` counts)."""
    batches = [read_batch(Path(data_dir) / name) for name in (TRAIN_FILES if train else (TEST_FILE,))]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    ids = np.char.add("train-" if train else "test-", np.arange(len(labels)).astype(str))
    return Split(images, labels, ids=ids)


def load_cifar10(
    data_dir: str | os.PathLike,
    *,
    seed: int = 0,
    forget: ForgetSpec | None = None,
    forget_idx: str | os.PathLike | None = None,
    max_train: int | None = None,
    max_eval: int | None = None,
) -> UnlearningData:
    """Load CIFAR-10 and split it as the starting kit does.

    Args:
      data_dir: the ``cifar-10-batches-py`` directory, or a directory containing it (torchvision's root).
      seed: seeds the test/validation halves and the train subset.
      forget: the forget selection; None means ``forget_idx`` when given, else ``ForgetSpec(seed=seed)``
        (a random 10%, the kit's forget-set size).
      forget_idx: the kit's ``forget_idx.npy`` (shorthand for ``ForgetSpec(kind='index_file', ...)``).
      max_train: keep a seeded random subset of this many train images (see
        :func:`~jax_unlearn.data.forget.split_train` for how it combines with an index file).
      max_eval: keep at most this many images in each of validation and test.

    Returns:
      :class:`UnlearningData` with :data:`CIFAR10_NORMALIZATION`.
    """
    data_dir = Path(data_dir)
    if (data_dir / "cifar-10-batches-py").is_dir():
        data_dir = data_dir / "cifar-10-batches-py"
    if not data_dir.is_dir():
        raise DataError(f"CIFAR-10 directory {data_dir} not found (expected the python version, "
                        f"cifar-10-batches-py, with {', '.join(TRAIN_FILES)} and {TEST_FILE})")
    if forget is not None and forget_idx is not None:
        raise ValueError("give either forget or forget_idx, not both")
    if forget_idx is not None:
        forget = ForgetSpec(kind="index_file", index_file=os.fspath(forget_idx), seed=seed)
    spec = forget if forget is not None else ForgetSpec(seed=seed)
    train = read_cifar10(data_dir, train=True)
    forget_rows, retain_rows = split_train(train.labels, None, spec, max_train=max_train, seed=seed)
    validation, test = halve(read_cifar10(data_dir, train=False), seed)
    splits = {
        "retain": train.take(retain_rows),
        "forget": train.take(forget_rows),
        "validation": subsample(validation, max_eval, seed, "validation subset"),
        "test": subsample(test, max_eval, seed, "test subset"),
    }
    return assemble(splits, num_classes=NUM_CLASSES, normalization=CIFAR10_NORMALIZATION, source="cifar10",
                    path=str(data_dir), seed=seed, forget=spec.to_dict(), max_train=max_train, max_eval=max_eval)
