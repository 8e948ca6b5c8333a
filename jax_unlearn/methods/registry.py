"""The one registry of unlearning methods and training recipes: factories ``factory(ctx, **hyper) -> Method``
(:class:`jax_unlearn.engine.protocol.Method`) under their names, with defaults and search spaces.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from jax_unlearn.engine.protocol import Method


@dataclasses.dataclass(frozen=True)
class MethodInfo:
    """A registry entry: the factory, a one-line summary, its reference, and its default hyper-parameters."""

    factory: Callable[..., Method]
    summary: str
    reference: str
    defaults: dict[str, Any]


METHODS: dict[str, MethodInfo] = {}


def register(name: str, summary: str, reference: str, **defaults):
    """Decorator adding ``factory`` to :data:`METHODS` under ``name`` with its default hyper-parameters."""

    def wrap(factory):
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        METHODS[name] = MethodInfo(factory, summary, reference, dict(defaults))
        return factory

    return wrap


def get_method(name: str) -> MethodInfo:
    """The registry entry of ``name``; an unknown name fails listing the valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def build_method(name: str, ctx, **overrides) -> Method:
    """``METHODS[name].factory(ctx, **defaults | overrides)``; unknown hyper-parameters fail by name."""
    info = get_method(name)
    unknown = sorted(set(overrides) - set(info.defaults))
    if unknown:
        raise ValueError(f"method {name!r} has no hyper-parameter(s) {unknown}; valid: {sorted(info.defaults)}")
    return info.factory(ctx, **{**info.defaults, **overrides})


@dataclasses.dataclass(frozen=True)
class Range:
    """A real hyper-parameter's search interval ``[low, high]``; ``log``: sampled log-uniformly."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self):
        if not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError(f"bad range [{self.low}, {self.high}]"
                             + (" (log scale needs low > 0)" if self.log else ""))


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """What a leaderboard tunes for one method: float ranges and the ``epochs`` options (empty: not tuned).

    Every named hyper-parameter must be one the method has (:func:`search_space` checks it); the ones
    named here are traced per lane, so a whole round of settings is one vmapped program.
    """

    floats: dict[str, Range]
    epochs: tuple[int, ...] = ()

    def names(self) -> list[str]:
        return [*self.floats, *(["epochs"] if self.epochs else [])]

    def sample(self, n: int, rng) -> dict[str, list]:
        """``n`` settings drawn with the NumPy ``Generator`` ``rng``: name -> list of n values (zipped).

        Floats uniform (log-uniform where ``log``) in their range; epochs uniform over the options.
        """
        out: dict[str, list] = {}
        for name, r in self.floats.items():
            u = rng.uniform(size=n)
            v = (r.low * (r.high / r.low) ** u) if r.log else r.low + (r.high - r.low) * u
            out[name] = [float(x) for x in v]
        if self.epochs:
            out["epochs"] = [int(x) for x in rng.choice(self.epochs, size=n)]
        return out


def search_space(name: str) -> SearchSpace:
    """The declared :class:`SearchSpace` of method ``name`` (:data:`jax_unlearn.methods.spaces.SPACES`),
    checked to name only hyper-parameters the method has, with float ranges for float defaults."""
    from jax_unlearn.methods.spaces import SPACES

    info = get_method(name)
    if name not in SPACES:
        raise ValueError(f"method {name!r} declares no search space (jax_unlearn/methods/spaces.py)")
    space = SPACES[name]
    unknown = sorted(set(space.names()) - set(info.defaults))
    if unknown:
        raise ValueError(f"search space of {name!r} names {unknown}, which the method does not have; "
                         f"valid: {sorted(info.defaults)}")
    for k in space.floats:
        if not isinstance(info.defaults[k], float):
            raise ValueError(f"search space of {name!r}: {k} has default {info.defaults[k]!r}, not a float range")
    return space
