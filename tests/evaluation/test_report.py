"""Evaluation: per-model outputs equal a brute-force forward pass; the report, its files and plots.

Two tiny populations of a small ResNet (the report rebuilds the model from the run's config), one epoch
of two steps each: 3 fine-tuned seeds in chunks of 2 and 3 retrained seeds. On a CPU evaluation runs one
model a call; the accelerators' way (a chunk's lanes a call, the last chunk padded) is checked against it.
Unequal population sizes and sweep scoring are tested on synthetic statistics (a real sweep is evaluated
end to end in tests/cli/test_cli.py).
"""
import dataclasses
import json
import shutil

import jax
import numpy as np
import pandas as pd
import pytest

from jax_unlearn.data.types import SPLITS, DataError, Normalization, Split, UnlearningData
from jax_unlearn.engine.run import RunConfig
from jax_unlearn.evaluation.report import competition, evaluate, format_summary, population_outputs
from jax_unlearn.metrics import small_n_note
from jax_unlearn.evaluation.sweep import check_reference, format_sweep, score_sweep, sweep_lanes
from jax_unlearn.jobs.populations import run_population
from jax_unlearn.models import ResNet

# A small ResNet keeps evaluation cheap: the run folder records its architecture and evaluation rebuilds it.
TINY = ResNet(stage_sizes=(1, 1), num_classes=4, width=8, conv_impl="gemm")
from jax_unlearn.metrics import final_score, forgetting_quality, logit_scaled_confidence
from jax_unlearn.evaluation.plots import pick_examples
from jax_unlearn.jobs.folders import RunFolder, RunFolderError
from tiny import quick_init  # tests/ is on sys.path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MIA_MODELS = 2


