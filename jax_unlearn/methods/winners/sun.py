"""`sun`, a NeurIPS 2023 Machine Unlearning Challenge winner, ported from xcadet/deepunlearn
``munl/unlearning/kgltop7.py`` step by step (shared pieces and the loaders it receives: :mod:`.common`).
The method's docstring ends with what was ambiguous in the source and what we chose.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_unlearn.engine.optim import torch_sgd
from jax_unlearn.engine.protocol import Method
from jax_unlearn.engine.train import epoch_over, loss_step, multi_opt_state, next_epoch, variables_of
from jax_unlearn.methods.registry import register
from jax_unlearn.methods.winners.common import ce_loss, leaf_mask, reset_linear, standard_draws
from jax_unlearn.methods.winners.common import REF as _REF
from jax_unlearn.models import init_variables


class SunExtra(NamedTuple):
    """sun's per-seed extras: which tensors train this epoch, and which were ever trained."""
    trained: jax.Array  # (L,) bool: the tensors trained this epoch (params leaves in tree order)
    seen: jax.Array  # (L,) bool: the tensors trained in any earlier epoch (the source's ``already_select``)


def _torch_named_bn(names, leaf) -> bool:
    """The source's ``"bn" in key`` on torch parameter names: ``bn1``/``bn2`` are BatchNorm; a downsample
    BatchNorm (``layerN.0.downsample.1.*``) is not."""
    return any("bn" in n for n in names)


@register("sun", "reset fc; train 9 random tensors per epoch (BN always), 6 of them noised; then fine-tune all",
          _REF + "kgltop7.py (Sun)",
          epochs=9, fine_epochs=4, reset_epochs=1, lr=2e-4, fine_lrs=(2e-4, 2e-4, 2e-4, 1e-3, 1e-3, 1e-4),
          momentum=0.9, weight_decay=5e-4, layer_select=9, noise_ratio=0.7, noise_std=0.04, batch_size=64)
def sun(ctx, *, epochs, fine_epochs, reset_epochs, lr, fine_lrs, momentum, weight_decay, layer_select, noise_ratio,
        noise_std, batch_size) -> Method:
    """Sun ("random noise injection"): re-train a random few tensors at a time, noising some of them.

    ``init``: torch ``reset_parameters()`` of ``fc``. Engine epoch ``e`` (a fresh ``SGD(momentum,
    weight_decay)`` each epoch, as the source builds a new optimiser per epoch):

    * ``e < epochs - fine_epochs``: ``layer_select`` tensors drawn uniformly from the non-BN ones, plus
      every BN tensor, are trained at ``lr``; the others are frozen (update mask: bit-identical, no weight
      decay). For ``e >= reset_epochs``, ``int(noise_ratio · layer_select)`` of the drawn tensors get
      ``w += N(0, noise_std²)`` before training — except those trained in an earlier epoch (the source's
      ``if key in already_select: continue``);
    * the last ``fine_epochs`` epochs train every tensor, with learning rates ``fine_lrs[e - epochs +
      fine_epochs]``, no noise.

    Loss: CE on the retain set. Defaults: the port's ``ORIGINAL_*`` and the constants in its ``unlearn()``
    (``layer_select = 9``, ``noise_fix``, ``duplicate_sample``, ``add_already = False``). References:
    xcadet/deepunlearn ``kgltop7.py`` (``select_optim_keys``, ``noise_optimize_group``, ``get_optimze_group``;
    read at commit 6830ff6); Triantafillou et al., arXiv:2406.09073.

    Ambiguities: "BN" is decided on torch parameter names (``"bn" in name``), so the downsample BatchNorm
    (``downsample.1``) is a selectable, noisable tensor as in the source — kept; the source skips the noise
    of tensors trained before, which the write-up does not mention — kept; ``fine_lrs`` has six entries of
    which four are used — kept as the default.
    """
    if len(fine_lrs) < min(fine_epochs, epochs):
        raise ValueError(f"fine_lrs needs {fine_epochs} entries, got {len(fine_lrs)}")
    free = epochs - fine_epochs
    lrs = jnp.asarray([lr if e < free else fine_lrs[e - free] for e in range(epochs)], jnp.float32)
    tx = optax.inject_hyperparams(torch_sgd)(learning_rate=lr, momentum=momentum, weight_decay=weight_decay)
    shapes = jax.eval_shape(lambda: init_variables(ctx.model, jax.random.key(0)))["params"]
    treedef = jax.tree_util.tree_structure(shapes)
    bn = jax.tree_util.tree_leaves(leaf_mask(shapes, _torch_named_bn))  # static: which leaves are "bn"
    candidates = [i for i, b in enumerate(bn) if not b]
    n_select = min(layer_select, len(candidates))
    n_noise = min(int(noise_ratio * layer_select), n_select)

    def update_mask(state):
        return jax.tree_util.tree_unflatten(treedef, list(state.extra.trained))

    train = epoch_over(ctx, "retain", batch_size, loss_step(ctx, tx, 0, ce_loss, update_mask=update_mask))

    def init(key, start_variables, data):
        params = reset_linear(key, start_variables["params"], "fc")
        extra = SunExtra(jnp.ones((len(bn),), bool), jnp.zeros((len(bn),), bool))
        return multi_opt_state({**start_variables, "params": params}, (tx.init(params),), extra)

    def epoch(state, key, data, start):
        k_select, k_pick, k_noise, k_train = jax.random.split(key, 4)
        is_bn = jnp.asarray(bn)
        chosen = jax.random.choice(k_select, jnp.asarray(candidates, jnp.int32), (n_select,), replace=False)
        picked = jax.random.choice(k_pick, chosen, (n_noise,), replace=False)
        selecting = state.epoch < free
        trained = jnp.where(selecting, jnp.zeros_like(is_bn).at[chosen].set(True) | is_bn, True)
        noised = (jnp.zeros_like(is_bn).at[picked].set(True) & ~state.extra.seen & selecting
                  & (state.epoch >= reset_epochs))
        leaves = jax.tree_util.tree_leaves(state.params)
        noise = standard_draws(k_noise, [w.shape for w in leaves], "normal", leaves[0].dtype)
        leaves = [jnp.where(noised[i], w + noise_std * z, w) for i, (w, z) in enumerate(zip(leaves, noise))]
        params = jax.tree_util.tree_unflatten(treedef, leaves)
        opt = tx.init(params)
        opt = opt._replace(hyperparams={**opt.hyperparams, "learning_rate": lrs[state.epoch]})
        state = state._replace(params=params, opt_states=(opt,),
                               extra=SunExtra(trained, state.extra.seen | trained))
        state, metrics = train(state, k_train, data)
        return next_epoch(state), {**metrics, "noised_tensors": jnp.sum(noised)}

    return Method(init, epoch, variables_of, epochs)
