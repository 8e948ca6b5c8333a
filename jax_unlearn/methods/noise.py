"""Error-maximising noise: UNSIR (impair–repair), and the seed's curriculum pipeline (noise-student-curriculum),
which impairs and repairs a bad teacher easy-first and ends in bad-teacher distillation.

Both build one static-size *pool* per phase — the retain examples followed by ``noise_copies`` copies
(the curriculum: one) of each class's ``noise_images`` learned noise images — and mark which entries are
valid (retain: unsir's ``retain_per_class`` of each class, the curriculum all; noise: classes present in
the forget set). Only valid entries are batched (:func:`jax_unlearn.methods.distill.valid_first` /
``run_pool``). Pool entry ``p``: ``p < n_retain`` is retain example ``p``; otherwise ``q = p - n_retain``
is noise image ``q // C % noise_images`` of class ``q % C`` (classes interleaved, copies outermost).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_unlearn.engine.losses import cross_entropy
from jax_unlearn.engine.optim import torch_adam
from jax_unlearn.engine.train import (Context, TrainState, apply_eval, create_state, normalize, predict,
                                      supervised_step, variables_of)
from jax_unlearn.engine.protocol import Method
from jax_unlearn.methods.registry import register
from jax_unlearn.methods.distill import bad_teacher_pass, retain_subset, run_pool, subset_size, valid_first
from jax_unlearn.models.init import draw_flat


def learn_noise(ctx: Context, variables, key, shape, num_classes: int, noise_images: int, steps: int,
                lr: float, reg: float):
    """UNSIR's error-maximising noise, class by class as the reference does: ``N_c ~ randn(noise_images,
    *shape)`` from ``fold_in(key, c)``, then ``steps`` steps of a fresh torch ``Adam(lr)`` on

        −CE(M(N_c), c) + reg · mean_i ‖N_c,i‖²

    (inputs in the model's normalised space; the model frozen, in eval mode). One class at a time
    (``lax.map``) keeps memory at one ``noise_images`` forward. Returns noise (C, noise_images, *shape)
    float32 and the final per-class objective (C,) float32.
    """
    tx = torch_adam(lr)

    def objective(noise, c):
        logits = apply_eval(ctx, variables, noise)
        size = jnp.mean(jnp.sum(jnp.square(noise), axis=tuple(range(1, noise.ndim))))
        return -cross_entropy(logits, jnp.full((noise.shape[0],), c)) + reg * size

    def one_class(c):
        noise0 = draw_flat(jax.random.normal, jax.random.fold_in(key, c), (noise_images, *shape), jnp.float32)

        def body(carry, _):
            noise, opt = carry
            updates, opt = tx.update(jax.grad(objective)(noise, c), opt, noise)
            return (optax.apply_updates(noise, updates), opt), None

        (noise, _), _ = jax.lax.scan(body, (noise0, tx.init(noise0)), None, length=steps)
        return noise, objective(noise, c).astype(jnp.float32)

    return jax.lax.map(one_class, jnp.arange(num_classes))


def retain_valid(labels, num_classes: int, per_class: int | None):
    """(N,) bool: the first ``per_class`` retain examples of each class in data order (all when None) —
    the reference's ``classwise_train[c][:num_samples_per_class]``."""
    if per_class is None:
        return jnp.ones(labels.shape, bool)
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)
    rank = jnp.take_along_axis(jnp.cumsum(onehot, axis=0), labels[:, None], axis=1)[:, 0] - 1
    return rank < per_class


def noise_valid(forget_labels, num_classes: int, noise_images: int, copies: int):
    """(C · noise_images · copies,) bool: noise entries whose class occurs in the forget set."""
    present = jnp.zeros((num_classes,), bool).at[forget_labels].set(True)
    return jnp.tile(present, noise_images * copies)


