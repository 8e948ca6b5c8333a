"""Evaluation metrics: the official NeurIPS 2023 competition score and membership-inference attacks."""
from jax_unlearn.metrics.competition import (
    final_score,
    forgetting_quality,
    logit_scaled_confidence,
    per_example_epsilon,
    score_from_epsilons,
    small_n_note,
)
from jax_unlearn.metrics.mia import (
    cross_entropy_per_example,
    kit_mia,
    svc_mia_efficacy,
    true_class_confidence,
)

__all__ = [
    "cross_entropy_per_example",
    "final_score",
    "forgetting_quality",
    "kit_mia",
    "logit_scaled_confidence",
    "per_example_epsilon",
    "score_from_epsilons",
    "small_n_note",
    "svc_mia_efficacy",
    "true_class_confidence",
]
