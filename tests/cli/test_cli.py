"""The command line: convert, clear errors for bad input, a sweep evaluated end to end, the SISA job.

The end-to-end tests run the commands on a tiny IDX data set written in the real format (48 training
images, 16 validation and test images) with a small ResNet (``--arch resnet:1,1:8``): one compilation per
command dominates, and a ResNet-18's takes minutes on a CPU. The ResNet-18 default goes through the same
code (tests/cli/test_bad_input.py and the export tests run ResNet-18 folders end to end).
"""
import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import torch

from data.mini_datasets import write_idx_dir  # tests/ is on sys.path (tests/conftest.py)
from jax_unlearn.cli.main import main
from jax_unlearn.cli.commands import _data_args, load_data
from jax_unlearn.data.types import SPLITS
from jax_unlearn.engine.run import context_for
from jax_unlearn.evaluation.report import population_outputs
from jax_unlearn.models import make_model, parse_arch
from jax_unlearn.methods.sisa import aggregate_probs
from jax_unlearn.metrics import final_score, forgetting_quality
from jax_unlearn.jobs.folders import RunFolder
from torch_reference import random_torch_resnet18

TINY = ["--dataset", "idx", "--max-train", "48", "--max-eval", "16"]
SMALL = "resnet:1,1:8"
ARCH = ["--arch", SMALL]


def test_convert_round_trip_via_cli(tmp_path, capsys):
    sd = random_torch_resnet18(0).state_dict()
    torch.save(sd, tmp_path / "a.pth")
    assert main(["convert", str(tmp_path / "a.pth"), str(tmp_path / "a.msgpack")]) == 0
    assert main(["convert", str(tmp_path / "a.msgpack"), str(tmp_path / "b.pth"), "--num-classes", "10"]) == 0
    back = torch.load(tmp_path / "b.pth", weights_only=True)
    assert all(torch.equal(back[k], v) for k, v in sd.items())


def test_convert_errors_are_reported_and_write_nothing(tmp_path, capsys):
    sd = random_torch_resnet18(0, num_classes=7).state_dict()
    torch.save(sd, tmp_path / "a.pth")
    assert main(["convert", str(tmp_path / "a.pth"), str(tmp_path / "a.msgpack"), "--num-classes", "10"]) == 2
    assert "7 classes; expected 10" in capsys.readouterr().err
    assert not (tmp_path / "a.msgpack").exists()
    assert main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "x.msgpack")]) == 2


ISSUE_METHODS = ("finetune", "finetune-kit", "retrain", "l1-sparse", "neggrad+", "random-label", "salun",
                 "bad-teacher", "unsir", "scrub", "ssd", "noise-student-curriculum", "fanchuan", "kookmin", "seif",
                 "sebastian", "toshi-conv-transpose", "amnesiacs", "sun", "sisa", "gradient-ascent", "cf-k", "eu-k",
                 "fisher", "influence")


