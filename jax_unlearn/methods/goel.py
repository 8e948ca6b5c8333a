"""Goel et al.'s last-k baselines: catastrophic forgetting-k (``cf-k``) and exact unlearning-k (``eu-k``).

Both train only the *last k blocks* of the network on the retain set; ``eu-k`` first re-initialises them.
"Last k blocks" of a torchvision ResNet, as DeepUnlearn's ``select_last_k_blocks`` defines it: the stages
``layer1 … layer4`` (``get_resnet_blocks``: each stage is one "block", i.e. two BasicBlocks for ResNet-18),
the last ``k`` of them (Python's ``blocks[-k:]``, so ``k`` ≥ the number of stages selects them all),
**plus the classifier** ``fc``. Everything in a selected stage trains (convs, BatchNorm scale/bias, the
downsample branch); the stem (``conv1``, ``bn1``) never does. For ResNet-18, ``k = 1`` trains ``layer4`` +
``fc`` (8.4M of 11.2M parameters).

Unselected parameters are frozen with an update mask (:func:`jax_unlearn.engine.masks.masked`), so they stay
bit-identical; the model runs in eval mode (the reference's ``run_train_epoch`` calls ``model.eval()``), so
BatchNorm running statistics never change either.

Per-lane sweeps: ``lr``, ``lr_decay_rate``, ``l2_to_start`` may be traced scalars and ``epochs`` is used
only in arithmetic (the milestones); ``k`` and ``batch_size`` are structural.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_unlearn.engine.batches import steps_per_epoch
from jax_unlearn.engine.losses import cross_entropy
from jax_unlearn.engine.masks import leaf_kinds, masked
from jax_unlearn.engine.optim import make_optimizer
from jax_unlearn.engine.train import (Context, TrainState, apply_gradients, create_state, epoch_over, forward_eval,
                                      variables_of)
from jax_unlearn.engine.protocol import Method
from jax_unlearn.methods.registry import register
from jax_unlearn.models.init import variance_scaling

_STAGE = re.compile(r"layer(\d+)_\d+")
_REF = "Goel et al. 2022 (arXiv 2201.06640); port: xcadet/deepunlearn munl/unlearning/"


def last_blocks_mask(params: Mapping, k: int) -> Any:
    """Update mask (params-shaped bool tree, NumPy constants) that is ``True`` on the last ``k`` stages
    (top-level modules ``layer{s}_{b}`` with ``s`` among the last ``k`` stage numbers) and on ``fc``.

    Mirrors DeepUnlearn's ``select_last_k_blocks(model, k) + [get_model_classifier(model)]``.
    """
    if int(k) < 1:
        raise ValueError(f"k must be >= 1 (the number of last ResNet stages to train), got {k}")
    stages = sorted({int(m.group(1)) for name in params if (m := _STAGE.fullmatch(name))})
    if not stages or "fc" not in params:
        raise ValueError(f"expected a ResNet params tree with layer<s>_<b> stages and fc, got {sorted(params)}")
    chosen = set(stages[-int(k):])

    def selected(name: str) -> bool:
        m = _STAGE.fullmatch(name)
        return name == "fc" or (m is not None and int(m.group(1)) in chosen)

    return {name: jax.tree_util.tree_map(lambda p, on=selected(name): np.full(np.shape(p), on), sub)
            for name, sub in params.items()}


def reinitialize(key, params: Mapping, mask) -> Any:
    """Re-draw every leaf whose ``mask`` is ``True`` with DeepUnlearn's ``init_weights`` (the rest kept):

    * conv kernels: ``kaiming_uniform_(mode='fan_out', nonlinearity='relu')`` = U(±√(6 / fan_out)),
      ``fan_out = out_channels · kh · kw``;
    * BatchNorm: scale 1, bias 0 (running statistics are buffers and are *not* reset, as in the reference);
    * linear: ``xavier_uniform_`` = U(±√(6 / (fan_in + fan_out))), bias 0.

    Leaf ``j`` (in tree-flatten order) draws from ``fold_in(key, j)``. ``mask`` is whole-leaf (as
    :func:`last_blocks_mask`): a leaf is re-drawn when any entry is ``True``.
    """
    kinds = leaf_kinds(params)
    conv = variance_scaling(2.0, "fan_out", "uniform")  # HWIO: fan_out = O·kh·kw
    linear = variance_scaling(1.0, "fan_avg", "uniform")  # xavier_uniform_ of the Dense kernel (in, out)
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    kind_leaves = treedef.flatten_up_to(kinds)
    mask_leaves = treedef.flatten_up_to(mask)
    out = []
    for j, ((path, p), kind, m) in enumerate(zip(paths_leaves, kind_leaves, mask_leaves)):
        if not np.any(m):
            out.append(p)
            continue
        name, k = path[-1].key, jax.random.fold_in(key, j)
        if kind == "conv":
            out.append(conv(k, p.shape, p.dtype))
        elif kind == "batchnorm":
            out.append(jnp.ones_like(p) if name == "scale" else jnp.zeros_like(p))
        else:
            out.append(linear(k, p.shape, p.dtype) if name == "kernel" else jnp.zeros_like(p))
    return jax.tree_util.tree_unflatten(treedef, out)


def step_decay_per_epoch(lr, epochs, decay_rate, steps_per_epoch_: int) -> optax.Schedule:
    """RepDistiller's ``adjust_learning_rate`` as DeepUnlearn's ``fk_finetune`` calls it: during epoch ``e``
    (0-based) ``lr · decay_rate^n`` with ``n = #{d ∈ (⌊E/2⌋, ⌊4E/5⌋, ⌊9E/10⌋) : e > d}`` (``E = epochs``,
    the milestones ``int(E·0.5), int(E·0.8), int(E·0.9)``). For E = 10: 0.01 × 6 epochs, 1e-3 × 3, 1e-4 × 1.
    """

    def schedule(count):
        e = count // steps_per_epoch_
        n = sum((e > (epochs * f) // 10).astype(jnp.int32) for f in (5, 8, 9))  # integer floor, as int(E·f)
        return lr * jnp.power(decay_rate, n)  # the default float dtype (float64 in float64 tests)

    return schedule


class AnchoredState(NamedTuple):
    """cf-k / eu-k per-seed state: the model being fine-tuned and the params the pull-back term anchors to."""
    train: TrainState
    anchor: Any  # the params fine-tuning starts from: per seed for eu-k (after its random re-init)


def _last_k(ctx: Context, *, reinit: bool, epochs, batch_size, k, lr, lr_decay_rate, l2_to_start) -> Method:
    """Shared body of cf-k and eu-k: masked SGD on ``CE + l2_to_start/2 ‖θ − θ_anchor‖²`` in eval mode."""
    steps = steps_per_epoch(ctx.size("retain"), batch_size)
    # fk_finetune: SGD(lr, weight_decay=0.0) — no momentum (the config's momentum is never passed on).
    base = make_optimizer("sgd", learning_rate=step_decay_per_epoch(lr, epochs, lr_decay_rate, steps),
                          momentum=0.0, weight_decay=0.0)
    tx = masked(base, lambda p: last_blocks_mask(p, k))

    def step(state: AnchoredState, images, labels, mask):
        train = state.train

        def objective(params):
            logits = forward_eval(ctx, {"params": params, "batch_stats": train.batch_stats}, images)
            pull = sum(jnp.sum((p - a) ** 2) for p, a in zip(jax.tree_util.tree_leaves(params),
                                                            jax.tree_util.tree_leaves(state.anchor)))
            return cross_entropy(logits, labels, mask) + 0.5 * l2_to_start * pull

        loss, grads = jax.value_and_grad(objective)(train.params)
        return state._replace(train=apply_gradients(tx, train, grads, train.batch_stats)), loss

    def init(key, start_variables, data):
        params = start_variables["params"]
        if reinit:
            params = reinitialize(key, params, last_blocks_mask(params, k))
        variables = {"params": params, "batch_stats": start_variables["batch_stats"]}
        # The pull-back anchor is the model at the start of fine-tuning (after re-init for eu-k):
        # fk_finetune's model_init = copy.deepcopy(model).
        return AnchoredState(create_state(variables, tx), params)

    return Method(init, epoch_over(ctx, "retain", batch_size, step, augment=reinit),
                  lambda s: variables_of(s.train), epochs,
                  frozen=lambda s: jax.tree_util.tree_map(jnp.logical_not, last_blocks_mask(s.train.params, k)))


_DEFAULTS = dict(epochs=10, batch_size=256, k=1, lr=0.01, lr_decay_rate=0.1, l2_to_start=0.1)


@register("cf-k", "catastrophic forgetting-k: fine-tune only the last k ResNet stages + fc on retain",
          _REF + "catastrophic_forgetting_k.py (from meghdadk/SCRUB)", **_DEFAULTS)
def cf_k(ctx: Context, *, epochs, batch_size, k, lr, lr_decay_rate, l2_to_start) -> Method:
    """CF-k: fine-tune the last ``k`` stages and ``fc`` (:func:`last_blocks_mask`) on the retain set, the rest
    frozen. Per retain batch (shuffled per seed and epoch, last batch partial, no augmentation)::

        loss = CE(f_eval(x), y) + l2_to_start/2 · ‖θ − θ_start‖²       (eval mode: BN on running statistics)
        θ ← θ − lr_e · ∇loss   on the selected parameters only        (torch SGD, no momentum, no weight decay)

    with ``lr_e`` :func:`step_decay_per_epoch`. The pull-back sum runs over all parameters; frozen ones equal
    their anchor exactly, so it is the reference's sum over trainable ones.

    Defaults: DeepUnlearn's ``DefaultCatastrophicForgettingKConfig`` (10 epochs, batch 256, ``num_blocks``
    1, ``learning_rate`` 0.01, ``sgda_decay_rate`` 0.1, ``sgda_weight_decay`` 0.1 → ``l2_to_start``).
    Unused by the reference and so absent here: ``momentum`` 0.9 (``fk_finetune`` builds ``SGD(lr,
    weight_decay=0.0)``) and ``sgda_learning_rate`` 0.0005 (``unlearn`` passes ``learning_rate`` in its place).

    References:
        S. Goel, A. Prabhu, A. Sanyal, S.-N. Lim, P. Torr, P. Kumaraguru, "Evaluating Inexact Unlearning
        Requires Revisiting Forgetting", arXiv 2201.06640, 2022 (CF-k, EU-k);
        xcadet/deepunlearn @ 6830ff6 ``munl/unlearning/catastrophic_forgetting_k.py``,
        ``munl/unlearning/scrub_utils.py`` (``fk_finetune``, ``run_train_epoch``, ``l2_penalty``),
        ``munl/models/__init__.py`` (``select_last_k_blocks``), ``thirdparty/repdistiller/helper/util.py``.
    """
    return _last_k(ctx, reinit=False, epochs=epochs, batch_size=batch_size, k=k, lr=lr,
                   lr_decay_rate=lr_decay_rate, l2_to_start=l2_to_start)


@register("eu-k", "exact unlearning-k: re-initialise the last k ResNet stages + fc, train them on retain",
          _REF + "exact_unlearning_k.py (from meghdadk/SCRUB)", **_DEFAULTS)
def eu_k(ctx: Context, *, epochs, batch_size, k, lr, lr_decay_rate, l2_to_start) -> Method:
    """EU-k: :func:`cf_k` after re-drawing the selected parameters from the seed key (:func:`reinitialize`),
    with random-crop(4) + horizontal-flip augmentation of the retain batches (DeepUnlearn's
    ``augmented_train_retain_loaders``: the retain loader uses the training transform). The pull-back
    anchor is the re-initialised model (``model_init`` is copied after re-initialisation).

    Ambiguities, following the reference: the re-initialised stages keep the original model's BatchNorm
    running statistics (``init_weights`` sets only BN weight/bias) and, training in eval mode, never
    re-estimate them; ``training_epoch_factor`` (10) is in the reference's config but never used, so the
    selected stages train for ``epochs`` (10), not 100.

    References: as :func:`cf_k`, and xcadet/deepunlearn ``munl/unlearning/exact_unlearning_k.py``,
    ``munl/models/__init__.py`` (``init_weights``, ``reinialize_modules``), ``munl/settings.py``.
    """
    return _last_k(ctx, reinit=True, epochs=epochs, batch_size=batch_size, k=k, lr=lr,
                   lr_decay_rate=lr_decay_rate, l2_to_start=l2_to_start)
