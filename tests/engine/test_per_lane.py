"""Per-lane hyper-parameters: a sweep is lanes of one vmapped program; lanes equal plain runs; epoch masks;
grouping lanes into settings and scoring them against a retrained population."""
import jax
import numpy as np
import pandas as pd
import pytest

from jax_unlearn.engine.lanes import seed_keys
from jax_unlearn.engine.run import RunConfig, context_for, device_data, make_run, run_seeds
from jax_unlearn.methods import build_method
from jax_unlearn.metrics.competition import final_score, forgetting_quality
from jax_unlearn.evaluation.sweep import best_setting
from jax_unlearn.jobs.sweep import expand_grid, plan_sweep, repeat_settings, split_hyper
from trees import lane, max_rel  # tests/ is on sys.path (tests/conftest.py)

BASE = {"batch_size": 32, "lr": 0.05}
# XLA's CPU compile time dominates; unoptimised code is fine for a tiny model. run_seeds compiles with the
# defaults, so sweep lanes are compared with 1e-5; the 1e-6 comparisons are compiled alike on both sides.
from tiny import FAST_COMPILE as FAST, quick_init  # tests/ is on sys.path
NO_TRACK = RunConfig(track=False)


@pytest.fixture(scope="module")
def setup(tiny_data, tiny_model):
    ctx = context_for(tiny_data, tiny_model)
    return ctx, quick_init(tiny_model, jax.random.key(42)), device_data(tiny_data)


def _vmapped(run, keys, start, data, hyper=None):
    if hyper is None:
        return jax.jit(jax.vmap(run, in_axes=(0, None, None)), compiler_options=FAST)(keys, start, data)
    return jax.jit(jax.vmap(run, in_axes=(0, None, None, 0)), compiler_options=FAST)(keys, start, data, hyper)




def _plain(setup, keys, **hyper):
    ctx, start, data = setup
    return _vmapped(make_run(ctx, build_method("finetune", ctx, **hyper), NO_TRACK), keys, start, data)


@pytest.fixture(scope="module")
def one_epoch(setup):
    """Plain 1-epoch finetune (lr 0.05), seeds 0 and 1, vmapped."""
    return _plain(setup, seed_keys(0, [0, 1]), epochs=1, **BASE)


@pytest.fixture(scope="module")
def masked(setup):
    """A built 2-epoch finetune with per-lane epochs [2, 1] (seeds 0, 1)."""
    ctx, start, data = setup
    run = make_run(ctx, build_method("finetune", ctx, epochs=2, **BASE), NO_TRACK)
    return _vmapped(run, seed_keys(0, [0, 1]), start, data, {"epochs": np.array([2, 1], np.int32)})


def test_lr_sweep_lanes_equal_single_setting_runs(setup, one_epoch):
    ctx, start, data = setup
    plan = plan_sweep("finetune", ctx, {"lr": [0.05, 0.1], "epochs": 1, "batch_size": 32}, 2)
    np.testing.assert_allclose(plan.lane_hyper["lr"], [0.05, 0.05, 0.1, 0.1])
    chunks = {}
    # chunk_size 3: the second chunk holds seed 3 and a padding lane (its hyper padded too).
    run_seeds(make_run(ctx, plan.build, NO_TRACK), plan.n_lanes, 0, start, data, chunk_size=3, progress=False,
              hyper=plan.lane_hyper, on_chunk=lambda c, ids, out: chunks.__setitem__(c, (ids, out)))
    lanes = {}
    for ids, (variables, metrics) in chunks.values():
        for j, i in enumerate(ids):
            lanes[int(i)] = lane(variables, j)
    assert sorted(lanes) == [0, 1, 2, 3]
    other = _plain(setup, seed_keys(0, [2, 3]), epochs=1, batch_size=32, lr=0.1)
    for i, (ref, j) in enumerate([(one_epoch[0], 0), (one_epoch[0], 1), (other[0], 0), (other[0], 1)]):
        assert max_rel(lanes[i], lane(ref, j)) <= 1e-5, i  # vmap width differs: float32 summation order
    assert not np.allclose(lanes[0]["params"]["fc"]["kernel"], lanes[1]["params"]["fc"]["kernel"])  # seeds differ


