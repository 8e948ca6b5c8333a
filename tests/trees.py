"""Pytree comparisons shared by the engine and method tests (imported as a plain module, not a test)."""
import jax
import numpy as np


def lane(tree, i):
    """Lane ``i`` of a stacked pytree (leading lane axis), as NumPy arrays."""
    return jax.tree_util.tree_map(lambda a: np.asarray(a[i]), tree)


def max_rel(a, b) -> float:
    """The largest per-leaf ``max|a - b| / max|b|`` (float64) over two pytrees of the same structure."""
    errs = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - y)) / max(np.max(np.abs(y)), 1e-12)), a, b))
    return max(errs)
