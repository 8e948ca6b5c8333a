"""Hostile and careless input to the CLI: one table of cases, each with the command, the exit code, a
fragment of the one-line message and the files that must not exist afterwards (README: "What the CLI
guarantees"). No case may print a traceback.

Inputs are built once per module: broken checkpoints, a Kaggle folder with a path-escaping person_id, run
folders written through :class:`RunFolder` (ResNet-18 weights, one seed NaN, one chunk missing, one chunk
emptied) and one real diverging run of a tiny ResNet (the only compilation here).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import jax
from converters import torch_to_flax
from data.mini_datasets import write_idx_dir, write_kaggle_dir  # tests/ is on sys.path (tests/conftest.py)
from jax_unlearn.cli.main import main
from jax_unlearn.cli.commands import _data_args, load_data
from jax_unlearn.models import ResNet
from jax_unlearn.jobs.folders import RunFolder
from torch_reference import random_torch_resnet18

TINY = ("--dataset", "idx", "--max-train", "48", "--max-eval", "16", "--data-dir", "{idx}")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]  # "{key}" placeholders are paths of the `world` fixture
    exit: int
    message: str  # fragment of the error line (of stdout for exit 0)
    absent: tuple[str, ...] = ()  # paths (with placeholders) that must not exist afterwards


UNLEARN = ("unlearn", "--original", "{orig}", "--out", "{tmp}/u", "--n-seeds", "2", *TINY)
RETRAIN = ("retrain", "--out", "{tmp}/r", "--n-seeds", "2", *TINY)

CASES = [
    # -- checkpoints ---------------------------------------------------------------------------------
    Case("zero-byte pth", ("convert", "{empty}", "{tmp}/x.msgpack"), 2, "is empty (0 bytes)", ("{tmp}/x.msgpack",)),
    Case("bf16 weights convert", ("convert", "{bf16}", "{tmp}/bf16.msgpack"), 0, "wrote"),
    Case("100-class msgpack as --original", (*UNLEARN[:2], "{c100}", *UNLEARN[3:]), 2,
         "has 100 classes; expected 10", ("{tmp}/u",)),
    Case("NaN original", (*UNLEARN[:2], "{nan_pth}", *UNLEARN[3:]), 2, "NaN/inf value", ("{tmp}/u",)),
    Case("NaN weights convert", ("convert", "{nan_pth}", "{tmp}/n.msgpack"), 2, "fc.weight holds 1 NaN/inf",
         ("{tmp}/n.msgpack",)),
    Case("pickled code", ("convert", "{evil}", "{tmp}/e.msgpack"), 2, "nothing in it was executed",
         ("{tmp}/e.msgpack", "{tmp}/PWNED")),
    Case("torch.save(model)", ("convert", "{module}", "{tmp}/m.msgpack"), 2, "save model.state_dict() instead"),
    Case("random bytes", ("convert", "{random}", "{tmp}/r.msgpack"), 2, "not a torch checkpoint"),
    Case("num_batches_tracked=-1", ("convert", "{count}", "{tmp}/c.msgpack"), 2,
         "count.pth: bn1.num_batches_tracked: value -1"),
    Case("complex fc.weight", ("convert", "{complex}", "{tmp}/z.msgpack"), 2, "fc.weight has dtype complex64"),
    # -- hyper-parameters and seeds: refused before anything is written --------------------------------
    Case("lr=abc", (*UNLEARN, "--set", "lr=abc"), 2, "lr='abc': expected a number", ("{tmp}/u",)),
    Case("lr=null", (*UNLEARN, "--set", "lr=null"), 2, "lr=None: expected a number (default 0.001), got null",
         ("{tmp}/u",)),
    Case("epochs=1.5", (*UNLEARN, "--set", "epochs=1.5"), 2, "expected an integer", ("{tmp}/u",)),
    Case("batch_size=0", (*UNLEARN, "--set", "batch_size=0"), 2, "batch_size must be a positive integer",
         ("{tmp}/u",)),
    Case("retrain epochs=0", (*RETRAIN, "--set", "epochs=0"), 2, "epochs must be a positive integer", ("{tmp}/r",)),
    Case("unknown hyper-parameter", (*UNLEARN, "--set", "lrr=0.1"), 2, "has no hyper-parameter(s) ['lrr']",
         ("{tmp}/u",)),
    Case("base seed 2**70", (*UNLEARN, "--base-seed", str(2**70)), 2, "must be an integer in [0, 2**32)",
         ("{tmp}/u",)),
    Case("n-seeds two", ("retrain", "--out", "{tmp}/r", "--n-seeds", "two"), 2,
         "--n-seeds: must be a positive integer, got 'two'", ("{tmp}/r",)),
    # -- data flags ----------------------------------------------------------------------------------
    Case("--forget* with kaggle", ("retrain", "--out", "{tmp}/r", "--dataset", "kaggle", "--data-dir", "{kaggle}",
                                   "--forget-fraction", "0.2"), 2, "ships its forget set", ("{tmp}/r",)),
    Case("--forget-classes without --forget classes", (*RETRAIN, "--forget-classes", "4"), 2,
         "--forget-classes needs --forget classes", ("{tmp}/r",)),
    Case("--forget-classes a,b", (*RETRAIN, "--forget", "classes", "--forget-classes", "a,b"), 2,
         "'a' is not an integer", ("{tmp}/r",)),
    Case("person_id escapes", ("retrain", "--out", "{tmp}/r", "--dataset", "kaggle", "--data-dir", "{evil_kaggle}"),
         2, "would name a file outside", ("{tmp}/r",)),
    # -- outputs that cannot be written ---------------------------------------------------------------
    Case("train-original --out under a file", ("train-original", "--out", "{afile}/o.pth", *TINY), 3,
         "lies under a regular file"),
    Case("unlearn --out under a file", (*UNLEARN[:4], "{afile}/u", *UNLEARN[5:]), 3, "lies under a regular file"),
    Case("read-only --out", (*RETRAIN[:2], "{readonly}/r", *RETRAIN[3:]), 3, "{readonly_cause}"),
    Case("export into a read-only folder", ("export", "{good}", "{readonly}/sub"), 3, "{readonly_cause}"),
    # -- runs and export ---------------------------------------------------------------------------------
    Case("export NaN models", ("export", "{nanrun}", "{tmp}/ex"), 4, "hold NaN/inf weights (seeds [1])",
         ("{tmp}/ex",)),
    Case("export incomplete run", ("export", "{incomplete}", "{tmp}/ex"), 2, "is incomplete: chunk(s) [1]",
         ("{tmp}/ex/unlearned_checkpoint_0.pth", "{tmp}/ex")),
    Case("export emptied chunk", ("export", "{corrupt}", "{tmp}/ex"), 2,
         "chunk 0 is unreadable", ("{tmp}/ex",)),
    Case("export chunk with one byte changed", ("export", "{flipped}", "{tmp}/ex"), 2,
         "changed since it was written", ("{tmp}/ex",)),
    Case("export --stage -1", ("export", "{good}", "{tmp}/ex", "--stage", "-1"), 2, "--stage counts from 0",
         ("{tmp}/ex",)),
    Case("export N=2 over an N=4 export", ("export", "{good}", "{stale}"), 0, "wrote 2 checkpoints",
         ("{stale}/unlearned_checkpoint_2.pth", "{stale}/unlearned_checkpoint_3.pth")),
    Case("evaluate a diverged run", ("evaluate", "{diverged}", *TINY), 4, "diverged (NaN/inf loss or weights"),
    Case("evaluate, other forget set of the same size", ("evaluate", "{good_eval}", "--retrained", "{other_forget}",
                                                         *TINY), 2, "hold other examples than it was run on"),
    Case("evaluate, fine-tune run as reference", ("evaluate", "{good_eval}", "--retrained", "{good_eval2}",
                                                  *TINY), 2, "holds a 'finetune' run"),
]


def _tiny(num_classes=10):
    return ResNet(stage_sizes=(1, 1), num_classes=num_classes, width=4)


def _data(flags):
    import argparse

    p = argparse.ArgumentParser()
    _data_args(p)
    return load_data(p.parse_args(flags))


def _fabricate(path: Path, models: list[dict], *, chunk_size: int, data=None, method="finetune",
               write_chunks=None) -> Path:
    """A run folder as ``run_population`` writes it (config.json, data.json, orbax chunks) holding ``models``."""
    folder = RunFolder(path)
    n = len(models)
    config = {"method": method, "n_seeds": n, "chunk_size": chunk_size, "num_classes": 10, "stem": "imagenet",
              "dtype": "float32", "hyper": {}}
    description = {} if data is None else {**data.description, "sizes": data.sizes(), "digests": data.digests()}
    folder.start(config, description)
    for c in range(-(-n // chunk_size)):
        if write_chunks is not None and c not in write_chunks:
            continue
        ids = np.arange(c * chunk_size, min(n, (c + 1) * chunk_size))
        stacked = jax.tree_util.tree_map(lambda *a: np.stack(a), *[models[i] for i in ids])
        finite = np.array([[all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(models[i]))] for i in ids])
        folder.save_chunk(c, ids, {"variables": stacked, "metrics": {"loss": np.ones((len(ids), 1), np.float32),
                                                                     "finite": finite}})
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Every input the table names, keyed by placeholder."""
    tmp = tmp_path_factory.mktemp("bad_input")
    w = {"tmp": tmp, "idx": write_idx_dir(tmp / "idx", n_train=100, n_test=40)}
    sd = random_torch_resnet18(0).state_dict()
    torch.save(sd, w.setdefault("orig", tmp / "orig.pth"))
    (w.setdefault("empty", tmp / "empty.pth")).write_bytes(b"")
    torch.save({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()},
               w.setdefault("bf16", tmp / "bf16.pth"))
    from flax import serialization

    w["c100"] = tmp / "c100.msgpack"
    w["c100"].write_bytes(serialization.msgpack_serialize(torch_to_flax(random_torch_resnet18(1, 100).state_dict())))
    nan = dict(sd)
    nan["fc.weight"] = nan["fc.weight"].clone()
    nan["fc.weight"][0, 0] = float("nan")
    torch.save(nan, w.setdefault("nan_pth", tmp / "nan.pth"))

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp / 'PWNED'}",))

    with open(w.setdefault("evil", tmp / "evil.pth"), "wb") as f:
        pickle.dump({"state_dict": Exploit()}, f)
    torch.save(random_torch_resnet18(0), w.setdefault("module", tmp / "module.pth"))
    w.setdefault("random", tmp / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    count = dict(sd)
    count["bn1.num_batches_tracked"] = torch.tensor(-1)
    torch.save(count, w.setdefault("count", tmp / "count.pth"))
    cplx = dict(sd)
    cplx["fc.weight"] = cplx["fc.weight"].to(torch.complex64)
    torch.save(cplx, w.setdefault("complex", tmp / "complex.pth"))
    w.setdefault("afile", tmp / "afile").write_text("a regular file\n")
    w["kaggle"] = write_kaggle_dir(tmp / "kaggle")
    w["evil_kaggle"] = write_kaggle_dir(tmp / "evil_kaggle")
    forget = pd.read_csv(w["evil_kaggle"] / "forget.csv", dtype=str)
    forget.loc[0, ["image_id", "person_id"]] = ["../../..-0", "../../.."]
    forget.to_csv(w["evil_kaggle"] / "forget.csv", index=False)
    if os.geteuid() == 0:  # root writes through file modes; sysfs refuses new entries even to root
        w["readonly"], w["readonly_cause"] = Path("/sys/kernel"), "operation not permitted"
    else:
        w["readonly"] = tmp / "readonly"
        w["readonly"].mkdir()
        w["readonly"].chmod(0o555)
        w["readonly_cause"] = "permission denied"
    # Run folders (ResNet-18 weights; seed 1 of `nanrun` NaN; `incomplete` lacks chunk 1; `corrupt` has an
    # emptied chunk file; `flipped` one byte changed in it).
    v = [torch_to_flax(random_torch_resnet18(s).state_dict()) for s in (2, 3)]
    bad = jax.tree_util.tree_map(np.copy, v[1])
    bad["params"]["fc"]["kernel"][0, 0] = np.nan
    w["good"] = _fabricate(tmp / "good", v, chunk_size=2)
    w["nanrun"] = _fabricate(tmp / "nanrun", [v[0], bad], chunk_size=2)
    w["incomplete"] = _fabricate(tmp / "incomplete", v, chunk_size=1, write_chunks=[0])
    w["corrupt"] = tmp / "corrupt"
    shutil.copytree(w["good"], w["corrupt"])
    largest = max((p for p in (w["corrupt"] / "chunks").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    largest.write_bytes(b"")
    w["flipped"] = tmp / "flipped"
    shutil.copytree(w["good"], w["flipped"])
    largest = w["flipped"] / largest.relative_to(w["corrupt"])
    data = bytearray(largest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    largest.write_bytes(bytes(data))
    w["stale"] = tmp / "stale"
    w["stale"].mkdir()
    for i in range(4):
        (w["stale"] / f"unlearned_checkpoint_{i}.pth").write_bytes(b"an earlier export")
    # Folders for evaluate: recorded data of the TINY flags, and of another --data-seed (same sizes).
    flags = [a.format(**w) for a in TINY]
    data, other = _data(flags), _data([*flags, "--data-seed", "1"])
    assert data.sizes() == other.sizes() and data.digests()["forget"] != other.digests()["forget"]
    w["good_eval"] = _fabricate(tmp / "good_eval", v, chunk_size=2, data=data)
    w["good_eval2"] = _fabricate(tmp / "good_eval2", v, chunk_size=2, data=data)
    w["other_forget"] = _fabricate(tmp / "other_forget", v, chunk_size=2, data=other, method="retrain")
    w["diverged"] = tmp / "diverged"
    return w


@pytest.fixture(scope="module")
def diverged_run(world):
    """One real run that diverges: a tiny ResNet retrained with lr=1e30 (exit 4, seeds and epochs named)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("jax_unlearn.cli.commands._model", lambda args, n: _tiny(n))
        argv = ["retrain", "--out", str(world["diverged"]), "--n-seeds", "2", "--no-track", "--set", "lr=1e30",
                "--set", "batch_size=16", "--set", "epochs=2", *[a.format(**world) for a in TINY]]
        with contextlib.redirect_stderr(io.StringIO()) as err:
            first = main(argv)
            again = main(argv)  # resumes: finished chunks kept, the same refusal
    return first, again, err.getvalue()


def _run(argv) -> int:
    try:
        return main(list(argv))
    except SystemExit as e:  # argparse
        return e.code


def test_a_diverged_run_exits_4_naming_seeds_and_epochs(world, diverged_run):
    first, again, err = diverged_run
    assert (first, again) == (4, 4)
    metrics = pd.read_csv(world["diverged"] / "metrics.csv")
    assert not metrics["finite"].all()
    first_bad = metrics[~metrics["finite"]].groupby("seed")["epoch"].min()
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 2 and lines[0] == lines[1]
    for seed, epoch in first_bad.items():
        assert f"seed {seed} from epoch {epoch}" in lines[0]
    assert "Traceback" not in err


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # e.g. "Event loop is closed"
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, world, diverged_run, capfd):
    fill = lambda s: s.format(**world)  # noqa: E731
    for path in case.absent:
        p = Path(fill(path))
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("jax_unlearn.evaluation.outputs.make_model", lambda num_classes, *a, **k: _tiny(num_classes))
        code = _run([fill(a) for a in case.argv])
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert code == case.exit, err
    message = fill(case.message)
    if case.exit == 0:
        assert message in out
    else:
        lines = [line for line in err.splitlines() if "error:" in line]
        assert len(lines) == 1 and message in lines[0], err
        assert "\x1b" not in err
    for path in case.absent:
        assert not Path(fill(path)).exists(), path


def test_exports_of_identical_runs_are_byte_identical(world, tmp_path, capfd):
    for name in ("a", "b"):
        assert main(["export", str(world["good"]), str(tmp_path / name)]) == 0
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == ["submission.zip", "unlearned_checkpoint_0.pth", "unlearned_checkpoint_1.pth"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    back = torch.load(tmp_path / "a" / "unlearned_checkpoint_1.pth", weights_only=True)
    assert torch.equal(back["fc.weight"], random_torch_resnet18(3).state_dict()["fc.weight"])


def test_allow_nonfinite_exports_them_when_asked(world, tmp_path):
    assert main(["export", str(world["nanrun"]), str(tmp_path / "ex"), "--allow-nonfinite", "--no-zip"]) == 0
    back = torch.load(tmp_path / "ex" / "unlearned_checkpoint_1.pth", weights_only=True)
    assert torch.isnan(back["fc.weight"]).sum() == 1


def test_a_full_disk_is_one_line_and_leaves_no_temporary_files(world, tmp_path):
    """A file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes writes fail as on a full disk: export, then an
    orbax chunk save."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        import numpy as np
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        from jax_unlearn.cli.main import classify, main
        from jax_unlearn.jobs.folders import RunFolder
        code = main(["export", {str(world["good"])!r}, {str(tmp_path / "ex")!r}])
        try:
            big = {{"w": np.random.default_rng(0).random((2, 1 << 19))}}  # 8 MB, incompressible
            RunFolder({str(tmp_path / "run")!r}).save_chunk(0, np.arange(2), big)
        except BaseException as e:
            print("chunk:", *classify(e), file=sys.stderr)
        sys.exit(code)
    """)
    root = str(Path(__file__).parents[2])
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=root,
                          env={**os.environ, "PYTHONPATH": root})
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error:" in line or "chunk:" in line]
    assert len(lines) == 2, proc.stderr
    export_line, chunk_line = lines
    assert "unlearned_checkpoint_0.pth: file too large" in export_line
    assert chunk_line.startswith("chunk: 3 ") and "chunk_00000" in chunk_line
    assert not (tmp_path / "ex").exists()
    leftovers = [p.name for p in (tmp_path / "run").rglob("*")] if (tmp_path / "run").exists() else []
    assert not [n for n in leftovers if "tmp" in n], leftovers


def test_help_shows_defaults_and_explains_arguments(capsys):
    def help_of(*argv):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        return capsys.readouterr().out

    top = help_of()
    assert "exit codes:" in top and ":func:" not in top and "``" not in top
    assert "epochs=30" in help_of("retrain")
    unlearn = help_of("unlearn")
    assert "(default: 8)" in unlearn and "(default: finetune)" in unlearn and "jax-unlearn methods" in unlearn
    assert "counted from 0" in help_of("export")
    assert "must repeat" in help_of("evaluate")
    assert "(default: 30)" in help_of("train-original")


def test_debug_shows_the_traceback(world):
    with pytest.raises(Exception, match="is empty"):
        main(["--debug", "convert", str(world["empty"]), str(world["tmp"] / "x.msgpack")])


def test_the_finite_flag_checks_weights_always_and_losses_of_run_epochs_only():
    from jax_unlearn.engine.run import _finite

    variables = {"params": {"w": np.ones(3, np.float32)}, "batch_stats": {"n": np.zeros((), np.int32)}}
    nan_weights = {"params": {"w": np.array([1.0, np.nan, 1.0], np.float32)}, "batch_stats": variables["batch_stats"]}
    loss, nan_loss = {"loss": np.float32(0.5)}, {"loss": np.float32(np.nan)}
    assert bool(_finite(variables, loss, 0, None)) and bool(_finite(variables, {}, 0, None))
    assert not bool(_finite(variables, nan_loss, 0, None))
    assert not bool(_finite(nan_weights, loss, 0, None))
    # A lane with hyper['epochs'] = 2: epoch 2 (0-based) is masked and reports a nan loss by design.
    assert bool(_finite(variables, nan_loss, 2, 2)) and not bool(_finite(variables, nan_loss, 1, 2))
    assert not bool(_finite(nan_weights, nan_loss, 2, 2))
