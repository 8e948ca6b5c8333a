"""The leaderboard's presets: how big a study is (N, tuning budget, data, model, bootstrap B).

A :class:`Preset` is the whole size of a ``jax-unlearn leaderboard`` study; the protocol it runs is
:mod:`jax_unlearn.leaderboard.study` (and docs/LEADERBOARD.md). ``ci`` is tiny (a 4-wide two-stage ResNet on a
few hundred Fashion-MNIST images, finetune only: about 5 CPU-minutes, mostly compiling its programs);
``cpu`` is sized for a 2-core CPU machine (every method, estimated from ``ci``'s measured costs); ``gpu``
is the competition's own scale (ResNet-18, full Fashion-MNIST, N = 512); ``gpu-short`` is the same protocol
on ResNet-18 with reduced data, N and methods, sized for one short device lease (``benchmarks/gpu_check.py
--only leaderboard``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

# The methods every preset scores unless --methods says otherwise: `all` is every registered method but
# the retrain recipe, which is the reference (its own row).
REFERENCE_METHOD = "retrain"


@dataclasses.dataclass(frozen=True)
class Preset:
    """The size of a leaderboard study.

    n: models per scored population (each method, the scoring set, the ``retrain`` row).
    n_tuning: retrained models in the tuning set (tuning scores use the first ``min(seeds, n_tuning)``).
    budget: tuning lane-epochs per method (lanes × the method's engine epochs, summed over rounds).
    rounds, eta, seeds0: successive halving — round 0 runs settings with ``seeds0`` seeds each; each later
      round keeps the best ``ceil(settings / eta)`` and gives them ``eta`` times the seeds.
    bootstrap: B, resamples of both populations' models for the 95% intervals.
    methods: the default method list (``None``: every registered method but ``retrain``).
    max_train, max_eval: the data slice (None: all), unless data flags say otherwise.
    original_epochs, recipe: the original model's epochs and the retrain recipe's overrides (``{}``: the
      official recipe, 30 epochs).
    arch: None (ResNet-18) or a smaller ResNet ``{'stage_sizes', 'width'}``.
    """

    name: str
    n: int
    n_tuning: int
    budget: int
    rounds: int
    bootstrap: int
    eta: int = 2
    seeds0: int = 2
    methods: tuple[str, ...] | None = None
    max_train: int | None = None
    max_eval: int | None = None
    original_epochs: int = 30
    recipe: dict[str, Any] = dataclasses.field(default_factory=dict)
    arch: dict[str, Any] | None = None
    chunk_size: int | None = None

    def __post_init__(self):
        if self.n < 2 or self.n_tuning < 2 or self.seeds0 < 2 or self.eta < 2 or self.rounds < 1:
            raise ValueError(f"preset {self.name}: n, n_tuning, seeds0 and eta must be >= 2, rounds >= 1")

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, Preset] = {
    "ci": Preset("ci", n=4, n_tuning=4, budget=96, rounds=2, bootstrap=50,
                 methods=("finetune",), max_train=400, max_eval=100,
                 original_epochs=6, recipe={"epochs": 6, "lr": 3e-3, "batch_size": 32},
                 arch={"stage_sizes": [1, 1], "width": 4}, chunk_size=8),
    "cpu": Preset("cpu", n=8, n_tuning=8, budget=80, rounds=2, bootstrap=100, max_train=1000, max_eval=250,
                  original_epochs=8, recipe={"epochs": 8, "lr": 3e-3, "batch_size": 32},
                  arch={"stage_sizes": [1, 1], "width": 4}, chunk_size=8),
    "gpu": Preset("gpu", n=512, n_tuning=128, budget=2048, rounds=3, bootstrap=200),
    # One 10-minute device command, estimated (no GPU has run it yet) from the measured orientation figures
    # of a naive 64-lane vmap, ~100k img/s: 3 × 32 retrains × 8 epochs × ~7k retain images ≈ 5.4M images
    # (~55 s), the original, two methods' tuning and scoring (~1M images), plus ~10 compiles of ResNet-18
    # programs. Resumable: a call cut short is continued by the same command.
    "gpu-short": Preset("gpu-short", n=32, n_tuning=32, budget=128, rounds=2, bootstrap=100,
                        methods=("finetune", "seif"), max_train=8000, max_eval=2000, original_epochs=8,
                        recipe={"epochs": 8}),
}


def get_preset(name: str) -> Preset:
    """The preset named ``name``; an unknown name fails listing the valid ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]
