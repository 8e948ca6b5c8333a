"""SISA (Sharded, Isolated, Sliced, Aggregated) training: exact unlearning by retraining only the shards
that held the forgotten examples.

The ``train`` split (retain ∪ forget; positions ``0 … n_retain−1`` are retain, the rest forget) is
partitioned per seed into S disjoint shards; S models — one per shard, all from scratch — are trained as
one ``jax.vmap`` over shards; the ensemble predicts by averaging the shards' softmax. Unlearning the
forget set drops its examples from their shards and retrains exactly the shards that held any of them:
the result is what SISA training would have produced had those examples never been in their shards
(same partition, same keys; it reads no forgotten example: exact unlearning), at the cost of the
retrained shards only.

This is an ensemble of S models, not one ResNet-18, so it does not fit the single-model
:class:`~jax_unlearn.methods.Method` protocol (nor the .pth export of one model per seed) and is not in
the method registry. Its API is a factory, :func:`sisa`, returning pure functions (``partition``,
``train``, ``unlearn``), :func:`make_sisa_run` (a whole seed as one pure function, vmappable over seeds),
and :func:`aggregate_probs` / :func:`aggregate_log_probs` for the ensemble's predictions.

References:
  Bourtoule et al., "Machine Unlearning", IEEE S&P 2021 (arXiv:1912.03817); code:
  cleverhans-lab/machine-unlearning, read at commit 50a3ada (``distribution.py``: uniform split,
  ``sisa.py``: per-shard training, defaults epochs 20, batch 16, SGD lr 1e-3, constant; ``sharded.py``
  ``fetchShardBatch``: the batches; ``aggregation.py``: uniform weights over the shards).

Ambiguities and choices:
  * Partition: the reference splits a (pre-shuffled) index range with ``np.split`` at ``t·(n // S)`` —
    S−1 shards of ``n // S`` examples, the last takes the remainder. We do the same on a permutation of
    the train split drawn from the seed's key (a fixed seeded partition per seed).
  * Slicing (R slices per shard with checkpoints, to restart from the last clean slice) is not
    implemented: R = 1 (the reference's default ``--slices 1``); a retrained shard restarts from scratch.
  * Aggregation: the reference's default votes with one-hot argmax outputs (``--output_type argmax``);
    it also offers softmax outputs. We average softmax probabilities (uniform weights), which gives the
    ensemble a confidence for the competition's forget statistic (:func:`aggregate_log_probs`).
  * Optimiser: as the reference by default — plain ``SGD(lr)`` (or ``Adam(lr)``), no momentum, weight
    decay or schedule (``schedule='constant'``). ``schedule='cosine'`` adds ``CosineAnnealingLR(T_max=
    epochs)`` stepped per epoch (the challenge recipes' schedule); ``momentum``/``weight_decay`` can be set.
  * Batches: as the reference's ``fetchShardBatch`` by default (``shuffle=False``): every epoch walks the
    shard in the same order (its slots, i.e. the seeded permutation's order) in fixed blocks of
    ``batch_size`` slots; an unlearned example leaves a hole in its block (the block shrinks, the others
    do not move: ``np.setdiff1d(shard[b·B:(b+1)·B], requests)``), so a retrained shard sees exactly the
    reference's batches. The reference's data order comes from its pre-shuffled dataset file
    (``train_test_split`` in ``prepare_data.py``) and ``np.split`` of ``arange``; ours from the seed's
    permutation. Blocks left empty are skipped (the reference would step on an empty batch, a NaN loss).
    ``shuffle=True`` instead visits the members in a fresh random order every epoch, packed into
    ``ceil(members / batch)`` batches (``DataLoader(shuffle=True, drop_last=False)``).
  * Static shapes: every shard keeps ``m = n − (S−1)·(n // S)`` slots and a membership mask; all-padding
    steps are skipped (``lax.cond``: no update, no optimiser step). Non-member slots are replaced by zeros
    before the forward pass, so a retrained shard's computation never reads a forgotten image.
  * Cost: inside ``unlearn``'s one compiled program all S shards are computed and the unaffected ones'
    results are discarded (``jnp.where``; their parameters stay bit-identical); it reports the saving SISA
    promises (shards and examples retrained, as fractions). ``train_shards`` computes only the affected
    shards, so the ``jax-unlearn sisa`` job (:mod:`jax_unlearn.jobs.sisa`) realises and times the saving.
    With a random forget set and a random partition nearly every shard is hit, which is SISA's known
    weakness for such requests.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jax_unlearn.engine.batches import random_crop_flip
from jax_unlearn.engine.losses import cross_entropy
from jax_unlearn.engine.optim import cosine_annealing_per_epoch, make_optimizer
from jax_unlearn.engine.train import (
    Context, DeviceData, create_state, predict, run_steps, supervised_step, variables_of)
from jax_unlearn.models import init_variables
from jax_unlearn.methods.finetune import inverse_count_weights

SUMMARY = "SISA: S shard models from scratch, softmax-averaged; unlearning retrains only the shards that held forget data"
REFERENCE = "Bourtoule et al., IEEE S&P 2021, 'Machine Unlearning' / cleverhans-lab/machine-unlearning"
DEFAULTS = dict(num_shards=5, epochs=20, batch_size=16, optimizer="sgd", lr=1e-3, momentum=0.0,
                weight_decay=0.0, schedule="constant", shuffle=False)  # cleverhans-lab/machine-unlearning
# sisa.py (argparse defaults, plain SGD, no scheduler) and sharded.py fetchShardBatch (fixed batches)
SCHEDULES = ("constant", "cosine")


class Shards(NamedTuple):
    """A partition of the ``train`` split into S shards of ``m`` slots each.

    ``index`` (S, m) int32: positions in ``data['train']`` (retain first, then forget).
    ``member`` (S, m) bool: the slot holds an example the shard trains on (False: padding or unlearned).
    """

    index: jax.Array
    member: jax.Array


class Sisa(NamedTuple):
    """SISA's pure functions (see :func:`sisa`)."""

    partition: Callable  # (key) -> Shards
    train: Callable      # (key, shards, data) -> (models stacked over S, {'loss': (S, epochs)})
    unlearn: Callable    # (key, models, shards, data) -> (models, shards, report)
    train_and_unlearn: Callable  # (key, shards, data) -> (original, metrics, unlearned, shards, report)
    num_shards: int
    forget: Callable     # (shards) -> (shards without the forget set, report)
    train_shards: Callable  # (key, shards, data, rows) -> (models stacked over len(rows), {'loss'})


