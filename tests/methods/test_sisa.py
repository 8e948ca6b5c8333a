"""SISA: the partition, shard training = the engine's supervised recipe on the shard, exact unlearning that
retrains only affected shards and never reads forgotten data, mean-softmax aggregation; vmap over seeds;
the job (run folder, only the affected shards computed, resume)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from tiny import synthetic_split  # tests/ is on sys.path (tests/conftest.py)
from jax_unlearn.data.types import Normalization, UnlearningData
from jax_unlearn.engine.lanes import seed_keys
from jax_unlearn.engine.run import RunConfig, context_for, device_data, make_run
from jax_unlearn.engine.losses import cross_entropy
from jax_unlearn.engine.optim import torch_sgd
from jax_unlearn.engine.train import Context, create_state, predict, supervised_step, variables_of
from jax_unlearn.methods.finetune import supervised
from jax_unlearn.methods.sisa import DEFAULTS, Shards, aggregate_log_probs, aggregate_probs, make_sisa_run, sisa
from jax_unlearn.models import ResNet, init_variables
from jax_unlearn.jobs.folders import RunFolder, RunFolderError
from jax_unlearn.jobs.sisa import run_sisa
from trees import lane, max_rel  # tests/ is on sys.path (tests/conftest.py)

# XLA's CPU compile time dominates; unoptimised code is fine for a tiny model (both sides of every
# comparison are compiled the same way).
from tiny import FAST_COMPILE as FAST  # tests/ is on sys.path
HYPER = dict(num_shards=5, epochs=2, batch_size=8, lr=0.05, momentum=0.9)
N_RETAIN, N_TRAIN = 45, 55  # tiny_data: 45 retain + 10 forget


@pytest.fixture(scope="module")
def setup():
    """tests/engine's tiny data (4 classes, 45 retain / 10 forget) and tiny ResNet."""
    rng = np.random.default_rng(0)
    tiny_data = UnlearningData(
        retain=synthetic_split(rng, 45), forget=synthetic_split(rng, 10), validation=synthetic_split(rng, 12),
        test=synthetic_split(rng, 12), num_classes=4,
        normalization=Normalization(scale=1 / 255, mean=(0.5,) * 3, std=(0.25,) * 3), description={})
    ctx = context_for(tiny_data, ResNet(stage_sizes=(1, 1), num_classes=4, width=4))
    assert (ctx.size("retain"), ctx.size("train")) == (N_RETAIN, N_TRAIN)
    return ctx, device_data(tiny_data)


@pytest.fixture(scope="module")
def runs(setup):
    """Two seeds of a whole SISA run (partition, train, unlearn), vmapped, and ``single``: the same run
    for one seed, jitted alone, taking its shards as an argument."""
    ctx, data = setup
    run = make_sisa_run(ctx, **HYPER)
    return (seed_keys(0, [0, 1]), jax.jit(jax.vmap(run, in_axes=(0, None)), compiler_options=FAST),
            jax.jit(run, compiler_options=FAST))


@pytest.fixture(scope="module")
def vmapped(setup, runs):
    keys, many, _ = runs
    return many(keys, setup[1])


def _partition(ctx, key):
    return sisa(ctx, **HYPER).partition(jax.random.split(key)[0])




def test_partition_is_the_references_uniform_split_of_a_seeded_permutation(setup):
    ctx, _ = setup
    for s, sizes in [(5, [11] * 5), (4, [13, 13, 13, 16])]:
        shards = sisa(ctx, num_shards=s).partition(jax.random.key(3))
        member, index = np.asarray(shards.member), np.asarray(shards.index)
        assert list(member.sum(1)) == sizes
        assert sorted(index[member]) == list(range(N_TRAIN))  # disjoint, covers the train split
    other = sisa(ctx, num_shards=5).partition(jax.random.key(4))
    assert not np.array_equal(other.index, sisa(ctx, num_shards=5).partition(jax.random.key(3)).index)
    with pytest.raises(ValueError, match="num_shards"):
        sisa(ctx, num_shards=N_TRAIN + 1)


def test_defaults_are_the_references():
    """cleverhans-lab/machine-unlearning sisa.py argparse defaults (epochs 20, batch 16, SGD, lr 1e-3, no
    momentum / weight decay / scheduler) and sharded.py's fixed batches (no reshuffling)."""
    assert DEFAULTS == dict(num_shards=5, epochs=20, batch_size=16, optimizer="sgd", lr=1e-3, momentum=0.0,
                            weight_decay=0.0, schedule="constant", shuffle=False)
    with pytest.raises(ValueError, match="schedule"):
        make_sisa_run(None, schedule="step")


