"""Lanes shard over devices: a 4-device run gives the same models as a 1-device run.

The device count is fixed when JAX starts, and this pytest process already started it with one CPU device,
so the check runs in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` set before
JAX is imported. There, the same sweep (per-lane lr) runs over all four devices with chunks of 3 seeds —
each compiled as 4 lanes, one per device, the fourth a padding lane — and over one device with a single
chunk of 6 (run one seed a call, as on any single CPU device), and the models are compared in float64,
where both compute the same function (in float32 the per-device programs sum in another order than the
single-seed one: measured 1.1e-6 max relative error per tensor, the effect seen for vmapped vs single seed
in test_run.py). Multi-process runs (the same code after
``jax.distributed.initialize``) are tested in test_multihost.py with two processes over loopback.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax

from jax_unlearn.engine.hosts import init_distributed

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, sys.argv[1])
    from tiny import quick_init, synthetic_split
    import jax_unlearn.engine.run as engine
    from jax_unlearn.data.types import Normalization, UnlearningData
    from jax_unlearn.models import ResNet
    from jax_unlearn.jobs.sweep import plan_sweep

    rng = np.random.default_rng(0)
    data = UnlearningData(retain=synthetic_split(rng, 45), forget=synthetic_split(rng, 10),
                          validation=synthetic_split(rng, 12), test=synthetic_split(rng, 12), num_classes=4,
                          normalization=Normalization(scale=1 / 255, mean=(0.5,) * 3, std=(0.25,) * 3),
                          description={})
    model = ResNet(stage_sizes=(1, 1), num_classes=4, width=4, dtype=np.float64)
    start = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), quick_init(model, jax.random.key(42)))
    ctx = engine.context_for(data, model)
    plan = plan_sweep("finetune", ctx, {"lr": [0.05, 0.1], "epochs": 1, "batch_size": 32}, 3)
    run = engine.make_run(ctx, plan.build, engine.RunConfig(track=False))

    placed = []
    to_host = engine.to_host
    engine.to_host = lambda tree: (placed.append(len(jax.tree_util.tree_leaves(tree)[0].sharding.device_set)),
                                    to_host(tree))[1]

    def collect(devices, chunk_size):
        seeds = {}
        def save(c, ids, out):
            for j, i in enumerate(ids):
                seeds[int(i)] = jax.tree_util.tree_map(lambda a: a[j], out[0])
        engine.run_seeds(run, plan.n_lanes, 0, start, engine.device_data(data), chunk_size=chunk_size,
                         on_chunk=save, hyper=plan.lane_hyper, devices=devices, progress=False)
        return seeds

    four = collect(jax.devices(), 3)
    one = collect(jax.devices()[:1], 6)
    rel = max(float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))
              for i in one for a, b in zip(jax.tree_util.tree_leaves(four[i]), jax.tree_util.tree_leaves(one[i])))
    differ = not np.allclose(one[0]["params"]["fc"]["kernel"], one[3]["params"]["fc"]["kernel"])
    print(json.dumps({"devices": len(jax.devices()), "placed": placed, "seeds": sorted(four), "max_rel": rel,
                      "differ": differ}))
""")


def test_four_devices_give_the_same_models_as_one():
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(Path(__file__).parents[1])], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4
    # Two chunks over four devices, then the one-device run: one seed a call on a single CPU (lanes_per_call).
    assert result["placed"] == [4, 4] + [1] * 6
    assert result["seeds"] == list(range(6))
    assert result["differ"]
    assert result["max_rel"] <= 1e-6, result


def test_init_distributed_does_nothing_without_a_cluster(monkeypatch):
    called = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: called.append((a, k)))
    assert init_distributed({}) is False and not called
    init_distributed({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"})
    assert called == [(("10.0.0.1:1234",), {"num_processes": 2, "process_id": 1})]

