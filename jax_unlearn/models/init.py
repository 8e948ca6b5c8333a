"""Weight initialisers that draw their random numbers as one flat vector: the values of JAX's own, compiled
in a fraction of the time.

``jax.random.normal(key, (3, 3, 64, 64))`` and ``jax.random.normal(key, (36864,)).reshape(3, 3, 64, 64)``
are the same numbers (threefry's counters run over the flattened shape), but with
``jax_threefry_partitionable`` (JAX's default) the N-d draw lowers to per-dimension counter arithmetic that
XLA:CPU compiles ~6× slower (0.81 s against 0.13 s for that kernel, loop emitters; figures and the whole
model's init in ``benchmarks/RESULTS.md``). Every program that starts a model from scratch (retraining, the
original model, SISA's shards, EU-k's re-drawn layers) compiles its initialiser, and some methods draw
noise shaped like the weights (Fisher forgetting, SEIF) or images (UNSIR), so the draw shape is worth
choosing. Each function here equals its ``jax.random`` or ``jax.nn.initializers`` namesake bit for bit
(``tests/models/test_init.py``).
"""
from __future__ import annotations

import math
from typing import Callable, Literal, Sequence

import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


def draw_flat(draw, key, shape: Sequence[int], dtype, *args) -> jax.Array:
    """``draw(key, shape, dtype, *args)`` (``jax.random.normal``, ``uniform``, …): the same numbers, drawn as
    one vector of ``prod(shape)`` and reshaped, so the compiled program is smaller (module docstring).
    For noise shaped like weights or images too (Fisher forgetting, SEIF, UNSIR's noise images)."""
    return draw(key, (math.prod(shape),), dtype, *args).reshape(tuple(shape))


def fan_in(shape: Sequence[int]) -> int:
    """torch's fan-in of a Flax kernel: H·W·I for a conv (H, W, I, O), I for a Dense (I, O)."""
    return math.prod(shape[:-1])


def fan_out(shape: Sequence[int]) -> int:
    """torch's fan-out of a Flax kernel: H·W·O for a conv (H, W, I, O), O for a Dense (I, O)."""
    return shape[-1] * math.prod(shape[:-2])


def variance_scaling(scale: float, mode: Literal["fan_in", "fan_out", "fan_avg"],
                     distribution: Literal["normal", "uniform"]) -> Initializer:
    """``jax.nn.initializers.variance_scaling(scale, mode, distribution)`` (in axis -2, out axis -1, the rest a
    receptive field: Dense ``(in, out)`` and conv HWIO kernels), drawn flat.

    ``variance = scale / fan`` for the chosen fan; ``'normal'`` draws N(0, variance) (untruncated, as
    torch's ``kaiming_normal_``), ``'uniform'`` U(±√(3·variance)) (torch's ``kaiming_uniform_`` and
    ``xavier_uniform_``).
    Reference: He et al., "Delving Deep into Rectifiers", ICCV 2015; Glorot & Bengio, AISTATS 2010.
    """
    if mode not in ("fan_in", "fan_out", "fan_avg"):
        raise ValueError(f"invalid mode {mode!r} for variance scaling")
    if distribution not in ("normal", "uniform"):
        raise ValueError(f"invalid distribution {distribution!r} for variance scaling")

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        if len(shape) < 2:
            raise ValueError(f"variance scaling needs a kernel of at least 2 dimensions, got shape {tuple(shape)}")
        fi, fo = fan_in(shape), fan_out(shape)
        fan = {"fan_in": fi, "fan_out": fo, "fan_avg": (fi + fo) / 2}[mode]
        variance = jnp.array(scale / fan, dtype=dtype)  # as JAX's: the scale in the parameter's dtype
        if distribution == "normal":
            return draw_flat(jax.random.normal, key, shape, dtype) * jnp.sqrt(variance)
        return draw_flat(jax.random.uniform, key, shape, dtype, -1) * jnp.sqrt(3 * variance)

    return init


def uniform(low: float, high: float) -> Initializer:
    """U(low, high): ``jax.random.uniform(key, shape, dtype, low, high)``, drawn flat (e.g. torch's
    ``nn.Linear`` bias, U(±1/√fan_in))."""

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        return draw_flat(jax.random.uniform, key, shape, dtype, low, high)

    return init
