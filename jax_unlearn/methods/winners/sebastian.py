"""`sebastian`, a NeurIPS 2023 Machine Unlearning Challenge winner, ported from xcadet/deepunlearn
``munl/unlearning/kgltop4.py`` step by step (shared pieces and the loaders it receives: :mod:`.common`).
The method's docstring ends with what was ambiguous in the source and what we chose.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jax_unlearn.engine.batches import steps_per_epoch
from jax_unlearn.engine.losses import cross_entropy, entropy, masked_mean
from jax_unlearn.engine.optim import torch_sgd
from jax_unlearn.engine.protocol import Method
from jax_unlearn.engine.train import loss_step, multi_opt_state, next_epoch, run_batches, teacher_logits, variables_of
from jax_unlearn.methods.registry import register
from jax_unlearn.methods.winners.common import (
    half_round_trip, kind_mask, retain_class_counts, shuffled_batches, standard_draws)
from jax_unlearn.methods.winners.common import REF as _REF
from jax_unlearn.models.init import fan_in


def sebastian_class_weights(labels, num_classes: int, exponent) -> jax.Array:
    """The port's ``get_class_weights``: ``n_c ** exponent`` of the retain labels (n_r,), as (C,) float32;
    0 for absent classes (the port's tensor would be shorter; no retain label reads it)."""
    counts = retain_class_counts(labels, num_classes)
    return jnp.where(counts > 0, jnp.maximum(counts, 1.0) ** exponent, 0.0)



def sebastian_prune(key, params, amount):
    """Global L1 pruning of every conv/linear weight and bias (``prune.global_unstructured``): the
    ``round(amount · total)`` smallest ``|w|`` become 0; then every conv/linear *weight* entry equal to 0 is
    re-drawn from torch's default U(±1/sqrt(fan_in)). Pruned biases stay 0, as in the source."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    kinds = jax.tree_util.tree_leaves(kind_mask(params, "conv", "linear"))
    chosen = [i for i, k in enumerate(kinds) if k]
    flat = jnp.concatenate([jnp.abs(leaves[i]).ravel() for i in chosen])
    n_prune = round(amount * flat.size)
    pruned = jnp.zeros((flat.size,), bool).at[jnp.argsort(flat, stable=True)[:n_prune]].set(True)
    fresh = iter(standard_draws(key, [leaves[i].shape for i in chosen if leaves[i].ndim >= 2], "uniform",
                                leaves[0].dtype))
    offset = 0
    for i in chosen:
        w = leaves[i]
        w = jnp.where(pruned[offset:offset + w.size].reshape(w.shape), jnp.zeros((), w.dtype), w)
        offset += w.size
        if w.ndim >= 2:  # a weight, not a bias: torch's rand_init of the entries == 0
            w = jnp.where(w == 0, next(fresh) / math.sqrt(fan_in(w.shape)), w)
        leaves[i] = w
    return jax.tree_util.tree_unflatten(treedef, leaves)


@register("sebastian", "prune 99% of conv/linear weights (global L1) and re-init them, distil entropy, fp16",
          _REF + "kgltop4.py (Sebastian, PRMQ)",
          epochs=3.2, batch_size=64, lr=5e-4, momentum=0.9, weight_decay=5e-4, prune_amount=0.99,
          weight_exponent=-0.1)
def sebastian(ctx, *, epochs, batch_size, lr, momentum, weight_decay, prune_amount, weight_exponent) -> Method:
    """Sebastian ("prune, retrain, mask, quantise").

    ``init``: :func:`sebastian_prune` with ``prune_amount``. Training: ``SGD(lr, momentum, weight_decay)`` on
    the retain set with ``CE_w(z, y) + mean_i (H(softmax z_i) - H(softmax t_i))²``, ``CE_w`` torch's
    class-weighted CE with ``w_c = n_c ** weight_exponent``, ``n_c`` counted on the retain labels
    (:func:`sebastian_class_weights`, the port's ``get_class_weights(retain_loader)``), and ``t`` the original
    model's eval-mode logits. At the end every float parameter and statistic goes through float16 and back.

    Fractional epochs: the source steps until ``num_iters > int(|retain loader| · epochs)`` *after* the step,
    i.e. ``int(S · epochs) + 1`` steps with S steps per pass — kept. They run as ``ceil(steps / S)`` engine
    epochs, each a shuffled pass whose steps past the budget are skipped (``lax.cond`` on the unbatched
    epoch counter: no work); the fp16 round trip ends the last one.

    References: xcadet/deepunlearn ``kgltop4.py`` (``prune_model``, ``entropy_loss_fn``); Triantafillou et al.,
    arXiv:2406.09073.

    Ambiguities: torch's pruning ranks ties arbitrarily, we by position. The teacher is ``epoch``'s
    ``start`` (the original model; under ``vmap`` one unbatched copy).
    """
    n_r = ctx.size("retain")
    per_pass = steps_per_epoch(n_r, batch_size)
    total = int(per_pass * epochs) + 1
    passes = math.ceil(total / per_pass)
    num_classes = ctx.model.num_classes
    tx = torch_sgd(lr, momentum, weight_decay)

    def make_step(weights, teacher):
        def loss(state, logits, images, labels, mask):
            target = teacher_logits(ctx, teacher, images)
            entropy_mse = masked_mean((entropy(logits) - entropy(target)) ** 2, mask)
            return cross_entropy(logits, labels, mask, weights) + entropy_mse

        return loss_step(ctx, tx, 0, loss)

    def init(key, start_variables, data):
        params = sebastian_prune(key, start_variables["params"], prune_amount)
        return multi_opt_state({**start_variables, "params": params}, (tx.init(params),))

    def epoch(state, key, data, start):
        active = state.epoch * per_pass + jnp.arange(per_pass) < total
        step = make_step(sebastian_class_weights(data["retain"][1], num_classes, weight_exponent), start)
        state, mean_loss = run_batches(step, state, *data["retain"], *shuffled_batches(key, n_r, batch_size),
                                       active)
        rounded, last = half_round_trip(state), state.epoch == passes - 1
        pick = lambda a, b: jax.tree_util.tree_map(lambda x, y: jnp.where(last, x, y), a, b)  # noqa: E731
        state = state._replace(params=pick(rounded.params, state.params),
                               batch_stats=pick(rounded.batch_stats, state.batch_stats))
        return next_epoch(state), {"loss": mean_loss}

    return Method(init, epoch, variables_of, passes)
