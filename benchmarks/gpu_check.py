"""One prepared device call that takes the GPU figures of the benchmarks, sized for a short device lease.

A lent GPU comes with minutes, not hours (this workplace: 15 minutes of device time a session, starts and
transfers included, 10 minutes a command), so the figures that matter most are taken by one command, each
step under its own time budget, in order of value:

1. ``env``: ``nvidia-smi`` and what JAX and torch see (a broken install shows here, in seconds);
2. ``parity``: the GPU parity tests of the conv lowerings, fp32 at ``highest`` matmul precision (TF32 would
   make cuDNN and cuBLAS differ by design) — figures of a lowering that computes another function are void;
3. ``throughput``: ``benchmarks/throughput.py`` at the issue's target point, 64 lanes × batch 64 in bf16,
   for the ``gemm``, ``xla`` and ``gemm-body`` lowerings, each beside its own single model at batch 4096;
4. ``unlearn``: ``benchmarks/unlearn_vs_pytorch.py``, 512 Kaggle-baseline runs on a 28k-image retain set by
   jax-unlearn (64 lanes, ``gemm``, bf16; run first) against PyTorch eager (8 runs timed, extrapolated to
   512 and flagged so): the 512-runs-under-60-s target, and the accuracy of bf16 runs against fp32 torch;
5. ``progress`` (not in the default call: ``--only progress``): ``benchmarks/progress_overhead.py`` at 64
   vmapped lanes — the per-epoch progress hook, which ``jax.debug`` unrolls over the lanes, with against
   without (ResNet-18 retrain, 3 epochs, 8,192 synthetic retain images, fp32);
6. ``leaderboard`` (not in the default call: a lease of its own, ``--only leaderboard``): ``jax-unlearn
   leaderboard --preset gpu-short`` — the leaderboard's whole protocol (original, disjoint tuning and
   scoring retrain populations, successive-halving tuning, fresh-seed scoring with bootstrap intervals) on
   ResNet-18 with reduced data, N = 32 and two methods; its tables (not its run folders, gigabytes of
   weights) are copied into the results. Resumable: the same call continues a study cut short.

A step that overruns its budget is stopped (its whole process group) and the next one starts; what it
measured is kept, since ``throughput.py`` rewrites its outputs after every point, ``unlearn_vs_pytorch.py``
after every backend, and every step's output is in the log. After every step the outputs are bundled
again, so a call cut short still brings back what was measured. ``--out`` (the device tool's ``$OUT``,
default ``out/gpu_check``) holds just three files — the tool brings back at most eight: ``log.txt`` (all
output), ``results.tgz`` (every step's JSON/Markdown/PNG, which are written to ``--results`` outside it)
and ``summary.md`` (the headline figures, printed last, so they are in the reply's tail).

On the device (its python3 has jax, flax, optax, torch, pytest; nothing installed, the tree on
``PYTHONPATH``; Fashion-MNIST copied into ``data/fashion-mnist`` here and carried)::

    python3 benchmarks/gpu_check.py --out "$OUT"      # with carry=["data/fashion-mnist"], timeout_s=600

``--dry-run`` prints the plan; ``--only throughput,unlearn`` runs some steps (``--only leaderboard`` the
leaderboard step, in a call of its own); ``--budget S`` scales every step's budget to a total of S seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import NamedTuple

if __package__ in (None, ""):  # python benchmarks/gpu_check.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common, throughput  # noqa: E402

THROUGHPUT_OUT, UNLEARN_OUT = "throughput_64x64_bf16", "unlearn_vs_pytorch_512_gemm_bf16"  # in --results
PROGRESS_OUT = "progress_overhead_64"  # in --results
LEADERBOARD_OUT = "leaderboard_gpu_short"  # in --results: the study's tables; its run folders stay beside it
LEADERBOARD_FILES = ("LEADERBOARD.md", "leaderboard.csv", "tuning.csv", "leaderboard.png", "config.json")
RETRAIN_EPOCHS = 30  # the official recipe (methods/finetune.py: retrain)
DATA_DIRS = ("data/fashion-mnist", "/usr/share/datasets/fashion-mnist", "data/usr/share/datasets/fashion-mnist")


class Step(NamedTuple):
    """One command of the plan: ``name``, its time budget in seconds, argv, extra environment, whether a
    call without ``--only`` runs it, and a folder whose :data:`LEADERBOARD_FILES` are copied into the
    results after it (``collect``: ``(source, destination)``)."""

    name: str
    budget_s: float
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    default: bool = True
    collect: tuple[Path, Path] | None = None


def find_data_dir(candidates=DATA_DIRS) -> str | None:
    """The first folder holding Fashion-MNIST's ``train-images-idx3-ubyte.gz`` (relative to the repo root)."""
    for d in candidates:
        if (common.REPO / d / "train-images-idx3-ubyte.gz").is_file():
            return str(common.REPO / d)
    return None


