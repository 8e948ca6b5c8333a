"""Selective Synaptic Dampening (SSD): retrain-free unlearning that shrinks the weights far more important
to the forget set than to all training data (diagonal Fisher-style importances, one pass each).

Reference: J. Foster, S. Schoepf, A. Brintrup, "Fast Machine Unlearning Without Retraining Through
Selective Synaptic Dampening", AAAI 2024; github.com/if-loops/selective-synaptic-dampening (read at commit
cdfdc0e).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_unlearn.engine.protocol import Method
from jax_unlearn.engine.train import Context, fold_eval_gradients
from jax_unlearn.methods.registry import register


def importances(ctx: Context, variables, images, labels, batch_size: int):
    """Diagonal importances ``E_batches[(∇_θ CE_batch)²]`` (params-shaped tree, float32).

    The mean over the ``ceil(N / batch_size)`` batches, in data order, of the squared gradient of the
    batch-mean cross-entropy, the model in eval mode — SSD's ``calc_importance`` (adapted from Avalanche).
    images uint8 (N, 32, 32, 3), labels (N,).
    """
    zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), variables["params"])
    acc, n_batches = fold_eval_gradients(
        ctx, variables, images, labels, batch_size,
        lambda acc, g: jax.tree_util.tree_map(lambda a, g: a + jnp.square(g.astype(jnp.float32)), acc, g), zeros)
    return jax.tree_util.tree_map(lambda a: a / n_batches, acc)


def dampen(params, global_importance, forget_importance, alpha: float, lam: float):
    """SSD's synapse selection and dampening, leaf by leaf: where ``f > alpha · g``,
    ``θ ← θ · min(lam · g / f, 1)``; everywhere else θ is returned bit-identical.

    Returns ``(params, selected)`` with ``selected`` a params-shaped bool tree."""

    def leaf(p, g, f):
        selected = f > alpha * g
        factor = jnp.minimum(lam * g / jnp.where(selected, f, 1.0), 1.0)
        return jnp.where(selected, p * factor.astype(p.dtype), p), selected

    pairs = jax.tree_util.tree_map(leaf, params, global_importance, forget_importance)
    is_pair = lambda x: isinstance(x, tuple)  # noqa: E731
    new = jax.tree_util.tree_map(lambda t: t[0], pairs, is_leaf=is_pair)
    selected = jax.tree_util.tree_map(lambda t: t[1], pairs, is_leaf=is_pair)
    return new, selected


@register("ssd", "Selective Synaptic Dampening: shrink weights far more important to forget than to all data",
          "Foster et al., AAAI 2024; if-loops/selective-synaptic-dampening (ssd.py ParameterPerturber)",
          alpha=10.0, lam=1.0, batch_size=128)
def ssd(ctx: Context, *, alpha: float, lam: float, batch_size: int) -> Method:
    """SSD, retrain-free: with ``[]_D`` and ``[]_Df`` the diagonal importances (:func:`importances`) of the
    original model on all training data (split ``train`` = retain ∪ forget) and on the forget set,

        θ_i ← θ_i · min(lam · []_D,i / []_Df,i, 1)   where []_Df,i > alpha · []_D,i,   θ_i unchanged elsewhere.

    Parameters only (BatchNorm scale/bias included, running statistics untouched). One engine epoch does
    the whole method (``num_epochs = 1``; metric ``dampened_fraction``). There is no randomness: every
    seed gives the same model.

    Ambiguities: the reference computes importances in eval mode with loaders of batch 128, unshuffled
    (``-b`` default); we do the same, so importances are squared *batch-mean* gradients averaged over
    batches (the last, partial batch weighs as much as the others). Its unused knobs (``exponent = 1``,
    ``lower_bound = 1``, layer ranges) are fixed at their defaults.

    References: J. Foster, S. Schoepf, A. Brintrup, "Fast Machine Unlearning Without Retraining Through
    Selective Synaptic Dampening", AAAI 2024; github.com/if-loops/selective-synaptic-dampening
    (``src/ssd.py``, ``src/forget_random_strategies.py:ssd_tuning``, ``src/forget_random_main.py``:
    ``selection_weighting`` alpha = 10, ``dampening_constant`` lambda = 1 for ResNet-18 / CIFAR; read at
    commit cdfdc0e). Its ``full_train_dl`` is ``ConcatDataset(retain, forget)`` unshuffled — our ``train``
    split is likewise the retain examples followed by the forget examples.
    """

    def init(key, start_variables, data):
        return {"params": start_variables["params"], "batch_stats": start_variables["batch_stats"]}

    def epoch(variables, key, data, start):
        global_imp = importances(ctx, variables, *data["train"], batch_size)
        forget_imp = importances(ctx, variables, *data["forget"], batch_size)
        params, selected = dampen(variables["params"], global_imp, forget_imp, alpha, lam)
        leaves = jax.tree_util.tree_leaves(selected)
        fraction = sum(jnp.sum(s) for s in leaves).astype(jnp.float32) / sum(s.size for s in leaves)
        return {"params": params, "batch_stats": variables["batch_stats"]}, {"dampened_fraction": fraction}

    return Method(init, epoch, lambda v: v, 1)
