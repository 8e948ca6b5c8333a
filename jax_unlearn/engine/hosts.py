"""Multi-process jobs: joining one (``init_distributed``), which process writes files (``is_primary``),
barriers (``sync_processes``) and answers every process must agree on (``primary_answer``).

Every process of a multi-process job runs the same command; :func:`jax_unlearn.engine.run.run_seeds` shards
lanes over all hosts' devices (JAX's own multi-controller runtime, no scheduler of ours).
"""
from __future__ import annotations

import os
from typing import Callable, Mapping

import jax
import numpy as np


def init_distributed(env: Mapping[str, str] | None = None) -> bool:
    """Join a multi-host job: ``jax.distributed.initialize()`` when the environment asks for it.

    Call it first thing in every process (before any JAX computation). It initialises when
    ``JAX_COORDINATOR_ADDRESS`` is set (with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, or the values
    JAX detects from SLURM / Open MPI / Kubernetes / Cloud TPU), or when ``JAX_UNLEARN_DISTRIBUTED=1``
    (everything auto-detected). Otherwise it does nothing. Returns whether this process is part of a
    multi-process job. After it, ``jax.devices()`` lists all hosts' devices and :func:`run_seeds` shards
    lanes over all of them; every process runs the same program (same seeds, same chunks).

    Tested with two processes on one machine (tests/engine/test_multihost.py: coordination service on
    loopback, gloo CPU collectives — the models equal a one-process run bit for bit); not on real GPU hosts.
    """
    env = os.environ if env is None else env
    if getattr(jax.distributed, "is_initialized", lambda: False)():
        return jax.process_count() > 1
    if not env.get("JAX_COORDINATOR_ADDRESS") and env.get("JAX_UNLEARN_DISTRIBUTED") != "1":
        return False
    kwargs = {}
    if env.get("JAX_NUM_PROCESSES"):
        kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
    if env.get("JAX_PROCESS_ID"):
        kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
    jax.distributed.initialize(env.get("JAX_COORDINATOR_ADDRESS") or None, **kwargs)
    return jax.process_count() > 1


def is_primary() -> bool:
    """Whether this process writes a job's files (process 0; always true in a single-process job)."""
    return jax.process_index() == 0


def sync_processes(name: str) -> None:
    """A barrier across the processes of a multi-process job (a no-op in a single-process one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def primary_answer(fn: Callable[..., bool]) -> Callable[..., bool]:
    """``fn`` evaluated on process 0 and broadcast to all processes, so that every process takes the same
    decision (e.g. which chunks a resumed job still has to run) even when their file systems differ."""
    if jax.process_count() == 1:
        return fn
    from jax.experimental import multihost_utils

    def agreed(*args):
        mine = np.int32(bool(fn(*args))) if is_primary() else np.int32(0)
        return bool(multihost_utils.broadcast_one_to_all(mine))

    return agreed