def test_default_training_walks_the_references_fixed_blocks_at_a_constant_rate(setup, runs):
    """Brute force of the reference's loop (sisa.py over sharded.py ``fetchShardBatch``): every epoch the
    shard's blocks of ``batch_size`` slots in the same order, each a batch of only the block's remaining
    members (unlearned ones dropped, the block shrinks), one SGD step of constant lr per non-empty block.
    Checked on a retrained shard, whose blocks have holes."""
    ctx, data = setup
    keys, _, single = runs
    out = single(keys[0], data, _partition(ctx, keys[0]))
    index, member = np.asarray(out["shards"].index), np.asarray(out["shards"].member)
    s = int(np.flatnonzero(np.asarray(out["report"]["affected"]))[0])
    bs, m = HYPER["batch_size"], index.shape[1]
    blocks = [index[s, b:b + bs][member[s, b:b + bs]] for b in range(0, m, bs)]
    assert any(0 < len(blk) < min(bs, m - b) for blk, b in zip(blocks, range(0, m, bs)))  # a hole somewhere
    tx = torch_sgd(HYPER["lr"], HYPER["momentum"])
    step = jax.jit(supervised_step(ctx, tx, cross_entropy), compiler_options=FAST)
    key = jax.random.fold_in(jax.random.split(keys[0])[1], s)  # the shard's training key
    state = create_state(init_variables(ctx.model, jax.random.split(key)[0]), tx)
    images, labels = data["train"]
    for _ in range(HYPER["epochs"]):
        for blk in blocks:
            if len(blk):
                state, _ = step(state, images[blk], labels[blk], jnp.ones(len(blk), bool))
    assert max_rel(lane(out["unlearned"], s), variables_of(state)) <= 1e-5


def test_shuffled_cosine_option_is_the_supervised_recipe_on_the_shard(setup, runs):
    """With ``shuffle=True, schedule='cosine'`` a full shard trains exactly like ``supervised`` (reshuffled
    every epoch, CosineAnnealingLR per epoch) from scratch on a split holding the shard's data."""
    ctx, data = setup
    key = runs[0][0]
    shards = _partition(ctx, key)
    index = np.asarray(shards.index[2])
    fns = sisa(ctx, **HYPER, shuffle=True, schedule="cosine")
    models, _ = jax.jit(fns.train, compiler_options=FAST)(jax.random.split(key)[1], shards, data)
    shard_data = {"shard": (data["train"][0][index], data["train"][1][index])}
    shard_ctx = Context(ctx.model, ctx.normalization, {"shard": len(index)}, ctx.class_counts)
    recipe = supervised(shard_ctx, split="shard", epochs=2, batch_size=8, optimizer="sgd", lr=0.05, momentum=0.9,
                        weight_decay=0.0, from_scratch=True)
    alone, _ = jax.jit(make_run(shard_ctx, recipe, RunConfig(track=False)), compiler_options=FAST)(
        jax.random.fold_in(jax.random.split(key)[1], 2), None, shard_data)
    assert max_rel(lane(models, 2), alone) <= 1e-5


def test_unlearning_retrains_only_affected_shards(setup, runs):
    ctx, data = setup
    keys, _, single = runs
    rows = np.concatenate([np.arange(N_RETAIN, N_TRAIN), [0], np.arange(1, N_RETAIN)]).reshape(5, 11)
    shards = Shards(jnp.asarray(rows, jnp.int32), jnp.ones((5, 11), bool))  # every forget example in shard 0
    out = single(keys[0], data, shards)
    report, kept = out["report"], out["shards"]
    np.testing.assert_array_equal(report["affected"], [True, False, False, False, False])
    assert int(report["shards_retrained"]) == 1 and float(report["shard_fraction"]) == pytest.approx(0.2)
    assert int(report["examples_retrained"]) == 1 and float(report["example_fraction"]) == pytest.approx(1 / 45)
    assert int(report["forgotten"]) == 10 and int(np.asarray(kept.member).sum()) == N_RETAIN
    for s in range(1, 5):  # untouched shards: bit-identical
        jax.tree_util.tree_map(np.testing.assert_array_equal, lane(out["unlearned"], s), lane(out["original"], s))
    assert not np.allclose(lane(out["unlearned"], 0)["params"]["fc"]["kernel"],
                           lane(out["original"], 0)["params"]["fc"]["kernel"])
    # The stand-alone unlearn on the trained ensemble gives the same ensemble.
    unlearn = jax.jit(sisa(ctx, **HYPER).unlearn, compiler_options=FAST)
    again, again_kept, _ = unlearn(jax.random.split(keys[0])[1], out["original"], shards, data)
    np.testing.assert_array_equal(again_kept.member, kept.member)
    assert max_rel(again, out["unlearned"]) <= 1e-5


