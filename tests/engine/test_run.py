"""The engine: seed i vmapped == seed i alone, determinism, chunking, resume, snapshots, export."""
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import torch

from jax_unlearn.engine.lanes import seed_keys, vmap_lanes
from jax_unlearn.engine.run import RunConfig, context_for, device_data, make_run
from jax_unlearn.jobs.populations import run_population
from jax_unlearn.methods import build_method
from jax_unlearn.jobs.folders import RunFolderError, export_pth
from tiny import quick_init  # tests/ is on sys.path (tests/conftest.py)
from trees import max_rel

HYPER = {"epochs": 2, "batch_size": 16, "lr": 0.05}


@pytest.fixture(scope="module")
def start(tiny_model):
    return quick_init(tiny_model, jax.random.key(42))



# float32: vmapped convs are grouped convs, summed in another order (measured 1.3e-6 after 6 steps);
# float64 shows the lanes compute exactly the single-seed function.
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float64", 1e-12)])
def test_vmapped_seed_equals_single_run_and_is_deterministic(tiny_data, tiny_model, start, dtype, tol):
    with jax.enable_x64(dtype == "float64"):
        _check_vmap_equals_single(tiny_data, tiny_model.clone(dtype=np.dtype(dtype)), jax.tree_util.tree_map(
            lambda a: np.asarray(a, dtype) if np.issubdtype(a.dtype, np.floating) else a, start), tol)


def _check_vmap_equals_single(tiny_data, tiny_model, start, tol):
    ctx = context_for(tiny_data, tiny_model)
    run = make_run(ctx, build_method("finetune", ctx, **HYPER), RunConfig(track_max=None))
    data = device_data(tiny_data)
    keys = seed_keys(0, np.arange(3))
    many_vars, many_metrics = jax.jit(jax.vmap(run, in_axes=(0, None, None)))(keys, start, data)
    single = jax.jit(run)
    for i in range(3):
        one_vars, one_metrics = single(keys[i], start, data)
        lane = jax.tree_util.tree_map(lambda a: np.asarray(a[i]), many_vars)
        assert max_rel(one_vars, lane) <= tol
        np.testing.assert_allclose(one_metrics["loss"], many_metrics["loss"][i], rtol=tol)
    again, _ = single(keys[1], start, data)
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, single(keys[1], start, data)[0])
    a, b = (np.asarray(many_vars["params"]["fc"]["kernel"][i]) for i in (0, 1))
    assert not np.allclose(a, b)  # different seeds, different batch orders, different models
    assert set(many_metrics) == {"loss", "retain_acc", "forget_acc", "validation_acc", "finite"}
    assert many_metrics["loss"].shape == (3, 2)


def test_vmap_lanes_runs_one_lane_unbatched_and_more_as_vmap():
    seen = []

    def fn(key, x, hyper):
        seen.append(isinstance(hyper["scale"], jax.core.Tracer))
        return {"y": jax.random.normal(key, x.shape) * hyper["scale"] + x, "s": jnp.sum(x)}

    x = jnp.arange(6.0).reshape(2, 3)
    for lanes in (1, 3):
        keys = seed_keys(0, np.arange(lanes))
        hyper = {"scale": jnp.arange(1.0, lanes + 1.0)}
        seen.clear()
        out = vmap_lanes(fn, (0, None, 0))(keys, x, hyper)
        assert seen == [lanes > 1]  # one lane: fn itself on the lane's (unbatched) arrays, no vmap tracer
        want = jax.vmap(fn, in_axes=(0, None, 0))(keys, x, hyper)
        assert out["y"].shape == (lanes, 2, 3) and out["s"].shape == (lanes,)
        jax.tree_util.tree_map(np.testing.assert_array_equal, out, want)
    with pytest.raises(ValueError, match="must be 0 or None"):
        vmap_lanes(fn, (1, None, 0))


