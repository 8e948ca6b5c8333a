"""Training-step throughput (img/s) of K vmapped lanes × per-lane batch B, next to one model at batch K·B.

What is timed is the engine's own step — :func:`jax_unlearn.engine.train.supervised_step` with
:func:`jax_unlearn.engine.optim.torch_sgd` (momentum 0.9, weight decay 5e-4) and cross-entropy — for
``--steps`` steps inside one ``lax.scan``, vmapped over K lanes, each lane with its own weights, BatchNorm
statistics and batches (``B`` indices drawn per lane and step from ``fold_in(key, step)`` into a pool of
uint8 images on the device, gathered and normalised on the fly as an epoch does). All lanes start from one
initialisation (:func:`host_init`) and part after their first, different, batches. Per grid point: compile
ahead of time (reported apart), ``--warmup`` untimed calls, then ``--repeats`` timed calls each ending in
``block_until_ready``; img/s is ``K·B·steps / median``. The state is donated and chained from call to call,
as in a real run.

The ceiling column is one model (no vmap) at batch ``K·B``: the same images per step, as one large-batch
model — the most the device gives this network, and what K lanes should approach.

Variants, each the same function (so every row trains the same models; only the program differs):

- ``--conv``: how convolutions are lowered (:data:`common.CONV_LOWERINGS`, :mod:`jax_unlearn.models.conv`):
  ``xla`` (XLA's convolution; under vmap a grouped convolution per conv), ``gemm`` (im2col + batched GEMM,
  no convolution op at all), ``gemm-body`` (GEMM blocks, XLA stem). A list measures each in one run; the
  ceiling is measured per variant and the table also divides by the best single model of any variant.
- ``--lane-map``: 0 is plain vmap over the K lanes; ``M > 0`` is ``lax.map`` over K/M groups of M vmapped
  lanes (:func:`common.vmap_lanes`); points where M does not divide K, or M ≥ K, are skipped.
- ``--no-donate``: do not donate the train state to the step (default: donated, as a real run does).

Usage (from the repository root)::

    python benchmarks/throughput.py --lanes 1,8,32,64,128 --batch 64,128,256 --dtypes float32,bfloat16
    python benchmarks/throughput.py --lanes 64 --batch 64 --dtypes bfloat16 --conv xla,gemm,gemm-body \
        --lane-map 0,8,16
    python benchmarks/throughput.py --quick --model tiny      # CPU smoke run (seconds, not a figure)

Writes ``<out>.json``, ``<out>.md`` and ``<out>.png`` (img/s against lanes, log-log).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

if __package__ in (None, ""):  # python benchmarks/throughput.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

QUICK = dict(lanes="1,2", batch="8", dtypes="float32", steps=2, repeats=2, warmup=1, pool=64, image_size=16)


def _ints(text: str, minimum: int = 1) -> list[int]:
    values = [int(v) for v in text.split(",") if v]
    if not values or min(values) < minimum:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= {minimum}, got {text!r}")
    return values


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lanes", default="1,8,32,64,128", help="K values (comma-separated)")
    p.add_argument("--batch", default="64,128,256", help="per-lane batch sizes B (comma-separated)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes (float32, bfloat16)")
    p.add_argument("--steps", type=int, default=10, help="train steps per timed call (one lax.scan)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per grid point (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls after compiling")
    p.add_argument("--pool", type=int, default=8192, help="uint8 images on the device that batches come from")
    p.add_argument("--image-size", type=int, default=32, help="square image side (the challenge: 32)")
    p.add_argument("--model", choices=("resnet18", "tiny"), default="resnet18",
                   help="tiny: ResNet(stage_sizes=(1, 1), width=8), for smoke tests only")
    p.add_argument("--no-ceiling", action="store_true", help="skip the single-model batch K·B points")
    p.add_argument("--conv", default="auto", help=f"conv lowerings to measure (comma-separated): "
                   f"{', '.join(common.CONV_CHOICES)} (auto: the platform's default, recorded resolved)")
    p.add_argument("--lane-map", default="0", help="lanes per lax.map group (comma-separated); 0: plain vmap")
    p.add_argument("--no-donate", action="store_true", help="do not donate the train state to the step")
    p.add_argument("--quick", action="store_true", help=f"tiny grid for CPU smoke tests: {QUICK}")
    p.add_argument("--out", default="out/benchmarks/throughput", help="output prefix (.json, .md, .png)")
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            if getattr(args, k) == p.get_default(k):
                setattr(args, k, v)
    try:
        args.lanes, args.batch, args.lane_map = _ints(args.lanes), _ints(args.batch), _ints(args.lane_map, 0)
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    args.conv = [c for c in args.conv.split(",") if c]
    if not args.conv or any(c not in common.CONV_CHOICES for c in args.conv):
        p.error(f"--conv must be a subset of {list(common.CONV_CHOICES)}, got {args.conv}")
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    if any(d not in ("float32", "bfloat16") for d in args.dtypes):
        p.error(f"--dtypes must be float32 and/or bfloat16, got {args.dtypes}")
    for name in ("steps", "repeats", "pool", "image_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def make_model(name: str, dtype: str, conv: str = "auto"):
    """ResNet-18 (``jax_unlearn.models.make_model``) or the tiny smoke-test ResNet, in compute ``dtype``,
    convolutions lowered as the ``--conv`` value ``conv`` says."""
    import jax.numpy as jnp

    from jax_unlearn.models import ResNet
    from jax_unlearn.models import make_model as resnet18

    if name == "tiny":
        return ResNet(stage_sizes=(1, 1), num_classes=10, width=8, dtype=jnp.dtype(dtype), **common.conv_spec(conv))
    return resnet18(10, dtype=dtype, conv=conv)


class Setup(NamedTuple):
    """What every grid point of one dtype shares: the model, its optimiser and step, the image pool on the
    device, and one model's initial variables."""

    model: Any
    tx: Any
    step: Callable
    images: Any
    labels: Any
    variables: Any