@pytest.mark.parametrize("markdown", [False, True])
def test_methods_lists_every_method_of_the_library(capsys, markdown):
    assert main(["methods"] + (["--markdown"] if markdown else [])) == 0
    out = capsys.readouterr().out
    listed = [line.split("|")[1].strip().strip("`") for line in out.splitlines()[2:]] if markdown else [
        line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")]
    assert sorted(listed) == sorted(ISSUE_METHODS)


@pytest.mark.parametrize("conv", ["xla", "gemm", "gemm-body", "canonical", "auto"])
def test_conv_flag_picks_the_lowering(conv, capsys):
    from jax_unlearn.cli.model import build_model, model_args

    p = argparse.ArgumentParser()
    model_args(p)
    model = build_model(p.parse_args(["--conv", conv, "--dtype", "bfloat16"]), 10)
    assert (model.conv_impl, model.stem_conv_impl, model.dtype) == {  # auto: canonical on this CPU
        "xla": ("xla", None), "gemm": ("gemm", None), "gemm-body": ("gemm", "xla"),
        "canonical": ("canonical", None), "auto": ("canonical", None),
    }[conv] + (jnp.bfloat16,)
    resolved = "canonical" if conv == "auto" else conv
    assert f"conv lowering: {resolved}" in capsys.readouterr().out  # the resolved lowering is printed
    with pytest.raises(SystemExit):
        p.parse_args(["--conv", "winograd"])


@pytest.mark.parametrize("command", ["unlearn", "retrain", "sisa", "demo"])
def test_every_command_that_trains_takes_dtype_and_conv(command):
    from jax_unlearn.cli.main import _commands

    (add_arguments,) = [add for name, add, _ in _commands() if name == command]
    p = argparse.ArgumentParser()
    add_arguments(p)
    dests = {a.dest: a for a in p._actions}
    assert dests["conv"].choices == ("auto", "xla", "gemm", "gemm-body", "canonical")
    assert dests["conv"].default == "auto"
    assert dests["dtype"].default == "float32"
    assert ("arch" in dests) == (command != "demo")  # the demo exports .pth files: ResNet-18 only
    if command != "demo":
        assert dests["arch"].default is None  # ResNet-18


def test_arch_flag_builds_the_named_resnet_and_refuses_nonsense(capsys):
    from jax_unlearn.cli.model import build_model, model_args

    p = argparse.ArgumentParser()
    model_args(p)
    model = build_model(p.parse_args(["--arch", SMALL]), 10)
    assert (model.stage_sizes, model.width, model.num_classes) == ((1, 1), 8, 10)
    assert f"model: {SMALL}" in capsys.readouterr().out
    assert build_model(p.parse_args([]), 10).stage_sizes == (2, 2, 2, 2)
    for bad in ("resnet50", "resnet:1,1", "resnet:0,1:8", "resnet:1,1:x", "resnet:1,1,1,1,1:8"):
        with pytest.raises(SystemExit):
            p.parse_args(["--arch", bad])
        assert "--arch" in capsys.readouterr().err


def test_nonsense_values_fail_clearly(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["demo", "--n-seeds", "0"])
    assert "positive integer" in capsys.readouterr().err
    sd = random_torch_resnet18(0).state_dict()
    torch.save(sd, tmp_path / "o.pth")
    assert main(["unlearn", "--method", "nope", "--original", str(tmp_path / "o.pth"), "--out",
                 str(tmp_path / "r"), "--max-train", "64", "--max-eval", "16"]) == 2
    assert "unknown method 'nope'; valid:" in capsys.readouterr().err


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_idx_dir(tmp_path_factory.mktemp("idx"), n_train=100, n_test=40)


def _data(flags):
    """The UnlearningData the commands load for these data flags."""
    p = argparse.ArgumentParser()
    _data_args(p)
    return load_data(p.parse_args(flags))


@pytest.fixture(scope="module")
def sweep_runs(tmp_path_factory, idx_dir):
    """``train-original --arch`` (1 epoch), then ``unlearn`` from it with lr=[0.001, 0.1] (4 seeds per
    setting, one program) and ``retrain`` (4 seeds), all of the small ResNet."""
    tmp = tmp_path_factory.mktemp("sweep")
    flags = [*TINY, "--data-dir", str(idx_dir)]
    assert main(["train-original", "--out", str(tmp / "original.msgpack"), "--epochs", "1", *ARCH, *flags]) == 0
    common = ["--n-seeds", "4", "--no-track", "--set", "batch_size=16", *ARCH, *flags]
    assert main(["unlearn", "--original", str(tmp / "original.msgpack"), "--out", str(tmp / "sweep"),
                 "--set", "lr=[0.001,0.1]", *common]) == 0
    assert main(["retrain", "--out", str(tmp / "retrain"), "--set", "epochs=1", *common]) == 0
    return tmp, flags


def test_a_smaller_arch_is_recorded_loads_only_its_own_checkpoints_and_is_not_exported(sweep_runs, tmp_path,
                                                                                      capsys):
    tmp, flags = sweep_runs
    for name in ("sweep", "retrain"):
        assert RunFolder(tmp / name).config["arch"] == parse_arch(SMALL)
    assert not (tmp / "original.pth").exists()  # a torchvision .pth holds a ResNet-18 only
    capsys.readouterr()
    assert main(["export", str(tmp / "retrain"), str(tmp_path / "export")]) == 2
    assert "holds resnet:1,1:8 models, not ResNet-18" in capsys.readouterr().err
    assert not (tmp_path / "export").exists()
    torch.save(random_torch_resnet18(0).state_dict(), tmp_path / "o.pth")
    run = ["unlearn", "--out", str(tmp_path / "run"), "--n-seeds", "2", *flags]
    assert main([*run, "--original", str(tmp_path / "o.pth"), *ARCH]) == 2  # a ResNet-18 .pth for the small model
    assert "holds a torchvision ResNet-18, not the resnet:1,1:8 model" in capsys.readouterr().err
    assert main([*run, "--original", str(tmp / "original.msgpack"), "--arch", "resnet:1,1:4"]) == 2
    assert "has shape (8,); the resnet:1,1:4 model of 10 classes needs (4,)" in capsys.readouterr().err
    assert main([*run, "--original", str(tmp / "original.msgpack")]) == 2  # ResNet-18 from a small checkpoint
    assert "original.msgpack" in capsys.readouterr().err
    assert main(["train-original", "--out", str(tmp_path / "o2.pth"), *ARCH, *flags]) == 2
    assert "--out must end in .msgpack" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "o2.pth").exists()


