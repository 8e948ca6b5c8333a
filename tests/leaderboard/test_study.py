"""jax-unlearn leaderboard: bad input refused before any model runs, the bootstrap and the compile clock,
the budget split, and (slow) the whole protocol end to end — the ``ci`` preset on the CLI, as CI runs it —
resumed and refused."""
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from jax_unlearn.data.types import DataError, Normalization, Split, UnlearningData
from jax_unlearn.engine.run import context_for
from jax_unlearn.leaderboard.study import leaderboard, resolve_methods, round_zero
from jax_unlearn.leaderboard.presets import PRESETS, Preset
from jax_unlearn.leaderboard.stats import CompileClock, bootstrap
from jax_unlearn.methods import METHODS
from jax_unlearn.methods.registry import Range, SearchSpace
from jax_unlearn.methods.spaces import SPACES
from jax_unlearn.metrics.competition import final_score, forgetting_quality
from jax_unlearn.models import ResNet
from jax_unlearn.jobs.folders import RunFolder, RunFolderError

TINY = Preset("tiny", n=4, n_tuning=4, budget=24, rounds=2, bootstrap=20, methods=("finetune",),
              original_epochs=4, recipe={"epochs": 4, "lr": 3e-3, "batch_size": 16}, chunk_size=8)


def _split(rng, n, tag):
    labels = rng.integers(0, 4, n).astype(np.int32)
    images = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    images[..., 0] = np.uint8(60) * labels[:, None, None].astype(np.uint8)  # learnable signal
    return Split(images, labels, ids=np.array([f"{tag}{i}" for i in range(n)]))


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return UnlearningData(retain=_split(rng, 48, "r"), forget=_split(rng, 12, "f"), validation=_split(rng, 12, "v"),
                          test=_split(rng, 16, "t"), num_classes=4,
                          normalization=Normalization(scale=1 / 255, mean=(0.5,) * 3, std=(0.25,) * 3),
                          description={"source": f"synthetic-{seed}"})


def _model():
    return ResNet(stage_sizes=(1, 1), num_classes=4, width=4, conv_impl="gemm")


# -- bad input: refused before anything is written ----------------------------------------------------------
@pytest.mark.parametrize("methods, match", [
    ("finetune,nope", r"unknown method\(s\) \['nope'\]; valid: amnesiacs, "),
    ("", "the method list is empty"), ([], "the method list is empty"),
    ("retrain", "reference row"),
])
def test_bad_method_lists_are_refused_naming_the_valid_ones(tmp_path, methods, match):
    with pytest.raises(ValueError, match=match):
        leaderboard(tmp_path / "lb", _data(), preset=TINY, methods=methods, model=_model())
    assert not (tmp_path / "lb").exists()


def test_all_means_every_method_but_the_reference():
    assert resolve_methods("all", TINY) == sorted(m for m in METHODS if m != "retrain")
    assert resolve_methods(None, TINY) == ["finetune"]


def test_n_too_small_for_the_bootstrap_is_refused(tmp_path):
    with pytest.raises(ValueError, match="N = 3 is too small for the bootstrap"):
        leaderboard(tmp_path / "lb", _data(), preset=dataclasses.replace(TINY, n=3), model=_model())
    assert not (tmp_path / "lb").exists()


def test_an_undeclared_or_foreign_search_space_is_refused(tmp_path, monkeypatch):
    monkeypatch.delitem(SPACES, "finetune")
    with pytest.raises(ValueError, match="'finetune' declares no search space"):
        leaderboard(tmp_path / "lb", _data(), preset=TINY, model=_model())
    monkeypatch.setitem(SPACES, "finetune", SearchSpace({"lr": Range(1e-3, 1e-1, True), "gamma": Range(0.1, 1)}))
    with pytest.raises(ValueError, match=r"names \['gamma'\], which the method does not have"):
        leaderboard(tmp_path / "lb", _data(), preset=TINY, model=_model())
    assert not (tmp_path / "lb").exists()


def test_a_reference_population_from_another_data_split_is_refused(tmp_path):
    other = _data(seed=1)
    ref = RunFolder(tmp_path / "ref")  # a retrain folder's record of what it was run on; no model needed
    ref.start({"method": "retrain", "n_seeds": 4, "chunk_size": 4, "num_classes": 4},
              {**other.description, "sizes": other.sizes(), "digests": other.digests()})
    with pytest.raises(DataError, match=r"reference scoring=.*ref is from another data split.*other examples"):
        leaderboard(tmp_path / "lb", _data(), preset=TINY, model=_model(), references={"scoring": ref.path})
    assert not (tmp_path / "lb").exists()


def test_a_budget_too_small_for_two_settings_is_refused(tmp_path):
    with pytest.raises(ValueError, match="fits 1 setting"):
        leaderboard(tmp_path / "lb", _data(), preset=dataclasses.replace(TINY, methods=("neggrad+",), budget=40),
                    model=_model())


# -- the budget, the bootstrap, the clock ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["finetune", "neggrad+", "fisher", "cf-k"])
def test_round_zero_fits_its_share_of_the_budget_for_every_method(name):
    preset = PRESETS["cpu"]
    settings, default_epochs = round_zero(name, context_for(_data(), _model()), preset)
    epochs = settings.get("epochs", [default_epochs] * len(next(iter(settings.values()))))
    used = preset.seeds0 * sum(epochs)
    assert len(epochs) >= 2 and used <= preset.budget / preset.rounds
    assert used + preset.seeds0 * max(SPACES[name].epochs or (default_epochs,)) > preset.budget / preset.rounds \
        or len(epochs) == 256  # greedy: one more (at most the longest) setting would not fit
    assert settings == round_zero(name, context_for(_data(), _model()), preset)[0]  # seeded


