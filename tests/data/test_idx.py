import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from jax_unlearn.data import DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_NORMALIZATION, DataError, load_fashion_mnist
from jax_unlearn.data.idx import load_idx, pad_to_rgb32, parse_idx, read_idx

from mini_datasets import idx_bytes, write_idx_dir


def test_padding_and_channels():
    grey = np.random.default_rng(0).integers(1, 256, (4, 28, 28), dtype=np.uint8)
    rgb = pad_to_rgb32(grey)
    assert rgb.shape == (4, 32, 32, 3) and rgb.dtype == np.uint8
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert np.all(rgb[:, border] == 0)
    np.testing.assert_array_equal(rgb[:, 2:30, 2:30, 0], grey)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 1])
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


def test_loaded_images_are_padded_originals(tmp_path):
    root = write_idx_dir(tmp_path / "raw", gz=False)
    original = read_idx(root / "train-images-idx3-ubyte", 3)
    data = load_idx(root, max_train=None)
    for split in (data.retain, data.forget):
        rows = np.array([int(i.split("-")[1]) for i in split.ids])
        np.testing.assert_array_equal(split.images[:, 2:30, 2:30, 1], original[rows])
        assert split.images[:, :2].max() == 0 and split.images[:, :, 30:].max() == 0


def test_gz_and_raw_give_the_same_data(tmp_path):
    a = load_idx(write_idx_dir(tmp_path / "gz", gz=True))
    b = load_idx(write_idx_dir(tmp_path / "raw", gz=False))
    for split in ("retain", "forget", "validation", "test"):
        np.testing.assert_array_equal(a.split(split).images, b.split(split).images)
    assert a.normalization == FASHION_MNIST_NORMALIZATION


def test_parse_roundtrip():
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(parse_idx(idx_bytes(array), "x", 3), array)


def corrupt(root: Path, name: str, edit) -> Path:
    path = root / f"{name}.gz"
    path.write_bytes(gzip.compress(edit(gzip.decompress(path.read_bytes()))))
    return path


@pytest.mark.parametrize("name, edit, message", [
    ("train-images-idx3-ubyte", lambda raw: b"\x00\x00\x08\x01" + raw[4:], "bad IDX magic"),
    ("train-labels-idx1-ubyte", lambda raw: b"\x00\x00\x0d\x01" + raw[4:], "bad IDX magic"),
    ("train-images-idx3-ubyte", lambda raw: raw[:-7], "truncated"),
    ("train-images-idx3-ubyte", lambda raw: raw[:9], "truncated"),
    ("t10k-labels-idx1-ubyte", lambda raw: raw + b"\x00", "unexpected bytes"),
    ("t10k-labels-idx1-ubyte", lambda raw: raw[:-1] + b"\x0c", "label 12"),
])
def test_bad_idx_names_the_file(idx_dir, name, edit, message):
    path = corrupt(idx_dir, name, edit)
    with pytest.raises(DataError, match=message) as error:
        load_idx(idx_dir)
    assert str(path) in str(error.value)


def test_label_count_mismatch(tmp_path):
    root = write_idx_dir(tmp_path / "idx")
    (root / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(99, np.uint8))))
    with pytest.raises(DataError, match="99 labels for 100 images"):
        load_idx(root)


def test_not_gzip_names_the_file(idx_dir):
    (idx_dir / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load_idx(idx_dir)


def test_missing_file_is_named(idx_dir):
    os.remove(idx_dir / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_idx(idx_dir)


def test_missing_fashion_dir_explains_install(tmp_path):
    with pytest.raises(DataError) as error:
        load_fashion_mnist(tmp_path / "nowhere")
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "dpkg -x dataset-fashion-mnist_*.deb data/" in message
    assert "--data-dir data/usr/share/datasets/fashion-mnist" in message


@pytest.mark.skipif(not os.path.isdir(DEFAULT_FASHION_MNIST_DIR), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    data = load_fashion_mnist()
    assert len(data.retain) + len(data.forget) == 60000
    assert len(data.forget) == 6000
    assert len(data.validation) == len(data.test) == 5000
    assert data.description["source"] == "fashion-mnist"
    assert data.retain.images[:, :2].max() == 0 and data.retain.images.max() == 255
    mean = data.retain.images[:, 2:30, 2:30, 0].mean() / 255
    assert abs(mean - FASHION_MNIST_NORMALIZATION.mean[0]) < 0.01
