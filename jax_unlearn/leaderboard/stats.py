"""The leaderboard's numbers besides the score itself: bootstrap intervals and compile-apart timing.

* :func:`bootstrap` — 95% percentile intervals for the forgetting quality F and the final score,
  resampling the models of *both* populations (unlearned and retrained) with replacement, B times, from
  a NumPy ``Generator`` with an explicit seed; each resample is scored exactly like the point estimate
  (:func:`~jax_unlearn.metrics.competition.forgetting_quality`, :func:`final_score`).
* :class:`CompileClock` — wall time of a block of work with JAX's compilation (tracing, lowering, backend
  compile, from ``jax.monitoring``'s duration events) counted apart.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Mapping

import numpy as np

from jax_unlearn.metrics.competition import final_score, forgetting_quality

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
MIN_BOOTSTRAP_N = 4  # a resample of fewer models is mostly duplicates: the interval means nothing


def bootstrap(u: Mapping[str, Any], r: Mapping[str, Any], n: int, B: int, seed: int) -> dict[str, Any]:
    """95% intervals of F and the final score over ``B`` resamples of the first ``n`` models of each.

    Args: ``u``, ``r``: :func:`~jax_unlearn.evaluation.report.population_outputs`-like dicts (``forget_stat``
    (N, S), ``retain_acc``, ``test_acc`` (N,)); ``n`` models compared; ``seed`` of the Generator.

    Returns ``{'B', 'seed', 'seconds', 'f_lo', 'f_hi', 'score_lo', 'score_hi'}`` (2.5th / 97.5th percentiles).
    """
    if n < MIN_BOOTSTRAP_N:
        raise ValueError(f"N = {n} is too small for the bootstrap (needs >= {MIN_BOOTSTRAP_N} models per population)")
    if B < 10:
        raise ValueError(f"bootstrap B = {B}: needs >= 10 resamples")
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    f, s = np.empty(B), np.empty(B)
    for b in range(B):
        iu, ir = rng.integers(0, n, n), rng.integers(0, n, n)
        f[b] = forgetting_quality(u["forget_stat"][iu], r["forget_stat"][ir])
        s[b] = final_score(f[b], u["retain_acc"][iu], r["retain_acc"][ir], u["test_acc"][iu], r["test_acc"][ir])
    (f_lo, f_hi), (s_lo, s_hi) = np.percentile(f, [2.5, 97.5]), np.percentile(s, [2.5, 97.5])
    return {"B": B, "seed": seed, "seconds": time.perf_counter() - start, "f_lo": float(f_lo), "f_hi": float(f_hi),
            "score_lo": float(s_lo), "score_hi": float(s_hi)}


class CompileClock:
    """``with CompileClock() as c: ...`` then ``c.wall`` and ``c.compile`` seconds (``c.run = wall − compile``).

    Compile time is the sum of JAX's compile-duration events fired while the block ran (on any thread).
    """

    _lock = threading.Lock()
    _active: list["CompileClock"] = []
    _registered = False

    def __enter__(self):
        import jax.monitoring

        with CompileClock._lock:
            if not CompileClock._registered:  # one process-wide listener, feeding whichever clocks are open
                jax.monitoring.register_event_duration_secs_listener(CompileClock._event)
                CompileClock._registered = True
            CompileClock._active.append(self)
        self.compile, self._start = 0.0, time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._start
        with CompileClock._lock:
            CompileClock._active.remove(self)
        return False

    @property
    def run(self) -> float:
        return max(0.0, self.wall - self.compile)

    @staticmethod
    def _event(name: str, seconds: float, **_):
        if name in COMPILE_EVENTS:
            for clock in list(CompileClock._active):
                clock.compile += seconds