def test_retrained_shards_never_see_forget_data(setup, runs):
    ctx, data = setup
    keys, _, single = runs
    shards = _partition(ctx, keys[0])
    out = single(keys[0], data, shards)
    index, member = np.asarray(out["shards"].index), np.asarray(out["shards"].member)
    assert not (member & (index >= N_RETAIN)).any()
    np.testing.assert_array_equal(member, np.asarray(shards.member) & (index < N_RETAIN))
    affected = np.asarray(out["report"]["affected"])
    assert int(out["report"]["forgotten"]) == 10 and affected.any()
    # The same run with the forgotten images and labels replaced: the original shards that held them
    # change, the retrained ones are bit-identical.
    images, labels = (np.array(a) for a in data["train"])
    images[N_RETAIN:] = np.random.default_rng(1).integers(0, 256, images[N_RETAIN:].shape, dtype=np.uint8)
    labels[N_RETAIN:] = (labels[N_RETAIN:] + 1) % 4
    again = single(keys[0], {**data, "train": (jnp.asarray(images), jnp.asarray(labels))}, shards)
    retrained = np.flatnonzero(affected)
    pick = lambda tree: jax.tree_util.tree_map(lambda a: np.asarray(a)[retrained], tree)  # noqa: E731
    jax.tree_util.tree_map(np.testing.assert_array_equal, pick(again["unlearned"]), pick(out["unlearned"]))
    assert not np.allclose(pick(again["original"])["params"]["fc"]["kernel"],
                           pick(out["original"])["params"]["fc"]["kernel"])


