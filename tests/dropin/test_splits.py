"""The drop-in's probe of the splits a method reads: the stand-in network finds what the real one does."""
from __future__ import annotations

import pytest

from jax_unlearn.kaggle.splits import probe, splits_used
from jax_unlearn.methods import METHODS, build_method
from jax_unlearn.methods.registry import MethodInfo
from jax_unlearn.models.resnet import ResNet


@pytest.fixture(scope="module")
def small_resnet():
    """A ResNet with ResNet-18's module names (one block a stage, a fraction of its width): the real
    network's forward and backward passes, traced in a fraction of ResNet-18's time."""
    return ResNet(stage_sizes=(1, 1, 1, 1), num_classes=10, width=4, conv_impl="gemm")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_stand_in_network_finds_the_splits_the_real_one_does(method, small_resnet):
    assert probe(method, (), small_resnet) == probe(method, (), small_resnet, stand_in=False)


def test_a_method_that_reaches_past_the_stand_in_is_probed_on_the_real_network(monkeypatch):
    def factory(ctx):
        assert ctx.model.stage_sizes == (2, 2, 2, 2)  # a ResNet attribute the stand-in does not have
        return build_method("gradient-ascent", ctx)

    monkeypatch.setitem(METHODS, "reads-stage-sizes", MethodInfo(factory, "test", "test", {}))
    assert splits_used("reads-stage-sizes", (), 10, "imagenet", "gemm", "float32") == {"forget"}