def pool_step(ctx: Context, step, data, noise):
    """Wrap ``step(state, x, labels, mask)`` (a :func:`~jax_unlearn.engine.train.supervised_step` on
    normalised inputs) into ``step(state, p (B,), mask)`` fetching pool entries: retain images
    (normalised) with their labels, noise images with their class."""
    images, labels = data["retain"]
    n_r, num_classes, noise_images = images.shape[0], noise.shape[0], noise.shape[1]

    def fetch_step(state, p, mask):
        is_noise = p >= n_r
        r, q = jnp.where(is_noise, 0, p), jnp.maximum(p - n_r, 0)
        cls, i = q % num_classes, q // num_classes % noise_images
        x = jnp.where(is_noise[:, None, None, None], noise[cls, i], normalize(ctx, images[r]))
        return step(state, x, jnp.where(is_noise, cls, labels[r]), mask)

    return fetch_step


class Phases(NamedTuple):
    """Orders (pool indices, valid first) and valid counts of the impair and repair passes."""

    impair: jax.Array
    n_impair: jax.Array
    repair: jax.Array
    n_repair: jax.Array


def ce_pass(ctx: Context, lr: float, batch_size: int):
    """``pass_(variables, data, noise, order, n) -> (TrainState, mean CE)``: a fresh torch ``Adam(lr)``, one
    pass of plain cross-entropy over the pool entries ``order[:n]`` (train mode), in that order."""
    tx = torch_adam(lr)
    step = supervised_step(ctx, tx, cross_entropy, normalized=True)

    def pass_(variables, data, noise, order, n):
        return run_pool(pool_step(ctx, step, data, noise), create_state(variables, tx), order, n, batch_size)

    return pass_


def no_noise(num_classes: int, shape):
    """A placeholder noise table for passes over retain entries only."""
    return jnp.zeros((num_classes, 1, *shape), jnp.float32)


def mean_over_present(per_class, forget_labels):
    """Mean of a per-class quantity (C,) over the classes present in the forget set."""
    present = noise_valid(forget_labels, per_class.shape[0], 1, 1)
    return jnp.sum(per_class * present) / jnp.maximum(jnp.sum(present), 1)


# --- UNSIR ------------------------------------------------------------------------------------------------

class UnsirState(NamedTuple):
    """UNSIR's per-seed state."""
    params: Any
    batch_stats: Any
    epoch: jax.Array  # int32: 0 = impair (with noise learning), 1 = repair


UNSIR_DEFAULTS = dict(batch_size=256, noise_images=3, noise_steps=40, noise_lr=0.1, noise_reg=0.1,
                      noise_copies=20, retain_per_class=1000, impair_lr=0.02, repair_lr=0.01)


@register("unsir", "UNSIR: learn error-maximising noise for the forget classes, impair on it, repair on retain",
          "Tarun et al., IEEE TNNLS 2023; vikram2000b/Fast-Machine-Unlearning (Machine Unlearning.ipynb)",
          **UNSIR_DEFAULTS)
