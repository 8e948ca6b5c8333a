"""What an unlearning method (or training recipe) is, and the one registry that holds them all.

A method is a small factory ``factory(ctx, **hyper) -> Method`` (like ``optax.adam(...)`` returns a
``GradientTransformation``) whose pure functions the engine scans over epochs and vmaps over seeds:

* ``init(key, start_variables, data) -> state``  — ``start_variables`` is the original model (ignored by
  recipes that train from scratch, which draw their init from ``key``).
* ``epoch(state, key, data) -> (state, metrics)`` — one epoch; ``metrics`` a dict of scalars.
* ``variables(state) -> {'params', 'batch_stats'}``.
* ``num_epochs`` — how many times the engine calls ``epoch``.

All randomness comes from the keys handed in; anything that may differ per seed is an array argument.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple


class Method(NamedTuple):
    init: Callable
    epoch: Callable
    variables: Callable
    num_epochs: int


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
