"""One seed's training pieces: state, forward passes, one optimiser step, a scan of steps, one epoch over a split.

The vocabulary every method speaks: :class:`TrainState` (one optimiser) or :class:`MultiOptState` (several
optimisers in turn, e.g. the challenge winners' forget and repair phases); a step is ``step(state, images,
labels, mask) -> (state, loss)`` (:func:`supervised_step`, :func:`loss_step`); :func:`run_steps` scans a step
over batches, :func:`epoch_over` makes one epoch of a split from it. Frozen weights: wrap the optimiser in
:func:`jax_unlearn.engine.masks.masked`.

Everything here is written for a single model; the engine vmaps it over seeds (:mod:`jax_unlearn.engine.run`).
Images arrive as uint8 on device and are normalised on the fly (``Context.normalization``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from jax_unlearn.data.types import Normalization
from jax_unlearn.engine.batches import epoch_batches, random_crop_flip, steps_per_epoch
from jax_unlearn.engine.losses import cross_entropy
from jax_unlearn.engine.masks import masked

Variables = Mapping[str, Any]  # {'params': ..., 'batch_stats': ...}
DeviceData = Mapping[str, tuple[jax.Array, jax.Array]]  # split name -> (images uint8 (N,32,32,3), labels (N,))


@dataclasses.dataclass(frozen=True)
class Context:
    """Static facts every method needs: the model, input normalisation, split sizes, class counts.

    Built once at the edge (CLI / Python API); jitted code closes over it and never sees flags.
    """

    model: nn.Module
    normalization: Normalization
    sizes: Mapping[str, int]
    class_counts: tuple[int, ...] | None = None

    def size(self, split: str) -> int:
        if split not in self.sizes:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(self.sizes)}")
        return self.sizes[split]


class TrainState(NamedTuple):
    """One model being trained: params, BatchNorm statistics, the optimiser's state, steps taken (int32)."""
    params: Any
    batch_stats: Any
    opt_state: Any
    step: jax.Array


def create_state(variables: Variables, tx: optax.GradientTransformation) -> TrainState:
    """A :class:`TrainState` at ``variables`` with ``tx``'s fresh optimiser state, step 0."""
    params = variables["params"]
    return TrainState(params, variables["batch_stats"], tx.init(params), jnp.zeros((), jnp.int32))


def variables_of(state: TrainState) -> dict:
    """The ``{'params', 'batch_stats'}`` a flax ``apply`` takes, from a :class:`TrainState`."""
    return {"params": state.params, "batch_stats": state.batch_stats}


def normalize(ctx: Context, images):
    """uint8 images -> the model's normalised float inputs: float32, or float64 for a float64 model."""
    return ctx.normalization.apply(images, jnp.promote_types(ctx.model.dtype, jnp.float32))


def apply_train(ctx: Context, params, batch_stats, x, mask):
    """Train-mode logits (B, C) and the updated batch_stats for already *normalised* float inputs ``x``
    (B, 32, 32, 3) — e.g. learned noise images; masked rows touch no statistic."""
    logits, new = ctx.model.apply({"params": params, "batch_stats": batch_stats}, x, train=True, mask=mask,
                                  mutable=["batch_stats"])
    return logits, new["batch_stats"]


def apply_eval(ctx: Context, variables: Variables, x):
    """Eval-mode logits (B, C) for already normalised float inputs ``x`` (B, 32, 32, 3)."""
    return ctx.model.apply(variables, x, train=False)


def forward_train(ctx: Context, params, batch_stats, images, mask):
    """Train-mode logits (B, C) and the updated batch_stats from uint8 images; masked rows touch no statistic."""
    return apply_train(ctx, params, batch_stats, normalize(ctx, images), mask)


def forward_eval(ctx: Context, variables: Variables, images):
    """Eval-mode logits (B, C) float32 from uint8 images (B, 32, 32, 3)."""
    return apply_eval(ctx, variables, normalize(ctx, images))


def teacher_logits(ctx: Context, teacher: Variables, images):
    """Eval-mode logits of a frozen model (``torch.no_grad()`` + ``.eval()``) from uint8 images."""
    return jax.lax.stop_gradient(forward_eval(ctx, teacher, images))