def _split(rng, n, num_classes=4, prefix="x"):
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    images = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    images[..., 0] = np.uint8(60) * labels[:, None, None].astype(np.uint8)  # learnable signal
    return Split(images, labels, ids=np.array([f"{prefix}{i}" for i in range(n)]))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return UnlearningData(
        retain=_split(rng, 40, prefix="r"), forget=_split(rng, 10, prefix="f"),
        validation=_split(rng, 12, prefix="v"), test=_split(rng, 12, prefix="t"), num_classes=4,
        normalization=Normalization(scale=1 / 255, mean=(0.5,) * 3, std=(0.25,) * 3),
        description={"source": "synthetic"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("runs")
    kw = dict(hyper={"epochs": 1, "batch_size": 32}, progress=False, n_seeds=3, run_config=RunConfig(track=False))
    start = quick_init(TINY, jax.random.key(1))
    unlearned = run_population(tmp / "finetune", "finetune", data, start_variables=start, chunk_size=2, model=TINY,
                               **kw)
    retrained = run_population(tmp / "retrain", "retrain", data, chunk_size=3, model=TINY, **kw)
    return unlearned, retrained


@pytest.fixture(scope="module")
def outputs(runs, data):
    return population_outputs(runs[0], data, mia_models=MIA_MODELS, progress=False)


@pytest.fixture(scope="module")
def evaluated(runs, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    report = evaluate(runs[0].path, data, retrained_dir=runs[1].path, out_dir=out, mia_models=MIA_MODELS,
                      progress=False)
    return report, out


def test_outputs_equal_a_direct_forward_pass(runs, data, outputs):
    model = TINY
    assert runs[0].config["arch"] == {"stage_sizes": [1, 1], "width": 8}
    apply = jax.jit(lambda v, x: model.apply(v, data.normalization.apply(x), train=False))
    images = np.concatenate([data.split(s).images for s in SPLITS])  # one shape: one compile
    bounds = np.cumsum([0] + [len(data.split(s)) for s in SPLITS])
    seeds = []
    for i, (seed, variables) in enumerate(runs[0].iter_models()):
        seeds.append(seed)
        logits = np.asarray(apply(variables, images))
        for j, split in enumerate(SPLITS):
            z, y = logits[bounds[j]:bounds[j + 1]], data.split(split).labels
            assert outputs[f"{split}_acc"][i] == pytest.approx(np.mean(z.argmax(-1) == y))
            if split == "forget":
                np.testing.assert_allclose(outputs["forget_stat"][i], logit_scaled_confidence(z, y),
                                           rtol=1e-4, atol=1e-4)
            if i < MIA_MODELS and split in ("test", "forget"):
                np.testing.assert_allclose(outputs["mia_logits"][split][i], z, rtol=1e-4, atol=1e-4)
        if i < MIA_MODELS:  # SVC-MIA's shadow members: the first len(test) retain examples
            np.testing.assert_allclose(outputs["mia_logits"]["retain"][i], logits[:len(data.test)],
                                       rtol=1e-4, atol=1e-4)
    assert seeds == [0, 1, 2] and list(outputs["seed"]) == seeds
    assert outputs["forget_stat"].shape == (3, 10) and outputs["forget_stat"].dtype == np.float64
    assert {k: v.shape for k, v in outputs["mia_logits"].items()} == {
        "retain": (2, 12, 4), "test": (2, 12, 4), "forget": (2, 10, 4)}
    assert outputs["method"] == "finetune"


def test_a_chunk_of_lanes_a_call_gives_the_outputs_of_one_model_a_call(runs, data, outputs, monkeypatch):
    import jax_unlearn.evaluation.outputs as outputs_module

    # As on an accelerator: a chunk's lanes in one call.
    monkeypatch.setattr(outputs_module, "lanes_per_call", lambda n_lanes, n_devices=1: n_lanes)
    lanes = population_outputs(runs[0], data, mia_models=MIA_MODELS, progress=False)  # chunks 2 + 1 (padded)
    np.testing.assert_array_equal(lanes["seed"], outputs["seed"])
    # Vmapped lanes sum in another order than one model alone: float32 rounding, far below any logit gap.
    for name in ("retain_acc", "forget_acc", "validation_acc", "test_acc"):
        np.testing.assert_array_equal(lanes[name], outputs[name])
    np.testing.assert_allclose(lanes["forget_stat"], outputs["forget_stat"], rtol=1e-4, atol=1e-4)
    for split, z in outputs["mia_logits"].items():
        np.testing.assert_allclose(lanes["mia_logits"][split], z, rtol=1e-4, atol=1e-4)


def test_report_json_and_csvs(runs, data, outputs, evaluated):
    report, out = evaluated
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    fams = report["families"]
    assert {k: (v["method"], v["n"]) for k, v in fams.items()} == {"unlearned": ("finetune", 3),
                                                                  "retrained": ("retrain", 3)}
    for fam in fams.values():
        for key in ("retain_acc", "forget_acc", "validation_acc", "test_acc", "kit_mia", "svc_mia"):
            assert set(fam[key]) == {"mean", "std", "n"}
        assert fam["kit_mia"]["n"] == fam["svc_mia"]["n"] == MIA_MODELS
    np.testing.assert_allclose(fams["unlearned"]["forget_acc"]["mean"], outputs["forget_acc"].mean())
    np.testing.assert_allclose(fams["unlearned"]["forget_acc"]["std"], outputs["forget_acc"].std(ddof=1))

    comp = report["competition"]
    assert (comp["n"], comp["n_unlearned"], comp["n_retrained"], comp["truncated"]) == (3, 3, 3, False)
    assert 0.0 <= comp["forgetting_quality"] <= 1.0
    retrained = population_outputs(runs[1], data, progress=False)
    assert comp["forgetting_quality"] == forgetting_quality(outputs["forget_stat"][:3], retrained["forget_stat"])

    per_model = pd.read_csv(out / "per_model.csv")
    assert list(per_model["family"]) == ["unlearned"] * 3 + ["retrained"] * 3
    assert list(per_model["seed"]) == [0, 1, 2, 0, 1, 2]
    assert per_model["in_score"].all()
    assert list(per_model["kit_mia"].notna()) == [True, True, False] * 2
    assert per_model["svc_mia"].between(0, 1).sum() == 2 * MIA_MODELS
    u, r = (per_model[(per_model.family == f) & per_model.in_score] for f in ("unlearned", "retrained"))
    assert comp["final_score"] == pytest.approx(final_score(
        comp["forgetting_quality"], u.retain_acc, r.retain_acc, u.test_acc, r.test_acc))

    per_example = pd.read_csv(out / "per_example.csv", keep_default_na=False)
    assert list(per_example["id"]) == list(data.forget.ids) and len(per_example) == 10
    assert per_example["epsilon"].between(0, 50).all()
    assert per_example["score"].mean() == pytest.approx(comp["forgetting_quality"])


def test_plots_are_pngs(evaluated):
    report, out = evaluated
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["accuracy.png", "epsilon_hist.png", "example_distributions.png"]
    assert sorted(report["files"]) == sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    for name in pngs:
        blob = (out / name).read_bytes()
        assert blob.startswith(PNG_MAGIC) and len(blob) > 1000


def test_without_reference_writes_into_the_run_folder(runs, data):
    report = evaluate(runs[0].path, data, mia_models=1, progress=False)
    out = runs[0].path / "evaluation"
    assert "competition" not in report and set(report["families"]) == {"unlearned"}
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.png", "per_model.csv", "report.json"]
    assert report["families"]["unlearned"]["kit_mia"]["n"] == 1


def test_data_that_does_not_match_the_run_is_refused(runs, data):
    smaller = dataclasses.replace(data, forget=data.forget.take(np.arange(8)))
    with pytest.raises(DataError, match="split sizes"):
        population_outputs(runs[0], smaller)
    with pytest.raises(DataError, match="split sizes"):
        evaluate(runs[0].path, smaller, retrained_dir=runs[1].path, out_dir=runs[0].path / "unused")
    assert not (runs[0].path / "unused").exists()
    with pytest.raises(DataError, match="5 classes"):
        population_outputs(runs[0], dataclasses.replace(data, num_classes=5))
    with pytest.warns(UserWarning, match="source"):
        population_outputs(runs[1], dataclasses.replace(data, description={"source": "elsewhere"}),
                           progress=False)


def test_summary_table(evaluated):
    text = format_summary(evaluated[0])
    for word in ("unlearned", "retrained", "finetune", "retrain", "forgetting quality", "final score"):
        assert word in text
    table = text.splitlines()[:3]
    assert len({len(line) for line in table}) == 1  # aligned columns
    assert "±" in table[1]


def test_competition_compares_the_first_seeds_of_unequal_populations():
    rng = np.random.default_rng(1)

    def population(n):
        return {"seed": np.arange(n), "forget_stat": rng.normal(size=(n, 7)) * 3,
                "retain_acc": rng.uniform(0.5, 1, n), "test_acc": rng.uniform(0.5, 1, n)}

    u, r = population(5), population(4)
    summary, eps = competition(u, r)
    assert (summary["n"], summary["n_unlearned"], summary["n_retrained"], summary["truncated"]) == (4, 5, 4, True)
    assert "first 4 seeds" in summary["note"] and eps.shape == (7,)
    assert 0 < summary["forgetting_quality"] < 1
    assert summary["forgetting_quality"] == forgetting_quality(u["forget_stat"][:4], r["forget_stat"])
    assert summary["final_score"] == final_score(summary["forgetting_quality"], u["retain_acc"][:4],
                                                 r["retain_acc"], u["test_acc"][:4], r["test_acc"])
    text = format_summary({"families": {}, "competition": summary})
    assert "first 4 seeds" in text
    # A score at N = 4 never appears without the small-N note, in the report and in the printed summary.
    assert summary["note_small_n"] == small_n_note(4) and f"note: {small_n_note(4)}" in text

    summary, eps = competition(population(1), r)
    assert eps is None and summary["forgetting_quality"] is None and summary["n"] == 1


def test_pick_examples_lowest_median_highest():
    eps = np.array([5.0, 0.0, 3.0, 1.0, 9.0, 2.0, 7.0, 4.0, 8.0, 6.0])
    assert list(eps[pick_examples(eps, 6)]) == [0.0, 1.0, 4.0, 5.0, 8.0, 9.0]
    assert list(eps[pick_examples(eps[:2], 6)]) == [0.0, 5.0]


# -- sweeps: each setting scored against the retrained population; the folders checked first ---------------
def _sweep_folder(path, lane_hyper, seeds_per_setting):
    """A run folder holding only a sweep record (what sweep_lanes and check_reference read)."""
    folder = RunFolder(path)
    folder.start({"method": "finetune", "n_seeds": len(next(iter(lane_hyper.values()))),
                  "sweep": {"seeds_per_setting": seeds_per_setting, "lane_hyper": lane_hyper}}, {})
    return folder


def _population(rng, n, shift=0.0):
    return {"seed": np.arange(n), "forget_stat": rng.normal(size=(n, 9)) * 2 + shift, "path": "p",
            **{acc: rng.uniform(0.4, 1, n) for acc in ("retain_acc", "forget_acc", "validation_acc", "test_acc")}}


def test_sweep_scores_each_setting_on_its_first_seeds(tmp_path):
    lanes = sweep_lanes(_sweep_folder(tmp_path / "s", {"lr": [0.1] * 5 + [0.2] * 5, "epochs": [1] * 10}, 5))
    assert [(h, list(i)) for h, i in lanes.settings] == [({"epochs": 1, "lr": 0.1}, [0, 1, 2, 3, 4]),
                                                         ({"epochs": 1, "lr": 0.2}, [5, 6, 7, 8, 9])]
    rng = np.random.default_rng(3)
    u, r = _population(rng, 10, shift=1.0), _population(rng, 4, shift=1.0)
    u["forget_stat"][:5] *= 0.1  # the first setting's statistics collapse: far from the retrained models
    section, table, best = score_sweep(lanes, u, r)
    assert section["n_compared"] == 4 and section["n_settings"] == 2 and list(table["n_models"]) == [4, 4]
    scores = []
    for s, first in enumerate(([0, 1, 2, 3], [5, 6, 7, 8])):  # independently: the first 4 seeds of each
        f = forgetting_quality(u["forget_stat"][first], r["forget_stat"])
        scores.append(final_score(f, u["retain_acc"][first], r["retain_acc"], u["test_acc"][first], r["test_acc"]))
        assert table.loc[s, "forgetting_quality"] == f
        assert table.loc[s, "score"] == pytest.approx(scores[-1])
        assert table.loc[s, "forget_acc"] == pytest.approx(u["forget_acc"][first].mean())
    assert scores[1] > scores[0] > 0  # the data were made so; the best is the second setting
    assert list(table["best"]) == [False, True]
    assert section["best"] == pytest.approx({"epochs": 1, "lr": 0.2, "score": scores[1]})
    assert list(best["seed"]) == [5, 6, 7, 8]
    assert json.loads(json.dumps(section))["settings"][1]["best"] is True
    assert section["settings"][1]["lr"] == section["best"]["lr"]  # full precision in both
    text = "\n".join(format_sweep(section))
    assert f"* best setting: epochs=1, lr=0.2 (final score {scores[1]:.4f})" in text
    assert section["note_small_n"] == small_n_note(4) and f"note: {small_n_note(4)}" in text  # scored at N = 4
    marked = [line for line in text.splitlines() if line.startswith("*") and "best setting" not in line]
    assert len(marked) == 1 and "0.2" in marked[0] and f"{scores[1]:.4f}" in marked[0]

    section, table, best = score_sweep(lanes, u, None)  # no reference: accuracies only
    assert best is None and section["best"] is None and table["score"].isna().all() and "--retrained" in section["note"]
    assert table.loc[1, "retain_acc"] == pytest.approx(u["retain_acc"][5:].mean())  # all 5 seeds


def test_sweep_folders_that_cannot_be_scored_fail_clearly(tmp_path, runs, data):
    retrained = runs[1]
    bad = _sweep_folder(tmp_path / "short", {"lr": [0.1, 0.2]}, 1)
    config = json.loads((bad.path / "config.json").read_text())
    config["n_seeds"] = 3  # the record lists 2 lanes, the run holds 3 models
    (bad.path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunFolderError, match="lists {'lr': 2} lanes.*n_seeds=3"):
        sweep_lanes(bad)
    with pytest.raises(RunFolderError, match="inconsistent"):
        sweep_lanes(_sweep_folder(tmp_path / "uneven", {"lr": [0.1, 0.1, 0.2]}, 1))
    one_seed = _sweep_folder(tmp_path / "one", {"lr": [0.1, 0.2, 0.3]}, 1)
    with pytest.raises(ValueError, match="1 seed per setting.*--n-seeds >= 2"):
        check_reference(sweep_lanes(one_seed), one_seed, retrained)
    sweep = _sweep_folder(tmp_path / "ok", {"lr": [0.1, 0.1, 0.2, 0.2]}, 2)
    with pytest.raises(ValueError, match="itself a sweep"):
        check_reference(sweep_lanes(sweep), sweep, one_seed)
    with pytest.raises(ValueError, match="is the unlearned run folder itself"):
        check_reference(None, retrained, retrained)
    small = _sweep_folder(tmp_path / "small", {"lr": [0.1]}, 1)
    config = json.loads((small.path / "config.json").read_text())
    del config["sweep"]
    (small.path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="holds 1 model"):
        check_reference(sweep_lanes(sweep), sweep, small)

    # Through evaluate: the real 3-model population relabelled as 3 one-seed settings fails before any
    # model runs or any file is written; without a reference it reports each setting's accuracies.
    copy = tmp_path / "relabelled"
    shutil.copytree(runs[0].path, copy, ignore=shutil.ignore_patterns("evaluation"))
    config = json.loads((copy / "config.json").read_text())
    config["sweep"] = {"seeds_per_setting": 1, "lane_hyper": {"lr": [0.1, 0.2, 0.3]}}
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="1 seed per setting"):
        evaluate(copy, data, retrained_dir=retrained.path, out_dir=tmp_path / "unused", progress=False)
    assert not (tmp_path / "unused").exists()
    report = evaluate(copy, data, out_dir=tmp_path / "report", mia_models=1, progress=False)
    outputs = population_outputs(runs[0], data, progress=False)
    assert [row["lr"] for row in report["sweep"]["settings"]] == pytest.approx([0.1, 0.2, 0.3])
    assert [row["test_acc"] for row in report["sweep"]["settings"]] == pytest.approx(list(outputs["test_acc"]))
    assert report["sweep"]["best"] is None and "competition" not in report
    assert list(pd.read_csv(tmp_path / "report" / "sweep.csv")["setting"]) == [0, 1, 2]
    assert list(pd.read_csv(tmp_path / "report" / "per_model.csv")["lr"]) == pytest.approx([0.1, 0.2, 0.3])
    assert "sweep: 3 settings × 1 seeds" in format_summary(report)
