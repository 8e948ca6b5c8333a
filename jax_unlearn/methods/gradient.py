"""Gradient-based unlearning baselines: ℓ1-sparse fine-tuning, NegGrad+, random labels, and SalUn.

Each is a factory ``(ctx, **hyper) -> Method`` written for one seed (the engine vmaps it). All use PyTorch's
``SGD`` exactly (:mod:`jax_unlearn.engine.optim`), and the reference repositories' constant learning rate
(their ``MultiStepLR`` milestones 91/136 are never reached in 10 epochs). Shared pieces live elsewhere and
are reused: batching/epochs (:mod:`jax_unlearn.engine.train`), update masks and top-fraction selection
(:mod:`jax_unlearn.engine.masks`). Small links defined here — :func:`l1_subgradient`,
:func:`linear_decay_per_epoch`, :func:`forget_saliency` — are public so other methods can chain/call them.

Per-lane sweeps: float hyper-parameters (``lr``, ``momentum``, ``weight_decay``, ``alpha``, ``l2_to_start``,
``fraction``) may be traced scalars, and ``epochs`` is used only in arithmetic (l1-sparse's schedule);
batch sizes and ``no_l1_epochs`` are structural Python ints.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_unlearn.engine.batches import epoch_batches, steps_per_epoch
from jax_unlearn.engine.losses import cross_entropy
from jax_unlearn.engine.masks import masked, top_fraction_mask
from jax_unlearn.engine.optim import make_optimizer
from jax_unlearn.engine.train import (Context, TrainState, apply_gradients, create_state, epoch_over,
                                      fold_eval_gradients, forward_eval, supervised_step, variables_of)
from jax_unlearn.engine.protocol import Method
from jax_unlearn.methods.registry import register


# --------------------------------------------------------------------------------------------- shared links
def l1_subgradient(strength) -> optax.GradientTransformation:
    """Add ``strength(count) * sign(params)`` to the gradient: the gradient of ``strength * ||θ||_1``.

    Chain it *before* a torch optimiser to get torch's ``loss = ce + strength * ||θ||_1`` followed by
    ``SGD(weight_decay=...)``. ``strength`` is a float or a schedule of the step count. ``sign(0) = 0``, as
    torch's ``linalg.norm(ord=1)`` backward gives (``jax.grad(jnp.abs)(0.)`` would give 1).
    """

    def init(params):
        return optax.ScaleByScheduleState(count=jnp.zeros((), jnp.int32))

    def update(updates, state, params=None):
        s = strength(state.count) if callable(strength) else strength
        updates = jax.tree_util.tree_map(lambda g, p: g + s * jnp.sign(p).astype(g.dtype), updates, params)
        return updates, optax.ScaleByScheduleState(count=state.count + 1)

    return optax.GradientTransformation(init, update)


def linear_decay_per_epoch(alpha: float, epochs: int, steps_per_epoch_: int) -> optax.Schedule:
    """Unlearn-Sparse's ℓ1 schedule: ``alpha * (1 - e / epochs)`` during epoch ``e`` (constant within an
    epoch, ``alpha`` in epoch 0, ``alpha / epochs`` in the last), 0 from epoch ``epochs`` on. ``alpha`` and
    ``epochs`` may be traced (per-lane sweeps)."""

    def schedule(count):
        e = (count // steps_per_epoch_).astype(jnp.float32)
        return jnp.where(e < epochs, alpha * (1.0 - e / jnp.maximum(epochs, 1)), 0.0)

    return schedule


def forget_saliency(ctx: Context, variables, images, labels, batch_size: int):
    """``|Σ_b ∇θ (−CE_b)|`` over the forget set in batches of ``batch_size`` (data order, last batch partial),
    each ``CE_b`` a batch mean, the model in eval mode (BatchNorm on running statistics): SalUn's weight
    saliency, a params-shaped tree of non-negative float arrays. ``images`` uint8 (N, 32, 32, 3)."""
    # |Σ ∇(−CE_b)| = |Σ ∇CE_b|, bit for bit (negating the cotangent negates every backward value exactly).
    total, _ = fold_eval_gradients(ctx, variables, images, labels, batch_size,
                                   lambda acc, g: jax.tree_util.tree_map(jnp.add, acc, g),
                                   jax.tree_util.tree_map(jnp.zeros_like, variables["params"]))
    return jax.tree_util.tree_map(jnp.abs, total)


def _need_forget(ctx: Context, name: str) -> None:
    if ctx.size("forget") == 0:
        raise ValueError(f"{name} needs a non-empty forget set")


# ---------------------------------------------------------------------------------------------- l1-sparse
@register("l1-sparse", "fine-tune on the retain set with an ℓ1 penalty decayed linearly per epoch",
          "Jia et al., NeurIPS 2023, 'Model Sparsity Can Simplify Machine Unlearning' / OPTML-Group/Unlearn-Sparse",
          epochs=10, batch_size=256, lr=0.01, momentum=0.9, weight_decay=5e-4, alpha=5e-4, no_l1_epochs=0)
def l1_sparse(ctx: Context, *, epochs, batch_size, lr, momentum, weight_decay, alpha, no_l1_epochs) -> Method:
    """Sparsity-aware unlearning: minimise ``CE(retain) + α_e ||θ||_1`` with torch ``SGD``.

    Update rule (per retain batch, BatchNorm in train mode)::

        g = ∇CE + α_e sign(θ);   torch SGD(lr, momentum, weight_decay) on g
        α_e = alpha (1 - e / (epochs - no_l1_epochs))  for e < epochs - no_l1_epochs, else 0

    ``||θ||_1`` covers every parameter (conv, BatchNorm affine, fc weight and bias), as the reference's
    ``l1_regularization(model)`` over ``model.parameters()`` does; running BN statistics are not parameters.

    Defaults: the README's ``FT_prune`` command (``--unlearn_lr 0.01 --unlearn_epochs 10``) with
    ``arg_parser`` defaults (batch 256, momentum 0.9, weight decay 5e-4). Ambiguity: the README leaves
    ``--alpha ${alpha}`` open (the parser default 0.2 is another method's noise level); we use 5e-4 (the
    upper end of the 1e-4 … 5e-4 that reproductions use, e.g. JingWu321/Scissorhands' scripts use 1e-4).

    Deviations: (1) the reference's CIFAR branch keeps α constant when ``no_l1_epochs == epochs`` (its
    ImageNet branch and we give 0 then); (2) no data augmentation — the reference's retain loader applies
    ``RandomCrop(32, padding=4)`` + flip unless ``--no-aug``; ours are the challenge's un-augmented loaders.

    References:
        Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023;
        OPTML-Group/Unlearn-Sparse ``unlearn/FT.py`` (``FT_l1``, which the README's ``FT_prune`` runs),
        ``unlearn/impl.py``, ``arg_parser.py``, ``README.MD`` (read at commit 80ba55d).
    """
    steps = steps_per_epoch(ctx.size("retain"), batch_size)
    schedule = linear_decay_per_epoch(alpha, epochs - no_l1_epochs, steps)
    tx = optax.chain(l1_subgradient(schedule),
                     make_optimizer("sgd", learning_rate=lr, momentum=momentum, weight_decay=weight_decay))
    step = supervised_step(ctx, tx, cross_entropy)

    def init(key, start_variables, data):
        return create_state(start_variables, tx)

    return Method(init, epoch_over(ctx, "retain", batch_size, step), variables_of, epochs)


# ------------------------------------------------------------------------------------------------ neggrad+
@register("neggrad+", "descend on retain batches while ascending on a cycled forget stream (α-weighted)",
          "Kurmanji et al., NeurIPS 2023, 'Towards Unbounded Machine Unlearning' / meghdadk/SCRUB",
          epochs=10, batch_size=128, forget_batch_size=64, lr=0.01, momentum=0.0, alpha=0.95, l2_to_start=5e-4)
def neggrad_plus(ctx: Context, *, epochs, batch_size, forget_batch_size, lr, momentum, alpha,
                 l2_to_start) -> Method:
    """NegGrad+: per retain batch ``r`` and the next forget batch ``f``, one torch ``SGD`` step on::

        α (CE(r) + l2_to_start/2 ||θ - θ_start||²) - (1 - α) CE(f)

    Batching: each epoch draws a retain permutation and a forget permutation (per seed, from ``key``); the
    epoch has ``ceil(|retain| / batch_size)`` steps and step ``i`` uses forget batch ``i mod ceil(|forget| /
    forget_batch_size)`` — ``zip(retain_loader, itertools.cycle(forget_loader))``, whose ``cycle`` replays the
    first pass's batches rather than reshuffling. Partial last batches are kept (masked).

    The model runs in eval mode (BatchNorm on running statistics, which never change), as the reference's
    ``run_neggrad_epoch`` calls ``model.eval()``. Optimiser: ``SGD(lr, weight_decay=0)`` — the pull to the
    start model replaces weight decay.

    Defaults from ``small_scale_unlearning.ipynb``: α 0.95, 10 epochs, lr 0.01, no momentum, retain batch
    ``args.batch_size`` 128, forget batch ``args.forget_bs`` 64. Ambiguity: the penalty weight is the
    notebook's ``args.weight_decay``, i.e. whatever the original model was trained with (0.1 in its Lacuna
    runs, 5e-4 in its CIFAR runs); we default to 5e-4. The ``l2_penalty`` sums over all parameters.

    References:
        Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023; meghdadk/SCRUB
        ``small_scale_unlearning.ipynb`` (``negative_grad``, ``run_neggrad_epoch``, ``l2_penalty``; read at
        commit 98ffb11).
    """
    _need_forget(ctx, "neggrad+")
    n_r, n_f = ctx.size("retain"), ctx.size("forget")
    steps = steps_per_epoch(n_r, batch_size)
    cycle = np.arange(steps) % steps_per_epoch(n_f, forget_batch_size)  # static: which forget batch per step
    tx = make_optimizer("sgd", learning_rate=lr, momentum=momentum, weight_decay=0.0)

    def objective(params, anchor, batch_stats, xr, yr, mr, xf, yf, mf):
        variables = {"params": params, "batch_stats": batch_stats}
        retain_ce = cross_entropy(forward_eval(ctx, variables, xr), yr, mr)
        forget_ce = cross_entropy(forward_eval(ctx, variables, xf), yf, mf)
        pull = 0.0
        if anchor is not None:
            pull = 0.5 * l2_to_start * sum(jnp.sum((p - a) ** 2) for p, a in
                                           zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(anchor)))
        return alpha * (retain_ce + pull) - (1 - alpha) * forget_ce, (retain_ce, forget_ce)

    pull_back = not (isinstance(l2_to_start, (int, float)) and l2_to_start == 0)  # static: a traced one pulls

    def init(key, start_variables, data):
        return create_state(start_variables, tx)

    def epoch(state: TrainState, key, data, start):
        anchor = start["params"] if pull_back else None
        (ri, rl), (fi, fl) = data["retain"], data["forget"]
        k_r, k_f = jax.random.split(key)
        r_idx, r_mask = epoch_batches(k_r, n_r, batch_size)
        f_idx, f_mask = epoch_batches(k_f, n_f, forget_batch_size)
        f_idx, f_mask = f_idx[cycle], f_mask[cycle]

        def body(train: TrainState, inp):
            bi, bm, fbi, fbm = inp
            (loss, (retain_ce, forget_ce)), grads = jax.value_and_grad(objective, has_aux=True)(
                train.params, anchor, train.batch_stats, ri[bi], rl[bi], bm, fi[fbi], fl[fbi], fbm)
            train = apply_gradients(tx, train, grads, train.batch_stats)
            return train, (loss, retain_ce, forget_ce, jnp.sum(bm), jnp.sum(fbm))

        state, (loss, retain_ce, forget_ce, nr, nf) = jax.lax.scan(body, state, (r_idx, r_mask, f_idx, f_mask))
        return state, {"loss": jnp.sum(loss * nr) / jnp.sum(nr),
                       "retain_loss": jnp.sum(retain_ce * nr) / jnp.sum(nr),
                       "forget_loss": jnp.sum(forget_ce * nf) / jnp.sum(nf)}

    return Method(init, epoch, variables_of, epochs)


# ---------------------------------------------------------------------------------- random labels and SalUn
class MaskedState(NamedTuple):
    """A model trained under an update mask (SalUn's saliency mask; None: every weight trains)."""
    train: TrainState
    mask: Any  # params-shaped bool tree (True = may change), or None: every weight trains


def _random_label_method(ctx: Context, *, epochs, batch_size, lr, momentum, weight_decay, fraction) -> Method:
    """Random labels on the forget set then the retain set, each epoch; with ``fraction`` set, only the
    salient ``fraction`` of weights (SalUn's mask, computed once at ``init``) may change."""
    _need_forget(ctx, "random-label")
    num_classes = ctx.model.num_classes
    tx = make_optimizer("sgd", learning_rate=lr, momentum=momentum, weight_decay=weight_decay)

    def step(state: MaskedState, images, labels, mask):
        opt = tx if state.mask is None else masked(tx, state.mask)
        train, loss = supervised_step(ctx, opt, cross_entropy)(state.train, images, labels, mask)
        return state._replace(train=train), loss

    forget_pass = epoch_over(ctx, "forget", batch_size, step)
    retain_pass = epoch_over(ctx, "retain", batch_size, step)

    def init(key, start_variables, data):
        mask = None
        if fraction is not None:
            images, labels = data["forget"]
            mask = top_fraction_mask(forget_saliency(ctx, start_variables, images, labels, batch_size), fraction)
        return MaskedState(create_state(start_variables, tx), mask)

    def epoch(state: MaskedState, key, data, start):
        k_label, k_forget, k_retain = jax.random.split(key, 3)
        images, labels = data["forget"]
        random_labels = jax.random.randint(k_label, labels.shape, 0, num_classes, labels.dtype)
        state, forget = forget_pass(state, k_forget, {"forget": (images, random_labels)})
        state, retain = retain_pass(state, k_retain, data)
        return state, {"loss": retain["loss"], "forget_loss": forget["loss"]}

    frozen = None if fraction is None else (lambda s: jax.tree_util.tree_map(jnp.logical_not, s.mask))
    return Method(init, epoch, lambda s: variables_of(s.train), epochs, frozen)


@register("random-label", "per epoch: the forget set with uniformly random labels, then the retain set",
          "Golatkar et al. 2020 / Fan et al., ICLR 2024 (SalUn's RL baseline), OPTML-Group/Unlearn-Saliency",
          epochs=10, batch_size=256, lr=0.01, momentum=0.9, weight_decay=5e-4)
def random_label(ctx: Context, *, epochs, batch_size, lr, momentum, weight_decay) -> Method:
    """Random-label unlearning (RL), one epoch = two passes with one torch ``SGD`` (momentum carried over)::

        forget pass: each forget batch relabelled y ~ U{0..C-1} (may equal the true label), CE step
        retain pass: CE step on each retain batch

    Both passes shuffle per seed and epoch; BatchNorm in train mode. Labels are drawn per example per epoch
    from the epoch key — the reference draws ``torch.randint`` per batch, the same distribution.

    Defaults: Unlearn-Saliency ``arg_parser`` (lr 0.01, 10 epochs, batch 256, momentum 0.9, weight decay
    5e-4). Ambiguity: the reference has two RL variants — for CIFAR-10/SVHN the two passes above, for
    CIFAR-100/TinyImageNet one shuffled pass over forget (random labels) ∪ retain; we implement the former.
    Deviation: no data augmentation — the reference's forget and retain loaders apply ``RandomCrop(32,
    padding=4)`` + flip unless ``--no-aug``; ours are the challenge's un-augmented loaders.

    References:
        Golatkar et al., "Eternal Sunshine of the Spotless Net", CVPR 2020 (random labels);
        Fan et al., "SalUn", ICLR 2024; OPTML-Group/Unlearn-Saliency ``Classification/unlearn/RL.py``,
        ``arg_parser.py`` (read at commit a6e89fd).
    """
    return _random_label_method(ctx, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                                weight_decay=weight_decay, fraction=None)


@register("salun", "random labels, updating only the top fraction of weights by forget-gradient saliency",
          "Fan et al., ICLR 2024, 'SalUn' / OPTML-Group/Unlearn-Saliency (Classification/README.md, "
          "generate_mask.py @ a6e89fd)",
          epochs=10, batch_size=256, lr=0.013, momentum=0.9, weight_decay=5e-4, fraction=0.5)
def salun(ctx: Context, *, epochs, batch_size, lr, momentum, weight_decay, fraction) -> Method:
    """SalUn: :func:`random_label` training restricted to the salient weights.

    At ``init`` (from the start model)::

        s = |Σ_b ∇θ (−CE_b(forget))|            (eval mode, batches of ``batch_size``: forget_saliency)
        m = top int(N · fraction) entries of s   (global over all parameters: top_fraction_mask)

    then the RL epochs with the optimiser update multiplied by ``m`` (:func:`~jax_unlearn.engine.masks.masked`),
    so unselected weights stay bit-identical — momentum and weight decay included. BatchNorm running
    statistics are buffers, not parameters, and update as in RL.

    Defaults: the current ``Classification/README.md`` example for ResNet-18 / CIFAR-10, 10 % forgetting
    (``main_random.py --unlearn RL --unlearn_epochs 10 --unlearn_lr 0.013 ... --mask_path
    mask/with_0.5.pt``; the README before commit f31f82e, April 2024, said ``--unlearn_lr 0.1``), with
    ``arg_parser`` batch 256, momentum 0.9, weight decay 5e-4.

    Ambiguities and choices: (1) the saliency is the summed forget gradient at the original model: the
    current ``generate_mask.py`` only zeroes gradients between forget batches (its ``optimizer.step()``
    calls were removed in commit b874ee9, December 2023), so it, the paper and we agree. (2) The reference masks the *gradient* and, in its later
    version, restores masked weights and zeroes their momentum after each step (earlier versions let weight
    decay move them); masking the update gives the later version's result exactly. (3) Ties at the
    threshold are broken by parameter order, so exactly ``int(N · fraction)`` weights train. (4) No data
    augmentation, in the saliency pass (data order) or in training — the reference's loaders are shuffled
    and apply ``RandomCrop(32, padding=4)`` + flip unless ``--no-aug``; ours are the challenge's loaders.

    References:
        Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both Image
        Classification and Generation", ICLR 2024; OPTML-Group/Unlearn-Saliency ``Classification/
        generate_mask.py``, ``unlearn/RL.py``, ``README.md``, ``arg_parser.py`` (read at commit a6e89fd).
    """
    return _random_label_method(ctx, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                                weight_decay=weight_decay, fraction=fraction)