def plan(res: Path, data_dir: str | None) -> list[Step]:
    """The steps, in order of value, writing into ``res``; the default steps' budgets sum to 520 s (a 600 s
    command, with room to bundle), and so does the leaderboard's alone."""
    py = sys.executable
    data = ("--data-dir", data_dir) if data_dir else ()
    study = res.parent / f"{res.name}_{LEADERBOARD_OUT}"  # beside the results: its run folders are not bundled
    env_probe = ("import jax, torch; print('jax', jax.__version__, jax.devices()); "
                 "print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())")
    return [
        Step("env", 20, ("bash", "-c", f"nvidia-smi; {py} -c \"{env_probe}\"")),
        Step("parity", 90, (py, "-m", "pytest", "-q", "-x", "tests/models/test_conv.py", "-k",
                            "gpu or resnet18 or vmapped"), (("JAX_DEFAULT_MATMUL_PRECISION", "highest"),)),
        Step("throughput", 180, (py, "benchmarks/throughput.py", "--lanes", "64", "--batch", "64", "--dtypes",
                                 "bfloat16", "--conv", "gemm,xla,gemm-body", "--steps", "10", "--repeats", "3",
                                 "--out", str(res / THROUGHPUT_OUT))),
        Step("unlearn", 230, (py, "benchmarks/unlearn_vs_pytorch.py", "--runs", "512", "--lanes", "64",
                              "--backends", "jax,eager", "--eager-runs", "8", "--max-train", "31111",
                              "--original-epochs", "5", "--conv", "gemm", "--dtype", "bfloat16", *data,
                              "--out", str(res / UNLEARN_OUT))),
        Step("progress", 200, (py, "benchmarks/progress_overhead.py", "--method", "retrain", "--epochs", "3",
                               "--retain", "8192", "--seeds", "64", "--repeats", "3",
                               "--out", str(res / PROGRESS_OUT)), default=False),
        Step("leaderboard", 520, (py, "-m", "jax_unlearn.cli.main", "leaderboard", "--preset", "gpu-short",
                                  "--out", str(study), *data),
             default=False, collect=(study, res / LEADERBOARD_OUT)),
    ]


