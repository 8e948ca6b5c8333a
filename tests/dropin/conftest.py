import copy

import pytest

from dropin_helpers import trained_resnet18


@pytest.fixture(scope="session")
def trained():
    return trained_resnet18()


@pytest.fixture
def original(trained):
    """A fresh copy of the trained start for each test (the drop-in changes its net in place)."""
    return copy.deepcopy(trained)
