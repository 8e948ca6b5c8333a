"""Which of the notebook's loaders a method reads, found by tracing the method, not by a hand-kept list.

:func:`splits_used` builds the method on a context whose split sizes, class counts and data record every
access, and traces one whole run abstractly (``jax.eval_shape``: shapes only, nothing computed or
compiled). What the method touched — in its factory, its ``init`` or its ``epoch`` — is what the drop-in
reads. ``train`` (retain ∪ forget) or the class counts (counted on retain ∪ forget) need both of those
loaders. A method that touched a split the probe missed could not run: its data would lack the key.

The network in the probe is a stand-in (:class:`_ProbeModel`): ResNet-18's variables tree and attributes,
but a forward pass of a few reductions. Which splits a method reads does not depend on the network's
arithmetic, and tracing ResNet-18's forward and backward passes was most of the probe's cost: on a 2-core
CPU the probe takes 0.4 s for ``finetune`` and 0.3–0.8 s for SCRUB, SalUn or UNSIR with the stand-in,
against 1.0 s and 1.4–3.1 s with the real network (benchmarks/RESULTS.md; a first ``finetune`` call gains
~0.3 s, as the real network's probe had also warmed JAX's caches for the run's own trace).
``tests/dropin/test_splits.py`` checks, for every registered method, that the stand-in finds the splits a
real ResNet does; a method the stand-in cannot run (one that reads a network attribute it lacks) is
probed on the real network.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_unlearn.data.types import Normalization
from jax_unlearn.engine.jitting import frozen_heap
from jax_unlearn.engine.run import RunConfig, make_run
from jax_unlearn.engine.train import Context
from jax_unlearn.methods import build_method
from jax_unlearn.models import init_variables, make_model

LOADERS = ("retain", "forget", "validation")  # the notebook's loaders, in its argument order
TRAIN = "train"
CLASS_COUNTS = "class_counts"
PROBE_SIZE = 256  # examples per split in the abstract trace; any size a method accepts will do
PROBE_IMAGE = (32, 32, 3)


class _Log:
    """The set of names read, shared by every copy of a :class:`_Recorded` (hashed by identity, so it can
    ride in a pytree's static data)."""

    def __init__(self):
        self.names: set = set()


class _Recorded(Mapping):
    """A read-only mapping that notes which keys were looked up (iterating it counts as all of them). A
    pytree, so a method may pass its data through ``jit``/``cond``; the copy inside keeps recording."""

    def __init__(self, items: Mapping, log: _Log):
        self._items, self._log = dict(items), log
        self._seen = log.names

    def __getitem__(self, key):
        self._seen.add(key)
        return self._items[key]

    def __iter__(self):
        self._seen.update(self._items)
        return iter(self._items)

    def __len__(self):
        return len(self._items)


jax.tree_util.register_pytree_node(
    _Recorded, lambda r: (tuple(r._items.values()), (tuple(r._items), r._log)),
    lambda aux, children: _Recorded(dict(zip(aux[0], children)), aux[1]))


class _RecordedCounts(Sequence):
    """Placeholder class counts (all 1) that note being read, however they are converted."""

    def __init__(self, num_classes: int, seen: set):
        self._n, self._seen = num_classes, seen

    def __len__(self):
        self._seen.add(CLASS_COUNTS)
        return self._n

    def __getitem__(self, i):
        self._seen.add(CLASS_COUNTS)
        return ((1,) * self._n)[i]

    def __array__(self, dtype=None, copy=None):
        self._seen.add(CLASS_COUNTS)
        return np.ones(self._n, dtype or np.int64)


class _ProbeModel:
    """What the probe gives a method for a network: ``model``'s ``num_classes``, ``dtype`` and variables
    tree (``init`` returns zeros of its shapes), and an ``apply`` with the signature of
    :class:`~jax_unlearn.models.resnet.ResNet`'s whose logits (B, num_classes) depend on every parameter
    and on the inputs through a few reductions. Methods reach the network only through
    ``jax_unlearn.engine.train``'s ``apply_*`` functions and ``init_variables``, which need no more."""

    def __init__(self, model):
        self.num_classes, self.dtype = model.num_classes, model.dtype
        self._shapes = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))

    def init(self, key, x, *, train: bool = False):
        return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), self._shapes)

    def apply(self, variables, x, *, train: bool = False, mask=None, mutable=False):
        total = sum(jnp.sum(p, dtype=jnp.float32) for p in jax.tree_util.tree_leaves(variables["params"]))
        pooled = jnp.mean(x.astype(jnp.float32), axis=tuple(range(1, x.ndim)))
        logits = jnp.zeros((x.shape[0], self.num_classes), jnp.float32) + (total * pooled)[:, None]
        if not mutable:
            return logits
        return logits, {name: variables[name] for name in ([mutable] if isinstance(mutable, str) else mutable)}


@functools.lru_cache(maxsize=32)
def splits_used(method: str, hyper: tuple, num_classes: int, stem: str, conv: str, dtype: str) -> frozenset:
    """The names among :data:`LOADERS`, ``'train'`` and ``'class_counts'`` that ``method`` (built with
    ``hyper``, a tuple of items) reads; ``'train'``/``'class_counts'`` come with ``retain`` and ``forget``.
    Raises the method's own ``ValueError`` for unknown hyper-parameters."""
    model = make_model(num_classes, stem, dtype, conv)
    with frozen_heap():  # tracing, as jax_unlearn.engine.jitting.jit does it
        try:
            return probe(method, hyper, model)
        except (AttributeError, TypeError):
            # A method that reaches into the network past what the stand-in offers (a user's own, say)
            # is probed on the real network: slower, and the same answer.
            return probe(method, hyper, model, stand_in=False)


def probe(method: str, hyper: tuple, model, *, stand_in: bool = True) -> frozenset:
    """:func:`splits_used` for the network ``model`` (a Flax module): traces one run of ``method``
    abstractly and returns the splits it read; with ``stand_in`` the run sees a :class:`_ProbeModel` of
    ``model`` instead of ``model`` itself."""
    model = _ProbeModel(model) if stand_in else model
    log = _Log()
    seen = log.names
    names = (*LOADERS, TRAIN)
    ctx = Context(model, Normalization(), _Recorded({s: PROBE_SIZE for s in names}, log),
                  _RecordedCounts(model.num_classes, seen))
    run = make_run(ctx, build_method(method, ctx, **dict(hyper)), RunConfig(track=False))
    # Keys are made inside the traced functions: a concrete jax.random.key(0) compiles a seeding program.
    start = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
    data = {s: (jax.ShapeDtypeStruct((PROBE_SIZE, *PROBE_IMAGE), jnp.uint8),
                jax.ShapeDtypeStruct((PROBE_SIZE,), jnp.int32)) for s in names}
    jax.eval_shape(lambda v, d: run(jax.random.key(0), v, _Recorded(d, log)), start, data)
    if seen & {TRAIN, CLASS_COUNTS}:
        seen |= {"retain", "forget"}
    return frozenset(seen & {*names, CLASS_COUNTS})