def unsir(ctx: Context, *, batch_size: int, noise_images: int, noise_steps: int, noise_lr: float,
          noise_reg: float, noise_copies: int, retain_per_class: int | None, impair_lr: float,
          repair_lr: float) -> Method:
    """UNSIR (Unlearning by Selective Impair and Repair), two engine epochs:

    0. **Noise + impair.** :func:`learn_noise` (``noise_images`` images per class, ``noise_steps`` steps of
       Adam(``noise_lr``), ``reg = noise_reg``) from the seed's key; then one shuffled pass, torch
       ``Adam(impair_lr)``, batch ``batch_size``, plain CE, over the retain samples ∪ ``noise_copies``
       copies of the noise images of each class present in the forget set, labelled with that class.
       (Noise is learned for every class — static shapes — but absent classes never enter the pool.)
    1. **Repair.** A fresh ``Adam(repair_lr)``, one shuffled pass of CE over the same retain samples.

    Retain samples: the first ``retain_per_class`` retain examples of each class in data order (None:
    all). The model trains in train mode. Metrics: ``loss`` (the pass's CE), ``noise_loss`` (mean final
    noise objective over the forget classes; NaN in the repair epoch).

    Defaults are the notebook's CIFAR-10/ResNet-18 cells: noise lr 0.1, reg 0.1, ``5 epochs × 8 steps`` of
    the same objective (= ``noise_steps = 40``), ``num_batches = 20`` copies, 1000 retain samples per
    class, impair Adam 0.02 and repair Adam 0.01 at batch 256, one pass each.

    Ambiguities and our choices:

    * *How much noise enters the impair set.* The notebook learns a batch of 256 noise images per class
      but fills the impair set with ``for i in range(batch[0].size(0))`` — the channel count of one image —
      so only the first 3 images enter, 20 times each (60 noise samples per class). The SSD repository's
      copy does the same. We reproduce that: ``noise_images = 3``, ``noise_copies = 20``. Because the
      noise is learned in eval mode (below), the images do not interact: learning only the 3 used images
      is, image by image, the computation of learning 256 and keeping 3 (Adam is invariant to the batch
      mean's 1/B scale up to ``eps``), at 1/85 of the cost. ``noise_images = 256`` is the evident intent.
    * *Noise labels.* The notebook labels every class's noise ``class_num = 0`` (never incremented); the
      SSD repository labels it with its class. We use its class.
    * *Random-sample forgetting.* The notebook forgets whole classes; here we learn noise for each class
      that occurs in the forget set (the "forget labels"), and retain samples come from every class.
    * *Model mode while learning noise.* The notebook leaves the model in train mode (BatchNorm batch
      statistics over the noise batch, running statistics drifting towards the noise); the model is meant
      to be frozen there, so we use eval mode and leave its statistics untouched.

    References: A. K. Tarun, V. S. Chundawat, M. Mandal, M. Kankanhalli, "Fast Yet Effective Machine
    Unlearning", IEEE TNNLS 2023; github.com/vikram2000b/Fast-Machine-Unlearning (``Machine
    Unlearning.ipynb``, read at commit 252bc92; its transforms have no augmentation, nor do ours);
    if-loops/selective-synaptic-dampening (commit cdfdc0e, ``src/unlearn.py``: ``UNSIR_noise_train``,
    ``UNSIR_create_noisy_loader``).
    """
    num_classes = ctx.model.num_classes
    impair_pass, repair_pass = ce_pass(ctx, impair_lr, batch_size), ce_pass(ctx, repair_lr, batch_size)

    def init(key, start_variables, data):
        return UnsirState(start_variables["params"], start_variables["batch_stats"], jnp.zeros((), jnp.int32))

    def epoch(state: UnsirState, key, data, start):
        k_noise, k_order = jax.random.split(key)
        (images, labels), forget_labels = data["retain"], data["forget"][1]
        valid_r = retain_valid(labels, num_classes, retain_per_class)
        variables = {"params": state.params, "batch_stats": state.batch_stats}

        def impair(_):
            noise, objective = learn_noise(ctx, variables, k_noise, images.shape[1:], num_classes, noise_images,
                                           noise_steps, noise_lr, noise_reg)
            valid = jnp.concatenate([valid_r, noise_valid(forget_labels, num_classes, noise_images, noise_copies)])
            student, loss = impair_pass(variables, data, noise,
                                        *valid_first(jax.random.uniform(k_order, valid.shape), valid))
            return student.params, student.batch_stats, loss, mean_over_present(objective, forget_labels)

        def repair(_):
            student, loss = repair_pass(variables, data, no_noise(num_classes, images.shape[1:]),
                                        *valid_first(jax.random.uniform(k_order, valid_r.shape), valid_r))
            return student.params, student.batch_stats, loss, jnp.float32(jnp.nan)

        params, batch_stats, loss, noise_loss = jax.lax.cond(state.epoch == 0, impair, repair, None)
        return UnsirState(params, batch_stats, state.epoch + 1), {"loss": loss, "noise_loss": noise_loss}

    return Method(init, epoch, lambda s: {"params": s.params, "batch_stats": s.batch_stats}, 2)


