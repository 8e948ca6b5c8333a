"""Why XLA:CPU convolutions are slow inside ``lax.scan``: one train step, looped four ways, both lowerings.

A train step (forward, backward, SGD) of one ResNet BasicBlock (default: 64 channels, 8×8 maps, batch 64 —
ResNet-18's ``layer1`` at 32×32 input) or of the whole ResNet-18 (``--model resnet18``, 32×32, batch 64), run
S times as

* ``loop``:   a Python loop of ``jit(step)`` (one XLA program per step);
* ``scan``:   ``jit(lax.scan(step))`` — one program, the steps in an XLA while loop (what the engine runs);
* ``fori``:   ``jit(lax.fori_loop(step))`` — the same while loop, written differently;
* ``unroll``: ``jit(lax.scan(step, unroll=S))`` — one program, no while loop (S copies of the step);

for ``--conv xla`` (``lax.conv_general_dilated``), ``gemm`` (im2col + GEMM) and ``canonical`` (XLA's conv
with a canonical-layout VJP; jax_unlearn.models.conv).
Each variant is compiled and run once (warm-up), then timed ``--repeats`` times with ``block_until_ready``;
printed: the median wall seconds and process CPU seconds (``time.process_time``: all threads) per step.

Run with ``XLA_FLAGS`` set in the environment to try XLA CPU flags (they are read once, at import), and with
``--dump DIR`` to write the optimised HLO of each program (``<conv>_<variant>.txt``) for inspection.

Usage (from the repository root)::

    python benchmarks/xla_conv_scan.py                       # block, all variants, < 1 min on 2 cores
    python benchmarks/xla_conv_scan.py --model resnet18 --variants loop,scan --steps 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # python benchmarks/xla_conv_scan.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jax_unlearn.models import ResNet18  # noqa: E402
from jax_unlearn.models.resnet import BasicBlock  # noqa: E402

VARIANTS = ("loop", "scan", "fori", "unroll")


def make_step(model, lr: float = 1e-3):
    """``step((params, batch_stats), x) -> ((params, batch_stats), loss)``: train-mode forward, backward, SGD."""

    def step(state, x):
        params, stats = state

        def loss_fn(p):
            y, new = model.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            return jnp.mean(jnp.square(y.astype(jnp.float32))), new["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
        return (params, stats), loss

    return step


def programs(step, steps: int):
    """``{variant: fn(state, xs) -> state}`` running ``step`` over the ``steps`` rows of ``xs``."""
    one = jax.jit(step)

    def loop(state, xs):
        for s in range(steps):
            state, _ = one(state, xs[s])
        return state

    def fori(state, xs):
        return jax.lax.fori_loop(0, steps, lambda s, st: step(st, xs[s])[0], state)

    return {"loop": loop, "scan": jax.jit(lambda st, xs: jax.lax.scan(step, st, xs)[0]), "fori": jax.jit(fori),
            "unroll": jax.jit(lambda st, xs: jax.lax.scan(step, st, xs, unroll=steps)[0])}


def time_variant(fn, state, xs, repeats: int) -> tuple[float, float, float]:
    """(warm-up seconds incl. compile, median wall s, median CPU s) of ``fn(state, xs)``."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(state, xs))
    warm = time.perf_counter() - t0
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(state, xs))
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return warm, statistics.median(walls), statistics.median(cpus)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("block", "resnet18"), default="block")
    p.add_argument("--conv", default="xla,gemm,canonical", help="comma-separated lowerings (conv impls)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    p.add_argument("--steps", type=int, default=4, help="S: steps per call")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--width", type=int, default=64, help="block channels (block model)")
    p.add_argument("--size", type=int, default=8, help="block input height = width (block model)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dump", default=None, help="write each program's optimised HLO here")
    args = p.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    if any(v not in VARIANTS for v in variants):
        p.error(f"--variants must be a subset of {VARIANTS}")
    rng = np.random.default_rng(0)
    if args.model == "block":
        shape = (args.steps, args.batch, args.size, args.size, args.width)
    else:
        shape = (args.steps, args.batch, 32, 32, 3)
    xs = jnp.asarray(rng.normal(size=shape), jnp.float32)
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, model {args.model}, input {shape[1:]}, "
          f"{args.steps} steps per call, median of {args.repeats}")
    print(f"{'conv':5} {'variant':7} {'warm-up s':>9} {'wall s/step':>11} {'CPU s/step':>10}")
    for conv in [c for c in args.conv.split(",") if c]:
        if args.model == "block":
            model = BasicBlock(args.width, conv_impl=conv)
        else:
            model = ResNet18(num_classes=10, conv_impl=conv)
        v = model.init(jax.random.key(0), xs[0], train=False)
        state = (v["params"], v["batch_stats"])
        fns = programs(make_step(model), args.steps)
        for name in variants:
            warm, wall, cpu = time_variant(fns[name], state, xs, args.repeats)
            print(f"{conv:5} {name:7} {warm:9.2f} {wall / args.steps:11.4f} {cpu / args.steps:10.4f}", flush=True)
            if args.dump:
                fn = jax.jit(make_step(model)) if name == "loop" else fns[name]
                lowered = fn.lower(state, xs[0]) if name == "loop" else fn.lower(state, xs)
                out = Path(args.dump) / f"{conv}_{name}.txt"
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(lowered.compile().as_text())


if __name__ == "__main__":
    main()