def test_population_chunks_resume_and_export(tmp_path, tiny_data, tiny_model, start):
    kw = dict(start_variables=start, n_seeds=3, hyper=HYPER, model=tiny_model, progress=False)
    # A seed's result does not depend on its chunk: checked in float64, where the only difference between
    # a 3-lane and a 2-lane program (grouped convs of another width, summed in another order) is rounding.
    with jax.enable_x64(True):
        kw64 = {**kw, "model": tiny_model.clone(dtype=np.float64), "start_variables": jax.tree_util.tree_map(
            lambda a: np.asarray(a, np.float64) if np.issubdtype(a.dtype, np.floating) else a, start)}
        whole = run_population(tmp_path / "whole", "finetune", tiny_data, chunk_size=3, **kw64)
        chunked64 = run_population(tmp_path / "chunked64", "finetune", tiny_data, chunk_size=2, **kw64)
        for (s1, v1), (s2, v2) in zip(whole.iter_models(), chunked64.iter_models()):
            assert s1 == s2
            assert max_rel(v2, v1) <= 1e-12
    chunked = run_population(tmp_path / "chunked", "finetune", tiny_data, chunk_size=2, **kw)

    # Kill after the first chunk, restart with the same command: identical outputs.
    import jax_unlearn.jobs.folders as runs

    calls = {"n": 0}
    real_save = runs.RunFolder.save_chunk

    def dying_save(self, c, ids, outputs):
        real_save(self, c, ids, outputs)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt("killed")

    runs.RunFolder.save_chunk = dying_save
    try:
        with pytest.raises(KeyboardInterrupt):
            run_population(tmp_path / "resumed", "finetune", tiny_data, chunk_size=2, **kw)
    finally:
        runs.RunFolder.save_chunk = real_save
    assert (tmp_path / "resumed/chunks/chunk_00000").is_dir()
    assert not (tmp_path / "resumed/chunks/chunk_00001").exists()
    resumed = run_population(tmp_path / "resumed", "finetune", tiny_data, chunk_size=2, **kw)
    for (_, v1), (_, v2) in zip(chunked.iter_models(), resumed.iter_models()):
        jax.tree_util.tree_map(np.testing.assert_array_equal, v1, v2)
    pd.testing.assert_frame_equal(pd.read_csv(chunked.path / "metrics.csv"),
                                  pd.read_csv(resumed.path / "metrics.csv"))
    with pytest.raises(RunFolderError, match="different run"):
        run_population(tmp_path / "resumed", "finetune", tiny_data, chunk_size=2, **{**kw, "n_seeds": 4})

    metrics = pd.read_csv(whole.path / "metrics.csv")
    assert list(metrics.columns[:2]) == ["seed", "epoch"] and len(metrics) == 3 * 2


