# tests/convert (not tests/converters): a tests/converters folder on sys.path would shadow the package.
import os
import sys

import pytest

# Tests import shared helpers (tests/torch_reference.py) as plain modules.
sys.path.insert(0, os.path.dirname(__file__))


def _has_gpu() -> bool:
    try:
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a GPU (none visible to JAX)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
