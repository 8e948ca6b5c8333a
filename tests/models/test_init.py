"""jax_unlearn.models.init: each flat-drawn initialiser equals its jax.nn.initializers namesake bit for bit,
for each kind of kernel the models and EU-k's re-draw use (a conv, a 1×1 projection, a Dense), in both
float widths and both threefry modes, and so does the whole ResNet's init."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jax_unlearn.models import init

SHAPES = [(7, 7, 3, 8), (1, 1, 4, 8), (16, 10)]  # a stem, a projection and a Dense kernel
CASES = [(2.0, "fan_out", "normal"), (2.0, "fan_out", "uniform"), (1 / 3, "fan_in", "uniform"),
         (1.0, "fan_avg", "uniform")]


@pytest.fixture(params=[True, False], ids=["partitionable", "classic"])
def threefry(request):
    with jax.threefry_partitionable(request.param):
        yield


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_variance_scaling_equals_jax(threefry, case, dtype):
    ours, theirs = init.variance_scaling(*case), nn.initializers.variance_scaling(*case)
    with jax.enable_x64(dtype == jnp.float64):
        for i, shape in enumerate(SHAPES):
            key = jax.random.key(i)
            a, b = ours(key, shape, dtype), theirs(key, shape, dtype)
            assert a.shape == shape and a.dtype == dtype
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_uniform_equals_jax_and_bad_arguments_fail(threefry):
    key = jax.random.key(3)
    np.testing.assert_array_equal(np.asarray(init.uniform(-0.25, 0.25)(key, (10,))),
                                  np.asarray(jax.random.uniform(key, (10,), jnp.float32, -0.25, 0.25)))
    with pytest.raises(ValueError, match="invalid mode"):
        init.variance_scaling(1.0, "fan_geo", "normal")
    with pytest.raises(ValueError, match="invalid distribution"):
        init.variance_scaling(1.0, "fan_in", "truncated_normal")
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.variance_scaling(1.0, "fan_in", "normal")(key, (10,))


def test_the_resnet_init_is_unchanged_by_drawing_flat():
    """The whole model's variables equal those of the same ResNet with Flax's initialisers."""
    from jax_unlearn.models import ResNet, init_variables
    from jax_unlearn.models import resnet

    model = ResNet(stage_sizes=(1, 1), num_classes=4, width=4)
    ours = init_variables(model, jax.random.key(7))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(resnet, "conv_init", nn.initializers.variance_scaling(2.0, "fan_out", "normal"))
        mp.setattr(resnet, "variance_scaling", nn.initializers.variance_scaling)
        mp.setattr(resnet, "uniform", lambda lo, hi: lambda k, s, d=jnp.float32: jax.random.uniform(k, s, d, lo, hi))
        theirs = init_variables(model, jax.random.key(7))
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_draw_flat_is_the_n_dimensional_draw(threefry):
    """The noise draws (Fisher forgetting, SEIF, UNSIR's images) keep their values."""
    key = jax.random.key(5)
    for draw, args in ((jax.random.normal, ()), (jax.random.uniform, (-2.0, 3.0))):
        np.testing.assert_array_equal(np.asarray(init.draw_flat(draw, key, (2, 5, 5, 3), jnp.float32, *args)),
                                      np.asarray(draw(key, (2, 5, 5, 3), jnp.float32, *args)))
