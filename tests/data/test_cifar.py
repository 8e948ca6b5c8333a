import pickle

import numpy as np
import pytest

from jax_unlearn.data import CIFAR10_NORMALIZATION, DataError, ForgetSpec, load_cifar10


def batch(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def test_layout_chw_to_hwc(cifar_dir):
    data = load_cifar10(cifar_dir)
    by_id = {i: (image, label) for split in (data.retain, data.forget)
             for i, image, label in zip(split.ids, split.images, split.labels)}
    raw = batch(cifar_dir / "data_batch_2")
    image, label = by_id["train-23"]  # data_batch_2 holds train rows 20..39
    np.testing.assert_array_equal(image, raw[b"data"][3].reshape(3, 32, 32).transpose(1, 2, 0))
    assert label == raw[b"labels"][3]


def test_normalisation_matches_torchvision(cifar_dir):
    transforms = pytest.importorskip("torchvision.transforms")
    from PIL import Image

    images = load_cifar10(cifar_dir).test.images[:4]
    reference = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize(CIFAR10_NORMALIZATION.mean, CIFAR10_NORMALIZATION.std)])
    expected = np.stack([reference(Image.fromarray(x)).numpy().transpose(1, 2, 0) for x in images])
    np.testing.assert_allclose(CIFAR10_NORMALIZATION.apply(images), expected, rtol=0, atol=1e-6)


def test_kit_split_sizes_and_forget_idx(cifar_dir, tmp_path):
    path = tmp_path / "forget_idx.npy"
    np.save(path, np.array([0, 17, 99, 42]))
    data = load_cifar10(cifar_dir, forget_idx=path)
    assert sorted(data.forget.ids) == sorted(["train-0", "train-17", "train-99", "train-42"])
    assert len(data.retain) == 96 and len(data.validation) == len(data.test) == 10
    assert data.description["forget"]["kind"] == "index_file"
    assert data.description["forget"]["index_file"] == str(path)


def test_forget_and_forget_idx_conflict(cifar_dir, tmp_path):
    with pytest.raises(ValueError, match="not both"):
        load_cifar10(cifar_dir, forget=ForgetSpec(), forget_idx=tmp_path / "x.npy")


def test_torchvision_root_layout(tmp_path):
    from mini_datasets import write_cifar_dir

    write_cifar_dir(tmp_path / "root" / "cifar-10-batches-py")
    assert len(load_cifar10(tmp_path / "root").test) == 10


@pytest.mark.parametrize("content, message", [
    ([1, 2, 3], "expected a dict"),
    ({b"data": np.zeros((2, 3072), np.uint8)}, "expected a dict with keys"),
    ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, r"uint8 \(n, 3072\)"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, r"uint8 \(n, 3072\)"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "labels for 2 images"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "label 10 at row 1"),
])
def test_bad_batch_names_the_file(cifar_dir, content, message):
    with open(cifar_dir / "data_batch_3", "wb") as f:
        pickle.dump(content, f)
    with pytest.raises(DataError, match=message) as error:
        load_cifar10(cifar_dir)
    assert str(cifar_dir / "data_batch_3") in str(error.value)


def test_truncated_or_missing_batch(cifar_dir):
    raw = (cifar_dir / "test_batch").read_bytes()
    (cifar_dir / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="test_batch: not a CIFAR-10 batch pickle"):
        load_cifar10(cifar_dir)
    (cifar_dir / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch: CIFAR-10 batch file not found"):
        load_cifar10(cifar_dir)
