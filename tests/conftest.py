# tests/convert (not tests/converters): a tests/converters folder on sys.path would shadow the package.
import os
import shutil
import sys
import tempfile

import pytest

# Tests import shared helpers (tests/torch_reference.py) as plain modules.
sys.path.insert(0, os.path.dirname(__file__))

# One persistent XLA compilation cache for the whole test session, fresh each session (so a timing of the
# suite never depends on an earlier run), shared with the subprocesses the CLI and multi-host tests start
# (they inherit the environment). Many tests build the same small program through different Python
# closures; without the cache each one recompiles it (tens of seconds each on a CPU).
# Under pytest-xdist the controller makes the folder and its workers (which inherit the environment) share
# it; only the process that made it removes it.
_SHARED = "JAX_UNLEARN_TEST_XLA_CACHE"
_OWNER = _SHARED not in os.environ
if _OWNER:
    os.environ[_SHARED] = tempfile.mkdtemp(prefix="jax-unlearn-test-xla-cache-")
_CACHE = os.environ[_SHARED]
if "PYTEST_XDIST_WORKER" in os.environ:  # several test processes on one GPU: none may take 75% of its memory
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # One OpenMP thread for torch per worker: with a worker per core, torch's spinning OpenMP threads and the
    # other worker's XLA threads oversubscribe the cores (a torch-heavy test ran 2-3x slower beside another).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# XLA:CPU's loop emitters instead of its MLIR fusion emitters, for every program of the session (and the
# subprocesses, which inherit the environment): compilation is most of the suite's time, and these emitters
# compile the tiny-model programs most tests build in about half the time (the method tests' four largest:
# 8.3 s against 16.5 s). Both emit the same computation; float64 results may differ in the last bits where
# a reduction is vectorised differently, which tests/methods/test_distill.py's tolerance states. Read once,
# when JAX starts its CPU backend, so it must be in the environment before any test touches a device.
_FLAG = "--xla_cpu_use_fusion_emitters=false"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
if "jax" in sys.modules:  # imported before this file (a plugin): configure it directly
    sys.modules["jax"].config.update("jax_compilation_cache_dir", _CACHE)
    sys.modules["jax"].config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_sessionfinish(session, exitstatus):
    if _OWNER:
        shutil.rmtree(_CACHE, ignore_errors=True)


def _has_gpu() -> bool:
    try:
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    except Exception:
        return False


# The slowest files first (measured with --durations): under `make test` (-n 2 --dist loadfile) each worker
# takes whole files in collection order, so a long file collected last keeps one worker busy after the other
# has run out of work. Files not listed keep their order after these.
_SLOWEST_FIRST = ("tests/leaderboard/test_study.py", "tests/test_benchmarks.py", "tests/methods/test_contract.py",
                  "tests/engine/test_run.py", "tests/engine/test_torch_parity.py", "tests/models/test_conv.py",
                  "tests/dropin/test_notebooks.py", "tests/methods/test_distill.py", "tests/dropin/test_dropin.py",
                  "tests/methods/test_deepunlearn_baselines.py")


def _file_rank(item) -> int:
    path = item.nodeid.split("::")[0]
    return _SLOWEST_FIRST.index(path) if path in _SLOWEST_FIRST else len(_SLOWEST_FIRST)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_file_rank)  # stable: the order within a file, and of the other files, is kept
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a GPU (none visible to JAX)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_data():
    """The shared tiny synthetic data set (:func:`tiny.tiny_data`)."""
    from tiny import tiny_data as make

    return make()


@pytest.fixture(scope="session")
def tiny_model():
    """A small ResNet (stages (1, 1), width 4, 4 classes) that compiles in seconds."""
    from tiny import TINY_MODEL

    return TINY_MODEL
