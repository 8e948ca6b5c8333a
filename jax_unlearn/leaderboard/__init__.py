"""``jax-unlearn leaderboard``: ``study`` (the protocol: tune, score, bootstrap), ``presets`` (study sizes),
``stats`` (bootstrap intervals, compile clock), ``report`` (LEADERBOARD.md, CSV, plots)."""
from jax_unlearn.leaderboard.study import leaderboard  # noqa: F401  (the Python entry point)
