"""Run-folder checkpoints: every restore is checked against the file list written at save time, and a
checkpoint whose files are unchanged since it last matched is not hashed again."""
import numpy as np
import pytest

from jax_unlearn.jobs import folders
from jax_unlearn.jobs.folders import RunFolderError


@pytest.fixture
def counted_digests(monkeypatch):
    calls = []
    digests = folders._file_digests

    def counting(target):
        calls.append(target)
        return digests(target)

    monkeypatch.setattr(folders, "_file_digests", counting)
    return calls


def test_restore_hashes_once_until_a_file_changes(tmp_path, counted_digests):
    tree = {"w": np.arange(4096, dtype=np.float32), "b": np.ones(3, np.float32)}
    target = tmp_path / "chunk_00000"
    folders._save_tree(target, tree)
    assert len(counted_digests) == 1  # the list written at save time

    for _ in range(2):
        np.testing.assert_array_equal(folders._load_tree(target)["w"], tree["w"])
    assert len(counted_digests) == 2  # checked on the first restore only

    largest = max((p for p in target.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    largest.write_bytes(bytes(data))  # same size, new mtime
    with pytest.raises(RunFolderError, match="sha256 differs"):
        folders._load_tree(target)
    assert len(counted_digests) == 3