def host_init(model, image_size: int, seed: int = 0):
    """Initial variables drawn on the host with NumPy at torchvision's scales (conv ``N(0, 2/fan_out)``,
    linear ``U(±1/sqrt(fan_in))``, BatchNorm 1/0): the cost of a step does not depend on the values, and
    this avoids compiling an initialiser per model (tens of seconds on a small CPU)."""
    import jax
    import numpy as np

    from jax_unlearn.models import init_variables

    shapes = jax.eval_shape(lambda k: init_variables(model, k, image_size), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel" and len(shape) == 4:
            value = rng.normal(0.0, np.sqrt(2.0 / (np.prod(shape[:2]) * shape[3])), shape)
        elif name in ("kernel", "bias") and len(path) == 3 and path[1].key == "fc":
            fan_in = shapes["params"]["fc"]["kernel"].shape[0]
            value = rng.uniform(-1 / np.sqrt(fan_in), 1 / np.sqrt(fan_in), shape)
        elif name in ("scale", "var"):
            value = np.ones(shape)
        else:
            value = np.zeros(shape)
        return np.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def make_setup(model, pool: int, image_size: int) -> Setup:
    """The engine's supervised step (CE, ``torch_sgd(1e-3, momentum=0.9, weight_decay=5e-4)``) on ``model``
    and a pool of ``pool`` random uint8 images (labels in 0..9) on the device."""
    import jax
    import numpy as np

    from jax_unlearn.data.types import Normalization
    from jax_unlearn.engine.losses import cross_entropy
    from jax_unlearn.engine.optim import torch_sgd
    from jax_unlearn.engine.train import Context, supervised_step

    ctx = Context(model, Normalization(scale=1 / 255, mean=(0.5,) * 3, std=(0.25,) * 3), {"pool": pool})
    tx = torch_sgd(1e-3, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    images = jax.device_put(rng.integers(0, 256, (pool, image_size, image_size, 3), dtype=np.uint8))
    labels = jax.device_put(rng.integers(0, 10, (pool,), dtype=np.int32))
    variables = jax.device_put(host_init(model, image_size))
    return Setup(model, tx, supervised_step(ctx, tx, cross_entropy), images, labels, variables)


def _initial_state(setup: Setup, lanes: int | None):
    """The train state of one model (``lanes=None``) or ``lanes`` copies of it stacked on a leading axis
    (each lane then draws its own batches, so the lanes part after the first step)."""
    import jax
    import jax.numpy as jnp

    from jax_unlearn.engine.train import create_state

    def init(variables):
        state = create_state(variables, setup.tx)
        if lanes is None:
            return state
        return jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (lanes, *a.shape)), state)

    return jax.jit(init)(setup.variables)


