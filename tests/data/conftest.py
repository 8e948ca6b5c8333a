"""Fixtures: mini data sets in every supported format, written under ``tmp_path``."""
import pytest

from mini_datasets import write_cifar_dir, write_idx_dir, write_kaggle_dir


@pytest.fixture
def idx_dir(tmp_path):
    return write_idx_dir(tmp_path / "idx")


@pytest.fixture
def cifar_dir(tmp_path):
    return write_cifar_dir(tmp_path / "cifar")


@pytest.fixture
def kaggle_dir(tmp_path):
    return write_kaggle_dir(tmp_path / "kaggle")


# One mini folder writer per LOADERS entry; tests over the registry fail for a loader missing here.
WRITERS = {
    "fashion-mnist": write_idx_dir,
    "idx": write_idx_dir,
    "kaggle": write_kaggle_dir,
    "cifar10": write_cifar_dir,
}


@pytest.fixture
def writers():
    return WRITERS


@pytest.fixture
def make_dataset(tmp_path):
    """``make_dataset(name) -> path`` of a fresh mini folder for the loader ``LOADERS[name]``."""
    return lambda name, **options: WRITERS[name](tmp_path / name, **options)
