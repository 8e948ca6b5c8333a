"""The method protocol: what the engine runs for every seed (:func:`jax_unlearn.engine.run.make_run`).

A method is a small factory ``factory(ctx, **hyper) -> Method`` (like ``optax.adam(...)`` returns a
``GradientTransformation``) whose pure functions the engine scans over epochs and vmaps over seeds:

* ``init(key, start_variables, data) -> state``  — ``start_variables`` is the original model (ignored by
  recipes that train from scratch, which draw their init from ``key``).
* ``epoch(state, key, data, start) -> (state, metrics)`` — one epoch; ``metrics`` a dict of scalars;
  ``start`` is the same frozen ``start_variables`` as ``init`` got (teachers, anchors): a method reads
  references from it rather than copying them into its per-seed state (as big_vision passes frozen
  parameters as arguments).
* ``variables(state) -> {'params', 'batch_stats'}``.
* ``num_epochs`` — how many times the engine calls ``epoch``.
* ``frozen`` (optional) — ``frozen(state) -> params-shaped bool tree`` from the state ``init`` returns:
  the weights a masked method's updates never touch (True = frozen; they must stay bit-identical to
  ``variables(init state)`` through the whole run). None: no fixed update mask.

All randomness comes from the keys handed in; anything that may differ per seed is an array argument.
The registry of factories is :mod:`jax_unlearn.methods.registry`.
"""
from __future__ import annotations

from typing import Callable, NamedTuple


class Method(NamedTuple):
    """The pure functions of one method for one seed; see the module docstring for their signatures."""

    init: Callable
    epoch: Callable
    variables: Callable
    num_epochs: int
    frozen: Callable | None = None