def test_aggregate_is_the_mean_softmax_of_the_shards(setup, vmapped):
    ctx, data = setup
    models = lane(vmapped["original"], 0)
    images = data["test"][0]
    probs, log_probs = jax.jit(lambda m: (aggregate_probs(ctx, m, images, batch_size=5),
                                          aggregate_log_probs(ctx, m, images)), compiler_options=FAST)(models)
    one = jax.jit(lambda v: jax.nn.softmax(predict(ctx, v, images)), compiler_options=FAST)
    np.testing.assert_allclose(probs, np.mean([one(lane(models, s)) for s in range(5)], axis=0), rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(np.sum(probs, -1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.exp(log_probs), probs, rtol=1e-5)


def test_seeds_vmap_differ_and_equal_single_runs(setup, runs, vmapped):
    ctx, data = setup
    keys, _, single = runs
    many = vmapped
    alone = single(keys[1], data, _partition(ctx, keys[1]))  # seed 1 on its own (its partition passed in)
    assert max_rel(alone["original"], lane(many["original"], 1)) <= 1e-5
    assert max_rel(alone["unlearned"], lane(many["unlearned"], 1)) <= 1e-5
    np.testing.assert_array_equal(alone["shards"].index, many["shards"].index[1])
    a, b = (lane(many["original"], i)["params"]["fc"]["kernel"] for i in (0, 1))
    assert not np.allclose(a, b)
    assert not np.array_equal(many["shards"].index[0], many["shards"].index[1])
    assert np.isfinite(np.asarray(many["loss"])).all() and many["loss"].shape == (2, 5, 2)
    assert many["report"]["shards_retrained"].shape == (2,)


def test_unknown_hyper_parameter_fails_by_name(setup):
    with pytest.raises(ValueError, match="slices"):
        make_sisa_run(setup[0], slices=2)


# -- the SISA job (jax_unlearn.jobs.sisa): a run folder, only the affected shards retrained -------------------
JOB_HYPER = dict(epochs=2, batch_size=4, lr=0.05, momentum=0.9)
JOB_SEED, JOB_SHARDS, JOB_RETAIN = 3, 6, 45


@pytest.fixture(scope="module")
def job_data():
    """45 retain / 3 forget: with 6 shards some hold a forget example and some do not."""
    rng = np.random.default_rng(5)
    return UnlearningData(
        retain=synthetic_split(rng, JOB_RETAIN), forget=synthetic_split(rng, 3), validation=synthetic_split(rng, 8),
        test=synthetic_split(rng, 8), num_classes=4,
        normalization=Normalization(scale=1 / 255, mean=(0.5,) * 3, std=(0.25,) * 3), description={"src": "t"})


@pytest.fixture(scope="module")
def job(tmp_path_factory, job_data):
    model = ResNet(stage_sizes=(1, 1), num_classes=4, width=4)
    out = tmp_path_factory.mktemp("sisa") / "run"
    report = run_sisa(out, job_data, num_shards=JOB_SHARDS, seed=JOB_SEED, hyper=JOB_HYPER, model=model)
    return model, out, report


def test_job_retrains_exactly_the_affected_shards_as_unlearn_does(job, job_data):
    model, out, report = job
    folder = RunFolder(out)
    original, unlearned = folder.load_tree("original"), folder.load_tree("unlearned")
    ctx, data = context_for(job_data, model), device_data(job_data)
    fns = sisa(ctx, num_shards=JOB_SHARDS, **JOB_HYPER)
    k_part, k_train = jax.random.split(jax.random.key(JOB_SEED))
    partition = fns.partition(k_part)
    np.testing.assert_array_equal(original["index"], partition.index)
    np.testing.assert_array_equal(original["member"], partition.member)
    holds = (original["member"] & (original["index"] >= JOB_RETAIN)).any(1)
    assert 0 < holds.sum() < JOB_SHARDS  # the data were chosen so that some shards are spared
    np.testing.assert_array_equal(unlearned["retrained"], holds)
    for s in np.flatnonzero(~holds):  # spared shards: bit-identical
        jax.tree_util.tree_map(np.testing.assert_array_equal, lane(unlearned["variables"], s),
                               lane(original["variables"], s))
    for s in np.flatnonzero(holds):
        assert not np.allclose(lane(unlearned["variables"], s)["params"]["fc"]["kernel"],
                               lane(original["variables"], s)["params"]["fc"]["kernel"])
    # What the job computed with only the affected shards = sisa.unlearn over all S on the saved ensemble.
    again, kept, cost = jax.jit(fns.unlearn, compiler_options=FAST)(
        k_train, original["variables"], Shards(original["index"], original["member"]), data)
    np.testing.assert_array_equal(kept.member, unlearned["member"])
    assert max_rel(again, unlearned["variables"]) <= 1e-5
    saving = report["saving"]
    assert (saving["shards_retrained"], saving["num_shards"], saving["forgotten"]) == (holds.sum(), JOB_SHARDS, 3)
    assert saving["shard_fraction"] == pytest.approx(holds.mean())
    assert saving["examples_retrained"] == int(cost["examples_retrained"]) == unlearned["member"][holds].sum()
    assert saving["example_fraction"] == pytest.approx(saving["examples_retrained"] / JOB_RETAIN)
    # The saved ensembles reproduce the reported accuracies; per-shard rows and losses are written.
    for phase, tree in (("original", original), ("unlearned", unlearned)):
        for split in ("retain", "forget", "validation", "test"):
            s = job_data.split(split)
            probs = aggregate_probs(ctx, tree["variables"], jnp.asarray(s.images))
            assert report["ensemble"][phase][split] == pytest.approx(np.mean(np.argmax(probs, -1) == s.labels))
    shards = pd.read_csv(out / "shards.csv")
    assert list(shards["retrained"]) == list(holds) and list(shards["members_after"]) == list(kept.member.sum(1))
    losses = pd.read_csv(out / "losses.csv")
    assert len(losses) == (JOB_SHARDS + holds.sum()) * JOB_HYPER["epochs"]
    assert set(losses.loc[losses.phase == "unlearned", "shard"]) == set(np.flatnonzero(holds))
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    assert report["timing"]["original"]["run_s"] > 0 and not report["timing"]["original"]["reused"]


def test_job_resumes_without_retraining_and_refuses_another_config(job, job_data):
    model, out, report = job
    before = {p.name: p.stat().st_mtime_ns for p in (out / "original").rglob("*") if p.is_file()}
    again = run_sisa(out, job_data, num_shards=JOB_SHARDS, seed=JOB_SEED, hyper=JOB_HYPER, model=model)
    assert again["timing"]["original"]["reused"] and again["timing"]["unlearned"]["reused"]
    assert again["ensemble"] == report["ensemble"] and again["saving"] == report["saving"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "original").rglob("*") if p.is_file()} == before
    with pytest.raises(RunFolderError, match="different run"):
        run_sisa(out, job_data, num_shards=JOB_SHARDS, seed=JOB_SEED + 1, hyper=JOB_HYPER, model=model)


def test_job_bad_input_fails_clearly_and_writes_nothing(tmp_path, job_data):
    model = ResNet(stage_sizes=(1, 1), num_classes=4, width=4)
    cases = [({"num_shards": 1}, "integer >= 2"), ({"num_shards": 49}, "more than the 48 training examples"),
             ({"num_shards": 3, "hyper": {"slices": 2}}, "no hyper-parameter"),
             ({"num_shards": 3, "hyper": {"lr": [0.1, 0.2]}}, "no sweeps"),
             ({"num_shards": 3, "hyper": {"epochs": 0}}, "epochs must be a positive integer"),
             ({"num_shards": 3, "hyper": {"num_shards": 3}}, "--shards")]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            run_sisa(tmp_path / "x", job_data, model=model, **kw)
    assert not (tmp_path / "x").exists()