def test_lane_epochs_mask_the_later_epochs(one_epoch, masked):
    variables, metrics = masked
    assert max_rel(lane(variables, 1), lane(one_epoch[0], 1)) <= 1e-6  # epochs=1 in a max-2 program
    loss = np.asarray(metrics["loss"])
    assert np.isfinite(loss[0]).all() and np.isfinite(loss[1, 0]) and np.isnan(loss[1, 1])
    np.testing.assert_allclose(loss[1, 0], one_epoch[1]["loss"][1, 0], rtol=1e-6)


def test_lane_schedule_follows_each_lanes_epochs(setup, masked):
    """Cosine T_max = the lane's epochs: epochs=2 in a max-3 program equals a plain 2-epoch run."""
    ctx, start, data = setup
    plan = plan_sweep("finetune", ctx, {"epochs": [2, 3], **BASE}, 1)
    variables, metrics = _vmapped(make_run(ctx, plan.build, NO_TRACK), seed_keys(0, [0, 1]), start, data,
                                  plan.lane_hyper)
    assert max_rel(lane(variables, 0), lane(masked[0], 0)) <= 1e-6  # masked lane 0: plain 2 epochs
    assert np.isnan(metrics["loss"][0, 2]) and np.isfinite(metrics["loss"][1]).all()


def test_per_lane_inputs_fail_clearly(setup):
    ctx, start, data = setup
    run = make_run(ctx, build_method("finetune", ctx, epochs=1, **BASE), NO_TRACK)
    with pytest.raises(ValueError, match="build"):
        run(jax.random.key(0), start, data, {"lr": 0.1})
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        run_seeds(run, 3, 0, start, data, chunk_size=2, on_chunk=lambda *a: None, hyper={"epochs": [1, 1]})
    with pytest.raises(ValueError, match="nothing to sweep"):
        plan_sweep("finetune", ctx, {"lr": 0.1}, 2)
    with pytest.raises(ValueError, match="numeric"):
        expand_grid(optimizer=["sgd", "adam"])


def test_expand_grid_and_repeat_settings():
    grid = expand_grid(lr=[0.1, 0.01], epochs=[1, 2, 3])
    np.testing.assert_allclose(grid["lr"], [0.1] * 3 + [0.01] * 3)
    np.testing.assert_array_equal(grid["epochs"], [1, 2, 3] * 2)
    assert grid["lr"].dtype == np.float32 and grid["epochs"].dtype == np.int32
    lanes = repeat_settings(grid, 2)
    np.testing.assert_array_equal(lanes["epochs"], [1, 1, 2, 2, 3, 3] * 2)
    assert split_hyper({"lr": [0.1, 0.2], "batch_size": 64, "wd": np.array([1.0, 2.0])}) == (
        {"batch_size": 64}, {"lr": [0.1, 0.2], "wd": [1.0, 2.0]})


def test_best_setting_scores_each_group_against_the_retrained_population():
    rng = np.random.default_rng(0)
    n, s = 6, 5
    retrained = rng.normal(0, 1, (n, s))
    close = rng.normal(0, 1, (n, s))  # same distribution as retraining
    far = rng.normal(8, 0.1, (n, s))  # every forget example easy to tell apart
    lanes = {"lr": np.repeat(np.float32([0.1, 0.01]), n)}
    u = np.concatenate([far, close])
    ra_u, ta_u = np.r_[np.full(n, 0.9), np.full(n, 0.8)], np.r_[np.full(n, 0.7), np.full(n, 0.6)]
    best, table = best_setting(lanes, u, retrained, ra_u, ta_u, np.full(n, 0.9), np.full(n, 0.7))
    expected = final_score(forgetting_quality(close, retrained), 0.8, 0.9, 0.6, 0.7)
    assert best["lr"] == pytest.approx(0.01) and best["score"] == pytest.approx(expected)
    assert isinstance(table, pd.DataFrame) and list(table["lr"]) == pytest.approx([0.01, 0.1])
    assert table.loc[1, "forgetting_quality"] == 0.0 and list(table["n_models"]) == [n, n]
