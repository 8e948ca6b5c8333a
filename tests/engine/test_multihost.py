"""A real multi-process job: two JAX processes joined by ``init_distributed`` over loopback.

Two processes with two CPU devices each (``jax.distributed`` coordination service on 127.0.0.1, gloo CPU
collectives) run one population into one shared run folder — lanes sharded over all four devices of both
processes — and give exactly the models and metrics of one process with four devices. Run again with the
same command, they resume: process 0's resume plan is broadcast, no chunk is recomputed. This is JAX's
own multi-controller runtime, as on several GPU hosts; only the transport differs.
"""
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from jax_unlearn.jobs.folders import RunFolder

WORKER = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process CPU collectives
    from jax_unlearn.engine.hosts import init_distributed
    multi = init_distributed()  # first, before any computation
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from tiny import quick_init, synthetic_split
    from jax_unlearn.data.types import Normalization, UnlearningData
    from jax_unlearn.jobs.populations import run_population
    from jax_unlearn.models import ResNet

    rng = np.random.default_rng(0)
    data = UnlearningData(retain=synthetic_split(rng, 45), forget=synthetic_split(rng, 10),
                          validation=synthetic_split(rng, 12), test=synthetic_split(rng, 12), num_classes=4,
                          normalization=Normalization(scale=1 / 255, mean=(0.5,) * 3, std=(0.25,) * 3),
                          description={"source": "synthetic"})
    model = ResNet(stage_sizes=(1, 1), num_classes=4, width=4)
    start = quick_init(model, jax.random.key(42))  # compiled: op by op is several times slower (tiny.py)
    run_population(sys.argv[2], "finetune", data, start_variables=start, n_seeds=6, chunk_size=4,
                   hyper={"epochs": 1, "batch_size": 16}, model=model, progress=False)
    print("worker", jax.process_index(), jax.process_count(), len(jax.devices()), multi, flush=True)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path: Path, out: Path, n_processes: int, devices_each: int) -> list[str]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices_each}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    if n_processes > 1:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}", JAX_NUM_PROCESSES=str(n_processes))
    engine_tests = str(Path(__file__).parents[1])  # tests/: the shared tiny.py
    procs = [subprocess.Popen([sys.executable, str(script), engine_tests, str(out)], env={
        **env, **({"JAX_PROCESS_ID": str(i)} if n_processes > 1 else {})}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for i in range(n_processes)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=600)[0])
    finally:
        for p in procs:
            p.kill()
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]
    return outputs


def _models(folder: RunFolder):
    return {seed: jax.tree_util.tree_map(np.asarray, v) for seed, v in folder.iter_models()}


def test_two_processes_give_the_models_of_one_and_resume(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    _launch(tmp_path, single, 1, 4)
    outputs = _launch(tmp_path, multi, 2, 2)
    assert sorted(line for o in outputs for line in o.splitlines() if line.startswith("worker")) == [
        "worker 0 2 4 True", "worker 1 2 4 True"]  # one job: 2 processes, 4 devices in all

    a, b = _models(RunFolder(single)), _models(RunFolder(multi))
    assert sorted(a) == sorted(b) == list(range(6))
    for seed in a:
        jax.tree_util.tree_map(np.testing.assert_array_equal, a[seed], b[seed])
    pd.testing.assert_frame_equal(pd.read_csv(single / "metrics.csv"), pd.read_csv(multi / "metrics.csv"))
    assert not [p.name for p in multi.iterdir() if p.name.endswith(".tmp")]

    stamps = {c: c.stat().st_mtime_ns for c in (multi / "chunks").iterdir()}
    _launch(tmp_path, multi, 2, 2)  # the same command again: both processes skip every finished chunk
    assert {c: c.stat().st_mtime_ns for c in (multi / "chunks").iterdir()} == stamps