def _shard_layout(n: int, num_shards: int) -> tuple[int, int]:
    """``(q, m)``: S−1 shards of q = n // S examples, the last of m = n − (S−1)·q (the reference's split)."""
    if num_shards < 1 or n < num_shards:
        raise ValueError(f"need 1 <= num_shards <= {n} (the train split's size), got {num_shards}")
    q = n // num_shards
    return q, n - (num_shards - 1) * q


HYPER_NAMES = frozenset({*DEFAULTS, "class_weighted", "augment"})


def check_hyper(hyper) -> None:
    """Raise ``ValueError`` naming any key of ``hyper`` that :func:`sisa` does not take, or a bad value."""
    unknown = sorted(set(hyper) - HYPER_NAMES)
    if unknown:
        raise ValueError(f"sisa has no hyper-parameter(s) {unknown}; valid: {sorted(HYPER_NAMES)}")
    for name in ("epochs", "batch_size"):
        value = hyper.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"sisa: {name} must be a positive integer, got {value!r}")
    if hyper.get("schedule", "constant") not in SCHEDULES:
        raise ValueError(f"sisa: schedule must be one of {SCHEDULES}, got {hyper['schedule']!r}")
    if not isinstance(hyper.get("shuffle", False), bool):
        raise ValueError(f"sisa: shuffle must be true or false, got {hyper['shuffle']!r}")


