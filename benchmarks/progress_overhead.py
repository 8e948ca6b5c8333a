"""What the in-program progress hook costs: the same population with and without it, in one process.

Issue #11 asks that per-epoch progress (``make_run(..., on_epoch=EpochProgress(...))``, a
``jax.debug.callback`` per epoch) cost no measurable time. This script builds one run of ``--method`` twice —
with the hook (reporting to an in-memory stream, plain lines) and without — and compiles each once
(:func:`jax_unlearn.engine.lanes.lane_runner`, as ``run_seeds`` does), then times a population of
``--seeds`` seeds through each, alternating the two ``--repeats`` times after one warm-up population each
(which includes compilation, reported apart), and reports the median wall seconds per population and
their ratio. Lanes run as the engine runs them on this backend
(:func:`jax_unlearn.engine.lanes.lanes_per_call`: one at a time on a CPU, one vmapped chunk elsewhere).

Data: synthetic 32×32 images (:func:`common.synthetic_splits`); the model: ResNet-18 (``--arch resnet18``,
default) or the small test ResNet (``--arch tiny``: stages (1, 1), width 4), float32, ``conv='auto'``.

Usage (from the repository root)::

    python benchmarks/progress_overhead.py --method retrain --epochs 3 --retain 600 --seeds 4 \\
        --out out/benchmarks/progress_overhead
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

if __package__ in (None, ""):  # python benchmarks/progress_overhead.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

ARCHS = {"resnet18": None, "tiny": {"stage_sizes": (1, 1), "width": 4}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="retrain", help="a registered method (default: retrain, from scratch)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (the hook fires once per epoch)")
    p.add_argument("--retain", type=int, default=600, help="retain images (forget, validation: a tenth each)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seeds", type=int, default=4, help="seeds per population (one chunk)")
    p.add_argument("--repeats", type=int, default=3, help="timed populations per variant (median reported)")
    p.add_argument("--arch", choices=tuple(ARCHS), default="resnet18")
    p.add_argument("--out", default="out/benchmarks/progress_overhead", help="output prefix (.json, .md)")
    args = p.parse_args(argv)
    if min(args.epochs, args.retain, args.batch_size, args.seeds, args.repeats) < 1:
        p.error("--epochs, --retain, --batch-size, --seeds and --repeats must be >= 1")
    return args


def main(argv=None) -> dict:
    """Measure; write ``<out>.json`` and ``<out>.md``; return the result dict."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    import jax
    import numpy as np

    from jax_unlearn.data.types import Normalization, Split, UnlearningData
    from jax_unlearn.engine.lanes import lane_runner, lanes_per_call
    from jax_unlearn.engine.progress import EpochProgress
    from jax_unlearn.engine.run import RunConfig, context_for, device_data, make_run
    from jax_unlearn.methods import build_method
    from jax_unlearn.models import init_variables, make_model, resolve_conv

    small = max(1, args.retain // 10)
    splits = common.synthetic_splits(0, retain=args.retain, forget=small, validation=small, test=small)
    data = UnlearningData(**{name: Split(x, y) for name, (x, y) in splits.items()}, num_classes=10,
                          normalization=Normalization(), description={"source": "synthetic"})
    model = make_model(10, arch=ARCHS[args.arch])
    ctx = context_for(data, model)
    method = build_method(args.method, ctx, epochs=args.epochs, batch_size=args.batch_size)
    start = jax.jit(lambda k: init_variables(model, k))(jax.random.key(0))
    dev = device_data(data)
    stream = io.StringIO()
    # img/s in the reporter's lines counts retain images per epoch (the methods' pass); not what is measured.
    reporter = EpochProgress(args.method, method.num_epochs, ctx.size("retain"), bar=False, stream=stream)
    runs = {"with hook": make_run(ctx, method, RunConfig(track=False), on_epoch=reporter),
            "without": make_run(ctx, method, RunConfig(track=False))}

    width = lanes_per_call(args.seeds)
    calls = {name: lane_runner(run, 0, start, dev, n_lanes=width) for name, run in runs.items()}
    groups = [np.arange(at, at + width) for at in range(0, args.seeds, width)]

    def population(name):
        """The seeds through the compiled program, call by call as :func:`run_seeds` makes them (with the
        reporter's bookkeeping around each call when the hook is in); seconds."""
        hook = name == "with hook"
        elapsed = common.stopwatch()
        if hook:
            reporter.start(len(groups), unit="chunk" if width == args.seeds else "seed")
        for c, ids in enumerate(groups):
            if hook:
                reporter.start_chunk(c, len(ids))
            jax.block_until_ready(calls[name](ids))
            if hook:
                reporter.end_chunk()
        return elapsed()

    first = {name: population(name) for name in runs}  # warm-up: includes compilation
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name in runs:
            times[name].append(population(name))
    timing = {name: common.Timing.of(t) for name, t in times.items()}
    ratio = timing["with hook"].median / timing["without"].median
    info = common.jax_device_info()
    result = {"date": common.utc_now(), "device": common.describe_device(info), "device_info": info,
              "versions": common.versions(), "command": common.command_line("progress_overhead.py", argv),
              "config": {**vars(args), "conv": resolve_conv("auto"),
                         "lanes_per_call": lanes_per_call(args.seeds)},
              "first_population_s": first, "timing": {k: v.to_dict() for k, v in timing.items()},
              "with_over_without": ratio, "reports": len(stream.getvalue().splitlines())}
    common.write_json(Path(f"{args.out}.json"), result)
    table = common.markdown_table(
        ["variant", "median s / population", "min s", "max s", "first (compile incl.) s"],
        [[name, timing[name].median, timing[name].min, timing[name].max, first[name]] for name in runs])
    table += f"\nwith / without: {ratio:.3f} (median of {args.repeats})\n"
    common.write_markdown(Path(f"{args.out}.md"), {k: result[k] for k in ("date", "device", "command")}, table)
    print(table, end="")
    return result


if __name__ == "__main__":
    main()