def test_export_writes_n_pth_files_and_a_zip_of_exactly_n(tmp_path, tiny_data):
    from jax_unlearn.models import make_model

    model = make_model(tiny_data.num_classes)  # export needs the real ResNet-18 layout
    start = quick_init(model, jax.random.key(0))
    folder = run_population(tmp_path / "run", "finetune", tiny_data, start_variables=start, n_seeds=2,
                            hyper={"epochs": 1, "batch_size": 32}, model=model, chunk_size=2, progress=False,
                            run_config=RunConfig(track=False, snapshot_every=1))
    paths = export_pth(folder, tmp_path / "sub")
    assert [p.name for p in paths] == ["unlearned_checkpoint_0.pth", "unlearned_checkpoint_1.pth"]
    with zipfile.ZipFile(tmp_path / "sub/submission.zip") as zf:
        assert sorted(zf.namelist()) == ["unlearned_checkpoint_0.pth", "unlearned_checkpoint_1.pth"]
    import torchvision

    net = torchvision.models.resnet18(num_classes=4)
    net.load_state_dict(torch.load(paths[1], weights_only=True), strict=True)
    with pytest.raises(RunFolderError, match="refusing to export 3"):
        export_pth(folder, tmp_path / "bad", n=3)
    staged = export_pth(folder, tmp_path / "stage0", stage=0, zip_name=None)
    assert len(staged) == 2  # 1 epoch, snapshot every epoch: stage 0 is the final model
    a = torch.load(staged[0], weights_only=True)
    b = torch.load(paths[0], weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_list_valued_hyper_runs_a_sweep_in_one_population(tmp_path, tiny_data, tiny_model, start):
    folder = run_population(tmp_path / "sweep", "finetune", tiny_data, start_variables=start, n_seeds=2,
                            hyper={"epochs": 1, "batch_size": 16, "lr": [0.01, 0.2]}, model=tiny_model,
                            progress=False, chunk_size=4, run_config=RunConfig(track=False))
    cfg = folder.config
    assert cfg["n_seeds"] == 4 and cfg["sweep"]["seeds_per_setting"] == 2
    assert sorted(cfg["sweep"]["lane_hyper"]["lr"]) == pytest.approx([0.01, 0.01, 0.2, 0.2])
    models = [v for _, v in folder.iter_models()]
    assert len(models) == 4
    lr = cfg["sweep"]["lane_hyper"]["lr"]
    small, big = int(np.argmin(lr)), int(np.argmax(lr))
    move = [float(np.abs(np.asarray(models[i]["params"]["fc"]["kernel"]) - start["params"]["fc"]["kernel"]).max())
            for i in (small, big)]
    assert move[1] > 2 * move[0]  # the lane with 20x the learning rate moved further


def test_512_seeds_run_on_cpu_in_chunks(tmp_path, tiny_data, tiny_model, start):
    """The competition's N = 512 population on CPU (small data): 4 chunks of 128 lanes, one compilation. The
    GEMM lowering: under vmap XLA's convolutions become grouped ones, which XLA:CPU runs as naive loops."""
    folder = run_population(tmp_path / "n512", "finetune", tiny_data, start_variables=start, n_seeds=512,
                            chunk_size=128, hyper={"epochs": 1, "batch_size": 16},
                            model=tiny_model.clone(conv_impl="gemm"),
                            run_config=RunConfig(track=False), progress=False)
    assert folder.chunks() == [0, 1, 2, 3]
    kernels = {seed: np.asarray(v["params"]["fc"]["kernel"]) for seed, v in folder.iter_models()}
    assert sorted(kernels) == list(range(512))
    assert len({k.tobytes() for k in kernels.values()}) == 512  # every seed its own order, its own model
    assert len(pd.read_csv(folder.path / "metrics.csv")) == 512


class _FakeGpu:
    platform = "gpu"

    def __init__(self, limit, in_use):
        self._stats = {"bytes_limit": limit, "bytes_in_use": in_use}

    def memory_stats(self):
        return self._stats


@pytest.mark.parametrize("limit_gib,in_use_gib,n_devices,n_seeds,want", [
    (80, 0, 1, 512, 68),   # half of 80 GiB free / 600 MiB a lane
    (80, 40, 1, 512, 34),  # what is already allocated is not free
    (80, 0, 4, 512, 272),  # per device, times the devices
    (80, 0, 1, 16, 16),    # never more than the seeds
    (1, 0, 1, 512, 1),     # at least one lane
])
def test_default_chunk_size_from_free_device_memory(monkeypatch, limit_gib, in_use_gib, n_devices, n_seeds, want):
    import jax_unlearn.engine.lanes as engine

    devices = [_FakeGpu(limit_gib * 2**30, in_use_gib * 2**30) for _ in range(n_devices)]
    monkeypatch.setattr(engine.jax, "devices", lambda: devices)
    assert engine.default_chunk_size(n_seeds) == want


def test_default_chunk_size_on_cpu_is_eight():
    from jax_unlearn.engine.lanes import default_chunk_size

    assert default_chunk_size(512) == 8 and default_chunk_size(3) == 3


@pytest.mark.parametrize("loss, extra, finite", [(1.0, float("nan"), True), (float("nan"), 1.0, False),
                                                 (1.0, 1.0, True)])
def test_finite_flag_checks_weights_and_the_loss_not_informational_metrics(tiny_data, tiny_model, loss, extra,
                                                                          finite):
    """A metric a method leaves nan by design (SCRUB's forget_kl without a max pass) is not a divergence."""
    from jax_unlearn.methods import Method

    method = Method(init=lambda key, start, data: start,
                    epoch=lambda s, key, data, *start: (s, {"loss": jnp.float32(loss), "note": jnp.float32(extra)}),
                    variables=lambda s: s, num_epochs=2)
    start = {"params": {"w": jnp.ones(3)}, "batch_stats": {}}
    run = make_run(context_for(tiny_data, tiny_model), method, RunConfig(track=False))
    _, metrics = jax.jit(run)(jax.random.key(0), start, device_data(tiny_data))
    assert np.asarray(metrics["finite"]).tolist() == [finite, finite]


@pytest.mark.parametrize("bad, finite", [(float("inf"), False), (float("-inf"), False), (float("nan"), False),
                                         (3e38, True), (-3e38, True)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_finite_flag_catches_one_non_finite_weight_in_any_leaf(tiny_data, tiny_model, bad, finite, dtype):
    """One element of one leaf decides; the largest finite weights (whose sum would overflow) are finite."""
    from jax_unlearn.methods import Method

    method = Method(init=lambda key, start, data: start, epoch=lambda s, key, data, *start: (s, {"loss": jnp.float32(0)}),
                    variables=lambda s: s, num_epochs=1)
    w = jnp.full((3, 4), 2e38, jnp.float32).at[1, 2].set(bad).astype(dtype)
    start = {"params": {"a": jnp.ones(5), "w": w}, "batch_stats": {"n": jnp.zeros(2, jnp.int32)}}
    run = make_run(context_for(tiny_data, tiny_model), method, RunConfig(track=False))
    _, metrics = jax.jit(run)(jax.random.key(0), start, device_data(tiny_data))
    assert np.asarray(metrics["finite"]).tolist() == [finite]
