"""Teacher–student unlearning — Bad Teacher and SCRUB — plus the shared pieces the noise methods reuse.

Conventions shared by every method here (and by :mod:`jax_unlearn.methods.noise`):

* The original model is the *competent teacher*: the ``start`` argument of every ``epoch`` (the frozen
  start variables, :mod:`jax_unlearn.engine.protocol`), never part of a method's state or an optimiser
  state; under the engine's ``vmap`` it is one unbatched copy shared by all seeds.
* Students train in train mode (BatchNorm batch statistics, running statistics updated, padded rows
  masked out of both); teachers run in eval mode — as every reference does (``teacher.eval()``).
* A *pool* is a static-size list of candidate examples, some of which may be invalid (e.g. noise for a
  class absent from the forget set). :func:`valid_first` orders the valid ones first and
  :func:`run_pool` runs only the batches that hold valid examples (the others are skipped by a
  ``lax.cond`` whose predicate depends on the data only, never on the seed, so it stays a real branch
  under ``vmap``). Fully padded batches would otherwise still move Adam/momentum optimisers.
"""
from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_unlearn.engine.batches import epoch_batches
from jax_unlearn.engine.losses import cross_entropy, kl_divergence
from jax_unlearn.engine.optim import torch_adam, torch_sgd
from jax_unlearn.engine.train import (Context, TrainState, create_state, run_steps,
                                      supervised_step, teacher_logits, variables_of)
from jax_unlearn.engine.protocol import Method
from jax_unlearn.methods.registry import register
from jax_unlearn.models import init_variables


# --- losses -----------------------------------------------------------------------------------------------

def kl_mean_reduction(student_logits, teacher_logits, mask=None, temperature=1.0):
    """torch ``F.kl_div(log_softmax(s/T), softmax(t/T))`` with its default ``reduction='mean'``: the
    element-wise mean over ``B × C``, i.e. :func:`kl_divergence` (batch mean) divided by ``C``."""
    return kl_divergence(student_logits, teacher_logits, mask, temperature) / student_logits.shape[-1]


def kl_t2(student_logits, teacher_logits, mask=None, temperature=1.0):
    """RepDistiller's ``DistillKL(T)`` (used by SCRUB): ``T² · KL(softmax(t/T) ‖ softmax(s/T))``, batch mean."""
    return temperature**2 * kl_divergence(student_logits, teacher_logits, mask, temperature)


# --- pools and passes ---------------------------------------------------------------------------------------

def valid_first(sort_keys, valid):
    """Order ``(N,)`` int32 putting valid entries first (ascending ``sort_keys``, ties in index order),
    invalid ones last, and the number of valid entries (scalar int32).

    Random keys (``jax.random.uniform``) give a uniformly random permutation of the valid entries — torch's
    ``DataLoader(shuffle=True)`` over the valid subset; fixed keys give a fixed (e.g. curriculum) order."""
    order = jnp.argsort(jnp.where(valid, sort_keys, jnp.inf), stable=True).astype(jnp.int32)
    return order, jnp.sum(valid.astype(jnp.int32))


def run_pool(step, state, order, n_valid, batch_size: int):
    """Run ``step(state, pool_idx (B,), mask (B,)) -> (state, loss)`` over ``order[:n_valid]`` in batches of
    ``batch_size`` (last one partial and masked; batches past ``n_valid`` are skipped, not run).

    :func:`jax_unlearn.engine.train.run_steps` over ``order`` cut like an unshuffled epoch
    (:func:`jax_unlearn.engine.batches.epoch_batches`). Returns ``(state, mean loss over the examples
    run)`` (float32); NaN when nothing ran."""
    n = order.shape[0]
    pos, real = epoch_batches(None, n, batch_size)
    live = real & (pos < n_valid)
    active = None if isinstance(n_valid, int) and n_valid >= n else jnp.any(live, axis=1)
    state, loss = run_steps(step, state, order[pos], live, active)
    return state, jnp.where(jnp.asarray(n_valid) > 0, loss.astype(jnp.float32), jnp.nan)  # a float32 metric


