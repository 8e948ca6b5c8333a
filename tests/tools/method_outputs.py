"""Record every registered method's outputs on fixed tiny data, and compare two records bit for bit.

The acceptance tool of issue #13 (re-lay, behaviour unchanged): run it at the old and the new commit and
compare. Each method runs 2 seeds vmapped (``jax.vmap`` of the engine's ``make_run`` over the keys
``fold_in(key(0), i)``, i = 0, 1) from one start model on fixed synthetic data — the data of
``tests/engine/conftest.py`` (a seeded NumPy Generator, 4 classes, 45/10/12/12 examples, a learnable
signal in the red channel), a ``ResNet(stage_sizes=(1, 1), width=4, conv_impl='gemm')``, float32, CPU,
every program compiled with ``xla_backend_optimization_level=0`` (compile time dominates; both records
compile the same way). The engine's per-epoch accuracy tracking is off: it is not the method's output (a
function of the per-epoch variables) and doubles the compile time. Hyper-parameters are each method's
registered defaults with the small overrides of :data:`TINY` (epochs, batch sizes, noise batches: only
what would be slow on tiny data); a method registered later gets :data:`TINY_DEFAULT`, both filtered to
the names the method has at that commit (dropped names are recorded and shown by ``compare``).

Usage (run the script by its file path, never with ``python -m``, so the working directory does not
shadow the library)::

    python tests/tools/method_outputs.py record --out new.npz [--methods all|finetune,salun]
    python tests/tools/method_outputs.py compare old.npz new.npz

``record`` writes ``FILE.npz``: every output leaf as ``{method}/variables/...``, ``{method}/metrics/...``
(leading axis: the 2 seeds), the start variables as ``@start/...``, and ``__meta__`` (JSON: the library's
folder, commit and uncommitted files, jax/jaxlib/numpy versions, platform, this script's SHA-256, and per
method its status, hyper-parameters, times and a SHA-256 over its leaves' names, dtypes, shapes, bytes);
``FILE.json`` beside it holds the same metadata. Both are written via a temporary file and a rename. A
method that raises is recorded as failed (message kept), the others still run, and ``record`` exits 1.
``compare`` (NumPy only) prints a line per method — ``bit-identical``, ``differs`` (the leaves that
differ with their max abs difference, and any hyper-parameter difference), ``missing`` (not registered or
not recorded on one side) or ``failed`` — and exits 1 unless every method on both sides is bit-identical.

Old commit, library from a git worktree (the script always from the new tree, so both records use the
same data, overrides and compile options)::

    git worktree add /tmp/old <old-commit>
    PYTHONPATH=/tmp/old .venv/bin/python tests/tools/method_outputs.py record --out /tmp/old.npz
    .venv/bin/python tests/tools/method_outputs.py record --out /tmp/new.npz
    .venv/bin/python tests/tools/method_outputs.py compare /tmp/old.npz /tmp/new.npz
    git worktree remove /tmp/old

``PYTHONPATH`` comes before the editable install on ``sys.path``, so the library is imported from
``/tmp/old``; ``record`` prints the library's folder and commit and refuses to run when ``PYTHONPATH`` is
set but the library came from elsewhere. The script imports nothing from the library at import time, only
inside ``record``. The library symbols are looked up in the module lists of :data:`LOCATIONS` (first hit
wins), so a re-lay that moves them needs only a new entry there.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEEDS = (0, 1)
START_SEED = 42
META = "__meta__"
START = "@start"
FORMAT = 1
COMPILE_OPTIONS = {"xla_backend_optimization_level": 0}

# Small overrides where a default would be slow on 45 retain / 10 forget examples. Same table at both
# commits (the script always runs from the new tree); learning rates and other defaults are left alone.
TINY_DEFAULT = dict(epochs=2, batch_size=16, forget_batch_size=4)
TINY = {
    "bad-teacher": dict(epochs=2, batch_size=8),
    "scrub": dict(epochs=3, msteps=2, batch_size=16, forget_batch_size=4),
    "ssd": dict(batch_size=16),
    "finetune": dict(epochs=2, batch_size=16),
    "finetune-kit": dict(epochs=2, batch_size=16),
    "retrain": dict(epochs=2, batch_size=16),
    "l1-sparse": dict(epochs=3, batch_size=16, no_l1_epochs=1),
    "neggrad+": dict(epochs=2, batch_size=16, forget_batch_size=4),
    "random-label": dict(epochs=2, batch_size=16),
    "salun": dict(epochs=2, batch_size=16),
    "unsir": dict(batch_size=16, noise_images=3, noise_steps=3, noise_copies=2, retain_per_class=6),
    "noise-student-curriculum": dict(batch_size=16, noise_images=2, noise_steps=3, noise_batches=1,
                                     distill_batch_size=16),
    "fanchuan": dict(epochs=2, batch_size=16, forget_batch_size=4),
    "kookmin": dict(epochs=2, batch_size=16),
    "seif": dict(epochs=2, batch_size=16),
    "sebastian": dict(epochs=1.5, batch_size=16),
    "toshi-conv-transpose": dict(epochs=2, batch_size=16),
    "amnesiacs": dict(kd_epochs=1, retain_epochs=1, batch_size=16),
    "sun": dict(epochs=3, fine_epochs=1, layer_select=3, batch_size=16),
    "fisher": dict(batch_size=8, chunk_size=2),
    "influence": dict(batch_size=8, num_samples=5, chunk_size=3),
    "gradient-ascent": dict(epochs=2, batch_size=8),
    "cf-k": dict(epochs=2, batch_size=8),
    "eu-k": dict(epochs=2, batch_size=8),
}

# Where each library symbol may live (first module that has it wins). `jax_unlearn.methods` is imported
# first in any case: importing it registers every method.
LOCATIONS = {
    "METHODS": ["jax_unlearn.methods", "jax_unlearn.methods.registry", "jax_unlearn.methods.base"],
    "build_method": ["jax_unlearn.methods", "jax_unlearn.methods.registry", "jax_unlearn.methods.base"],
    "make_run": ["jax_unlearn.engine.run", "jax_unlearn.engine"],
    "RunConfig": ["jax_unlearn.engine.run", "jax_unlearn.engine"],
    "context_for": ["jax_unlearn.engine.run", "jax_unlearn.engine", "jax_unlearn.engine.data",
                    "jax_unlearn.engine.train"],
    "device_data": ["jax_unlearn.engine.run", "jax_unlearn.engine", "jax_unlearn.engine.data",
                    "jax_unlearn.engine.train"],
    "ResNet": ["jax_unlearn.models", "jax_unlearn.models.resnet"],
    "init_variables": ["jax_unlearn.models", "jax_unlearn.models.resnet"],
    "Split": ["jax_unlearn.data.types", "jax_unlearn.data"],
    "UnlearningData": ["jax_unlearn.data.types", "jax_unlearn.data"],
    "Normalization": ["jax_unlearn.data.types", "jax_unlearn.data"],
}


def resolve(name: str):
    """The library symbol ``name`` from the first module of ``LOCATIONS[name]`` that defines it."""
    for module in LOCATIONS[name]:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                continue  # that module does not exist at this commit
            raise
        if hasattr(mod, name):
            return getattr(mod, name)
    raise ImportError(f"{name} not found in any of {LOCATIONS[name]}; add its new module to LOCATIONS in {__file__}")


def tiny_data():
    """The fixed data set: tests/engine/conftest.py's ``tiny_data`` (same generator, same draws)."""
    Split, UnlearningData, Normalization = resolve("Split"), resolve("UnlearningData"), resolve("Normalization")
    rng = np.random.default_rng(0)

    def split(n, num_classes=4):
        labels = rng.integers(0, num_classes, n).astype(np.int32)
        images = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
        images[..., 0] = np.uint8(40) * labels[:, None, None].astype(np.uint8)  # learnable signal
        return Split(images, labels, ids=np.array([f"x{rng.integers(1 << 40)}-{i}" for i in range(n)]))

    return UnlearningData(retain=split(45), forget=split(10), validation=split(12), test=split(12),
                          num_classes=4, normalization=Normalization(scale=1 / 255, mean=(0.5,) * 3, std=(0.25,) * 3),
                          description={"source": "synthetic"})