def sisa(ctx: Context, *, num_shards: int = 5, epochs: int = 20, batch_size: int = 16, optimizer: str = "sgd",
         lr: float = 1e-3, momentum: float = 0.0, weight_decay: float = 0.0, schedule: str = "constant",
         shuffle: bool = False, class_weighted: bool = False, augment: bool = False) -> Sisa:
    """SISA over ``ctx``'s ``train`` split with ``num_shards`` shards (see the module docstring).

    Each shard model is a fresh ResNet (torchvision init from the shard's key) trained for ``epochs`` on
    its members with cross-entropy (class-weighted ``1/count`` by ``ctx.class_counts`` when
    ``class_weighted``), torch ``SGD(lr, momentum, weight_decay)`` or ``Adam(lr, weight_decay)`` at a
    constant ``lr`` (``schedule='cosine'``: ``CosineAnnealingLR(T_max=epochs)`` stepped per epoch, per
    ``ceil(members / batch_size)`` steps), in the reference's fixed batches (``shuffle=True``: reshuffled
    every epoch; see the module docstring).

    * ``partition(key) -> Shards``: a permutation of the n train positions from ``key``, split at
      ``t·(n // S)``.
    * ``train(key, shards, data) -> (models, metrics)``: shard s from ``fold_in(key, s)``; models are
      variables stacked over S, ``metrics['loss']`` (S, epochs).
    * ``unlearn(key, models, shards, data) -> (models, shards, report)``: removes every forget position
      (``>= n_retain``) from the shards and retrains, from ``key``, the shards that held one; the others'
      variables are returned bit-identical. Pass the training key to retrain each affected shard from the
      same initialisation and shuffling stream (minus the forgotten examples). ``report``:
      ``affected`` (S,) bool, ``shards_retrained``, ``shard_fraction`` (of S), ``examples_retrained``
      (members of retrained shards) and ``example_fraction`` (of the retain set: the cost relative to
      retraining one model on all retained data), ``forgotten`` (forget examples removed).
    * ``train_and_unlearn(key, shards, data) -> (original, metrics, unlearned, shards, report)``: both of
      the above with the same key, computed as one vmap over 2·S shard trainings (one compiled training
      loop instead of two; the results are those of ``train`` then ``unlearn``).
    * ``forget(shards) -> (kept, report)``: the bookkeeping half of ``unlearn`` (no training).
    * ``train_shards(key, shards, data, rows) -> (models, metrics)``: only the shards ``rows`` (host
      ints), each exactly as ``train`` trains it; ``unlearn`` without computing the unaffected shards
      (``jax_unlearn.jobs.sisa`` uses it, so its wall-time saving is real).
    """
    check_hyper({"epochs": epochs, "batch_size": batch_size, "schedule": schedule, "shuffle": shuffle})
    n, n_retain = ctx.size("train"), ctx.size("retain")
    q, m = _shard_layout(n, num_shards)
    steps = math.ceil(m / batch_size)
    weights = inverse_count_weights(ctx) if class_weighted else None
    loss_fn = lambda logits, y, mask: cross_entropy(logits, y, mask, weights)  # noqa: E731

    def partition(key) -> Shards:
        perm = jax.random.permutation(key, n).astype(jnp.int32)
        s, j = jnp.arange(num_shards)[:, None], jnp.arange(m)[None, :]
        sizes = jnp.where(s == num_shards - 1, m, q)
        member = j < sizes
        return Shards(jnp.where(member, perm[jnp.where(member, s * q + j, 0)], 0), member)

    def train_one(key, images, labels, member):
        """One shard from scratch: images (m, 32, 32, 3) uint8, labels (m,), member (m,) bool."""
        k_init, k_epochs = jax.random.split(key)
        count = jnp.sum(member)
        real_steps = jnp.maximum(1, (count + batch_size - 1) // batch_size)
        rate = cosine_annealing_per_epoch(lr, epochs, real_steps) if schedule == "cosine" else lr
        hyper = dict(learning_rate=rate, weight_decay=weight_decay)
        if optimizer == "sgd":
            hyper["momentum"] = momentum
        tx = make_optimizer(optimizer, **hyper)
        step = supervised_step(ctx, tx, loss_fn)

        def epoch(state, e):
            k_perm, k_aug = jax.random.split(jax.random.fold_in(k_epochs, e))
            pad = jnp.zeros((steps * batch_size - m,), jnp.int32)
            if shuffle:
                perm = jax.random.permutation(k_perm, m)
                order = perm[jnp.argsort(~member[perm], stable=True)]  # members first, in random order
                idx = jnp.concatenate([order, pad]).reshape(steps, batch_size)
                mask = (jnp.arange(steps * batch_size) < count).reshape(steps, batch_size)
            else:  # fixed blocks of slots; unlearned (and padding) slots are holes in their block
                idx = jnp.arange(steps * batch_size, dtype=jnp.int32).reshape(steps, batch_size)
                mask = jnp.concatenate([member, jnp.zeros(pad.shape, bool)]).reshape(steps, batch_size)
                idx = jnp.where(mask, idx, 0)

            def member_step(state, inp, bmask):
                i, bidx = inp
                x = jnp.where(bmask[:, None, None, None], images[bidx], 0).astype(images.dtype)
                y = jnp.where(bmask, labels[bidx], 0)
                if augment:
                    x = random_crop_flip(jax.random.fold_in(k_aug, i), x)
                return step(state, x, y, bmask)

            # blocks holding no member are skipped: no forward pass, no optimiser step
            return run_steps(member_step, state, (jnp.arange(steps), idx), mask, active=jnp.any(mask, axis=1))

        state = create_state(init_variables(ctx.model, k_init), tx)
        state, losses = jax.lax.scan(epoch, state, jnp.arange(epochs))
        return variables_of(state), losses

    def train_rows(keys, shards: Shards, data: DeviceData):
        """One model per row of ``shards`` (any number of rows), row r from ``keys[r]``."""
        images, labels = data["train"]
        models, losses = jax.vmap(train_one)(keys, images[shards.index], labels[shards.index], shards.member)
        return models, {"loss": losses}

    def shard_keys(key):
        return jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(num_shards))

    def train(key, shards: Shards, data: DeviceData):
        return train_rows(shard_keys(key), shards, data)

    def train_shards(key, shards: Shards, data: DeviceData, rows):
        """Only the shards ``rows`` (a host int sequence: the program holds ``len(rows)`` trainings),
        shard r from ``fold_in(key, r)`` as in ``train``: what a deployment that retrains just the
        affected shards computes. Returns models and losses stacked over ``rows``, in that order."""
        rows = jnp.asarray(rows, jnp.int32)
        return train_rows(shard_keys(key)[rows], Shards(shards.index[rows], shards.member[rows]), data)

    def forget(shards: Shards):
        """``(kept, report)``: the shards without the forget positions, and what retraining them costs."""
        forgotten = shards.member & (shards.index >= n_retain)
        affected = jnp.any(forgotten, axis=1)
        kept = Shards(shards.index, shards.member & ~forgotten)
        examples = jnp.sum(kept.member & affected[:, None])
        return kept, {"affected": affected, "shards_retrained": jnp.sum(affected),
                      "shard_fraction": jnp.mean(affected.astype(jnp.float32)), "examples_retrained": examples,
                      "example_fraction": examples / max(n_retain, 1), "forgotten": jnp.sum(forgotten)}

    def select(affected, retrained, models):
        return jax.tree_util.tree_map(
            lambda new, old: jnp.where(affected.reshape(-1, *([1] * (old.ndim - 1))), new, old), retrained, models)

    def unlearn(key, models, shards: Shards, data: DeviceData):
        kept, report = forget(shards)
        retrained, _ = train(key, kept, data)
        return select(report["affected"], retrained, models), kept, report

    def train_and_unlearn(key, shards: Shards, data: DeviceData):
        """``train`` then ``unlearn`` with the same key, as one vmap over 2·S rows (one compiled training)."""
        kept, report = forget(shards)
        keys = shard_keys(key)
        both = Shards(*(jnp.concatenate([a, b]) for a, b in zip(shards, kept)))
        models, metrics = train_rows(jnp.concatenate([keys, keys]), both, data)
        original = jax.tree_util.tree_map(lambda a: a[:num_shards], models)
        retrained = jax.tree_util.tree_map(lambda a: a[num_shards:], models)
        return (original, {"loss": metrics["loss"][:num_shards]}, select(report["affected"], retrained, original),
                kept, report)

    return Sisa(partition, train, unlearn, train_and_unlearn, num_shards, forget, train_shards)


