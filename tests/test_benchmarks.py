"""CPU smoke tests of the benchmark scripts at the tiniest sizes: outputs and their fields, never speed.

``benchmarks/`` is a folder of scripts at the repository root (a namespace package), not part of the
installed library, so the root goes on ``sys.path`` here.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common, gpu_check, progress_overhead, throughput  # noqa: E402
from benchmarks import unlearn_vs_pytorch as uvp  # noqa: E402
from jax_unlearn.cli.main import build_parser  # noqa: E402
from jax_unlearn.leaderboard.presets import PRESETS  # noqa: E402

TINY_UNLEARN = ["--data", "synthetic", "--image-size", "16", "--max-train", "36", "--max-eval", "16",
                "--runs", "2", "--lanes", "2", "--procs", "2", "--original-epochs", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def uvp_run(tmp_path_factory):
    """The three backends at the tiniest sizes, once for the module: ``(result, output folder)``."""
    tmp_path = tmp_path_factory.mktemp("uvp")
    return uvp.main([*TINY_UNLEARN, "--out", str(tmp_path / "uvp")]), tmp_path


def test_unlearn_vs_pytorch_runs_all_three_backends_and_reports_every_field(uvp_run):
    result, tmp_path = uvp_run
    on_disk = json.loads((tmp_path / "uvp.json").read_text())
    assert on_disk["command"] == result["command"]
    assert on_disk["command"].startswith("python benchmarks/unlearn_vs_pytorch.py --data synthetic")
    assert on_disk["complete"] is True and "partial" not in (tmp_path / "uvp.md").read_text()
    assert on_disk["sizes"] == {"retain": 32, "forget": 4, "validation": 16, "test": 16}
    backends = on_disk["backends"]
    assert set(backends) == {"eager", "procs", "jax"}
    assert backends["eager"]["workers"] == 1 and backends["procs"]["workers"] == 2
    for name, b in backends.items():
        assert b["runs_timed"] == 2 and not b["extrapolated"]
        for key in ("img_per_s", "seconds_per_run", "wall_timed_s", "wall_for_R_s", "wall_for_R_incl_compile_s"):
            assert math.isfinite(b[key]) and b[key] > 0, (name, key)
        assert "peak_device_bytes" in b and b["host_peak_rss_bytes"] > 0
        for split in ("retain", "test"):
            acc = b["accuracy"][split]
            assert acc["n"] == 2 and 0.0 <= acc["mean"] <= 1.0 and math.isfinite(acc["std"])
            runs = [r[split] for r in b["run_accuracy"].values()]
            assert len(runs) == 2 and acc["mean"] == pytest.approx(sum(runs) / 2)
    assert set(backends["jax"]["run_accuracy"]) == set(backends["eager"]["run_accuracy"])  # the same run ids
    # Outputs are written after each backend: the first write holds eager alone, marked partial.
    args = uvp.parse_args([*TINY_UNLEARN, "--out", str(tmp_path / "partial")])
    uvp.report(args, [], "cpu", on_disk["prepare"], {"eager": backends["eager"]}, complete=False)
    partial = json.loads((tmp_path / "partial.json").read_text())
    assert partial["complete"] is False and list(partial["backends"]) == ["eager"] and not partial["speedup"]
    assert "- status: partial: backends ['eager'] of ['eager', 'procs', 'jax']" in (tmp_path / "partial.md").read_text()
    jax_b = backends["jax"]
    assert jax_b["compile_s"] > 0 and jax_b["lanes"] == 2 and jax_b["chunks"] == 1
    assert jax_b["lane_map"] == 1  # on a CPU, by default, one lane at a time (as the engine runs them)
    assert jax_b["wall_for_R_incl_compile_s"] == pytest.approx(jax_b["wall_for_R_s"] + jax_b["compile_s"])
    assert {"jax_vs_eager", "jax_vs_procs", "procs_vs_eager"} <= set(on_disk["speedup"])
    # The same original, evaluated by torch and by JAX: the evaluators agree (to one test image at most).
    assert set(on_disk["original_acc_by_evaluator"]) == {"eager", "procs", "jax"}
    assert on_disk["evaluators_max_abs_diff"] <= 1 / 16 + 1e-9
    # Same recipe, same start, one step of lr 1e-3: the backends' models are equally accurate.
    means = [b["accuracy"]["test"]["mean"] for b in backends.values()]
    assert max(means) - min(means) <= 1 / 16 + 1e-9
    assert isinstance(on_disk["accuracy_match"], bool) and len(on_disk["accuracy_checks"]) == 6
    md = (tmp_path / "uvp.md").read_text()
    assert "- command: python benchmarks/unlearn_vs_pytorch.py" in md and "| JAX / eager |" in md


def test_unlearn_vs_pytorch_rejects_bad_flags():
    assert uvp.parse_args(["--backends", "jax,eager,jax"]).backends == ("jax", "eager")  # run in this order
    with pytest.raises(SystemExit):
        uvp.parse_args(["--backends", "eager,tensorflow"])
    with pytest.raises(SystemExit):
        uvp.parse_args(["--image-size", "16"])  # fashion-mnist is 32x32
    with pytest.raises(SystemExit):
        uvp.parse_args(["--runs", "0"])


def test_eval_ids_are_evenly_spaced_and_accuracy_check_uses_noise_or_floor():
    assert uvp.eval_ids(512, 4) == [0, 170, 341, 511]
    assert uvp.eval_ids(3, 32) == [0, 1, 2]
    acc = lambda m, s, n: {"accuracy": {"retain": {"mean": m, "std": s, "n": n},  # noqa: E731
                                        "test": {"mean": m, "std": s, "n": n}}}
    checks = uvp.compare_accuracy({"a": acc(0.90, 0.0, 8), "b": acc(0.905, 0.0, 8), "c": acc(0.80, 0.2, 4)}, 0.01)
    assert checks["a-b/test"]["ok"] and checks["a-b/test"]["tolerance"] == 0.01
    assert checks["a-c/retain"]["ok"]  # 0.1 apart but the spread is large: 3 * 0.2/2 = 0.3
    assert not uvp.compare_accuracy({"a": acc(0.9, 0.0, 8), "b": acc(0.8, 0.0, 8)}, 0.01)["a-b/test"]["ok"]


def test_throughput_quick_writes_json_markdown_and_plot(tmp_path):
    out = tmp_path / "tp"
    result = throughput.main(["--quick", "--model", "tiny", "--lanes", "2", "--no-ceiling", "--out", str(out)])
    on_disk = json.loads(out.with_suffix(".json").read_text())
    assert on_disk["command"] == result["command"]
    (row,) = on_disk["rows"]
    assert row["kind"] == "lanes" and row["lanes"] == 2 and row["batch"] == 8 and row["status"] == "ok"
    assert row["images_per_step"] == 16
    assert math.isfinite(row["img_per_s"]) and row["img_per_s"] > 0 and row["compile_s"] > 0
    assert len(row["timing"]["times_s"]) == 2
    assert on_disk["config"]["steps"] == 2 and on_disk["device_info"]["backend"] == "cpu"
    assert "target_64x64_bf16" not in on_disk
    # --conv defaults to 'auto', recorded resolved in the rows: the platform's lowering (canonical on CPU).
    assert row["conv"] == "canonical" and row["lane_map"] == 0 and row["donate"] is True
    assert on_disk["config"]["conv"] == ["auto"] and on_disk["config"]["lane_map"] == [0]
    assert "| canonical | float32 | 8 | 2 | — | 16 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 1000


def test_throughput_table_and_plot_pair_lanes_with_the_single_model_ceiling(tmp_path):
    x = dict(conv="xla", dtype="bfloat16", lane_map=0)
    rows = [
        {"kind": "lanes", **x, "lanes": 1, "batch": 64, "images_per_step": 64, "status": "ok",
         "img_per_s": 1000.0, "step_ms": 64.0, "compile_s": 1.0},
        {"kind": "lanes", **x, "lanes": 4, "batch": 64, "images_per_step": 256, "status": "ok",
         "img_per_s": 3000.0, "step_ms": 85.0, "compile_s": 2.0},
        {"kind": "lanes", **x, "lanes": 8, "batch": 64, "images_per_step": 512, "status": "oom"},
        {"kind": "single", **x, "lanes": 1, "batch": 256, "images_per_step": 256, "status": "ok",
         "img_per_s": 4000.0, "step_ms": 64.0, "compile_s": 1.0},
        {"kind": "lanes", **x, "conv": "gemm", "lane_map": 2, "lanes": 4, "batch": 64, "images_per_step": 256,
         "status": "ok", "img_per_s": 6000.0, "step_ms": 40.0, "compile_s": 2.0},
        {"kind": "single", **x, "conv": "gemm", "lanes": 1, "batch": 256, "images_per_step": 256, "status": "ok",
         "img_per_s": 2000.0, "step_ms": 64.0, "compile_s": 1.0},
    ]
    columns, body = throughput.table(rows)
    assert len(body) == 4 and len(columns) == len(body[0])
    assert body[1][6:10] == [3000.0, 4000.0, 0.75, 0.75]
    assert body[2][6] == "OOM" and body[0][7] is None
    # gemm lanes against gemm's own single model, and against the best single model of any variant (xla).
    assert body[3][:5] == ["gemm", "bfloat16", 64, 4, 2] and body[3][6:10] == [6000.0, 2000.0, 3.0, 1.5]
    assert throughput.plot(rows, tmp_path / "p.png", "t").stat().st_size > 1000
    # While the grid runs the outputs are rewritten after every point, marked partial.
    result = {"date": "d", "device": "dev", "versions": {}, "command": "c", "config": {"model": "resnet18"},
              "rows": rows}
    throughput.write_outputs(result, tmp_path / "t", complete=False)
    assert json.loads((tmp_path / "t.json").read_text())["complete"] is False
    assert "- status: partial" in (tmp_path / "t.md").read_text() and (tmp_path / "t.png").stat().st_size > 1000
    throughput.write_outputs(result, tmp_path / "t", complete=True)
    assert json.loads((tmp_path / "t.json").read_text())["complete"] is True
    assert "partial" not in (tmp_path / "t.md").read_text() and (tmp_path / "t.png").stat().st_size > 1000


def test_common_helpers_format_tables_and_write_numpy_json(tmp_path):
    t = common.Timing.of([3.0, 1.0, 2.0])
    assert (t.median, t.min, t.max) == (2.0, 1.0, 3.0)
    table = common.markdown_table(["a", "b", "c"], [[1234567, 0.012345, None], [True, float("nan"), "x"]])
    assert table.splitlines()[2] == "| 1,234,567 | 0.0123 | — |"
    assert table.splitlines()[3] == "| yes | nan | x |"
    with pytest.raises(ValueError):
        common.markdown_table(["a"], [[1, 2]])
    path = common.write_json(tmp_path / "x.json", {"a": np.float32(1.5), "b": np.arange(2), "t": t})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [0, 1], "t": {"median": 2.0, "min": 1.0, "max": 3.0,
                                                                        "times": [3.0, 1.0, 2.0]}}
    assert common.versions()["jax"] is not None
    assert common.command_line("x.py", ["--a", "b c"]) == "python benchmarks/x.py --a 'b c'"


def test_notebook_loop_reports_medians_and_the_median_of_each_rounds_own_ratio():
    from benchmarks.notebook_loop import TIMES, summarize

    def result(loop, first):
        return {**{key: 1.0 for key in TIMES}, "loop_s": loop, "first_checkpoint_s": first}

    # The machine slows down in round 1: both variants' loops take twice as long there.
    rounds = [{"torch": result(10.0, 1.0), "many": result(14.0, 6.0)},
              {"torch": result(20.0, 2.0), "many": result(32.0, 9.0)},
              {"torch": result(10.0, 1.0), "many": result(15.0, 7.0)}]
    summary = summarize(rounds)
    assert summary["many"]["loop_s"] == 15.0 and summary["many"]["first_checkpoint_s"] == 7.0
    assert summary["many"]["vs_torch_rounds"] == [1.4, 1.6, 1.5]
    assert summary["many"]["vs_torch"] == 1.5  # not 15 / 10: ratios are taken within a round
    assert summary["torch"]["vs_torch"] == 1.0 and summary["torch"]["rounds"] == 3
    assert "vs_torch" not in summarize([{"many": result(14.0, 6.0)}])["many"]


def test_throughput_conv_variants_lane_map_and_no_donate_smoke(tmp_path):
    out = tmp_path / "tp"
    result = throughput.main(["--quick", "--model", "tiny", "--lanes", "2", "--no-ceiling", "--conv", "xla,gemm",
                              "--lane-map", "0,1,4", "--no-donate", "--out", str(out)])
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert rows == json.loads(json.dumps(result["rows"], default=common._json_default))
    # lane map 4 does not divide K = 2: skipped; 0 (plain vmap) and 1 run for each conv variant.
    assert [(r["conv"], r["lane_map"]) for r in rows] == [("xla", 0), ("xla", 1), ("gemm", 0), ("gemm", 1)]
    for r in rows:
        assert r["status"] == "ok" and r["donate"] is False and math.isfinite(r["img_per_s"]) and r["img_per_s"] > 0
    assert result["config"]["conv"] == ["xla", "gemm"] and result["config"]["no_donate"] is True
    assert "| gemm | float32 | 8 | 2 | 1 | 16 |" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        throughput.parse_args(["--conv", "xla,cudnn"])
    with pytest.raises(SystemExit):
        throughput.parse_args(["--lane-map", "-1"])
    assert throughput.lane_maps_for(8, [0, 1, 3, 4, 8, 16]) == [0, 1, 4]


def test_lane_map_program_trains_the_same_lanes_as_plain_vmap():
    """``lax.map`` over groups of lanes is the same function as one vmap over all lanes (gemm convs)."""
    import jax

    setup = throughput.make_setup(throughput.make_model("tiny", "float32", "gemm"), pool=16, image_size=16)
    outs = {}
    for m in (0, 1, 2):  # 1: lax.map over single lanes, each the unbatched program
        fn, state, args = throughput.program(setup, lanes=4, batch=4, steps=2, lane_map=m)
        outs[m] = jax.jit(fn)(state, *args)
    leaves = {m: jax.tree_util.tree_leaves(outs[m]) for m in outs}
    for m in (1, 2):
        assert len(leaves[0]) == len(leaves[m])
        for a, b in zip(leaves[0], leaves[m]):
            assert a.shape == b.shape and a.shape[0] == 4
            np.testing.assert_allclose(np.asarray(b, np.float64), np.asarray(a, np.float64), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of lane_map=3"):
        common.vmap_lanes(lambda a: a, (0,), 3)(np.zeros(4))


def test_conv_spec_maps_names_to_make_model_keywords():
    assert common.conv_spec("gemm-body") == {"conv_impl": "gemm", "stem_conv_impl": "xla"}
    with pytest.raises(ValueError, match="unknown conv lowering"):
        common.conv_spec("cudnn")
    with pytest.raises(SystemExit):
        uvp.parse_args(["--conv", "cudnn"])
    with pytest.raises(SystemExit):
        uvp.parse_args(["--lanes", "8", "--lane-map", "3"])


def test_unlearn_vs_pytorch_jax_gemm_plain_vmap_trains_models_as_accurate_as_torch(tmp_path, uvp_run):
    """JAX alone, its lanes in one vmap (``--lane-map 0``; on a CPU the default is one lane at a time, as
    ``uvp_run`` ran), against the torch runs of ``uvp_run``: the same flags but for the backends and the
    lane map, so the same prepared data, start model and run ids."""
    argv = [*TINY_UNLEARN, "--backends", "jax", "--conv", "gemm", "--lane-map", "0", "--out", str(tmp_path / "u")]
    result, (torch_result, _) = uvp.main(argv), uvp_run
    jax_b, eager = result["backends"]["jax"], torch_result["backends"]["eager"]
    assert jax_b["conv"] == "gemm" and jax_b["lane_map"] == 0 and jax_b["runs_timed"] == 2
    assert result["config"]["conv"] == "gemm" and set(result["backends"]) == {"jax"}
    same = lambda p: {k: v for k, v in p.items() if k != "prepare_s"}  # noqa: E731 -- all but its timing
    assert same(result["prepare"]) == same(torch_result["prepare"])
    assert set(jax_b["run_accuracy"]) == set(eager["run_accuracy"])
    # Same recipe, same start, one step of lr 1e-3: the gemm-lowered JAX models score like torch's.
    assert abs(jax_b["accuracy"]["test"]["mean"] - eager["accuracy"]["test"]["mean"]) <= 1 / 16 + 1e-9
    assert all(abs(jax_b["original_acc"][s] - eager["original_acc"][s]) <= 1 / 16 + 1e-9 for s in eager["original_acc"])
    assert "| float32 gemm |" in (tmp_path / "u.md").read_text()


def test_progress_overhead_times_both_variants_and_counts_the_reports(tmp_path):
    argv = ["--arch", "tiny", "--retain", "40", "--batch-size", "16", "--epochs", "2", "--seeds", "2",
            "--repeats", "2", "--out", str(tmp_path / "po")]
    result = progress_overhead.main(argv)
    on_disk = json.loads((tmp_path / "po.json").read_text())
    assert on_disk["command"] == "python benchmarks/progress_overhead.py " + " ".join(argv)
    assert set(on_disk["timing"]) == {"with hook", "without"}
    for t in on_disk["timing"].values():
        assert len(t["times_s"]) == 2 and 0 < t["min_s"] <= t["median_s"] <= t["max_s"]
    assert math.isfinite(result["with_over_without"]) and result["with_over_without"] > 0
    # One report per epoch per seed (one lane a call on a CPU), in the warm-up and both timed populations.
    assert result["config"]["lanes_per_call"] == 1 and result["reports"] == 3 * 2 * 2
    assert "with / without" in (tmp_path / "po.md").read_text()
    with pytest.raises(SystemExit):
        progress_overhead.parse_args(["--seeds", "0"])


def test_gpu_check_plan_parses_with_the_scripts_own_parsers_and_fits_a_600s_command(tmp_path):
    steps = gpu_check.plan(tmp_path, "/data/fmnist")
    assert [s.name for s in steps] == ["env", "parity", "throughput", "unlearn", "progress", "leaderboard"]
    assert [s.name for s in steps if s.default] == ["env", "parity", "throughput", "unlearn"]
    assert sum(s.budget_s for s in steps if s.default) <= 540
    by_name = {s.name: s for s in steps}
    assert by_name["leaderboard"].budget_s <= 540  # a call of its own
    po = progress_overhead.parse_args(list(by_name["progress"].argv[2:]))
    assert (po.method, po.seeds, po.epochs) == ("retrain", 64, 3) and Path(po.out) == tmp_path / gpu_check.PROGRESS_OUT
    tp = throughput.parse_args(list(by_name["throughput"].argv[2:]))
    assert (tp.lanes, tp.batch, tp.dtypes, tp.conv) == ([64], [64], ["bfloat16"], ["gemm", "xla", "gemm-body"])
    assert Path(tp.out) == tmp_path / gpu_check.THROUGHPUT_OUT  # where summary() looks
    un = uvp.parse_args(list(by_name["unlearn"].argv[2:]))
    assert (un.runs, un.lanes, un.backends, un.dtype, un.conv, un.data_dir) == (
        512, 64, ("jax", "eager"), "bfloat16", "gemm", "/data/fmnist")
    assert Path(un.out) == tmp_path / gpu_check.UNLEARN_OUT
    assert ("JAX_DEFAULT_MATMUL_PRECISION", "highest") in by_name["parity"].env
    board = by_name["leaderboard"].argv
    assert board[1:4] == ("-m", "jax_unlearn.cli.main", "leaderboard")
    parser, _ = build_parser()
    lb = parser.parse_args(list(board[3:]))
    assert (lb.preset, lb.data_dir) == ("gpu-short", "/data/fmnist")
    source, destination = by_name["leaderboard"].collect
    assert Path(lb.out) == source and not source.is_relative_to(tmp_path)  # run folders stay out of the bundle
    assert destination == tmp_path / gpu_check.LEADERBOARD_OUT
    with pytest.raises(SystemExit, match="unknown steps"):
        gpu_check.main(["--only", "env,nope", "--dry-run"])


def test_gpu_short_preset_is_resnet18_with_the_full_protocol_on_reduced_data():
    preset = PRESETS["gpu-short"]
    assert preset.arch is None and preset.recipe.get("lr") is None  # ResNet-18, the official recipe's rate
    assert preset.rounds >= 2 and preset.n >= 32 and preset.n_tuning >= 32 and preset.bootstrap >= 100
    assert preset.max_train is not None and preset.methods and "finetune" in preset.methods


def test_gpu_check_stops_an_overrunning_step_keeps_going_and_bundles_after_each(tmp_path, monkeypatch):
    py, pid_file, deaf = sys.executable, tmp_path / "child.pid", tmp_path / "deaf.py"
    deaf.write_text(f"import os, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                    f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)\n")

    def fake_plan(res, data_dir):
        return [
            gpu_check.Step("writes", 5, (py, "-c", f"open({str(res / 'a.json')!r}, 'w').write('{{}}')")),
            # The child of a shell, deaf to TERM: the whole process group must go, or the call would hang on
            # it (or a GPU worker would outlive its step).
            gpu_check.Step("hangs", 1, ("bash", "-c", f"{py} {deaf}; echo after")),
            gpu_check.Step("fails", 5, (py, "-c", "raise SystemExit(3)")),
        ]
    monkeypatch.setattr(gpu_check, "plan", fake_plan)
    out, res = tmp_path / "out", tmp_path / "res"
    elapsed = common.stopwatch()
    records = gpu_check.main(["--out", str(out), "--results", str(res)])
    # "hangs" gets its own second plus what "writes" left unused (about 5 s), then TERM, 10 s, KILL.
    assert elapsed() < 40
    assert [(r["step"], r["rc"], r["timed_out"]) for r in records] == [
        ("writes", 0, False), ("hangs", None, True), ("fails", 3, False)]
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "results.tgz", "summary.md"]
    import tarfile
    with tarfile.open(out / "results.tgz") as tar:
        assert {"results/a.json", "results/gpu_check.json"} <= set(tar.getnames())
    log = (out / "log.txt").read_text()
    assert "=== hangs (budget" in log and "\nafter\n" not in log  # the shell was stopped too
    status = Path(f"/proc/{pid_file.read_text()}/status")
    assert not status.exists() or "State:\tZ" in status.read_text()  # killed (at most a zombie awaiting init)
    assert "| hangs | — | " in (out / "summary.md").read_text()


def test_gpu_check_summary_reads_the_headline_figures(tmp_path):
    rows = [{"kind": "lanes", "conv": "gemm", "dtype": "bfloat16", "lanes": 64, "batch": 64, "lane_map": 0,
             "images_per_step": 4096, "status": "ok", "img_per_s": 512_000.0, "step_ms": 80.0, "compile_s": 30.0},
            {"kind": "single", "conv": "gemm", "dtype": "bfloat16", "lanes": 1, "batch": 4096, "lane_map": 0,
             "images_per_step": 4096, "status": "ok", "img_per_s": 600_000.0, "step_ms": 68.0, "compile_s": 9.0}]
    common.write_json(tmp_path / f"{gpu_check.THROUGHPUT_OUT}.json", {
        "device": "H200", "complete": True, "rows": rows,
        "target_64x64_bf16": {"img_per_s": 512_000.0, "conv": "gemm", "met": True}})
    acc = {"retain": {"mean": 0.9}, "test": {"mean": 0.88}}
    common.write_json(tmp_path / f"{gpu_check.UNLEARN_OUT}.json", {
        "device": "H200", "accuracy_match": True, "sizes": {"retain": 28_000}, "backends": {
            "eager": {"img_per_s": 5600.0, "wall_for_R_s": 2560.0, "wall_for_R_incl_compile_s": 2560.0,
                      "extrapolated": True, "accuracy": acc},
            "jax": {"img_per_s": 400_000.0, "wall_for_R_s": 36.0, "compile_s": 20.0,
                    "wall_for_R_incl_compile_s": 56.0, "extrapolated": False, "accuracy": acc}}})
    text = gpu_check.summary(tmp_path, [{"step": "throughput", "rc": 0, "seconds": 100.0, "timed_out": False}])
    assert "| gemm | bfloat16 | 64 | 64 | — | 4,096 | 512,000 | 600,000 | 0.853 | 0.853 | 80 | 30 |" in text
    assert "best 512,000 (gemm), met" in text
    assert "| jax | 400,000 | 36 | 20 | 56 | no | 0.9 | 0.88 |" in text
    assert "accuracy match (bf16 JAX vs fp32 torch): True" in text
    # 512 * 30 * 28000 / 400k img/s = 1075.2 s; + 56 s for the unlearning runs.
    assert "Projected, not measured: 512 retrains (30 epochs × 28,000 images, batch 64) at this run's 400,000 " \
           "img/s take 17.9 min; with the 512 unlearning runs 18.9 min" in text



def test_gpu_check_collects_the_leaderboard_tables_not_its_run_folders(tmp_path):
    source, res = tmp_path / "study", tmp_path / "res"
    (source / "finetune" / "chunks").mkdir(parents=True)
    (source / "finetune" / "chunks" / "weights.bin").write_bytes(b"0" * 64)
    (source / "LEADERBOARD.md").write_text("# table\n")
    pd.DataFrame({"method": ["retrain", "finetune"], "final_score": [0.2, 0.1], "score_lo": [0.1, 0.05],
                  "score_hi": [0.3, 0.15], "forgetting_quality": [0.9, 0.4], "test_acc": [0.85, 0.86],
                  "fraction_of_retrain": [1.0, 0.05]}).to_csv(source / "leaderboard.csv", index=False)
    step = gpu_check.Step("leaderboard", 1, ("true",), collect=(source, res / gpu_check.LEADERBOARD_OUT))
    gpu_check.collect(step)
    assert sorted(p.name for p in (res / gpu_check.LEADERBOARD_OUT).iterdir()) == ["LEADERBOARD.md", "leaderboard.csv"]
    text = gpu_check.summary(res, [{"step": "leaderboard", "rc": 0, "seconds": 500.0, "timed_out": False}])
    assert "## Leaderboard, preset gpu-short" in text and "| finetune | 0.1 | 0.05 | 0.15 | 0.4 | 0.86 | 0.05 |" in text
