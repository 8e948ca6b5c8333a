"""Fashion-MNIST (the offline default) and any other IDX-format directory (MNIST, KMNIST, ...).

The Debian package ``dataset-fashion-mnist`` installs the four IDX files in
:data:`DEFAULT_FASHION_MNIST_DIR`. Images are 28×28 grey; we zero-pad them to 32×32 (2 px each side) and
repeat the grey channel three times so the torchvision ResNet-18 of the challenge takes them unchanged.

Splits: the 60k train set (optionally a seeded subset of ``max_train``) is cut into retain/forget by a
:class:`~jax_unlearn.data.forget.ForgetSpec`; the 10k t10k set is halved into validation/test by a
seeded permutation, as the starting kit does with the CIFAR-10 test set.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from jax_unlearn.data.forget import ForgetSpec, split_train
from jax_unlearn.data.splits import assemble, halve, subsample
from jax_unlearn.data.types import IMAGE_SHAPE, DataError, Normalization, Split, UnlearningData

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

#: Fashion-MNIST's train-set pixel mean and standard deviation (0.2860, 0.3530), the commonly quoted
#: values, computed on the unpadded 28×28 images. We use this one constant for every IDX directory
#: (MNIST included) rather than computing statistics per data set, so a checkpoint's expected input never
#: depends on which files were loaded. The 2-px zero border lowers the true 32×32 mean (≈0.22 for
#: Fashion-MNIST); the network's first BatchNorm absorbs such an offset.
FASHION_MNIST_NORMALIZATION = Normalization(scale=1 / 255, mean=(0.2860,) * 3, std=(0.3530,) * 3)

_UBYTE = 0x08
_INSTALL_HINT = (
    "install Fashion-MNIST with `apt-get install dataset-fashion-mnist` (as root), or without root: "
    "`apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb data/` and then "
    "pass `--data-dir data/usr/share/datasets/fashion-mnist`"
)
# (split, kind) -> accepted base names; each also accepted with a ".gz" suffix.
_FILE_NAMES = {
    ("train", "images"): ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    ("train", "labels"): ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    ("t10k", "images"): ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    ("t10k", "labels"): ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def parse_idx(raw: bytes, name: str, ndim: int) -> np.ndarray:
    """Parse one unsigned-byte IDX file strictly.

    Format (yann.lecun.com/exdb/mnist): two zero bytes, a type byte (``0x08`` = uint8), a byte with the
    number of dimensions, that many big-endian uint32 sizes, then the data in C order.

    Args:
      raw: the file's (decompressed) bytes.
      name: the file's name, used in error messages.
      ndim: the expected number of dimensions (3 for images, 1 for labels).

    Returns:
      uint8 array of the declared shape.

    Raises:
      DataError (naming ``name``): bad magic number, wrong type or rank, truncated or oversized data.
    """
    if len(raw) < 4:
        raise DataError(f"{name}: truncated IDX file ({len(raw)} bytes, no header)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE or raw[3] != ndim:
        raise DataError(f"{name}: bad IDX magic number 0x{raw[:4].hex()} "
                        f"(expected 0x0000{_UBYTE:02x}{ndim:02x}: unsigned bytes, {ndim} dimension(s))")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated IDX file (header needs {header} bytes, file has {len(raw)})")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) < expected:
        raise DataError(f"{name}: truncated IDX file: shape {shape} needs {expected} bytes, file has {len(raw)}")
    if len(raw) > expected:
        raise DataError(f"{name}: {len(raw) - expected} unexpected bytes after the data of shape {shape}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """Read and :func:`parse_idx` an IDX file, gunzipping it when its name ends in ``.gz``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: cannot read IDX file ({error})") from None
    return parse_idx(raw, str(path), ndim)


def pad_to_rgb32(images: np.ndarray) -> np.ndarray:
    """uint8 grey (N, H, W) with H, W <= 32 -> uint8 (N, 32, 32, 3): centred zero padding (2 px each side
    for 28×28), the grey channel repeated three times."""
    n, h, w = images.shape
    size = IMAGE_SHAPE[0]
    if h > size or w > size:
        raise DataError(f"IDX images are {h}x{w}; at most {size}x{size} is supported")
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros((n, size, size, 3), np.uint8)
    out[:, top:top + h, left:left + w, :] = images[..., None]
    return out


