"""Loss helpers shared by every recipe and method (masked, so padded batch slots count for nothing)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _at_least_f32(x):
    """bf16 logits are upcast for the loss; float64 (tests) stays float64."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def cross_entropy(logits, labels, mask=None, class_weights=None):
    """torch ``F.cross_entropy(logits, labels, weight=class_weights)`` with mean reduction over unmasked rows.

    With weights torch divides by the summed weights of the batch's labels:
    ``sum_i m_i w_{y_i} l_i / sum_i m_i w_{y_i}``. logits (B, C), labels (B,), mask (B,) bool or None.
    """
    losses = optax.softmax_cross_entropy_with_integer_labels(_at_least_f32(logits), labels)
    weights = jnp.ones_like(losses) if class_weights is None else class_weights[labels]
    if mask is not None:
        weights = weights * mask
    return jnp.sum(weights * losses) / jnp.maximum(jnp.sum(weights), 1e-12)


def masked_mean(values, mask=None):
    """Mean of ``values`` (B,) over rows where ``mask`` is true (all rows when None)."""
    if mask is None:
        return jnp.mean(values)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1)


def kl_divergence(student_logits, teacher_logits, mask=None, temperature=1.0):
    """torch ``F.kl_div(log_softmax(s/T), softmax(t/T), reduction='batchmean')`` over unmasked rows (no T²)."""
    log_p = jax.nn.log_softmax(_at_least_f32(student_logits) / temperature)
    log_q = jax.nn.log_softmax(_at_least_f32(teacher_logits) / temperature)
    per_row = jnp.sum(jnp.exp(log_q) * (log_q - log_p), axis=-1)
    return masked_mean(per_row, mask)


def soft_cross_entropy(logits, target_probs, mask=None):
    """``mean_i sum_c -q_ic log_softmax(z_i)_c`` over unmasked rows (logits (B, C), target_probs (B, C))."""
    per_row = -jnp.sum(target_probs * jax.nn.log_softmax(_at_least_f32(logits)), axis=-1)
    return masked_mean(per_row, mask)


def entropy(logits):
    """Shannon entropy (nats) of ``softmax(logits)`` per row: (B, C) -> (B,)."""
    log_p = jax.nn.log_softmax(_at_least_f32(logits))
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