def make_sisa_run(ctx: Context, **hyper):
    """``run(key, data, shards=None) -> dict`` for one seed (vmap it over seed keys like the engine's runs).

    ``key`` splits into a partition key and a training key; the shards (``partition`` of the first, unless
    ``shards`` are given) are trained on the whole train split (the original SISA ensemble), then the
    forget set is unlearned by retraining the affected shards with the same training key
    (``train_and_unlearn``). Returns ``original`` and ``unlearned`` (variables stacked over S), ``shards``
    (after unlearning), ``loss`` (S, epochs) of the original training and the ``report`` of :func:`sisa`'s
    ``unlearn``. ``hyper`` overrides :data:`DEFAULTS` (plus ``class_weighted``, ``augment``).
    """
    check_hyper(hyper)
    fns = sisa(ctx, **{**DEFAULTS, **hyper})

    def run(key, data: DeviceData, shards: Shards | None = None):
        k_part, k_train = jax.random.split(key)
        shards = fns.partition(k_part) if shards is None else shards
        original, metrics, unlearned, shards, report = fns.train_and_unlearn(k_train, shards, data)
        return {"original": original, "unlearned": unlearned, "shards": shards, "loss": metrics["loss"],
                "report": report}

    return run


def shard_logits(ctx: Context, models, images, batch_size: int = 500):
    """Each shard model's eval-mode logits, (S, N, C) float32.

    ``models``: variables stacked over S (leading axis); ``images`` uint8 (N, 32, 32, 3).
    """
    return jax.vmap(lambda v: predict(ctx, v, images, batch_size))(models).astype(jnp.float32)


def aggregate_probs(ctx: Context, models, images, batch_size: int = 500):
    """The ensemble's prediction: the mean over the S shard models of ``softmax(logits)``, (N, C) float32.

    ``models``: variables stacked over S (leading axis); ``images`` uint8 (N, 32, 32, 3); eval mode.
    """
    return jnp.mean(jax.nn.softmax(shard_logits(ctx, models, images, batch_size), axis=-1), axis=0)


def aggregate_log_probs(ctx: Context, models, images, batch_size: int = 500):
    """``log(aggregate_probs)`` (N, C): logits of the ensemble (softmax of them is the mean softmax), e.g.
    for :func:`jax_unlearn.metrics.logit_scaled_confidence`."""
    return jnp.log(aggregate_probs(ctx, models, images, batch_size))