def _find(data_dir: Path, split: str, kind: str) -> Path:
    for base in _FILE_NAMES[(split, kind)]:
        for name in (base + ".gz", base):
            if (data_dir / name).is_file():
                return data_dir / name
    wanted = _FILE_NAMES[(split, kind)][0]
    raise DataError(f"{data_dir}: missing {wanted}.gz (or {wanted}) in this IDX directory")


def read_idx_split(data_dir: str | os.PathLike, split: str, num_classes: int = 10) -> Split:
    """One IDX split (``'train'`` or ``'t10k'``) as a :class:`Split`: images uint8 (N, 32, 32, 3), labels
    int32 (N,), ids ``'<split>-<i>'`` (position in the file); label files must match the image count and
    hold labels in ``[0, num_classes)``."""
    data_dir = Path(data_dir)
    image_path, label_path = _find(data_dir, split, "images"), _find(data_dir, split, "labels")
    images, labels = read_idx(image_path, 3), read_idx(label_path, 1)
    if len(images) != len(labels):
        raise DataError(f"{label_path}: {len(labels)} labels for {len(images)} images in {image_path}")
    if labels.size and labels.max() >= num_classes:
        row = int(np.argmax(labels >= num_classes))
        raise DataError(f"{label_path}: label {labels[row]} at row {row} is outside [0, {num_classes})")
    ids = np.char.add(f"{split}-", np.arange(len(labels)).astype(str))
    return Split(pad_to_rgb32(images), labels.astype(np.int32), ids=ids)


def load_idx(
    data_dir: str | os.PathLike,
    *,
    seed: int = 0,
    forget: ForgetSpec | None = None,
    max_train: int | None = None,
    max_eval: int | None = None,
    num_classes: int = 10,
    source: str = "idx",
) -> UnlearningData:
    """Load an IDX directory (``train-*`` and ``t10k-*`` image and label files, gz or raw).

    Args:
      data_dir: the directory.
      seed: seeds the train subset and the validation/test halves (independent streams).
      forget: the forget selection; None means ``ForgetSpec(seed=seed)`` (a random 10%).
      max_train: keep a seeded random subset of this many train images before the forget selection.
      max_eval: keep at most this many images in each of validation and test.
      num_classes: label range.
      source: the name recorded in ``description['source']``.

    Returns:
      :class:`UnlearningData` with :data:`FASHION_MNIST_NORMALIZATION`; retain + forget come from train,
      validation + test from t10k.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"IDX data directory {data_dir} not found; for the default data set, {_INSTALL_HINT}")
    spec = forget if forget is not None else ForgetSpec(seed=seed)
    train = read_idx_split(data_dir, "train", num_classes)
    forget_idx, retain_idx = split_train(train.labels, None, spec, max_train=max_train, seed=seed)
    validation, test = halve(read_idx_split(data_dir, "t10k", num_classes), seed)
    splits = {
        "retain": train.take(retain_idx),
        "forget": train.take(forget_idx),
        "validation": subsample(validation, max_eval, seed, "validation subset"),
        "test": subsample(test, max_eval, seed, "test subset"),
    }
    return assemble(splits, num_classes=num_classes, normalization=FASHION_MNIST_NORMALIZATION,
                    source=source, path=str(data_dir), seed=seed, forget=spec.to_dict(),
                    max_train=max_train, max_eval=max_eval)


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    forget: ForgetSpec | None = None,
    max_train: int | None = None,
    max_eval: int | None = None,
) -> UnlearningData:
    """Fashion-MNIST from ``data_dir`` (default :data:`DEFAULT_FASHION_MNIST_DIR`, the Debian package
    ``dataset-fashion-mnist``); see :func:`load_idx` for the arguments and splits. A missing directory
    raises :class:`DataError` explaining how to install the package."""
    data_dir = Path(data_dir if data_dir is not None else DEFAULT_FASHION_MNIST_DIR)
    if not data_dir.is_dir():
        raise DataError(f"Fashion-MNIST directory {data_dir} not found: {_INSTALL_HINT}")
    return load_idx(data_dir, seed=seed, forget=forget, max_train=max_train, max_eval=max_eval,
                    source="fashion-mnist")