def run_step(step: Step, log, timeout_s: float) -> dict:
    """Run ``step`` in its own process group, output appended to ``log``; stop the group (TERM, then KILL)
    once ``timeout_s`` has passed. Returns name, return code (None: stopped), seconds and whether it timed
    out."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(common.REPO), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1", **dict(step.env)}
    log.write(f"\n=== {step.name} (budget {timeout_s:.0f} s) {common.utc_now()}\n$ {' '.join(step.argv)}\n")
    log.flush()
    elapsed = common.stopwatch()
    proc = subprocess.Popen(step.argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=common.REPO,
                            start_new_session=True)
    timed_out = False
    try:
        rc = proc.wait(timeout=max(timeout_s, 1.0))
    except subprocess.TimeoutExpired:
        timed_out, rc = True, None
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            pass
        # Then KILL whatever is left of the group (a worker still holding GPU memory would starve the next step).
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
    record = {"step": step.name, "rc": rc, "seconds": round(elapsed(), 1), "timed_out": timed_out}
    log.write(f"=== {step.name}: {record}\n")
    log.flush()
    return record


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # the whole group is gone already
        pass


def bundle(res: Path, out: Path) -> Path:
    """Pack the folder ``res`` into ``out/results.tgz`` atomically (rewritten after every step)."""
    from converters import atomic_write

    def write(tmp):
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(res, arcname="results")

    return atomic_write(out / "results.tgz", write)


def collect(step: Step) -> None:
    """Copy the step's :data:`LEADERBOARD_FILES` that exist from its ``collect`` source into its destination."""
    import shutil

    if step.collect is None:
        return
    source, destination = step.collect
    destination.mkdir(parents=True, exist_ok=True)
    for name in LEADERBOARD_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, destination / name)


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summary(res: Path, records: list[dict]) -> str:
    """Markdown: the steps' outcomes, then the headline figures found in their JSON outputs."""
    lines = ["# GPU check", "", f"- date: {common.utc_now()}", "",
             common.markdown_table(["step", "rc", "seconds", "timed out"],
                                   [[r["step"], r["rc"], r["seconds"], r["timed_out"]] for r in records])]
    tp = _load(res / f"{THROUGHPUT_OUT}.json")
    if tp:
        lines += ["", f"## Throughput ({tp['device']}; {'complete' if tp.get('complete') else 'partial'})", "",
                  common.markdown_table(*throughput.table(tp["rows"]))]  # its own lanes/ceiling pairing
        if "target_64x64_bf16" in tp:
            t = tp["target_64x64_bf16"]
            lines.append(f"\nTarget ≥ 500k img/s at 64×64 bf16: best {t['img_per_s']:,.0f} ({t['conv']}), "
                         f"{'met' if t['met'] else 'NOT met'}")
    un = _load(res / f"{UNLEARN_OUT}.json")
    if un:
        rows = [[n, b["img_per_s"], b["wall_for_R_s"], b.get("compile_s"), b["wall_for_R_incl_compile_s"],
                 b["extrapolated"], b["accuracy"]["retain"]["mean"], b["accuracy"]["test"]["mean"]]
                for n, b in un["backends"].items()]
        lines += ["", f"## 512 Kaggle-baseline runs ({un['device']}; "
                  f"{'complete' if un.get('complete') else 'partial'})", "",
                  common.markdown_table(["backend", "img/s", "wall R s", "compile s", "wall R incl. compile s",
                                         "extrapolated", "retain acc", "test acc"], rows),
                  f"\naccuracy match (bf16 JAX vs fp32 torch): {un['accuracy_match']}"]
        jax_b, retain = un["backends"].get("jax"), un.get("sizes", {}).get("retain")
        if jax_b and retain:
            # The official retrain recipe is the same step shape (batch 64 per lane): 30 epochs of it.
            retrain_s = 512 * RETRAIN_EPOCHS * retain / jax_b["img_per_s"]
            lines.append(f"\nProjected, not measured: 512 retrains ({RETRAIN_EPOCHS} epochs × {retain:,} images, "
                         f"batch 64) at this run's {jax_b['img_per_s']:,.0f} img/s take {retrain_s / 60:.1f} min; "
                         f"with the 512 unlearning runs {(retrain_s + jax_b['wall_for_R_incl_compile_s']) / 60:.1f}"
                         f" min before scoring (target: < 40 min in all).")
    board = res / LEADERBOARD_OUT / "leaderboard.csv"
    if board.is_file():
        import pandas as pd

        table = pd.read_csv(board)
        cols = [c for c in ("method", "final_score", "score_lo", "score_hi", "forgetting_quality", "test_acc",
                            "fraction_of_retrain") if c in table]
        lines += ["", "## Leaderboard, preset gpu-short (ResNet-18, reduced data; LEADERBOARD.md in results.tgz)",
                  "", common.markdown_table(cols, table[cols].values.tolist())]
    return "\n".join(lines) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/gpu_check", help="output folder (the device tool's $OUT)")
    p.add_argument("--results", default="out/gpu_check_results", help="where the steps write their outputs")
    p.add_argument("--data-dir", default=None, help=f"Fashion-MNIST folder (default: the first of {DATA_DIRS})")
    p.add_argument("--only", default=None, help="comma-separated step names to run (default: all)")
    p.add_argument("--budget", type=float, default=None, help="scale the step budgets to this many seconds")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    """Run the plan (or ``--only`` part of it); return one record per step run."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out, res = Path(args.out).resolve(), Path(args.results).resolve()
    steps = plan(res, args.data_dir or find_data_dir())
    names = [s.name for s in steps]
    if args.only:
        wanted = [n for n in args.only.split(",") if n]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise SystemExit(f"gpu_check: unknown steps {unknown}; valid: {names}")
        steps = [s for s in steps if s.name in wanted]
    else:
        steps = [s for s in steps if s.default]
    if args.budget:
        scale = args.budget / sum(s.budget_s for s in steps)
        steps = [s._replace(budget_s=s.budget_s * scale) for s in steps]
    if args.dry_run:
        for s in steps:
            print(f"{s.name:10s} {s.budget_s:6.0f} s  {' '.join(s.argv)}")
        return []
    res.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    records, deadline = [], time.monotonic() + sum(s.budget_s for s in steps)
    with open(out / "log.txt", "a") as log:
        for s in steps:
            # A step that ends early lends its unused seconds to the later ones.
            remaining = deadline - time.monotonic() - sum(t.budget_s for t in steps[len(records) + 1:])
            records.append(run_step(s, log, max(remaining, s.budget_s * 0.5)))
            collect(s)
            common.write_json(res / "gpu_check.json", {"records": records, "command": sys.argv})
            bundle(res, out)
    text = summary(res, records)
    (out / "summary.md").write_text(text)
    print(text, end="")
    return records


if __name__ == "__main__":
    main()
