"""The Kaggle baseline unlearning, R runs, three ways: PyTorch eager, PyTorch × P processes, jax-unlearn.

The workload is the official notebook's ``unlearning`` from the same original weights: one epoch of
``SGD(lr=1e-3, momentum=0.9, weight_decay=5e-4)``, ``CosineAnnealingLR(T_max=1)``, cross-entropy on the
retain set, batch 64 reshuffled per run, ``model.train()``; R runs (the competition asks for 512), by

1. ``eager``: PyTorch one model at a time, as the notebook's ``for i in range(512)`` loop does (one
   ``resnet18``; per run ``load_state_dict(original)`` then ``unlearning(net, ...)``);
2. ``procs``: the same code in P concurrent processes on the same device, R/P runs each — the strongest
   set-up a PyTorch user has without rewriting the model;
3. ``jax``: ``build_method('finetune', ...)`` (same recipe) on the engine, ``jit(vmap(run))`` × K lanes.

Each backend runs in fresh worker processes (own peak memory; JAX's GPU pre-allocation never starves
torch) that set up (data onto the device, warm-up run or compile), then start timing together
(:func:`common.run_workers`); wall time is ``max(end) - min(start)`` over a backend's workers. Reported:
img/s, s/run, wall time for R runs (JAX's compile apart, and added in its own column), peak device memory,
and — so the comparison is apples to apples — retain/test accuracy (mean ± std) of ``--eval-runs`` evenly
spaced runs per backend, checked pairwise to agree within noise; both evaluators also score the original.

Choices where the notebook leaves room: PyTorch gets its strongest data path (the retain set on the device
as one normalised tensor, batches ``X[perm[i:i+64]]`` with ``perm = randperm(n, Generator().manual_seed(
seed + run))``: ``DataLoader(shuffle=True, drop_last=False)`` order semantics without per-item collation
or disk reads). No backend writes checkpoints (I/O, not unlearning). ``--eager-runs``/``--procs-runs`` may
time fewer than R runs (eager needs ~45 min for 512 × 28k images); "wall for R runs" is then s/run × R,
flagged ``extrapolated``. fp32 on both sides by default (torch's default cuDNN TF32 convolutions, XLA's
default precision); ``--dtype bfloat16`` changes the JAX side only and is not apples to apples. A retain
size that leaves a last batch of 1 is refused (torch's train-mode BatchNorm, and so the notebook, fails).

JAX program variants, the same function each: ``--conv`` lowers the convolutions as XLA convolutions
(``xla``), im2col + batched GEMMs (``gemm``) or GEMM blocks with an XLA stem (``gemm-body``); ``auto`` (default)
is the platform's default lowering (:data:`jax_unlearn.models.AUTO_LOWERING`), recorded resolved
(:data:`common.CONV_LOWERINGS`); ``--lane-map M`` computes the K lanes as ``lax.map`` over K/M groups of M
vmapped lanes (:func:`common.vmap_lanes`); by default the JAX side runs the lanes as the engine does
(:func:`jax_unlearn.engine.lanes.lanes_per_call`): one at a time on a CPU (``M = 1``), plain vmap elsewhere.
Nothing is donated here: every chunk reuses the start weights
and the data, and its outputs are new buffers. The original model is trained with the platform's default lowering.

Usage (from the repository root)::

    python benchmarks/unlearn_vs_pytorch.py --runs 512 --procs 8 --lanes 64 --max-train 31111 \\
        --original-epochs 5 --eager-runs 32 --out out/benchmarks/unlearn_vs_pytorch

References: NeurIPS 2023 Machine Unlearning Challenge Kaggle notebook (``unlearning``: 1 epoch SGD
fine-tune on the retain set) and unlearning-challenge/starting-kit; google-deepmind/unlearning_evaluation.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # python benchmarks/unlearn_vs_pytorch.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

SPLITS = ("retain", "forget", "validation", "test")
BACKENDS = ("eager", "procs", "jax")
RECIPE = dict(epochs=1, batch_size=64, lr=1e-3, momentum=0.9, weight_decay=5e-4)  # the Kaggle baseline


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=64, help="R: unlearning runs per backend")
    p.add_argument("--procs", type=int, default=8, help="P: concurrent PyTorch processes for 'procs'")
    p.add_argument("--lanes", type=int, default=64, help="K: vmapped lanes per JAX chunk")
    p.add_argument("--backends", default=",".join(BACKENDS),
                   help=f"comma-separated subset of {BACKENDS}, run in the order given")
    p.add_argument("--eager-runs", type=int, default=None, help="runs timed for 'eager' (default R)")
    p.add_argument("--procs-runs", type=int, default=None, help="runs timed for 'procs' (default R)")
    p.add_argument("--eval-runs", type=int, default=32, help="evenly spaced runs per backend to evaluate")
    p.add_argument("--eval-max", type=int, default=5000, help="retain/test examples used for accuracy")
    p.add_argument("--data", choices=("fashion-mnist", "synthetic"), default="fashion-mnist")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX directory (default: Debian package)")
    p.add_argument("--max-train", type=int, default=31_111, help="train subset (retain = 90%%; 31111 -> 28000)")
    p.add_argument("--max-eval", type=int, default=5000, help="validation/test size cap")
    p.add_argument("--image-size", type=int, default=32, help="synthetic data only (smoke tests use 16)")
    p.add_argument("--original", default=None, help="original model .pth (else trained here)")
    p.add_argument("--original-epochs", type=int, default=5,
                   help="train the original with the official recipe for this many epochs; 0: random init")
    p.add_argument("--seed", type=int, default=0, help="data split seed and base seed of the runs")
    p.add_argument("--device", default="auto", help="torch device: auto, cuda, cpu (JAX follows: cpu forces CPU)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="JAX compute dtype")
    p.add_argument("--conv", choices=common.CONV_CHOICES, default="auto",
                   help="how the JAX model lowers its convolutions (same function; see benchmarks/common.py)")
    p.add_argument("--lane-map", type=int, default=None,
                   help="JAX: lax.map over groups of this many vmapped lanes (0: plain vmap over all K; default: "
                        "as the engine, one lane at a time on a CPU, plain vmap elsewhere)")
    p.add_argument("--acc-tol", type=float, default=0.01, help="accuracy agreement floor (absolute)")
    p.add_argument("--out", default="out/benchmarks/unlearn_vs_pytorch", help="output prefix (.json, .md)")
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--worker", choices=("prepare", "torch", "jax"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--tag", default=None, help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    backends = tuple(dict.fromkeys(b for b in args.backends.split(",") if b))
    if not backends or any(b not in BACKENDS for b in backends):
        p.error(f"--backends must be a subset of {BACKENDS}, got {args.backends!r}")
    if min(args.runs, args.procs, args.lanes, args.eval_runs, args.eval_max) < 1:
        p.error("--runs, --procs, --lanes, --eval-runs and --eval-max must be >= 1")
    lanes = min(args.lanes, args.runs)
    if args.lane_map is not None and (args.lane_map < 0 or (args.lane_map and lanes % args.lane_map)):
        p.error(f"--lane-map must be 0 or divide the lanes per chunk ({lanes}), got {args.lane_map}")
    if args.image_size != 32 and (args.data != "synthetic" or args.original_epochs):
        p.error("--image-size other than 32 needs --data synthetic and --original-epochs 0")
    args.backends = backends
    return args


def eval_ids(n_runs: int, n_eval: int) -> list[int]:
    """``min(n_runs, n_eval)`` evenly spaced run ids in ``[0, n_runs)``."""
    return sorted({int(round(x)) for x in np.linspace(0, n_runs - 1, min(n_runs, n_eval))})


def _prepare(args, work: Path) -> dict:
    """Write ``data.npz`` (uint8 NHWC splits, normalisation) and ``original.pth``, ``prepare.json``."""
    from converters import flax_to_torch, load_torch_checkpoint, save_torch_checkpoint, torch_to_flax
    from jax_unlearn.data.types import Normalization, Split, UnlearningData

    record = {}
    if args.data == "synthetic":
        n_forget = max(1, round(0.1 * args.max_train))
        splits = common.synthetic_splits(args.seed, args.image_size, retain=args.max_train - n_forget,
                                         forget=n_forget, validation=args.max_eval, test=args.max_eval)
        norm, description = Normalization(1 / 255, (0.5,) * 3, (0.25,) * 3), {"source": "synthetic"}
    else:
        from jax_unlearn.data import load_dataset

        data = load_dataset("fashion-mnist", args.data_dir, seed=args.seed, max_train=args.max_train,
                            max_eval=args.max_eval)
        splits = {s: (data.split(s).images, data.split(s).labels.astype(np.int32)) for s in SPLITS}
        norm, description = data.normalization, dict(data.description)
    if len(splits["retain"][1]) % RECIPE["batch_size"] == 1:  # the notebook would crash too
        raise ValueError(f"{len(splits['retain'][1])} retain images leave a last batch of 1, which torch's "
                         "BatchNorm refuses in train mode; pick another --max-train")
    arrays = {f"{s}_{k}": a for s, (x, y) in splits.items() for k, a in (("x", x), ("y", y))}
    np.savez(work / "data.npz", **arrays, norm_scale=norm.scale, norm_mean=norm.mean, norm_std=norm.std)
    if args.original:
        state = load_torch_checkpoint(args.original)
        torch_to_flax(state, 10)  # validates every key and shape (strict)
        record["original"] = f"loaded {args.original}"
    elif args.original_epochs > 0:
        from jax_unlearn.jobs.populations import train_original

        data = UnlearningData(*(Split(*splits[s]) for s in SPLITS), num_classes=10, normalization=norm)
        elapsed = common.stopwatch()
        variables, metrics = train_original(data, seed=10_000 + args.seed, epochs=args.original_epochs)
        state = flax_to_torch(variables)
        record.update(original=f"trained here: official recipe, {args.original_epochs} epochs",
                      original_train_s=elapsed(),
                      original_train_metrics={k: np.asarray(v).tolist() for k, v in metrics.items()})
    else:
        import torch
        import torchvision

        torch.manual_seed(10_000 + args.seed)
        state, record["original"] = torchvision.models.resnet18(num_classes=10).state_dict(), "random init (smoke)"
    save_torch_checkpoint(state, work / "original.pth")
    record.update(description=description, sizes={s: len(splits[s][1]) for s in SPLITS})
    common.write_json(work / "prepare.json", record)
    return record


def _load(work: Path):
    """``({split: (uint8 images, int32 labels)}, (scale, mean, std))`` as the prepare worker saved them."""
    with np.load(work / "data.npz") as f:
        return ({s: (f[f"{s}_x"], f[f"{s}_y"]) for s in SPLITS},
                (float(f["norm_scale"]), tuple(f["norm_mean"].tolist()), tuple(f["norm_std"].tolist())))


def torch_unlearning(net, images, labels, generator, *, epochs, batch_size, lr, momentum, weight_decay):
    """The Kaggle notebook's ``unlearning`` (1 epoch SGD fine-tune on retain), on device-resident data."""
    import torch

    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(labels), generator=generator).to(images.device)
        for idx in perm.split(batch_size):
            optimizer.zero_grad()
            loss = criterion(net(images[idx]), labels[idx])
            loss.backward()
            optimizer.step()
        scheduler.step()
    net.eval()
    return net


