"""Pieces shared by the ports of the NeurIPS 2023 Machine Unlearning Challenge winners.

The methods themselves live one per module beside this one (fanchuan, kookmin, seif, sebastian, toshi
— ``toshi-conv-transpose`` —, amnesiacs, sun); this module holds what they have in common, so no method
carries a copy:

* The training vocabulary is the engine's (:mod:`jax_unlearn.engine.train`): a winner's state is a
  :class:`~jax_unlearn.engine.train.MultiOptState` (one optimiser state per optimiser it uses; a frozen
  reference such as the original model is never copied there: it is ``epoch``'s ``start``), its steps
  are :func:`~jax_unlearn.engine.train.loss_step` / :func:`~jax_unlearn.engine.train.optimizer_step` (with
  an optional *gradient* scale, applied before weight decay like a backward hook, and an optional *update*
  mask: masked weights stay bit-identical), scanned by ``epoch_over`` or ``run_batches``. Here:
  :func:`ce_loss` (plain CE as a state loss) and :func:`shuffled_batches` (a partial shuffled pass).
* leaf selectors (:func:`kind_mask` over :func:`jax_unlearn.engine.masks.leaf_kinds`, :func:`leaf_mask` by
  name), :func:`standard_draws` (one RNG call for many leaves) and :func:`reset_linear` (torch's default
  re-initialisation of a layer).

All references: the challenge write-ups, and their ports in xcadet/deepunlearn (``munl/unlearning/
kgltop1.py`` … ``kgltop7.py``, read at commit 6830ff6), whose ``unlearn()`` bodies these follow step by
step; every place where we do not is listed in the method's docstring ("Ambiguities") and in
docs/METHODS.md. Triantafillou et al., "Are we making progress in unlearning? Findings from the first
NeurIPS unlearning competition", arXiv:2406.09073 (2024).

The loaders a port receives: deepunlearn builds the retain, forget and validation loaders with the
*method's own* ``batch_size`` (``munl/datasets/get_dataset.py``; 64 for most winners, 256 for fanchuan),
retain and forget shuffled, validation and test not (``munl/settings.py`` ``default_loaders``). Our
passes do the same — shuffled retain/forget passes of the method's batch size, the validation pass
(amnesiacs) in data order — except fanchuan's forget pass, which keeps batch 64 (``forget_batch_size``;
see its docstring).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jax_unlearn.engine.batches import epoch_batches, steps_per_epoch
from jax_unlearn.engine.losses import cross_entropy
from jax_unlearn.engine.masks import leaf_kinds
from jax_unlearn.engine.train import MultiOptState
from jax_unlearn.models.init import fan_in

REF = "NeurIPS 2023 Machine Unlearning Challenge (Kaggle); port: xcadet/deepunlearn munl/unlearning/"


def ce_loss(state: MultiOptState, logits, images, labels, mask):
    """Plain batch-mean cross-entropy as a :data:`~jax_unlearn.engine.train.StateLoss` (the fine-tuning
    passes of most winners)."""
    return cross_entropy(logits, labels, mask)


def shuffled_batches(key, n: int, batch_size: int, steps: int | None = None):
    """The first ``steps`` (default all) batches of a shuffled ``drop_last=False`` pass: ``(idx, mask)``."""
    idx, mask = epoch_batches(key, n, batch_size)
    steps = steps_per_epoch(n, batch_size) if steps is None else steps
    return idx[:steps], mask[:steps]


# ---- leaves -------------------------------------------------------------------------------------------------

def _path_names(path) -> tuple[str, ...]:
    return tuple(str(getattr(p, "key", p)) for p in path)


def leaf_mask(params, predicate: Callable[[tuple[str, ...], Any], bool]):
    """A params-shaped tree of Python bools: ``predicate(path_names, leaf)`` per leaf."""
    return jax.tree_util.tree_map_with_path(lambda p, x: bool(predicate(_path_names(p), x)), params)


def kind_mask(params, *kinds: str):
    """A params-shaped tree of Python bools: the leaf's layer kind (:func:`~jax_unlearn.engine.masks.leaf_kinds`:
    ``'conv'``, ``'linear'``, ``'batchnorm'``) is one of ``kinds``. Static, so it picks leaves at trace time."""
    return jax.tree_util.tree_map(lambda kind: kind in kinds, leaf_kinds(params))


def standard_draws(key, shapes, distribution: str = "normal", dtype=jnp.float32) -> list:
    """Independent N(0, 1) (``'normal'``) or U(-1, 1) (``'uniform'``) arrays of the given ``shapes``, made by
    *one* RNG call cut into pieces. (XLA compiles every threefry call on its own — about a second of CPU
    each — so per-leaf calls over a ResNet would dominate compile time.)"""
    sizes = [math.prod(s) for s in shapes]
    total = max(sum(sizes), 1)
    flat = (jax.random.normal(key, (total,), dtype) if distribution == "normal"
            else jax.random.uniform(key, (total,), dtype, -1.0, 1.0))
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + n)
    return [flat[a:b].reshape(s) for a, b, s in zip(offsets, offsets[1:], shapes)]


def map_selected(fn, key, params, selected):
    """``fn(leaf_key, leaf)`` on the leaves where ``selected`` (a tree of Python bools) is true, one key per
    leaf (``fold_in(key, leaf index)``; None when ``key`` is None); other leaves are returned as they are."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    flags = jax.tree_util.tree_leaves(selected)
    out = [fn(None if key is None else jax.random.fold_in(key, i), x) if f else x
           for i, (x, f) in enumerate(zip(leaves, flags))]
    return jax.tree_util.tree_unflatten(treedef, out)


def reset_linear(key, params, module: str):
    """torch ``reset_parameters()`` of a top-level module (``conv1`` or ``fc``): weight (kaiming_uniform with
    a = sqrt(5)) and, where it has one, bias both ~ U(±1/sqrt(fan_in))."""
    layer = params[module]
    bound = 1.0 / math.sqrt(fan_in(layer["kernel"].shape))
    names = sorted(layer)
    draws = standard_draws(key, [layer[n].shape for n in names], "uniform", layer["kernel"].dtype)
    return {**params, module: {n: bound * u for n, u in zip(names, draws)}}


def retain_class_counts(labels, num_classes: int) -> jax.Array:
    """Examples per class (C,) float32 of the retain labels ``labels`` (n_r,) — what the deepunlearn ports
    count their class weights from (``np.unique`` / ``torch.unique`` over the retain loader's targets),
    not the whole training set's counts (``ctx.class_counts``: retain ∪ forget)."""
    return jnp.bincount(labels, length=num_classes).astype(jnp.float32)


def half_round_trip(state: MultiOptState) -> MultiOptState:
    """torch ``net.to(torch.half).to(torch.float)``: every float parameter and BatchNorm statistic rounded
    to float16 (round-to-nearest-even) and back; integer buffers untouched."""
    def cast(x):
        return x.astype(jnp.float16).astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return state._replace(params=jax.tree_util.tree_map(cast, state.params),
                          batch_stats=jax.tree_util.tree_map(cast, state.batch_stats))