def _key_name(k) -> str:
    return next((str(getattr(k, a)) for a in ("key", "idx", "name") if hasattr(k, a)), str(k))


def flat_leaves(prefix: str, tree) -> dict[str, np.ndarray]:
    """``{prefix/path/to/leaf: host array}`` for every leaf of ``tree``."""
    import jax

    return {"/".join([prefix, *map(_key_name, path)]): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def digest(leaves: dict[str, np.ndarray]) -> str:
    """SHA-256 over the leaves' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(leaves):
        a = np.ascontiguousarray(leaves[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _git(root: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True)
        return done.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def library_facts() -> dict:
    """Where the library was imported from, its commit, and its uncommitted files."""
    import jax_unlearn

    package = Path(jax_unlearn.__file__).resolve().parent
    root = package.parent
    python_path = [Path(p).resolve() for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if python_path and root not in python_path:
        raise SystemExit(f"PYTHONPATH={os.environ['PYTHONPATH']} but jax_unlearn was imported from {package}; "
                         f"run the script by its path (not python -m) from outside that tree")
    dirty = _git(root, "status", "--porcelain", "--", package.name).splitlines()
    return {"library": str(package), "commit": _git(root, "rev-parse", "HEAD") or "unknown",
            "uncommitted": [line.strip() for line in dirty]}


def run_method(name: str, info, ctx, start, data) -> tuple[dict[str, np.ndarray], dict]:
    """One method's two vmapped seeds: (its output leaves, its metadata)."""
    import jax

    build_method, make_run, RunConfig = resolve("build_method"), resolve("make_run"), resolve("RunConfig")
    wanted = TINY.get(name, TINY_DEFAULT)
    overrides = {k: v for k, v in wanted.items() if k in info.defaults}
    dropped = sorted(set(TINY.get(name, {})) - set(overrides))  # the TINY_DEFAULT misses are expected
    run = make_run(ctx, build_method(name, ctx, **overrides), RunConfig(track=False))
    base = jax.random.key(0)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(np.asarray(SEEDS, np.uint32))
    many = jax.vmap(run, in_axes=(0, None, None))
    compiled = jax.jit(many).lower(keys, start, data).compile(COMPILE_OPTIONS)
    variables, metrics = jax.device_get(compiled(keys, start, data))
    leaves = {**flat_leaves(f"{name}/variables", variables), **flat_leaves(f"{name}/metrics", metrics)}
    meta = {"hyper": json.loads(json.dumps({**info.defaults, **overrides}, default=repr)),  # tuples as lists
            "dropped_overrides": dropped, "sha256": digest(leaves), "leaves": len(leaves)}
    return leaves, meta


def record(out: str | Path, methods: str = "all", log=print) -> dict:
    """Run ``methods`` ("all" or comma-separated names) and write ``out`` (.npz) and its .json sidecar.

    Returns the metadata. Names not registered at this commit are recorded as such; a method that raises
    is recorded as failed with its message.
    """
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jaxlib

    jax.config.update("jax_enable_x64", False)
    importlib.import_module("jax_unlearn.methods")  # registers every method
    facts = library_facts()
    registry = resolve("METHODS")
    context_for, device_data = resolve("context_for"), resolve("device_data")
    ResNet, init_variables = resolve("ResNet"), resolve("init_variables")
    names = sorted(registry) if methods == "all" else [m.strip() for m in methods.split(",") if m.strip()]
    log(f"library {facts['library']} at {facts['commit'][:12]}"
        + (f" (+{len(facts['uncommitted'])} uncommitted)" if facts["uncommitted"] else "")
        + f"; jax {jax.__version__}, {jax.default_backend()}; {len(names)} methods")

    model = ResNet(stage_sizes=(1, 1), num_classes=4, width=4, conv_impl="gemm")
    data_host = tiny_data()
    ctx, data = context_for(data_host, model), device_data(data_host)
    # Compiled: op by op, the init compiles each of its ops apart (seconds per record on a CPU).
    start = jax.jit(lambda key: init_variables(model, key))(jax.random.key(START_SEED))
    arrays = flat_leaves(START, start)
    meta = {"format": FORMAT, **facts, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "numpy": np.__version__, "platform": jax.default_backend(), "seeds": list(SEEDS),
            "compile_options": COMPILE_OPTIONS,
            "script_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
            "registry": sorted(registry), "start_sha256": digest(arrays), "methods": {}}
    total, total_cpu = time.perf_counter(), time.process_time()
    for name in names:
        if name not in registry:
            meta["methods"][name] = {"status": "not registered"}
            log(f"  {name:26s} not registered at this commit")
            continue
        t, cpu = time.perf_counter(), time.process_time()
        try:
            leaves, info = run_method(name, registry[name], ctx, start, data)
        except Exception as e:  # noqa: BLE001 -- recorded per method; the others still run
            meta["methods"][name] = {"status": "failed", "error": f"{type(e).__name__}: {e}".splitlines()[0]}
            log(f"  {name:26s} FAILED {meta['methods'][name]['error']}")
            continue
        finally:
            jax.clear_caches()
        arrays.update(leaves)
        meta["methods"][name] = {"status": "ok", **info, "seconds": round(time.perf_counter() - t, 2),
                                 "cpu_seconds": round(time.process_time() - cpu, 2)}
        log(f"  {name:26s} {info['sha256'][:16]}  {meta['methods'][name]['seconds']:6.1f} s "
            f"({meta['methods'][name]['cpu_seconds']:.1f} s CPU)")
    meta["seconds"] = round(time.perf_counter() - total, 1)
    meta["cpu_seconds"] = round(time.process_time() - total_cpu, 1)
    _write(Path(out), arrays, meta)
    log(f"wrote {out} and {Path(out).with_suffix('.json')} ({meta['seconds']} s, {meta['cpu_seconds']} s CPU)")
    return meta


def _write(out: Path, arrays: dict, meta: dict) -> None:
    """``out`` and its .json sidecar, each via a temporary file renamed into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(meta, indent=1, sort_keys=True)
    for path, write in ((out, lambda f: np.savez(f, **arrays, **{META: np.array(text)})),
                        (out.with_suffix(".json"), lambda f: f.write(text.encode() + b"\n"))):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise


def load(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, arrays) of a record; a one-line exit naming the file when it is not one."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop(META)[()]))
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"{path}: not a method_outputs record ({type(e).__name__}: {e})") from None
    return meta, arrays


def _entry_leaves(arrays: dict, entry: str) -> dict[str, np.ndarray]:
    return {k[len(entry) + 1:]: v for k, v in arrays.items() if k.startswith(entry + "/")}


def _leaf_diff(a: np.ndarray, b: np.ndarray) -> str | None:
    """None when bit-identical (dtype, shape, bytes), else what differs."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return f"{a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
    if np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes():
        return None
    x, y = a.astype(np.float64), b.astype(np.float64)
    both_nan = np.isnan(x) & np.isnan(y)
    d = np.where(both_nan, 0.0, np.abs(x - y))
    return f"max |diff| {np.nanmax(d) if np.any(~np.isnan(d)) else float('nan'):.3g}"


def compare_entry(entry: str, old: dict, new: dict) -> list[str]:
    """The differences between one entry's leaves in two records (empty: bit-identical)."""
    a, b = _entry_leaves(old, entry), _entry_leaves(new, entry)
    out = [f"only in OLD: {k}" for k in sorted(set(a) - set(b))]
    out += [f"only in NEW: {k}" for k in sorted(set(b) - set(a))]
    for k in sorted(set(a) & set(b)):
        d = _leaf_diff(a[k], b[k])
        if d:
            out.append(f"{k}: {d}")
    return out


def _hyper_diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k} {old.get(k, '-')} -> {new.get(k, '-')}" for k in keys if old.get(k) != new.get(k))


def compare(old_path, new_path) -> tuple[list[str], int]:
    """(report lines, exit code): 0 when every method on either side is bit-identical on the other."""
    (mo, ao), (mn, an) = load(old_path), load(new_path)
    lines = []
    for tag, path, m in (("OLD", old_path, mo), ("NEW", new_path, mn)):
        dirty = f" +{len(m['uncommitted'])} uncommitted" if m["uncommitted"] else ""
        lines.append(f"{tag} {path}: commit {m['commit'][:12]}{dirty}, {m['library']}, jax {m['jax']}/jaxlib "
                     f"{m['jaxlib']}, {m['platform']}")
    for k in ("jax", "jaxlib", "platform", "script_sha256", "seeds", "compile_options"):
        if mo.get(k) != mn.get(k):
            lines.append(f"WARNING: {k} differs between the records ({mo.get(k)} vs {mn.get(k)}): a difference "
                         f"below may not come from the library")
    start = compare_entry(START, ao, an)
    lines.append(f"{'bit-identical' if not start else 'differs':14s} (start variables)"
                 + (f"  {len(start)} leaves: " + "; ".join(start[:3]) if start else ""))
    counts = {"bit-identical": 0, "differs": 0, "missing": 0, "failed": 0}
    for name in sorted(set(mo["methods"]) | set(mn["methods"])):
        a, b = mo["methods"].get(name), mn["methods"].get(name)
        sides = (("OLD", a, mo), ("NEW", b, mn))  # a side's entry is None when the name was not asked for
        missing = [f"{'not recorded' if x is None and name in m['registry'] else 'not registered'} in {tag}"
                   for tag, x, m in sides if x is None or x["status"] == "not registered"]
        failed = [f"{tag}: {x['error']}" for tag, x, _ in sides if x is not None and x["status"] == "failed"]
        if missing:
            status, detail = "missing", "; ".join(missing)
        elif failed:
            status, detail = "failed", "; ".join(failed)
        else:
            diffs = compare_entry(name, ao, an)
            hyper = _hyper_diff(a["hyper"], b["hyper"])
            status = "differs" if diffs else "bit-identical"
            detail = f"{a['leaves']} leaves"
            if diffs:
                detail = (f"{len(diffs)}/{max(a['leaves'], b['leaves'])} leaves: " + "; ".join(diffs[:4])
                          + (f"; ... {len(diffs) - 4} more" if len(diffs) > 4 else ""))
                if all(d.startswith("only in") for d in diffs):
                    detail += "; all shared leaves bit-identical"
            detail += f" [hyper-parameters: {hyper}]" if hyper else ""
        counts[status] += 1
        lines.append(f"{status:14s} {name:26s} {detail}")
    bad = counts["differs"] + counts["missing"] + counts["failed"] + bool(start)
    lines.append("summary: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + f" -> exit {int(bad > 0)}")
    return lines, int(bad > 0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="run the methods and write FILE.npz (+ FILE.json)")
    r.add_argument("--out", required=True, help="the .npz to write")
    r.add_argument("--methods", default="all", help="'all' (default) or comma-separated method names")
    c = sub.add_parser("compare", help="compare two records; exit 1 unless all bit-identical")
    c.add_argument("old"), c.add_argument("new")
    args = p.parse_args(argv)
    if args.cmd == "record":
        if not args.out.endswith(".npz"):
            p.error(f"--out {args.out}: must end in .npz")
        meta = record(args.out, args.methods)
        failed = [n for n, m in meta["methods"].items() if m["status"] == "failed"]
        if failed:
            print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return int(bool(failed))
    lines, code = compare(args.old, args.new)
    print("\n".join(lines))
    return code


if __name__ == "__main__":
    sys.exit(main())
