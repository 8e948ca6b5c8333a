"""The engine's ``jit``: XLA compiler options from one table, the same results as ``jax.jit``, tracing under
``frozen_heap``."""
import gc
import os
import subprocess
import sys
import threading
from pathlib import Path

import jax
import numpy as np
import pytest

from jax_unlearn.engine import jitting


def test_options_come_from_the_table_for_the_platform_only():
    assert jitting.compiler_options("cpu") == jitting.COMPILER_OPTIONS["cpu"]
    assert jitting.compiler_options("not-a-platform") is None
    options = jitting.compiler_options("cpu")
    options["changed"] = True  # a copy: the table stays as it is
    assert "changed" not in jitting.COMPILER_OPTIONS["cpu"]


def test_the_table_reaches_xla(monkeypatch):
    monkeypatch.setitem(jitting.COMPILER_OPTIONS, jax.default_backend(), {"not_an_xla_option": 1})
    with pytest.raises(Exception, match="not_an_xla_option"):
        jitting.jit(lambda x: x + 1)(np.float32(1))


# One finetune run of the test ResNet, compiled by the engine's jit and by jax.jit: the largest relative
# difference of its weights. Run in a fresh process with XLA's default emitters, not the loop emitters this
# test session uses (tests/conftest.py), which vectorise some float32 reductions differently at -O1 (~1e-6).
_SAME_RUN = """
import jax, numpy as np
from jax_unlearn.engine import jitting
from jax_unlearn.engine.lanes import seed_keys
from jax_unlearn.engine.run import RunConfig, context_for, device_data, make_run
from jax_unlearn.methods import build_method
from tiny import TINY_MODEL, quick_init, tiny_data
from trees import max_rel
data = tiny_data()
ctx = context_for(data, TINY_MODEL)
run = make_run(ctx, build_method("finetune", ctx, epochs=1, batch_size=16), RunConfig(track=False))
args = (seed_keys(0, np.arange(1))[0], quick_init(TINY_MODEL, jax.random.key(0)), device_data(data))
print(max_rel(jax.device_get(jitting.jit(run)(*args)), jax.device_get(jax.jit(run)(*args))))
"""


def test_a_run_equals_the_one_jax_jit_compiles_bit_for_bit():
    tests = Path(__file__).resolve().parents[1]
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "use_fusion_emitters" not in f)
    env = {**os.environ, "XLA_FLAGS": flags, "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)])}
    out = subprocess.run([sys.executable, "-c", _SAME_RUN], env=env, capture_output=True, text=True, check=True)
    assert float(out.stdout.split()[-1]) == 0.0


@pytest.fixture
def collecting():
    """Cyclic collection on and nothing frozen (the state frozen_heap acts in), restored afterwards."""
    was_enabled = gc.isenabled()
    gc.enable()
    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()
    if not was_enabled:
        gc.disable()


def test_tracing_runs_with_the_heap_frozen_and_thawed_after(collecting):
    frozen_while_tracing = []

    def fn(x):
        frozen_while_tracing.append(gc.get_freeze_count())
        return x + 1

    jitted = jitting.jit(fn)
    assert jitted(np.float32(1)) == 2.0
    jitted.lower(np.zeros(2, np.float32)).compile()  # new shapes: each call below traces afresh
    jitted.trace(np.int32(1))
    assert len(frozen_while_tracing) == 3 and min(frozen_while_tracing) > 0
    assert gc.get_freeze_count() == 0
    assert jitted.__name__ == "fn" and jitted.eval_shape(np.float32(1)).dtype == np.float32  # jax.jit's own


def test_frozen_heap_nests_and_the_last_block_to_leave_thaws(collecting):
    with jitting.frozen_heap():
        assert gc.get_freeze_count() > 0
        with jitting.frozen_heap():
            pass
        assert gc.get_freeze_count() > 0  # the inner block does not thaw the outer one's objects
    assert gc.get_freeze_count() == 0


def test_frozen_heap_across_threads(collecting):
    entered, release = threading.Event(), threading.Event()

    def other():
        with jitting.frozen_heap():
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    with jitting.frozen_heap():
        thread.start()
        assert entered.wait(10)
    assert gc.get_freeze_count() > 0  # the other thread's block is still open
    release.set()
    thread.join(10)
    assert gc.get_freeze_count() == 0


def test_frozen_heap_leaves_a_callers_own_freeze_and_a_disabled_collector_alone(collecting):
    gc.freeze()
    assert gc.get_freeze_count() > 0
    with jitting.frozen_heap():
        pass
    assert gc.get_freeze_count() > 0  # not thawed by the block (frozen objects may have been freed since)
    gc.unfreeze()
    gc.disable()
    with jitting.frozen_heap():
        assert gc.get_freeze_count() == 0
    assert not gc.isenabled()
