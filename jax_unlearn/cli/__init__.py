"""The ``jax-unlearn`` command line: ``main`` (dispatch, exit codes), ``commands`` (one ``(add_arguments,
run)`` pair per sub-command), ``args`` (flag parsing and checks), ``leaderboard`` (its sub-command)."""
from jax_unlearn.cli.main import main  # noqa: F401  (the console script's entry point)