def test_evaluate_scores_every_setting_of_a_sweep_and_marks_the_best(sweep_runs, capsys):
    tmp, flags = sweep_runs
    capsys.readouterr()
    assert main(["evaluate", str(tmp / "sweep"), "--retrained", str(tmp / "retrain"), "--report-dir",
                 str(tmp / "report"), *flags]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp / "report" / "report.json").read_text())
    sweep = report["sweep"]
    assert [row["lr"] for row in sweep["settings"]] == pytest.approx([0.001, 0.1])
    assert (sweep["n_settings"], sweep["seeds_per_setting"], sweep["n_compared"]) == (2, 4, 4)
    # Independently of jax_unlearn.jobs.sweep: group the lanes by the recorded lr, score each group.
    data = _data(flags)
    u, r = (population_outputs(tmp / name, data, progress=False) for name in ("sweep", "retrain"))
    lane_lr = np.asarray(json.loads((tmp / "sweep" / "config.json").read_text())["sweep"]["lane_hyper"]["lr"])
    scores = {}
    for lr in np.unique(lane_lr):
        idx = np.flatnonzero(lane_lr == lr)
        f = forgetting_quality(u["forget_stat"][idx], r["forget_stat"])
        scores[float(lr)] = final_score(f, u["retain_acc"][idx], r["retain_acc"], u["test_acc"][idx], r["test_acc"])
    assert [row["score"] for row in sweep["settings"]] == pytest.approx(list(scores.values()))
    best = max(scores, key=scores.get)  # the first of equal maxima, as the report's stable ranking
    assert sweep["best"]["lr"] == pytest.approx(best) and sweep["best"]["score"] == pytest.approx(scores[best])
    assert report["competition"]["setting"]["lr"] == pytest.approx(best)
    assert report["competition"]["final_score"] == pytest.approx(scores[best])
    table = pd.read_csv(tmp / "report" / "sweep.csv")
    assert list(table["best"]) == [lr == best for lr in scores] and list(table["n_models"]) == [4, 4]
    assert "sweep.csv" in report["files"]
    marked = [line for line in out.splitlines() if line.startswith("*") and "best setting" not in line]
    assert len(marked) == 1 and f"{best:g}" in marked[0]
    assert f"* best setting: lr={best:g}" in out
    per_model = pd.read_csv(tmp / "report" / "per_model.csv")
    unlearned = per_model[per_model.family == "unlearned"]
    assert list(unlearned["lr"]) == pytest.approx(list(lane_lr))
    assert list(unlearned["seed"][unlearned.in_score]) == list(np.flatnonzero(lane_lr == best))


