"""The hand-written backward passes are the autodiff ones: BatchNorm's train-mode normalisation
(``normalize_train``) and the stem's 3×3/2 max-pool (``max_pool_3x3_s2``), forward and VJP."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jax_unlearn.models.batchnorm import _affine, _batch_moments, normalize_train
from jax_unlearn.models.resnet import max_pool_3x3_s2

# float64: the same function up to summation order; float32: the rounding of sums over ~100 values.
TOLS = {"float64": 1e-12, "float32": 1e-5}


def _autodiff_bn(x, scale, bias, weight, eps):
    mean, var, _ = _batch_moments(x, weight)
    return _affine(x, mean, var, scale, bias, eps), mean, var


def _rel(a, b):  # on the host: op-by-op jnp would compile each op for each shape and dtype
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _pair(ours, ref):
    """``(ours(*args), ref(*args))`` and ``(ours_vjp(cts), ref_vjp(cts))``, each pair one compiled program."""
    fwd = jax.jit(lambda *args: (ours(*args), ref(*args)))
    bwd = jax.jit(lambda args, cts: (jax.vjp(ours, *args)[1](cts), jax.vjp(ref, *args)[1](cts)))
    return fwd, bwd


@pytest.mark.parametrize("dtype", list(TOLS))
@pytest.mark.parametrize("mask", [None, (1, 1, 0, 1, 0, 1)], ids=["unmasked", "masked"])
def test_normalize_train_forward_and_vjp_equal_autodiff(dtype, mask):
    with jax.enable_x64(dtype == "float64"):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(6, 4, 3, 5)) * 3 + 1, dtype)
        scale, bias = (jnp.asarray(rng.normal(size=5), dtype) for _ in range(2))
        weight = None if mask is None else jnp.asarray(mask, dtype)

        def ours(x, s, b):
            return normalize_train(x, s, b, weight, 1e-5)[:3]

        fwd, bwd = _pair(ours, lambda x, s, b: _autodiff_bn(x, s, b, weight, 1e-5))
        out, ref = fwd(x, scale, bias)
        for a, b in zip(out, ref):
            assert _rel(a, b) < TOLS[dtype]
        # Cotangents on y alone (training), and on the statistics too (the general VJP).
        for with_stats in (False, True):
            cts = tuple(jnp.asarray(rng.normal(size=o.shape) if i == 0 or with_stats else np.zeros(o.shape), dtype)
                        for i, o in enumerate(ref))
            got, want = bwd((x, scale, bias), cts)
            for name, a, b in zip(("x", "scale", "bias"), got, want):
                assert _rel(a, b) < TOLS[dtype], (name, with_stats)
        assert float(normalize_train(x, scale, bias, weight, 1e-5)[3]) == (6 if mask is None else sum(mask)) * 12


def _nn_pool(x):
    return nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))


@pytest.mark.parametrize("dtype", list(TOLS))
@pytest.mark.parametrize("shape", [(3, 8, 8, 4), (2, 7, 5, 3), (2, 16, 16, 8), (1, 1, 1, 2), (1, 2, 3, 1)])
def test_max_pool_equals_flax_forward_and_vjp(dtype, shape):
    with jax.enable_x64(dtype == "float64"):
        rng = np.random.default_rng(1)
        x = jnp.maximum(jnp.asarray(rng.normal(size=shape), dtype), 0)  # ReLU'd, as in the stem: ties at 0
        fwd, bwd = _pair(max_pool_3x3_s2, _nn_pool)
        y, ref = fwd(x)
        np.testing.assert_array_equal(y, ref)  # a maximum is exact
        g = jnp.asarray(rng.normal(size=y.shape), dtype)
        got, want = bwd((x,), g)
        assert _rel(got[0], want[0]) < TOLS[dtype]


def test_max_pool_routes_a_tied_window_to_its_first_maximum():
    """All-equal windows: XLA's select-and-scatter (and torch) give the first tap in row-major order all of
    the gradient; so must we — bit for bit, as each input then receives at most one contribution."""
    x = jnp.ones((1, 4, 4, 1), jnp.float32)
    g = jnp.arange(1.0, 5.0, dtype=jnp.float32).reshape(1, 2, 2, 1)
    ours = jax.vjp(max_pool_3x3_s2, x)[1](g)[0]
    np.testing.assert_array_equal(ours, jax.vjp(_nn_pool, x)[1](g)[0])
    # Window (0, 0) covers rows/cols -1..1 (first real tap (0, 0)); window (0, 1) covers cols 1..3.
    np.testing.assert_array_equal(ours[0, :, :, 0], [[1, 2, 0, 0], [3, 4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