def _pops(rng, n, s, shift):
    return {"forget_stat": rng.normal(shift, 1, (n, s)), "retain_acc": rng.uniform(0.8, 0.9, n),
            "test_acc": rng.uniform(0.7, 0.8, n)}


def test_bootstrap_resamples_both_populations_with_the_stated_generator():
    rng = np.random.default_rng(0)
    u, r = _pops(rng, 8, 5, 0.5), _pops(rng, 8, 5, 0.0)
    ci = bootstrap(u, r, 8, 20, seed=3)
    assert ci == {**bootstrap(u, r, 8, 20, seed=3), "seconds": ci["seconds"]}
    g = np.random.default_rng(3)  # brute force: the same draws, scored with the competition's functions
    f, s = [], []
    for _ in range(20):
        iu, ir = g.integers(0, 8, 8), g.integers(0, 8, 8)
        f.append(forgetting_quality(u["forget_stat"][iu], r["forget_stat"][ir]))
        s.append(final_score(f[-1], u["retain_acc"][iu], r["retain_acc"][ir], u["test_acc"][iu], r["test_acc"][ir]))
    assert (ci["f_lo"], ci["f_hi"]) == tuple(np.percentile(f, [2.5, 97.5]))
    assert (ci["score_lo"], ci["score_hi"]) == tuple(np.percentile(s, [2.5, 97.5]))
    with pytest.raises(ValueError, match="too small for the bootstrap"):
        bootstrap(u, r, 3, 20, seed=0)


def test_compile_clock_counts_compilation_apart():
    fn = jax.jit(lambda x: jnp.tanh(x) @ x.T + 1.2345)
    with CompileClock() as first:
        jax.block_until_ready(fn(jnp.ones((64, 64))))
    with CompileClock() as again:
        jax.block_until_ready(fn(jnp.ones((64, 64))))
    assert first.compile > 0 and again.compile == 0 and 0 <= first.run <= first.wall


# -- the protocol end to end: what CI runs, `jax-unlearn leaderboard --preset ci` on the offline
# Fashion-MNIST (about 15 compiled programs of a 4-wide ResNet: minutes on a CPU), once for all the checks --
CI = PRESETS["ci"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from jax_unlearn.cli.main import main
    from jax_unlearn.data import DEFAULT_FASHION_MNIST_DIR

    if not Path(DEFAULT_FASHION_MNIST_DIR).is_dir():
        pytest.skip(f"Fashion-MNIST not installed at {DEFAULT_FASHION_MNIST_DIR}")
    out = tmp_path_factory.mktemp("lb") / "ci"
    argv = ["leaderboard", "--out", str(out), "--preset", "ci"]
    assert main(argv) == 0
    return out, argv, pd.read_csv(out / "leaderboard.csv")


@pytest.mark.slow
def test_ci_table_has_every_row_sorted_with_intervals_and_the_files(study):
    out, _, table = study
    assert set(table["method"]) == {"original", "retrain", "finetune (untuned)", "finetune"}
    assert list(table["final_score"]) == sorted(table["final_score"], reverse=True)
    assert (table["score_lo"] <= table["score_hi"]).all() and (table["f_lo"] <= table["f_hi"]).all()
    score = table.set_index("method")["final_score"]
    assert score["retrain"] > score["original"]
    assert "note_small_n" in table
    tried = pd.read_csv(out / "tuning.csv")
    assert set(tried["round"]) == {0, 1} and {"lr", "epochs", "score", "seeds"} <= set(tried)
    assert (tried.groupby("round")["seeds"].first() == [CI.seeds0, CI.seeds0 * CI.eta]).all()
    text = (out / "LEADERBOARD.md").read_text()
    for needle in ("| 1 |", "Budget", f"B = {CI.bootstrap}", "Command", "--preset ci", "Small N", "Versions",
                   f"N** = {CI.n}", "preset `ci`", "small ResNet"):
        assert needle in text
    assert (out / "leaderboard.png").stat().st_size > 0
    row = json.loads((out / "methods" / "finetune" / "result.json").read_text())
    assert row["tuning_lane_epochs"] <= CI.budget * 1.5 and row["seconds_per_run"] > 0


@pytest.mark.slow
def test_rerun_recomputes_nothing_and_another_config_is_refused(study):
    from jax_unlearn.cli.main import main

    out, argv, table = study
    stamp = (out / "methods" / "finetune" / "result.json").stat().st_mtime_ns
    with CompileClock() as clock:
        assert main(argv) == 0
    assert (out / "methods" / "finetune" / "result.json").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(pd.read_csv(out / "leaderboard.csv"), table)
    assert clock.wall < 60  # data loading and evaluation programs only: no model is trained again
    with pytest.raises(RunFolderError, match="holds another leaderboard .*preset"):
        leaderboard(out, _data(), preset=dataclasses.replace(CI, bootstrap=30), model=_model())


@pytest.mark.slow
def test_scoring_seeds_are_fresh(study):
    out, _, _ = study
    tuning = {RunFolder(p).config["base_seed"] for p in (out / "methods" / "finetune").glob("round_*") if p.is_dir()}
    scoring = RunFolder(out / "methods" / "finetune" / "scoring").config["base_seed"]
    retrained = RunFolder(out / "references" / "retrained").config
    assert scoring not in tuning and retrained["base_seed"] not in tuning | {scoring}
    assert retrained["n_seeds"] == 2 * CI.n + CI.n_tuning  # three disjoint blocks of one seed stream
