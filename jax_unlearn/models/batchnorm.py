"""BatchNorm that is PyTorch's ``nn.BatchNorm2d`` — not Flax's.

Two differences from ``flax.linen.BatchNorm`` matter for exact parity with torchvision checkpoints:

* torch updates ``running_var`` with the *unbiased* batch variance ``var * n / (n - 1)`` while normalising
  with the biased one; Flax uses the biased variance for both.
* torch's ``momentum=0.1`` weighs the *new* statistic (Flax's ``momentum`` weighs the old one).

It also takes an optional per-example ``mask`` so that padded examples of a static-shape last batch
(PyTorch's ``drop_last=False``) contribute to neither the normalisation statistics nor the running ones,
and it counts ``num_batches_tracked`` so a ``.pth -> Flax -> .pth`` round trip is bit-identical.

It never reduces over any named axis: under ``vmap`` over seeds each lane keeps its own statistics.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn


class BatchNorm(nn.Module):
    """``y = (x - mean) / sqrt(var + eps) * scale + bias`` over the channel (last) axis of NHWC ``x``.

    Train mode: batch statistics over (N, H, W) of the unmasked examples; running statistics updated as
    ``r <- (1 - momentum) * r + momentum * s`` with ``s`` the batch mean and the unbiased batch variance.
    Eval mode: running statistics. Statistics are kept and computed in float32 whatever ``dtype`` is.

    Variables: params ``scale``, ``bias``; batch_stats ``mean``, ``var``, ``num_batches_tracked`` (int32).
    """

    momentum: float = 0.1  # torch convention: weight of the new batch statistic
    epsilon: float = 1e-5
    dtype: Any = jnp.float32  # output dtype (statistics are kept in float32)

    @nn.compact
    def __call__(self, x, *, train: bool, mask=None):
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        tracked = self.variable("batch_stats", "num_batches_tracked", jnp.zeros, (), jnp.int32)

        # Statistics in float32 at least (float64 when the whole model runs in float64 for tests).
        x32 = x.astype(jnp.promote_types(self.dtype, jnp.float32))
        if train:
            weight = None if mask is None else mask.astype(x32.dtype)
            y, mean, var, count = normalize_train(x32, scale.astype(x32.dtype), bias.astype(x32.dtype), weight,
                                                  self.epsilon)
            if not self.is_initializing():
                # A fully masked batch (possible at the end of a lane's epoch) must not move the stats.
                live = count > 0
                unbiased = var * (count / jnp.maximum(count - 1.0, 1.0))
                m = self.momentum
                ra_mean.value = jnp.where(live, (1.0 - m) * ra_mean.value + m * mean, ra_mean.value)
                ra_var.value = jnp.where(live, (1.0 - m) * ra_var.value + m * unbiased, ra_var.value)
                tracked.value = tracked.value + live.astype(jnp.int32)
        else:
            y = _affine(x32, ra_mean.value, ra_var.value, scale, bias, self.epsilon)
        return y.astype(self.dtype)


def _affine(x, mean, var, scale, bias, epsilon):
    """``(x - mean) * (scale / sqrt(var + eps)) + bias``: the affine map folded into one multiply-add per
    element (the arithmetic torch's kernel does)."""
    mul = scale * jnp.reciprocal(jnp.sqrt(var + epsilon))
    return (x - mean) * mul + bias


def _batch_moments(x, mask):
    """Mean and biased variance over (N, H, W) of NHWC float32 ``x``; ``mask`` (N,) bool/0-1 or None.

    Returns ``(mean (C,), var (C,), count ())`` where count is the number of values per channel used.
    The variance is the two-pass ``mean((x - mean)^2)``, as torch computes it, for float32 accuracy.
    """
    n, h, w, _ = x.shape
    if mask is None:
        mean = jnp.mean(x, axis=(0, 1, 2))
        var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
        return mean, var, jnp.asarray(n * h * w, jnp.float32)
    weight = mask.astype(x.dtype)[:, None, None, None]
    count = jnp.sum(mask.astype(jnp.float32)) * (h * w)
    denom = jnp.maximum(count, 1.0)
    mean = jnp.sum(x * weight, axis=(0, 1, 2)) / denom
    var = jnp.sum(jnp.square(x - mean) * weight, axis=(0, 1, 2)) / denom
    return mean, var, count


def normalize_train(x, scale, bias, weight, epsilon: float):
    """Train-mode BatchNorm of NHWC ``x`` on its own batch statistics, with a hand-written backward pass.

    Returns ``(y, mean, var, count)``: ``y = (x - mean) * scale / sqrt(var + eps) + bias`` for every row
    (masked ones too), ``mean``/``var`` (C,) the statistics of :func:`_batch_moments` over the rows whose
    ``weight`` (N,) is 1 (all rows when ``weight`` is None), ``count`` () the number of values per channel
    they used. The forward pass is :func:`_batch_moments` + :func:`_affine`.

    Why a custom VJP: autodiff of the two-pass variance and the masked sums emits some ten passes over the
    activations (and, on XLA:CPU, transposed copies for the reductions). The closed form needs two channel
    sums over all rows, ``A = Σ g`` and ``B = Σ g·x̂`` (one fused pass), then one elementwise pass::

        dx = s·r·(g − w/n·(A + x̂·B)) + w/n·dmean + 2·w·(x − mean)/n·dvar,   dscale = B,   dbias = A,

    with ``r = 1/sqrt(var + eps)``, ``x̂ = (x − mean)·r``, ``w`` the row weight, ``n = count`` and ``dmean``,
    ``dvar`` the cotangents of the returned statistics (zero in training, where only the running statistics
    read them). It uses ``Σ w·(x − mean) = 0`` (the mean's own derivative through the variance vanishes).
    The same function as autodiff's, to rounding (``tests/models/test_batchnorm.py`` checks it in float64).
    """
    y, mean, var, count = _normalize_train(x, scale, bias, weight, epsilon)
    return y, mean, var, count


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _normalize_train(x, scale, bias, weight, epsilon):
    mean, var, count = _batch_moments(x, weight)
    return _affine(x, mean, var, scale, bias, epsilon), mean, var, count


def _normalize_train_fwd(x, scale, bias, weight, epsilon):
    mean, var, count = _batch_moments(x, weight)
    return (_affine(x, mean, var, scale, bias, epsilon), mean, var, count), (x, scale, weight, mean, var, count)


def _normalize_train_bwd(epsilon, res, cotangents):
    x, scale, weight, mean, var, count = res
    g, dmean, dvar, _ = cotangents
    r = jnp.reciprocal(jnp.sqrt(var + epsilon))
    xhat = (x - mean) * r
    a = jnp.sum(g, axis=(0, 1, 2))
    b = jnp.sum(g * xhat, axis=(0, 1, 2))
    w = (1.0 if weight is None else weight[:, None, None, None]) / jnp.maximum(count, 1.0).astype(x.dtype)
    dx = (scale * r) * (g - w * (a + xhat * b)) + w * (dmean + 2.0 * (x - mean) * dvar)
    dweight = None if weight is None else jnp.zeros_like(weight)  # the mask is data, not a parameter
    return dx, b, a, dweight


_normalize_train.defvjp(_normalize_train_fwd, _normalize_train_bwd)