def _update(tx: optax.GradientTransformation, params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def apply_gradients(tx: optax.GradientTransformation, state: TrainState, grads, batch_stats) -> TrainState:
    """One optimiser step: ``params + tx.update(grads)``, the new BatchNorm statistics, ``step + 1``. Frozen
    weights: wrap ``tx`` in :func:`jax_unlearn.engine.masks.masked` (the one update-mask mechanism)."""
    params, opt_state = _update(tx, state.params, state.opt_state, grads)
    return TrainState(params, batch_stats, opt_state, state.step + 1)


class MultiOptState(NamedTuple):
    """A model trained by several optimisers in turn: params, BatchNorm statistics, one optimiser state per
    optimiser (``opt_states[slot]``), the engine epochs done (an unbatched ``int32`` under ``vmap``, so a
    ``lax.cond`` on it stays a real branch) and method-specific ``extra`` leaves (per-seed gradient scales,
    masks). A frozen reference such as the start model is never kept here: it is ``epoch``'s ``start``."""
    params: Any
    batch_stats: Any
    opt_states: tuple
    epoch: jax.Array
    extra: Any = None


def multi_opt_state(variables: Variables, opt_states: tuple, extra=None) -> MultiOptState:
    """A :class:`MultiOptState` at ``variables`` with the given optimiser states, epoch 0."""
    return MultiOptState(variables["params"], variables["batch_stats"], tuple(opt_states), jnp.zeros((), jnp.int32),
                         extra)


def next_epoch(state: MultiOptState) -> MultiOptState:
    """``state`` with its engine-epoch counter advanced by one."""
    return state._replace(epoch=state.epoch + 1)


def optimizer_step(tx: optax.GradientTransformation, slot: int, state: MultiOptState, grads, batch_stats, *,
                   grad_scale=None, update_mask=None) -> MultiOptState:
    """Apply ``grads`` with optimiser ``tx`` whose state is ``state.opt_states[slot]``; ``batch_stats`` are
    the new BatchNorm statistics.

    ``grad_scale`` (params-shaped, leaves broadcastable) multiplies the gradient *before* the optimiser, so
    torch's L2 weight decay and momentum see the scaled gradient (a hook on ``weight.grad``);
    ``update_mask`` (params-shaped bools) zeroes the *update* with :func:`jax_unlearn.engine.masks.masked`
    (frozen weights stay bit-identical).
    """
    if grad_scale is not None:
        grads = jax.tree_util.tree_map(lambda g, s: g * jnp.asarray(s, g.dtype), grads, grad_scale)
    if update_mask is not None:
        tx = masked(tx, update_mask)
    params, opt_state = _update(tx, state.params, state.opt_states[slot], grads)
    opt_states = state.opt_states[:slot] + (opt_state,) + state.opt_states[slot + 1:]
    return state._replace(params=params, batch_stats=batch_stats, opt_states=opt_states)


# loss_fn(state, logits, images, labels, mask) -> scalar: a loss that may read per-seed state (e.g. extras)
StateLoss = Callable[[MultiOptState, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def loss_step(ctx: Context, tx: optax.GradientTransformation, slot: int, loss_fn: StateLoss, *,
              grad_scale: Callable | None = None, update_mask: Callable | None = None):
    """``step(state, images, labels, mask) -> (state, loss)`` on a :class:`MultiOptState`: train-mode
    forward of uint8 ``images``, backprop of ``loss_fn(state, logits, images, labels, mask)``, one step of
    optimiser ``slot``. ``grad_scale(state)`` / ``update_mask(state)`` give the trees of
    :func:`optimizer_step`. Usable with :func:`epoch_over` and :func:`run_batches`."""

    def step(state: MultiOptState, images, labels, mask):
        loss, batch_stats, grads = loss_and_grads(ctx, state.params, state.batch_stats, images, mask,
                                                  lambda logits: loss_fn(state, logits, images, labels, mask))
        state = optimizer_step(tx, slot, state, grads, batch_stats,
                               grad_scale=None if grad_scale is None else grad_scale(state),
                               update_mask=None if update_mask is None else update_mask(state))
        return state, loss

    return step


LossFn = Callable[[jax.Array, Any, jax.Array], jax.Array]  # (logits, labels, mask) -> scalar


def loss_and_grads(ctx: Context, params, batch_stats, images, mask, loss_of_logits, *, normalized: bool = False):
    """``(loss, new batch_stats, grads)``: a train-mode forward of ``images`` (uint8, or normalised floats
    when ``normalized``), the scalar ``loss_of_logits(logits)``, and its gradient w.r.t. ``params``."""
    forward = apply_train if normalized else forward_train

    def objective(p):
        logits, new_stats = forward(ctx, p, batch_stats, images, mask)
        return loss_of_logits(logits), new_stats

    (loss, new_stats), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return loss, new_stats, grads


def supervised_step(ctx: Context, tx: optax.GradientTransformation, loss_fn: LossFn, *, normalized: bool = False):
    """``step(state, images, labels, mask) -> (state, loss)``: forward in train mode, backprop, update.

    ``labels`` is whatever ``loss_fn(logits, labels, mask)`` takes — class labels, or a tuple that also
    carries teacher logits. ``normalized``: ``images`` are already normalised floats (e.g. learned noise).
    """

    def step(state: TrainState, images, labels, mask):
        loss, batch_stats, grads = loss_and_grads(ctx, state.params, state.batch_stats, images, mask,
                                                  lambda logits: loss_fn(logits, labels, mask), normalized=normalized)
        return apply_gradients(tx, state, grads, batch_stats), loss

    return step


def run_steps(step, state, idx, mask, active=None):
    """``lax.scan`` ``step(state, idx[s], mask[s]) -> (state, loss)`` over the S rows of ``idx`` (S, B) and
    ``mask`` (S, B) bool; returns ``(state, mean loss over real examples)`` — the mean of the step losses
    weighted by each step's count of true ``mask`` entries (0 when there are none).

    ``step`` fetches its own examples from the indices (a split, a pool of retain and noise images);
    ``idx`` may be any pytree of (S, ...) arrays (e.g. indices into two paired splits).
    Steps where ``active`` (S,) is false are skipped (``lax.cond``: no forward, no update; a real branch
    when ``active`` is not per-seed, e.g. derived from the data only).
    """

    def body(state, inp):
        bidx, bmask, on = inp
        if on is None:
            state, loss = step(state, bidx, bmask)
            return state, (loss, jnp.sum(bmask))
        loss_dtype = jax.eval_shape(step, state, bidx, bmask)[1].dtype
        state, loss = jax.lax.cond(on, step, lambda s, *_: (s, jnp.zeros((), loss_dtype)), state, bidx, bmask)
        return state, (loss, jnp.sum(bmask) * on)

    state, (losses, counts) = jax.lax.scan(body, state, (idx, mask, active))
    return state, jnp.sum(losses * counts) / jnp.maximum(jnp.sum(counts), 1)


def run_batches(step_fn, state, images, labels, idx, mask, active=None):
    """:func:`run_steps` of ``step_fn(state, images[i], labels[i], mask)`` over the rows of ``idx`` (S, B) /
    ``mask`` (S, B) into ``images`` uint8 (N, 32, 32, 3) / ``labels`` (N,): ``(state, mean loss over real
    examples)``; steps where ``active`` (S,) is false are skipped. A partial pass, or paired splits."""
    return run_steps(lambda s, bidx, bmask: step_fn(s, images[bidx], labels[bidx], bmask), state, idx, mask, active)


def epoch_over(ctx: Context, split: str, batch_size: int, step_fn, *, shuffle: bool = True,
               augment: bool = False):
    """``epoch(state, key, data, start=None) -> (state, {'loss': mean loss})``: one pass over ``split`` in
    batches (the :class:`~jax_unlearn.engine.protocol.Method` ``epoch``; ``start`` is not used).

    Each call draws its own permutation from ``key`` (so each seed and epoch has its own order); the last
    partial batch is kept and masked. ``augment`` applies random-crop(4)+flip to the uint8 batch. The loss
    is :func:`run_steps`' mean over real examples.
    """
    n = ctx.size(split)

    def epoch(state, key, data: DeviceData, start=None):
        images, labels = data[split]
        k_perm, k_aug = jax.random.split(key)
        idx, mask = epoch_batches(k_perm if shuffle else None, n, batch_size)

        def step(state, inp, bmask):
            i, bidx = inp
            x = images[bidx]
            if augment:
                x = random_crop_flip(jax.random.fold_in(k_aug, i), x)
            return step_fn(state, x, labels[bidx], bmask)

        state, loss = run_steps(step, state, (jnp.arange(steps_per_epoch(n, batch_size)), idx), mask)
        return state, {"loss": loss}

    return epoch


def fold_eval_gradients(ctx: Context, variables: Variables, images, labels, batch_size: int, fold, init):
    """Fold ``acc = fold(acc, g_b)`` over ``g_b = ∇θ CE_b``, the gradient of the batch-mean cross-entropy of
    batch ``b`` of ``images`` uint8 (N, 32, 32, 3) / ``labels`` (N,) in data order (``batch_size`` each, the
    last partial and masked), the model in eval mode (BatchNorm on running statistics, nothing updated).
    Returns ``(acc, number of batches)``. SalUn's saliency and SSD's importances are such folds."""
    idx, mask = epoch_batches(None, images.shape[0], batch_size)
    params, batch_stats = variables["params"], variables["batch_stats"]

    def body(acc, inp):
        bidx, bmask = inp

        def loss(p):
            return cross_entropy(forward_eval(ctx, {"params": p, "batch_stats": batch_stats}, images[bidx]),
                                 labels[bidx], bmask)

        return fold(acc, jax.grad(loss)(params)), None

    acc, _ = jax.lax.scan(body, init, (idx, mask))
    return acc, idx.shape[0]


def predict(ctx: Context, variables: Variables, images, batch_size: int = 500):
    """Eval-mode logits (N, C) for uint8 images (N, 32, 32, 3), ``batch_size`` at a time (lax.map)."""
    n = images.shape[0]
    steps = steps_per_epoch(n, batch_size)
    pad = steps * batch_size - n
    padded = jnp.concatenate([images, jnp.zeros((pad, *images.shape[1:]), images.dtype)])
    logits = jax.lax.map(lambda x: forward_eval(ctx, variables, x), padded.reshape(steps, batch_size,
                                                                                    *images.shape[1:]))
    return logits.reshape(steps * batch_size, -1)[:n]


def accuracy(ctx: Context, variables: Variables, images, labels, batch_size: int = 500):
    """Top-1 accuracy (scalar float32) of the model on (images, labels), eval mode."""
    if images.shape[0] == 0:
        return jnp.float32(jnp.nan)
    logits = predict(ctx, variables, images, batch_size)
    return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
