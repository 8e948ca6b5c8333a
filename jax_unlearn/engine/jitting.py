"""``jit``: ``jax.jit`` with the XLA compiler options measured best on the backend it compiles for, and
tracing kept clear of full garbage collections.

Every program jax-unlearn compiles (the engine's lanes, the drop-in's runs, evaluation, SISA) goes through
:func:`jit`, so that the options are one table in one place, with the measurement each entry rests on.

Tracing a ResNet-18 training run makes enough long-lived Python objects to start one of CPython's full
collections, which walks every object in the process (~270k once torch and JAX are imported, more with a
notebook's data). :func:`jit` traces under :func:`frozen_heap`, so that such a collection walks only what
the trace made. The drop-in's finetune program (ResNet-18, batch 64, 2-core CPU) traced and lowered in
0.68–0.72 s against 0.92–0.94 s (three processes each); its compilation, run and results are unchanged
(benchmarks/RESULTS.md).
"""
from __future__ import annotations

import contextlib
import functools
import gc
import threading
from typing import Any, Callable, Iterator

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
    """``jax.jit(fn, **kwargs)`` compiling with :func:`compiler_options` for the default backend; calling
    it, ``.trace`` and ``.lower`` run under :func:`frozen_heap` (other attributes are ``jax.jit``'s)."""
    return _HeapFrozenTrace(jax.jit(fn, compiler_options=compiler_options(), **kwargs))


_FREEZE_LOCK = threading.Lock()
_freezers = 0  # frozen_heap blocks open, in any thread; the first to enter freezes, the last to leave thaws


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep CPython's cyclic garbage collector off the objects that exist on entry, until exit
    (``gc.freeze``/``gc.unfreeze``, both O(1); young objects are still collected). Nests and may be
    entered from several threads at once. Does nothing when collection is disabled or the caller has
    frozen objects itself (their ``gc.freeze`` is left as it is)."""
    global _freezers
    with _FREEZE_LOCK:
        # gc.get_freeze_count() walks the frozen objects: asked only when no block of ours is open.
        if _freezers == 0 and (not gc.isenabled() or gc.get_freeze_count()):
            owned = False
        else:
            owned = True
            _freezers += 1
            if _freezers == 1:
                gc.freeze()
    try:
        yield
    finally:
        if owned:
            with _FREEZE_LOCK:
                _freezers -= 1
                if _freezers == 0:
                    gc.unfreeze()


class _HeapFrozenTrace:
    """A ``jax.jit`` function whose calls, ``trace`` and ``lower`` (where tracing happens) run under
    :func:`frozen_heap`; a call that hits JAX's caches pays two O(1) list splices."""

    def __init__(self, jitted):
        self._jitted = jitted
        functools.update_wrapper(self, jitted)

    def __call__(self, *args, **kwargs):
        with frozen_heap():
            return self._jitted(*args, **kwargs)

    def trace(self, *args, **kwargs):
        with frozen_heap():
            return self._jitted.trace(*args, **kwargs)

    def lower(self, *args, **kwargs):
        with frozen_heap():
            return self._jitted.lower(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._jitted, name)