def _torch_worker(args, work: Path) -> dict:
    import torch
    import torchvision

    device = torch.device(args.device)
    if device.type == "cpu" and args.world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.world))
    splits, (scale, mean, std) = _load(work)

    def to_device(x, y):
        x = torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float() * scale
        mean_, std_ = (torch.tensor(v, device=device)[None, :, None, None] for v in (mean, std))
        return ((x - mean_) / std_).contiguous(), torch.from_numpy(y).long().to(device)

    retain = to_device(*splits["retain"])
    ev = {s: to_device(*(a[:args.eval_max] for a in splits[s])) for s in ("retain", "test")}
    original = {k: v.to(device) for k, v in torch.load(work / "original.pth", weights_only=True).items()}
    net = torchvision.models.resnet18(weights=None, num_classes=10).to(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    ids = np.array_split(np.arange(args.runs_timed), args.world)[args.rank].tolist()  # this worker's share
    keep = set(eval_ids(args.runs_timed, args.eval_runs)) & set(ids)

    elapsed = common.stopwatch()  # warm-up: cuDNN autotuning, allocator growth (one full run)
    net.load_state_dict(original)
    torch_unlearning(net, *retain, torch.Generator().manual_seed(2**31 - 1), **RECIPE)
    sync()
    warmup_s = elapsed()
    common.torch_reset_peak(device)
    start = common.wait_for_go(work, args.tag, args.rank)
    times, states = [], {}
    for r in ids:
        elapsed = common.stopwatch()
        net.load_state_dict(original)
        torch_unlearning(net, *retain, torch.Generator().manual_seed(args.seed + r), **RECIPE)
        sync()
        times.append(elapsed())
        if r in keep:
            states[r] = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
    end = time.time()
    peak = (common.torch_peak_bytes(device) or {}).get("allocated")  # None on CPU

    @torch.no_grad()
    def accuracy(state, split):
        net.load_state_dict(state)
        net.eval()
        x, y = ev[split]
        correct = sum(int((net(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum()) for i in range(0, len(y), 1000))
        return correct / len(y)

    accs = {r: {s: accuracy(st, s) for s in ev} for r, st in states.items()}
    out = dict(ids=ids, times=times, start=start, end=end, warmup_s=warmup_s, peak=peak, accs=accs,
               device=common.torch_device_info(device), host_peak_rss=common.host_peak_rss_bytes())
    if args.rank == 0:
        out["original_acc"] = {s: accuracy(original, s) for s in ev}
    return out


def _jax_worker(args, work: Path) -> dict:
    import jax
    import jax.numpy as jnp

    from converters import load_torch_checkpoint, torch_to_flax
    from jax_unlearn.data.types import Normalization
    from jax_unlearn.engine.jitting import jit
    from jax_unlearn.engine.lanes import lanes_per_call, seed_keys
    from jax_unlearn.engine.run import RunConfig, make_run
    from jax_unlearn.engine.train import Context, accuracy
    from jax_unlearn.methods import build_method
    from jax_unlearn.models import make_model, resolve_conv

    splits, (scale, mean, std) = _load(work)
    ctx = Context(make_model(10, dtype=args.dtype, conv=args.conv), Normalization(scale, mean, std),
                  {s: len(splits[s][1]) for s in SPLITS})
    method = build_method("finetune", ctx, **RECIPE)  # the same hyper-parameters, by name
    run = make_run(ctx, method, RunConfig(track=False))
    start_vars = jax.device_put(torch_to_flax(load_torch_checkpoint(work / "original.pth"), 10))
    elapsed = common.stopwatch()
    data = jax.block_until_ready({"retain": tuple(jnp.asarray(a) for a in splits["retain"])})
    ev = {s: tuple(jnp.asarray(a[:args.eval_max]) for a in splits[s]) for s in ("retain", "test")}
    upload_s = elapsed()
    k = min(args.lanes, args.runs)
    n_chunks = -(-args.runs // k)
    lane_map = args.lane_map if args.lane_map is not None else (0 if lanes_per_call(k) == k else 1)
    fn = jit(common.vmap_lanes(run, (0, None, None), lane_map))  # the engine's compiler options
    compiled, compile_s = common.compile_jax(fn, seed_keys(args.seed, np.arange(k)), start_vars, data)
    evaluate = jit(lambda v: {s: accuracy(ctx, v, *ev[s]) for s in ev})
    scores = lambda v: {s: float(a) for s, a in evaluate(v).items()}  # noqa: E731
    keep = set(eval_ids(args.runs, args.eval_runs))
    start = common.wait_for_go(work, args.tag, 0)
    times, accs = [], {}
    for c in range(n_chunks):
        ids = np.arange(c * k, (c + 1) * k)  # the last chunk is padded with extra seeds (dropped)
        elapsed = common.stopwatch()
        variables, _ = jax.block_until_ready(compiled(seed_keys(args.seed, ids), start_vars, data))
        times.append(elapsed())
        for lane in (i for i, r in enumerate(ids.tolist()) if r in keep):  # untimed: evaluate the kept runs
            accs[int(ids[lane])] = scores(jax.tree_util.tree_map(lambda a: a[lane], variables))
    # One process, chunks back to back: its wall time is the sum of the chunk times (evaluations excluded).
    return dict(ids=list(range(args.runs)), times=times, start=start, end=start + sum(times), compile_s=compile_s,
                upload_s=upload_s, lanes=k, chunks=n_chunks, conv=resolve_conv(args.conv), lane_map=lane_map,
                peak=common.jax_peak_bytes(),
                memory_plan=common.compiled_memory(compiled), accs=accs, original_acc=scores(start_vars),
                device=common.jax_device_info(), host_peak_rss=common.host_peak_rss_bytes())


def _worker_cmd(argv, work: Path, kind: str, tag: str = "", rank: int = 0, world: int = 1) -> list[str]:
    # This script in worker mode: the user's flags (re-parsed), then the worker's own (later flags win).
    return [sys.executable, "-m", "benchmarks.unlearn_vs_pytorch", *argv, "--workdir", str(work), "--worker",
            kind, "--tag", tag, "--rank", str(rank), "--world", str(world)]


def summarise(name: str, results: list[dict], runs: int, n_retain: int) -> dict:
    """One backend's figures from its workers' results (see the module docstring)."""
    timed = sum(len(r["ids"]) for r in results)
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    accs = [a for r in results for a in r["accs"].values()]
    peaks = [r["peak"] for r in results if r["peak"] is not None]  # summed over concurrent processes
    out = {"runs_timed": timed, "extrapolated": timed < runs, "wall_timed_s": wall, "seconds_per_run": wall / timed,
           "img_per_s": timed * n_retain * RECIPE["epochs"] / wall, "wall_for_R_s": wall / timed * runs,
           "peak_device_bytes": sum(peaks) if peaks else None,
           "host_peak_rss_bytes": max(r["host_peak_rss"] for r in results),
           "accuracy": {s: common.mean_std(a[s] for a in accs) for s in ("retain", "test")},
           # Per run id (the same id is the same batch order within a framework): for paired comparisons,
           # e.g. --dtype bfloat16 against float32.
           "run_accuracy": {str(i): a for i, a in sorted((int(i), a) for r in results for i, a in r["accs"].items())},
           "device": results[0]["device"], "workers": len(results)}
    if name == "jax":
        r = results[0]
        out.update(compile_s=r["compile_s"], upload_s=r["upload_s"], lanes=r["lanes"], chunks=r["chunks"],
                   conv=r["conv"], lane_map=r["lane_map"],
                   wall_for_R_incl_compile_s=out["wall_for_R_s"] + r["compile_s"], memory_plan=r["memory_plan"],
                   chunk_times_s=r["times"])
    else:  # eager PyTorch has nothing to compile; its warm-up run is reported, not added
        out.update(warmup_s=max(r["warmup_s"] for r in results), wall_for_R_incl_compile_s=out["wall_for_R_s"])
    out["original_acc"] = next((r["original_acc"] for r in results if "original_acc" in r), None)
    return out


def compare_accuracy(backends: dict, floor: float) -> dict:
    """Every pair of backends, retain and test accuracy: :func:`common.means_agree`."""
    names = list(backends)
    return {f"{a}-{b}/{s}": common.means_agree(backends[a]["accuracy"][s], backends[b]["accuracy"][s], floor)
            for i, a in enumerate(names) for b in names[i + 1:] for s in ("retain", "test")}


def markdown_row(result: dict) -> tuple[list[str], list[list]]:
    """The table's columns and its one row (this run)."""
    b, c, speedup = result["backends"], result["config"], result["speedup"]
    get = lambda name, key: b[name][key] if name in b else None  # noqa: E731
    accs = " / ".join(f"{b[n]['accuracy']['test']['mean']:.3f}" if n in b else "—" for n in BACKENDS)
    cells = [("date", result["date"]), ("device", result["device"]), ("retain imgs", result["sizes"]["retain"]),
             ("R", c["runs"]), ("eager img/s", get("eager", "img_per_s")),
             (f"{c['procs']} procs img/s", get("procs", "img_per_s")),
             (f"JAX {c['lanes']} lanes img/s", get("jax", "img_per_s")),
             ("JAX program", f"{c['dtype']} {c['conv']}" + (f" map {c['lane_map']}" if c["lane_map"] else "")),
             ("JAX compile s", get("jax", "compile_s")),
             ("wall R eager s", get("eager", "wall_for_R_s")), ("wall R procs s", get("procs", "wall_for_R_s")),
             ("wall R JAX s", get("jax", "wall_for_R_s")),
             ("wall R JAX s incl. compile", get("jax", "wall_for_R_incl_compile_s")),
             ("JAX / eager", speedup.get("jax_vs_eager")), ("JAX / procs", speedup.get("jax_vs_procs")),
             ("test acc eager / procs / JAX", accs), ("acc match", result["accuracy_match"])]
    return [k for k, _ in cells], [[v for _, v in cells]]


def main(argv=None) -> dict:
    """Run the comparison; write ``<out>.json`` and ``<out>.md`` after every backend (the last write is
    marked complete); return the result dict."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        args.runs_timed = {"eager": args.eager_runs, "procs": args.procs_runs}.get(args.tag) or args.runs
        work = Path(args.workdir)
        if args.worker == "prepare":
            return _prepare(args, work)
        result = _torch_worker(args, work) if args.worker == "torch" else _jax_worker(args, work)
        common.write_json(work / f"result_{args.tag}_{args.rank}.json", result)
        return result
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    argv_w, env, backends = [*argv, "--device", device], common.worker_env(force_cpu=device == "cpu"), {}
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="unlearn_vs_pytorch_", dir=args.workdir) as tmp:
        work = Path(tmp)
        elapsed = common.stopwatch()
        subprocess.run(_worker_cmd(argv_w, work, "prepare"), env=env, check=True)
        prepare = {**json.loads((work / "prepare.json").read_text()), "prepare_s": elapsed()}
        for name in args.backends:
            kind, world = ("jax", 1) if name == "jax" else ("torch", 1 if name == "eager" else args.procs)
            common.run_workers([_worker_cmd(argv_w, work, kind, name, r, world) for r in range(world)], work, name,
                               env=env)
            results = [json.loads((work / f"result_{name}_{r}.json").read_text()) for r in range(world)]
            backends[name] = summarise(name, results, args.runs, prepare["sizes"]["retain"])
            # Written after every backend, so a run stopped by a time limit keeps the backends it finished.
            result = report(args, argv, device, prepare, backends, complete=name == args.backends[-1])
    print(result["table"], end="")
    return result["result"]


def report(args, argv, device: str, prepare: dict, backends: dict, *, complete: bool) -> dict:
    """Build the result dict of the backends measured so far (speed-ups, accuracy checks, the original's
    accuracy by evaluator), write ``<out>.json`` and ``<out>.md`` (``complete=False`` marks them partial);
    returns ``{'result': ..., 'table': markdown}``."""
    backends = {n: backends[n] for n in BACKENDS if n in backends}  # one order for keys, whatever ran first
    speedup = {}
    for a, b in (("jax", "eager"), ("jax", "procs"), ("procs", "eager")):
        if a in backends and b in backends:
            speedup[f"{a}_vs_{b}"] = backends[a]["img_per_s"] / backends[b]["img_per_s"]
            speedup[f"{a}_vs_{b}_wall_incl_compile"] = (backends[b]["wall_for_R_incl_compile_s"]
                                                      / backends[a]["wall_for_R_incl_compile_s"])
    checks = compare_accuracy(backends, args.acc_tol)
    originals = {n: b["original_acc"] for n, b in backends.items() if b["original_acc"] is not None}
    config = {k: v for k, v in vars(args).items() if k not in ("worker", "tag", "rank", "world")}
    result = {
        "benchmark": "unlearn_vs_pytorch", "date": common.utc_now(), "complete": complete,
        "command": common.command_line("unlearn_vs_pytorch.py", argv), "versions": common.versions(),
        "device": common.describe_device(backends.get("jax", next(iter(backends.values())))["device"]),
        "config": {**config, "backends": list(args.backends), "torch_device": device, "recipe": RECIPE},
        "sizes": prepare["sizes"], "prepare": prepare, "backends": backends, "speedup": speedup,
        "accuracy_checks": checks, "accuracy_match": all(c["ok"] for c in checks.values()),
        # torch and JAX evaluate the same original model: their accuracies must agree (to an example or so).
        "original_acc_by_evaluator": originals,
        "evaluators_max_abs_diff": max((abs(a[s] - b[s]) for a in originals.values() for b in originals.values()
                                        for s in a), default=0.0),
    }
    table, out = common.markdown_table(*markdown_row(result)), Path(args.out)
    head = {k: result[k] for k in ("date", "device", "versions", "command")}
    if not complete:
        head["status"] = f"partial: backends {list(backends)} of {list(args.backends)} done when this was written"
    common.write_json(out.with_suffix(".json"), result)
    common.write_markdown(out.with_suffix(".md"), head, table)
    return {"result": result, "table": table}


if __name__ == "__main__":
    main()