def program(setup: Setup, *, lanes: int | None, batch: int, steps: int, lane_map: int = 0):
    """``(fn, state, args)``: ``fn(state, *args) -> (state, metrics)`` runs ``steps`` train steps of
    ``lanes`` models (``lanes=None``: one model, no vmap; ``lane_map`` as :func:`common.vmap_lanes`) at
    per-model batch ``batch``, lane ``i`` drawing its batches from its own key."""
    import jax
    import jax.numpy as jnp

    pool = setup.images.shape[0]
    mask = jnp.ones((batch,), bool)

    def model_steps(state, key, images, labels):
        def body(state, i):
            idx = jax.random.randint(jax.random.fold_in(key, i), (batch,), 0, pool)
            return setup.step(state, images[idx], labels[idx], mask)

        return jax.lax.scan(body, state, jnp.arange(steps))

    state = _initial_state(setup, lanes)
    keys = jax.random.key(2) if lanes is None else jax.random.split(jax.random.key(2), lanes)
    fn = model_steps if lanes is None else common.vmap_lanes(model_steps, (0, 0, None, None), lane_map)
    return fn, state, (keys, setup.images, setup.labels)


def bench_point(setup: Setup, *, lanes: int | None, batch: int, steps: int, warmup: int, repeats: int,
                lane_map: int = 0, donate: bool = True) -> dict:
    """Time :func:`program` (``donate``: the state donated to each call, as a real run does). Returns
    img/s, the timing, compile seconds and XLA's memory plan (compiled with the engine's options,
    :func:`jax_unlearn.engine.jitting.jit`)."""
    from jax_unlearn.engine.jitting import jit

    fn, state, args = program(setup, lanes=lanes, batch=batch, steps=steps, lane_map=lane_map)
    compiled, compile_s = common.compile_jax(jit(fn, donate_argnums=0 if donate else ()), state, *args)
    timing, _ = common.time_chained(compiled, state, *args, warmup=warmup, repeats=repeats)
    return {"img_per_s": (lanes or 1) * batch * steps / timing.median, "step_ms": 1e3 * timing.median / steps,
            "compile_s": compile_s, "timing": timing.to_dict(), "memory_plan": common.compiled_memory(compiled)}


