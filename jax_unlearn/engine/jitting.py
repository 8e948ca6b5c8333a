"""``jit``: ``jax.jit`` with the XLA compiler options measured best on the backend it compiles for.

Every program jax-unlearn compiles (the engine's lanes, the drop-in's runs, evaluation, SISA) goes through
:func:`jit`, so that the options are one table in one place, with the measurement each entry rests on.
"""
from __future__ import annotations

from typing import Any, Callable

import jax

# XLA compiler options per JAX platform; a platform not listed compiles with XLA's defaults.
COMPILER_OPTIONS: dict[str, dict[str, Any]] = {
    # XLA:CPU: LLVM at -O1 instead of -O3 for XLA's own kernels (the GEMMs are YNNPACK's, already compiled).
    # The drop-in's ResNet-18 finetune program (600 images, batch 64, one lane) compiled in 4.01-4.10 s
    # against 4.36-4.62 s, ran as fast (1.04-1.09 s against 1.04-1.12 s) and gave bit-identical weights
    # (three processes each; -O2: 4.23-4.37 s; -O0: 2.5 s but runs 2.5x slower; benchmarks/RESULTS.md).
    # Bit-identical with XLA's default fusion emitters (tests/engine/test_jitting.py); with the loop emitters
    # (--xla_cpu_use_fusion_emitters=false, the test session's) some float32 reductions round differently.
    "cpu": {"xla_backend_optimization_level": 1},
}


def compiler_options(platform: str | None = None) -> dict[str, Any] | None:
    """The options :func:`jit` passes for ``platform`` (default: JAX's default backend), or None."""
    options = COMPILER_OPTIONS.get(jax.default_backend() if platform is None else platform)
    return dict(options) if options else None


def jit(fn: Callable, **kwargs) -> Callable:
    """``jax.jit(fn, **kwargs)`` compiling with :func:`compiler_options` for the default backend."""
    return jax.jit(fn, compiler_options=compiler_options(), **kwargs)
