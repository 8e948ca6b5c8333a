"""Every registered method's declared search space, in one table (what ``jax-unlearn leaderboard`` tunes).

Each entry names the hyper-parameters that matter most for the method — the learning rate(s) first,
log-scale, about a decade either side of the registered default — plus, where the method's factory takes
``epochs`` as a traced per-lane value, the epoch options. Structural hyper-parameters (batch sizes,
optimiser, layer counts) are not tuned: they shape the compiled program, and one program runs a whole
round of settings as lanes. Hyper-parameters not named keep their registered defaults
(``jax-unlearn methods``). :func:`jax_unlearn.methods.registry.search_space` checks every name against the
method's defaults; ``tests/methods/test_spaces.py`` checks every method has an entry that traces per lane.
"""
from __future__ import annotations

from jax_unlearn.methods.registry import Range, SearchSpace

LR = Range  # readability: Range(low, high, log=True) is how every learning rate is declared

SPACES: dict[str, SearchSpace] = {
    "amnesiacs": SearchSpace({"kd_lr": LR(1e-4, 1e-2, True), "retain_lr": LR(1e-4, 1e-2, True),
                              "temperature": Range(1.0, 10.0)}),
    "bad-teacher": SearchSpace({"lr": LR(1e-5, 1e-3, True), "temperature": Range(0.5, 4.0)}, (1, 2, 3)),
    "cf-k": SearchSpace({"lr": LR(1e-3, 1e-1, True), "l2_to_start": Range(1e-3, 1.0, True)}, (2, 5, 10)),
    "eu-k": SearchSpace({"lr": LR(1e-3, 1e-1, True), "l2_to_start": Range(1e-3, 1.0, True)}, (2, 5, 10)),
    "fanchuan": SearchSpace({"kl_lr": LR(5e-4, 5e-2, True), "forget_lr": LR(3e-5, 3e-3, True),
                             "retain_lr": LR(1e-4, 1e-2, True)}),
    "finetune": SearchSpace({"lr": LR(1e-4, 1e-1, True)}, (1, 2, 3, 5)),
    "finetune-kit": SearchSpace({"lr": LR(1e-3, 0.3, True)}, (1, 3, 5)),
    "fisher": SearchSpace({"alpha": Range(1e-2, 1.0, True)}),
    "gradient-ascent": SearchSpace({"lr": LR(1e-5, 1e-2, True)}),
    "influence": SearchSpace({"alpha": Range(1e-2, 1.0, True)}),
    # kookmin's init_rate and sebastian's prune_amount size a slice (a count of weights): static, not tuned.
    "kookmin": SearchSpace({"lr": LR(1e-4, 1e-2, True), "kept_grad_scale": Range(1e-2, 1.0, True)}),
    "l1-sparse": SearchSpace({"lr": LR(1e-3, 1e-1, True), "alpha": Range(1e-5, 1e-3, True)}, (2, 5, 10)),
    "neggrad+": SearchSpace({"lr": LR(1e-3, 1e-1, True), "alpha": Range(0.5, 0.999)}),
    "noise-student-curriculum": SearchSpace({"distill_lr": LR(1e-5, 1e-3, True), "impair_lr": LR(2e-3, 0.2, True),
                                             "repair_lr": LR(1e-3, 0.1, True)}),
    "random-label": SearchSpace({"lr": LR(1e-3, 1e-1, True)}),
    "retrain": SearchSpace({"lr": LR(1e-5, 1e-3, True)}),  # the reference recipe: declared, never tuned there
    "salun": SearchSpace({"lr": LR(1e-3, 0.1, True), "fraction": Range(0.1, 0.9)}),
    "scrub": SearchSpace({"lr": LR(5e-5, 5e-3, True), "alpha": Range(1e-4, 0.1, True),
                          "gamma": Range(0.5, 0.999)}, (1, 2, 3)),
    "sebastian": SearchSpace({"lr": LR(5e-5, 5e-3, True)}),
    "seif": SearchSpace({"lr": LR(1e-4, 1e-2, True), "start_std": Range(0.1, 1.0)}),
    "ssd": SearchSpace({"alpha": Range(1.0, 100.0, True), "lam": Range(0.1, 10.0, True)}),
    "sun": SearchSpace({"lr": LR(2e-5, 2e-3, True), "noise_std": Range(1e-2, 0.1, True)}),
    "toshi-conv-transpose": SearchSpace({"lr": LR(1e-4, 1e-2, True)}),
    "unsir": SearchSpace({"impair_lr": LR(2e-3, 0.2, True), "repair_lr": LR(1e-3, 0.1, True)}),
}