def _is_oom(error: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(error) or "Out of memory" in str(error)


def lane_maps_for(lanes: int, lane_maps) -> list[int]:
    """The ``--lane-map`` values that make a distinct program for K = ``lanes``: 0 (plain vmap) and every
    M < K dividing K."""
    return [m for m in lane_maps if m == 0 or (m < lanes and lanes % m == 0)]


def run_grid(args, on_row: Callable[[list[dict]], None] = lambda rows: None) -> list[dict]:
    """Per conv variant and dtype: every (B, K, lane map) lanes point, then the single-model ceilings at
    each distinct K·B. ``on_row(rows)`` is called after each point (the script writes its outputs then, so
    a run stopped by a time limit keeps what it measured)."""
    import jax

    rows = []
    common_kw = dict(steps=args.steps, warmup=args.warmup, repeats=args.repeats, donate=not args.no_donate)
    for conv in dict.fromkeys(common.resolve_conv(c) for c in args.conv):  # 'auto' recorded resolved
        for dtype in args.dtypes:
            setup = make_setup(make_model(args.model, dtype, conv), args.pool, args.image_size)
            points = [("lanes", k, b, m) for b in args.batch for k in args.lanes
                      for m in lane_maps_for(k, args.lane_map)]
            if not args.no_ceiling:
                points += [("single", None, kb, 0) for kb in sorted({k * b for b in args.batch for k in args.lanes})]
            for kind, k, b, m in points:
                row = {"kind": kind, "conv": conv, "dtype": dtype, "lanes": k or 1, "batch": b, "lane_map": m,
                       "donate": not args.no_donate, "images_per_step": (k or 1) * b}
                try:
                    row.update(status="ok", **bench_point(setup, lanes=k, batch=b, lane_map=m, **common_kw))
                except jax.errors.JaxRuntimeError as e:
                    if not _is_oom(e):
                        raise
                    row.update(status="oom", error=str(e).splitlines()[0][:300])
                print(f"{kind:6s} {conv:9s} {dtype:8s} K={row['lanes']:<4d} B={b:<5d} map={m:<3d} "
                      + (f"{row['img_per_s']:12,.0f} img/s  compile {row['compile_s']:.1f}s" if row["status"] == "ok"
                         else "out of memory"), flush=True)
                rows.append(row)
                on_row(rows)
    return rows


def table(rows: list[dict]) -> tuple[list[str], list[list]]:
    """One Markdown row per lanes point, with the single model of the same conv variant at the same images
    per step beside it, and the ratio to the best single model of any variant measured."""
    ok = lambda r: r is not None and r["status"] == "ok"  # noqa: E731
    single = {(r["conv"], r["dtype"], r["images_per_step"]): r for r in rows if r["kind"] == "single"}
    best = {}
    for r in rows:
        key = (r["dtype"], r["images_per_step"])
        if r["kind"] == "single" and ok(r) and r["img_per_s"] > best.get(key, 0.0):
            best[key] = r["img_per_s"]
    columns = ["conv", "dtype", "B per lane", "K lanes", "lane map", "images/step", "img/s (K lanes)",
               "img/s (1 model, batch K·B)", "lanes / single", "lanes / best single", "step ms", "compile s"]
    out = []
    for r in rows:
        if r["kind"] != "lanes":
            continue
        s = single.get((r["conv"], r["dtype"], r["images_per_step"]))
        s_ips = s["img_per_s"] if ok(s) else None
        b_ips = best.get((r["dtype"], r["images_per_step"]))
        good = ok(r)
        out.append([r["conv"], r["dtype"], r["batch"], r["lanes"], r["lane_map"] or "—", r["images_per_step"],
                    r["img_per_s"] if good else "OOM", s_ips if s else None,
                    r["img_per_s"] / s_ips if good and s_ips else None,
                    r["img_per_s"] / b_ips if good and b_ips else None,
                    r["step_ms"] if good else None, r["compile_s"] if good else None])
    return columns, out


def plot(rows: list[dict], path: Path, title: str) -> Path:
    """img/s against K (log-log): a solid line per (B, dtype) for K lanes, dashed for one model at K·B."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = sorted({(r["conv"], r["dtype"], r["batch"], r["lane_map"]) for r in rows if r["kind"] == "lanes"})
    for i, (conv, dtype, b, m) in enumerate(series):
        color = f"C{i % 10}"
        pts = [r for r in rows if r["kind"] == "lanes" and (r["conv"], r["dtype"], r["batch"], r["lane_map"])
               == (conv, dtype, b, m) and r["status"] == "ok"]
        ax.plot([r["lanes"] for r in pts], [r["img_per_s"] for r in pts], "o-", color=color,
                label=f"{conv} {dtype} B={b}{f' map {m}' if m else ''}: K lanes")
        if m:
            continue  # the ceiling is drawn once per (conv, dtype, B), with the plain-vmap series
        ceiling = {r["images_per_step"]: r for r in rows if r["kind"] == "single" and r["conv"] == conv
                   and r["dtype"] == dtype and r["status"] == "ok"}
        cpts = [(r["lanes"], ceiling[r["images_per_step"]]["img_per_s"]) for r in pts
                if r["images_per_step"] in ceiling]
        if cpts:
            ax.plot(*zip(*cpts), "s--", color=color, alpha=0.6, label=f"{conv} {dtype}: 1 model, batch K·{b}")
    ax.set(xscale="log", yscale="log", xlabel="lanes K (vmapped models)", ylabel="training img/s", title=title)
    lanes = sorted({r["lanes"] for r in rows if r["kind"] == "lanes"})
    ax.set_xticks(lanes, [str(k) for k in lanes])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    from converters import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return Path(path)


def run_facts(args, argv) -> dict:
    """What does not change while the grid runs: command, device, versions, config (read once)."""
    info = common.jax_device_info()
    return {"benchmark": "throughput", "command": common.command_line("throughput.py", argv),
            "device": common.describe_device(info), "device_info": info, "versions": common.versions(),
            "config": {**vars(args), "optimizer": "torch_sgd(lr=1e-3, momentum=0.9, weight_decay=5e-4)"}}


def summarise(args, facts: dict, rows: list[dict]) -> dict:
    """The result dict of the rows measured so far: ``facts`` (:func:`run_facts`), the date, the rows, and
    for ResNet-18 at 32×32 the issue's target point (64 lanes × 64, bf16) over the best variant measured."""
    result = {**facts, "date": common.utc_now(), "rows": rows}
    hits = [r for r in rows if r["kind"] == "lanes" and r["lanes"] == 64 and r["batch"] == 64
            and r["dtype"] == "bfloat16" and r["status"] == "ok"]
    if hits and args.model == "resnet18" and args.image_size == 32:
        target = max(hits, key=lambda r: r["img_per_s"])  # the best variant measured
        result["target_64x64_bf16"] = {"img_per_s": target["img_per_s"], "conv": target["conv"],
                                       "lane_map": target["lane_map"], "target": 500_000,
                                       "met": target["img_per_s"] >= 500_000}
    return result


def write_outputs(result: dict, out: Path, *, complete: bool) -> str:
    """Write ``<out>.json``, ``<out>.md`` (atomically) and ``<out>.png``; ``complete=False`` marks a partial
    grid in all three. Returns the Markdown table."""
    result = {**result, "complete": complete}
    md = common.markdown_table(*table(result["rows"]))
    head = {k: result[k] for k in ("date", "device", "versions", "command")}
    if not complete:
        head["status"] = "partial: the grid was still running when this was written"
    common.write_json(out.with_suffix(".json"), result)
    common.write_markdown(out.with_suffix(".md"), head, md)
    plot(result["rows"], out.with_suffix(".png"), f"train-step throughput, {result['config']['model']}, "
         f"{result['device']}{'' if complete else ' (partial)'}")
    return md


def main(argv=None) -> dict:
    """Run the grid, rewriting ``<out>.json``/``.md``/``.png`` after every point (so a run stopped early
    keeps what it measured); print the table at the end. Returns the result dict."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = Path(args.out)
    facts = run_facts(args, argv)
    rows = run_grid(args, on_row=lambda rows: write_outputs(summarise(args, facts, rows), out, complete=False))
    result = summarise(args, facts, rows)
    print(write_outputs(result, out, complete=True), end="")
    return {**result, "complete": True}


if __name__ == "__main__":
    main()