def test_evaluate_refuses_folders_that_do_not_fit(sweep_runs, capsys):
    tmp, flags = sweep_runs
    capsys.readouterr()
    assert main(["evaluate", str(tmp / "sweep"), "--retrained", str(tmp / "sweep"), *flags]) == 2
    assert "is the unlearned run folder itself" in capsys.readouterr().err
    assert main(["evaluate", str(tmp / "retrain"), "--retrained", str(tmp / "sweep"), *flags]) == 2
    assert "itself a sweep" in capsys.readouterr().err
    assert not (tmp / "retrain" / "evaluation").exists()


SISA = ["sisa", "--shards", "8", "--set", "epochs=1", "--set", "batch_size=8", "--set", "lr=0.05",
        "--set", "momentum=0.9", *ARCH]


def test_sisa_retrains_exactly_the_affected_shards_and_saves_the_ensembles(tmp_path, idx_dir, capsys):
    flags = [*TINY, "--forget-fraction", "0.05", "--data-dir", str(idx_dir)]  # 2 of 48 examples forgotten
    assert main([*SISA, "--out", str(tmp_path / "sisa"), *flags]) == 0
    out = capsys.readouterr().out
    folder = RunFolder(tmp_path / "sisa")
    report = json.loads((folder.path / "report.json").read_text())
    original, unlearned = folder.load_tree("original"), folder.load_tree("unlearned")
    data = _data(flags)
    n_retain = len(data.retain)
    assert (n_retain, len(data.forget)) == (46, 2)
    holds = (original["member"] & (original["index"] >= n_retain)).any(1)
    assert 0 < holds.sum() <= 2 and list(original["member"].sum(1)) == [6] * 8
    np.testing.assert_array_equal(unlearned["retrained"], holds)
    assert not (unlearned["member"] & (unlearned["index"] >= n_retain)).any()
    assert report["saving"]["shards_retrained"] == holds.sum() and report["saving"]["num_shards"] == 8
    assert f"retrained {holds.sum()} of 8 shards" in out
    leaves = lambda tree, s: [np.asarray(a[s]) for a in jax.tree_util.tree_leaves(tree["variables"])]  # noqa: E731
    for s in range(8):
        same = all(np.array_equal(a, b) for a, b in zip(leaves(original, s), leaves(unlearned, s)))
        assert same == (not holds[s])
    assert folder.config["arch"] == parse_arch(SMALL)
    # The saved ensembles (mean softmax of the 8 shard models) reproduce the reported accuracies.
    ctx = context_for(data, make_model(data.num_classes, arch=parse_arch(SMALL)))
    images = np.concatenate([data.split(s).images for s in SPLITS])
    predict = jax.jit(lambda models, x: jnp.argmax(aggregate_probs(ctx, models, x), -1))
    bounds = np.cumsum([0] + [len(data.split(s)) for s in SPLITS])
    for phase, tree in (("original", original), ("unlearned", unlearned)):
        pred = np.asarray(predict(tree["variables"], images))
        for j, split in enumerate(SPLITS):
            expected = np.mean(pred[bounds[j]:bounds[j + 1]] == data.split(split).labels)
            assert report["ensemble"][phase][split] == pytest.approx(expected)
    assert set(pd.read_csv(folder.path / "shards.csv")["shard"]) == set(range(8))


def test_sisa_bad_flags_fail_clearly(tmp_path, idx_dir, capsys):
    flags = [*TINY, "--data-dir", str(idx_dir)]
    for extra, message in [(["--shards", "1"], "--shards must be an integer >= 2"),
                           (["--shards", "49"], "--shards 49 is more than the 48 training examples"),
                           (["--set", "slices=2"], "sisa has no hyper-parameter(s) ['slices']"),
                           (["--set", "lr=[0.1,0.2]"], "no sweeps"),
                           (["--set", "epochs=0"], "epochs must be a positive integer")]:
        assert main([*SISA, "--out", str(tmp_path / "s"), *extra, *flags]) == 2, extra
        assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