# --- curriculum: the seed's pipeline (NitinPrasad5/Machine-Unlearning) ------------------------------------

SEED_REPO = "NitinPrasad5/Machine-Unlearning @ 2e9567d (unlearn.py, utils.py, Main.ipynb)"


def confidence_order(ctx: Context, variables, images):
    """Retain examples ranked easy → hard: ``(N,)`` int32 indices by decreasing ``max_c softmax(M(x))_c``
    of ``variables`` (eval mode), ties in data order, and the confidences ``(N,)``."""
    probs = jax.nn.softmax(predict(ctx, variables, images, min(500, images.shape[0])), axis=-1)
    confidence = jnp.max(probs, axis=-1)
    return jnp.argsort(-confidence, stable=True).astype(jnp.int32), confidence


def insert_noise(retain_order, noise_order, n_entries, n_samples):
    """The seed's noisy loader (``Main.ipynb``, ``UNSIR_create_noisy_loader_``) as a pool order.

    ``retain_order`` (n_r,): pool indices of the ranked retain examples; ``noise_order`` (Q,): pool indices
    whose first ``n_entries`` are the distinct valid noise entries; ``n_samples`` the length of the seed's
    noise list (``num_noise_batches × images``, entry ``k`` = distinct entry ``k mod n_entries``). With
    ``ratio = max(1, n_r // n_samples)``, one noise sample goes *before* every retain example of rank
    ``r ≡ 0 (mod ratio)``, the j-th such sample being list entry ``j mod n_samples`` (the notebook's
    ``j = j % len_noise``). So ``ceil(n_r / ratio)`` noise samples: 240 when 240 divides n_r, 241 for
    45,000 retain examples (ratio 187). Returns ``(order (2·n_r,) int32, count)``: the first ``count``
    entries are the impair sequence (position ``p`` is noise iff ``p mod (ratio + 1) = 0``).
    (``ratio`` clamps at 1 where the seed's ``int(len_retain / len_noise)`` would be 0 and divide by zero.)
    """
    n_r = retain_order.shape[0]
    ratio = jnp.maximum(1, n_r // jnp.maximum(n_samples, 1))
    p = jnp.arange(2 * n_r)
    k, slot = p // (ratio + 1), p % (ratio + 1)
    noise = noise_order[(k % jnp.maximum(n_samples, 1)) % jnp.maximum(n_entries, 1)]
    retain = retain_order[jnp.clip(p - k - 1, 0, n_r - 1)]
    count = n_r + (n_r + ratio - 1) // ratio
    return jnp.where(slot == 0, noise, retain).astype(jnp.int32), count.astype(jnp.int32)


def curriculum_phases(ctx: Context, variables, data, noise_images: int, noise_batches: int) -> Phases:
    """The seed's curriculum with its index bug fixed: every retain example ranked by the original model's
    max-softmax confidence (:func:`confidence_order`; pool indices, so images and labels stay aligned);
    repair order = that ranking; impair order = the ranking with the noise list inserted
    (:func:`insert_noise`; ``noise_batches × noise_images`` samples per class in the forget set)."""
    images, _ = data["retain"]
    num_classes = ctx.model.num_classes
    repair, _ = confidence_order(ctx, variables, images)
    valid_q = noise_valid(data["forget"][1], num_classes, noise_images, 1)
    noise_order, n_entries = valid_first(jnp.arange(valid_q.shape[0], dtype=jnp.float32), valid_q)
    impair, n_impair = insert_noise(repair, images.shape[0] + noise_order, n_entries, noise_batches * n_entries)
    return Phases(impair, n_impair, repair, jnp.int32(images.shape[0]))


class CurriculumState(NamedTuple):
    """noise-student-curriculum's per-seed state (the phases are fixed per run, computed in ``init``)."""
    student: TrainState  # a copy of the original model, then distilled (the distillation Adam's state)
    teacher: Any  # the bad teacher: the original impaired (epoch 0), then repaired (epoch 1); the good
    # teacher is the original model itself, ``epoch``'s ``start``
    subset: jax.Array  # (k,) retain indices for distillation
    phases: Phases
    epoch: jax.Array  # int32: 0 impair, 1 repair, >= 2 distillation


@register("noise-student-curriculum",
          "the seed's pipeline: UNSIR noise, impair then repair a bad teacher easy-first, distil a copy of the "
          "original from it and the original", SEED_REPO + "; built on UNSIR and Bad Teaching",
          batch_size=256, noise_images=3, noise_steps=40, noise_lr=0.1, noise_reg=0.1, noise_batches=80,
          impair_lr=0.02, repair_lr=0.01, distill_epochs=1, distill_lr=1e-4, distill_batch_size=256,
          temperature=1.0, retain_fraction=1.0)
def noise_student_curriculum(ctx: Context, *, batch_size: int, noise_images: int, noise_steps: int,
                             noise_lr: float, noise_reg: float, noise_batches: int, impair_lr: float,
                             repair_lr: float, distill_epochs: int, distill_lr: float, distill_batch_size: int,
                             temperature: float, retain_fraction: float) -> Method:
    """The seed's pipeline (``Main.ipynb`` over ``unlearn.py``/``utils.py``), ``2 + distill_epochs`` engine
    epochs; the student stays a copy of the original model until the distillation:

    ``init``. Curriculum (:func:`curriculum_phases`): *all* retain examples ranked easy → hard by the
       original model's ``max_c softmax`` (the notebook's ``retain_train_subset`` is ``random.sample`` of
       100 % of retain).
    0. **Impair** (the bad teacher): :func:`learn_noise` on the original model (``noise_images`` images per
       forget class, ``noise_steps`` steps of Adam(``noise_lr``), ``reg = noise_reg``: ``UNSIR_noise_train``
       ``5 epochs × 8 steps``); from a copy of the original, one *unshuffled* pass, batch ``batch_size``,
       plain CE, fresh ``Adam(impair_lr)``, train mode, over the ranked retain set with the noise list of
       ``n_s = noise_batches · noise_images`` samples per forget class (80 × 3 = 240 for one class)
       inserted once every ``⌊n_r / n_s⌋`` retain examples (:func:`insert_noise`), noise labelled with its
       class.
    1. **Repair** the bad teacher: fresh ``Adam(repair_lr)``, one unshuffled CE pass over the ranked retain
       set (the notebook's repair cell over ``sorted_retain_train_subset``).
    2. **Distil** (``distill_epochs``): ``blindspot_unlearner`` — bad-teacher's pass
       (:func:`~jax_unlearn.methods.distill.bad_teacher_pass`, one ``Adam(distill_lr)``) of the student
       (the original's copy) on forget ∪ ``retain_fraction`` of retain (100 %, reshuffled per epoch), the
       *impaired-then-repaired* model the incompetent teacher on forget rows and the original the
       competent one on retain rows; ``KL`` with torch's ``'mean'`` reduction, ``T = temperature``.

    Metrics: ``loss`` (the pass's loss), ``noise_loss`` (mean final noise objective over the forget classes;
    NaN after epoch 0). Seeds differ through the noise initialisation and the distillation shuffles (the
    curriculum is deterministic).

    Deviations from the seed's code, each deliberate:

    * **Index bug fixed.** ``Main.ipynb`` (cell "Curriculum create") scores ``retain_train_subset_dl``
      (``shuffle=True``) and then pairs the scores with the unshuffled indices:
      ``sorted_indices = [index for _, index in sorted(zip(all_confidence_scores,
      retain_train_subset_indices), reverse=True)]`` — each score lands on another example's index, so
      its "curriculum" is a random order. We score every retain example in data order and sort those
      (ties in data order; the seed's ``reverse=True`` breaks ties by larger index).
    * The confidences come from eval mode; the seed's model is in train mode there (a fresh ``resnet18``
      after ``load_state_dict``), so each score would depend on its shuffled batch's statistics. Noise is
      learned in eval mode too (the model is frozen there; see ``unsir``).
    * Random-sample forgetting: the seed forgets one class. We learn noise for every class in the forget
      set and insert ``noise_batches × noise_images`` samples per such class (classes interleaved).
      Only the first 3 images of each class's 256-image noise batch enter the seed's list (its loop runs
      over ``batch[0].size(0)``, the channel count), so ``noise_images = 3`` (as ``unsir``).
    * The student: the notebook's distillation cell loads a CIFAR-100 super-class checkpoint into a
      20-class ResNet (left over from the Bad Teaching notebook; it cannot be the CIFAR-10 student); the
      pipeline's evident student, and ours, is a copy of the original model.

    References: github.com/NitinPrasad5/Machine-Unlearning, read at commit 2e9567d (``Main.ipynb``: the
    curriculum, noisy-loader, impair, repair and distillation cells; ``unlearn.py``: ``UNSIR_noise_train``,
    ``UnlearnerLoss``, ``blindspot_unlearner``; ``utils.py``; ``dataset.py``: ``UnLearningData``); UNSIR
    (Tarun et al., IEEE TNNLS 2023) and Bad Teaching (Chundawat et al., AAAI 2023), see ``unsir`` and
    ``bad-teacher``.
    """
    if ctx.size("forget") == 0:
        raise ValueError("noise-student-curriculum needs a non-empty forget set")
    num_classes = ctx.model.num_classes
    impair_pass, repair_pass = ce_pass(ctx, impair_lr, batch_size), ce_pass(ctx, repair_lr, batch_size)
    distill_tx = torch_adam(distill_lr)
    distill_pass = bad_teacher_pass(ctx, distill_tx, distill_batch_size, temperature)
    k = subset_size(ctx.size("retain"), retain_fraction)

    def init(key, start_variables, data):
        phases = curriculum_phases(ctx, start_variables, data, noise_images, noise_batches)
        return CurriculumState(create_state(start_variables, distill_tx), start_variables,
                               retain_subset(key, ctx.size("retain"), k), phases, jnp.zeros((), jnp.int32))

    def epoch(state: CurriculumState, key, data, start):
        k_noise, k_distill = jax.random.split(key)
        shape = data["retain"][0].shape[1:]
        nan = jnp.float32(jnp.nan)

        def impair(s):
            noise, objective = learn_noise(ctx, start, k_noise, shape, num_classes, noise_images, noise_steps,
                                           noise_lr, noise_reg)
            teacher, loss = impair_pass(start, data, noise, s.phases.impair, s.phases.n_impair)
            return s._replace(teacher=variables_of(teacher)), loss, mean_over_present(objective, data["forget"][1])

        def repair(s):
            teacher, loss = repair_pass(s.teacher, data, no_noise(num_classes, shape), s.phases.repair,
                                        s.phases.n_repair)
            return s._replace(teacher=variables_of(teacher)), loss, nan

        def distill(s):
            student, loss = distill_pass(s.student, k_distill, data, s.subset, start, s.teacher)
            return s._replace(student=student), loss, nan

        new, loss, noise_loss = jax.lax.switch(jnp.minimum(state.epoch, 2), (impair, repair, distill), state)
        return new._replace(epoch=state.epoch + 1), {"loss": loss, "noise_loss": noise_loss}

    return Method(init, epoch, lambda s: variables_of(s.student), 2 + distill_epochs)