def subset_size(n_retain: int, fraction) -> int:
    """``int(fraction * n_retain)``, the size of the distillation retain subset (a static shape), checked:
    ``fraction`` must be a number in [0, 1] given once for all lanes (it cannot vary per seed lane)."""
    if not isinstance(fraction, numbers.Real) or isinstance(fraction, bool):
        raise TypeError(f"retain_fraction sets an array size, so it must be a plain number (not swept per lane); "
                        f"got {type(fraction).__name__}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"retain_fraction must be in [0, 1], got {fraction}")
    return int(fraction * n_retain)


def retain_subset(key, n_retain: int, k: int):
    """``random.sample(retain, k)`` as indices ``(k,)`` int32, drawn per seed from ``key``."""
    return jax.random.permutation(key, n_retain)[:k].astype(jnp.int32)


def bad_teacher_pass(ctx: Context, tx, batch_size: int, temperature: float):
    """One shuffled pass over forget ∪ retain-subset, distilling from two teachers (Chundawat et al. 2023).

    ``pass_(student, key, data, subset, competent, incompetent) -> (student, mean loss)``. Per example the
    target is ``softmax(t/T)`` of the incompetent teacher on forget rows and of the competent one on
    retain rows; the loss is :func:`kl_mean_reduction` (the reference's ``F.kl_div`` default reduction).
    """
    n_r, n_f = ctx.size("retain"), ctx.size("forget")
    step = supervised_step(ctx, tx, lambda logits, teacher, mask: kl_mean_reduction(logits, teacher, mask, temperature))

    def pass_(student, key, data, subset, competent, incompetent):
        images, _ = data["train"]  # retain (0..n_r-1) then forget (n_r..)
        pool = jnp.concatenate([n_r + jnp.arange(n_f, dtype=jnp.int32), subset])
        is_forget = jnp.arange(pool.shape[0]) < n_f

        def pool_step(state, p, mask):
            x = images[pool[p]]
            teacher = jnp.where(is_forget[p][:, None], teacher_logits(ctx, incompetent, x),
                                teacher_logits(ctx, competent, x))
            return step(state, x, teacher, mask)

        order = jax.random.permutation(key, pool.shape[0]).astype(jnp.int32)
        return run_pool(pool_step, student, order, pool.shape[0], batch_size)

    return pass_


# --- Bad Teacher ------------------------------------------------------------------------------------------

class BadTeacherState(NamedTuple):
    """Bad Teaching's per-seed state: the student, the random (incompetent) teacher, the retain subset."""
    student: TrainState
    incompetent: Any  # randomly initialised teacher, drawn from the seed key
    subset: jax.Array  # (k,) retain indices distilled from the competent teacher


@register("bad-teacher", "distil from a random teacher on forget and the original on a retain subset",
          "Chundawat et al., AAAI 2023; vikram2000b/bad-teaching-unlearning (blindspot_unlearner)",
          epochs=1, batch_size=256, lr=1e-4, temperature=1.0, retain_fraction=0.3)
def bad_teacher(ctx: Context, *, epochs: int, batch_size: int, lr: float, temperature: float,
                retain_fraction: float) -> Method:
    """Bad Teaching: student ← original; minimise, over shuffled batches of forget ∪ retain-subset,

        KL( l·softmax(T_bad(x)/T) + (1−l)·softmax(T_good(x)/T) ‖ softmax(S(x)/T) ),  l = 1 on forget rows,

    with ``torch.optim.Adam(lr)`` (no weight decay), batch ``batch_size``, ``epochs`` passes.

    * ``T_good`` — the original model (eval mode); ``T_bad`` — a freshly initialised ResNet (torchvision
      init from the seed key, eval mode, so BatchNorm uses its initial running statistics 0/1).
    * The retain subset is ``random.sample(retain, int(retain_fraction · n_retain))``, drawn once per seed
      (as the SSD repository's ``blindspot`` does); each epoch reshuffles forget ∪ subset.

    Shapes: forget (n_f,), subset (int(0.3 n_r),); one epoch is ``ceil((n_f + k) / batch_size)`` steps.

    Ambiguities: the reference's ``F.kl_div`` uses its default element-wise ``'mean'`` reduction (÷ B·C);
    some copies use ``'batchmean'``. We follow the repository (÷ C more); under Adam the two differ only
    through ``eps``. Defaults (1 epoch, Adam 1e-4, 30 % retain, batch 256, T = 1) are the settings the SSD
    repository uses for this baseline on ResNet-18/CIFAR, and those the reference's own notebook
    (``CIFARSuper20_Rocket_Unlearn.ipynb``) passes; ``blindspot_unlearner``'s signature defaults (10 epochs,
    lr 0.01) are overridden by both callers.

    References: V. S. Chundawat, A. K. Tarun, M. Mandal, M. Kankanhalli, "Can Bad Teaching Induce
    Forgetting? Unlearning in Deep Networks using an Incompetent Teacher", AAAI 2023;
    github.com/vikram2000b/bad-teaching-unlearning (``unlearn.py``, ``CIFARSuper20_Rocket_Unlearn.ipynb``;
    read at commit f1aa988); if-loops/selective-synaptic-dampening (``forget_random_strategies.blindspot``;
    commit cdfdc0e).
    """
    tx = torch_adam(lr)
    pass_ = bad_teacher_pass(ctx, tx, batch_size, temperature)
    k = subset_size(ctx.size("retain"), retain_fraction)

    def init(key, start_variables, data):
        k_teacher, k_subset = jax.random.split(key)
        return BadTeacherState(create_state(start_variables, tx), init_variables(ctx.model, k_teacher),
                               retain_subset(k_subset, ctx.size("retain"), k))

    def epoch(state: BadTeacherState, key, data, start):
        student, loss = pass_(state.student, key, data, state.subset, start, state.incompetent)
        return state._replace(student=student), {"loss": loss}

    return Method(init, epoch, lambda s: variables_of(s.student), epochs)


# --- SCRUB ------------------------------------------------------------------------------------------------

class ScrubState(NamedTuple):
    """SCRUB's per-seed state: the student and the SCRUB epochs done."""
    student: TrainState
    epoch: jax.Array  # int32, 0-based


@register("scrub", "SCRUB: alternate max-steps (−KL on forget) and min-steps (CE + KL on retain)",
          "Kurmanji et al., NeurIPS 2023; meghdadk/SCRUB large_scale_unlearning.ipynb (CIFAR-10 config)",
          epochs=3, msteps=2, batch_size=256, forget_batch_size=512, lr=5e-4, momentum=0.9,
          weight_decay=5e-4, temperature=4.0, gamma=0.99, alpha=0.001, lr_decay_epochs=(3, 5, 9),
          lr_decay_rate=0.1)
def scrub(ctx: Context, *, epochs: int, msteps: int, batch_size: int, forget_batch_size: int, lr: float,
          momentum: float, weight_decay: float, temperature: float, gamma: float, alpha: float,
          lr_decay_epochs, lr_decay_rate: float) -> Method:
    """SCRUB: student ← original, teacher = original (frozen, eval mode). Epoch ``e = 1..epochs``:

    1. if ``e <= msteps``: one shuffled pass over the forget set (batch ``forget_batch_size``) minimising
       ``−KL_T`` (max-steps: push the student away from the teacher on forget examples);
    2. one shuffled pass over the retain set (batch ``batch_size``) minimising
       ``gamma · CE(S(x), y) + alpha · KL_T`` (min-steps: stay close to the teacher on retain).

    ``KL_T = T² · KL(softmax(t/T) ‖ softmax(s/T))`` (:func:`kl_t2`, RepDistiller's ``DistillKL``). One torch
    ``SGD(lr, momentum, weight_decay)`` serves both step kinds (momentum carries across them, as in the
    reference); its learning rate is ``lr · lr_decay_rate ** #{d in lr_decay_epochs : e > d}``
    (RepDistiller ``adjust_learning_rate``; with 3 epochs and decay at (3, 5, 9) it stays constant).

    Epochs are heterogeneous: the max pass runs under ``lax.cond`` on the epoch counter in the state, so
    every engine epoch is one SCRUB epoch. Metrics: ``loss`` (min-step loss), ``forget_kl`` (mean KL_T on
    the max pass; NaN in epochs without one).

    Ambiguities: the notebook's large-scale CIFAR configuration is used (``beta = 0`` there, so the third,
    feature-distillation term is absent; ``smoothing = 0`` zeroes the ``param_dist`` term some versions of
    ``train_distill`` add, and ``clip`` is unused); its loaders use batch 512 (forget) and 256 (retain) —
    the ``sgda_batch_size = 128`` it also sets is unused. Both passes train the student in train mode
    (``module.train()``), the teacher in eval mode. Other copies of SCRUB (the SSD repository's, Kaggle
    ports) change γ, α, T or the optimiser; pass those as hyper-parameters.

    References: M. Kurmanji, P. Triantafillou, J. Hayes, E. Triantafillou, "Towards Unbounded Machine
    Unlearning", NeurIPS 2023; github.com/meghdadk/SCRUB (``large_scale_unlearning.ipynb``,
    ``thirdparty/repdistiller/helper/loops.py:train_distill``, ``helper/util.py:adjust_learning_rate``,
    ``distiller_zoo/KD.py:DistillKL``; read at commit 98ffb11).
    """
    tx = optax.inject_hyperparams(torch_sgd)(learning_rate=lr, momentum=momentum, weight_decay=weight_decay)
    decay_at = jnp.asarray(tuple(lr_decay_epochs) or (epochs + 1,), jnp.int32)
    n_f, n_r = ctx.size("forget"), ctx.size("retain")
    # labels = (class labels, teacher logits)
    max_step = supervised_step(ctx, tx, lambda s, yt, m: -kl_t2(s, yt[1], m, temperature))
    min_step = supervised_step(ctx, tx, lambda s, yt, m: gamma * cross_entropy(s, yt[0], m)
                               + alpha * kl_t2(s, yt[1], m, temperature))

    def split_pass(step, split, n, bs, teacher, data, key, student):
        images, labels = data[split]

        def pool_step(state, p, mask):
            x = images[p]
            return step(state, x, (labels[p], teacher_logits(ctx, teacher, x)), mask)

        return run_pool(pool_step, student, jax.random.permutation(key, n).astype(jnp.int32), n, bs)

    def init(key, start_variables, data):
        return ScrubState(create_state(start_variables, tx), jnp.zeros((), jnp.int32))

    def epoch(state: ScrubState, key, data, start):
        k_max, k_min = jax.random.split(key)
        e = state.epoch + 1
        rate = jnp.asarray(lr_decay_rate, jnp.float32) ** jnp.sum(e > decay_at).astype(jnp.float32)
        opt = state.student.opt_state
        lr_e = (lr * rate).astype(opt.hyperparams["learning_rate"].dtype)
        hyper = {**opt.hyperparams, "learning_rate": lr_e}
        student = state.student._replace(opt_state=opt._replace(hyperparams=hyper))

        def maximise(student):
            student, neg_kl = split_pass(max_step, "forget", n_f, forget_batch_size, start, data, k_max, student)
            return student, -neg_kl

        student, forget_kl = jax.lax.cond(e <= msteps, maximise, lambda s: (s, jnp.float32(jnp.nan)), student)
        student, loss = split_pass(min_step, "retain", n_r, batch_size, start, data, k_min, student)
        return ScrubState(student, e), {"loss": loss, "forget_kl": forget_kl}

    return Method(init, epoch, lambda s: variables_of(s.student), epochs)
