"""Shared benchmark helpers: timing, device and version facts, JSON + Markdown output.

Timing rule for every figure the benchmarks report: compile (or warm-up) first and report it on its own,
then time whole calls with ``jax.block_until_ready`` (or ``torch.cuda.synchronize``) inside the timed
region, repeat, and report the median (min and max beside it). Nothing here initialises a device on
import: :func:`versions` reads package metadata only, so a parent process that launches GPU workers can
call it without taking GPU memory.

Run the scripts from the repository root, as ``python benchmarks/<script>.py`` (each puts the root on
``sys.path``) or ``python -m benchmarks.<script>``.
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import os
import platform
import resource
import shlex
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

# The library's JSON writer and per-model summary, so records and reports read alike.
from jax_unlearn.jobs.folders import json_default as _json_default, write_json  # noqa: F401  (re-exported)
from jax_unlearn.metrics.summary import mean_std  # noqa: F401  (re-exported)

# --conv values: the library's table, shared with the CLI (importing it initialises no device).
from jax_unlearn.models.factory import (CONV_CHOICES, CONV_LOWERINGS, conv_spec,  # noqa: F401  (re-exported)
                                        resolve_conv)

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "torchvision")


# --------------------------------------------------------------------------------------------- timing


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds of ``repeats`` timed calls: the median (the figure we report), min, max and all of them."""

    median: float
    min: float
    max: float
    times: tuple[float, ...]

    @classmethod
    def of(cls, times: Sequence[float]) -> "Timing":
        if not times:
            raise ValueError("no timings")
        return cls(statistics.median(times), min(times), max(times), tuple(times))

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "min_s": self.min, "max_s": self.max, "times_s": list(self.times)}


def stopwatch() -> Callable[[], float]:
    """``elapsed = stopwatch(); ...; elapsed()`` -> seconds since the call (``time.perf_counter``)."""
    start = time.perf_counter()
    return lambda: time.perf_counter() - start


def time_chained(fn: Callable, carry, *args, warmup: int = 1, repeats: int = 5) -> tuple[Timing, Any]:
    """Time ``carry = fn(carry, *args)[0]`` calls that consume their carry (e.g. a train step that donates
    its state): ``warmup`` untimed calls, then ``repeats`` timed ones, each ending in
    ``jax.block_until_ready``. Returns the :class:`Timing` and the final carry."""
    import jax

    for _ in range(warmup):
        carry = jax.block_until_ready(fn(carry, *args)[0])
    times = []
    for _ in range(repeats):
        elapsed = stopwatch()
        carry = jax.block_until_ready(fn(carry, *args)[0])
        times.append(elapsed())
    return Timing.of(times), carry


def compile_jax(jitted, *args) -> tuple[Any, float]:
    """Ahead-of-time ``jitted.lower(*args).compile()``; returns ``(compiled, seconds)`` so compile time is
    reported apart from run time and the timed calls never trigger a compilation."""
    elapsed = stopwatch()
    compiled = jitted.lower(*args).compile()
    return compiled, elapsed()


def compiled_memory(compiled) -> dict[str, int] | None:
    """XLA's static memory plan of a compiled program (arguments, outputs, temporaries), when the backend
    provides one; None otherwise."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 — optional diagnostic; backends without it raise various errors
        return None
    if m is None:
        return None
    return {name: int(getattr(m, f"{name}_size_in_bytes")) for name in ("argument", "output", "temp", "alias")
            if hasattr(m, f"{name}_size_in_bytes")}


# ------------------------------------------------------------------------ model variants, lane programs

def vmap_lanes(fn: Callable, in_axes: Sequence[int | None], lane_map: int = 0) -> Callable:
    """``jax.vmap(fn, in_axes)`` over a leading lane axis, or, with ``lane_map = M > 0``, ``lax.map`` over
    groups of ``M`` lanes of ``vmap(fn)`` — the same per-lane function (lanes never interact) computed
    ``M`` lanes at a time, which bounds the working set and gives XLA smaller batched ops. ``in_axes``
    entries are 0 (split by lane) or None (shared by all lanes); the lane count must be a multiple of M.
    One lane (``M = 1``, or a single lane in all) runs ``fn`` unbatched
    (:func:`jax_unlearn.engine.lanes.vmap_lanes`).
    """
    import jax

    from jax_unlearn.engine.lanes import vmap_lanes as engine_vmap_lanes

    vf = engine_vmap_lanes(fn, in_axes)
    if not lane_map:
        return vf

    def mapped(*args):
        lanes = [a for a, ax in zip(args, in_axes) if ax == 0]
        n = jax.tree_util.tree_leaves(lanes)[0].shape[0]
        if n % lane_map:
            raise ValueError(f"{n} lanes are not a multiple of lane_map={lane_map}")
        group = lambda t: t.reshape(n // lane_map, lane_map, *t.shape[1:])  # noqa: E731

        def one_group(grouped):
            it = iter(grouped)
            return vf(*(next(it) if ax == 0 else a for a, ax in zip(args, in_axes)))

        out = jax.lax.map(one_group, jax.tree_util.tree_map(group, lanes))
        return jax.tree_util.tree_map(lambda t: t.reshape(n, *t.shape[2:]), out)

    return mapped


# -------------------------------------------------------------------------------------------- memory


def jax_peak_bytes() -> int | None:
    """``peak_bytes_in_use`` of the first JAX device (GPU/TPU allocators); None where not tracked (CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def torch_peak_bytes(device) -> dict[str, int] | None:
    """torch's CUDA caching-allocator peaks (``max_memory_allocated`` / ``_reserved``); None on CPU."""
    import torch

    if torch.device(device).type != "cuda":
        return None
    return {"allocated": int(torch.cuda.max_memory_allocated(device)),
            "reserved": int(torch.cuda.max_memory_reserved(device))}


def torch_reset_peak(device) -> None:
    """Start :func:`torch_peak_bytes` afresh (CUDA only; a no-op on CPU)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def host_peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux ``ru_maxrss`` is in KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# ------------------------------------------------------------------------------------ device / versions


def versions() -> dict[str, str | None]:
    """Python, OS and the installed versions of :data:`PACKAGES` (metadata only: imports nothing)."""
    out: dict[str, str | None] = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def jax_device_info() -> dict[str, Any]:
    """The JAX backend and its first device (initialises the backend: call it in the measuring process)."""
    import jax

    d = jax.devices()[0]
    return {"backend": jax.default_backend(), "device_kind": d.device_kind, "device_count": jax.device_count(),
            "default_matmul_precision": str(jax.config.jax_default_matmul_precision)}


def torch_device_info(device) -> dict[str, Any]:
    """The torch device in words, and the TF32 switches that decide fp32 conv/matmul speed on Ampere+."""
    import torch

    device = torch.device(device)
    info: dict[str, Any] = {"device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info.update(name=torch.cuda.get_device_name(device), cudnn=torch.backends.cudnn.version(),
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


def describe_device(info: Mapping[str, Any]) -> str:
    """A short label for tables: the device kind plus the CPU count for CPU runs."""
    kind = info.get("device_kind") or info.get("name") or "?"
    if info.get("backend", "") == "cpu" or str(info.get("device", "")).startswith("cpu"):
        return f"CPU ({os.cpu_count()} cores: {kind})"
    return str(kind)


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def command_line(script: str, argv: Sequence[str]) -> str:
    """The exact command that reproduces a run: ``python benchmarks/<script> <argv...>``."""
    return shlex.join(["python", f"benchmarks/{script}", *argv])


# ---------------------------------------------------------------------------------------------- output


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: ints with thousands separators, floats to ``digits`` significant figures (big ones
    rounded to integers), None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        if abs(value) >= 10 ** digits:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table: a header of ``columns``, then one line per row (cells via :func:`fmt`)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"row has {len(row)} cells for {len(columns)} columns")
        lines.append("| " + " | ".join(fmt(c) for c in row) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(path: str | os.PathLike, header: Mapping[str, Any], table: str) -> Path:
    """A Markdown file: ``- key: value`` lines (date, device, versions, command; a dict value as
    ``k v, k v``) above ``table``."""
    from converters import atomic_write

    cell = lambda v: ", ".join(f"{k} {x}" for k, x in v.items()) if isinstance(v, Mapping) else v  # noqa: E731
    head = "\n".join(f"- {k}: {cell(v)}" for k, v in header.items())
    return atomic_write(path, lambda tmp: Path(tmp).write_text(f"{head}\n\n{table}"))


# ------------------------------------------------------------------ worker processes released together


def wait_for_go(work: Path, tag: str, rank: int, timeout_s: float = 3600.0, poll_s: float = 0.005) -> float:
    """In a worker: report ready (``ready_<tag>_<rank>``), wait for the parent's ``go_<tag>``, and return
    the wall-clock time (``time.time()``, comparable across processes) at which it came."""
    (Path(work) / f"ready_{tag}_{rank}").touch()
    deadline = time.time() + timeout_s
    while not (Path(work) / f"go_{tag}").exists():
        if time.time() > deadline:
            raise TimeoutError(f"no go signal from the parent within {timeout_s:.0f} s")
        time.sleep(poll_s)
    return time.time()


def worker_env(force_cpu: bool = False) -> dict[str, str]:
    """The environment for worker processes: the repository on ``PYTHONPATH`` (so ``python -m
    benchmarks.<script>`` imports from any working directory); ``force_cpu`` hides GPUs from JAX and torch."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if force_cpu:
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    return env


def run_workers(commands: Sequence[Sequence[str]], work: Path, tag: str, *, env: Mapping[str, str],
                poll_s: float = 0.005) -> None:
    """Start one process per command (rank = position), wait until every one has called
    :func:`wait_for_go`, release them together, and wait for all. Each writes ``<tag>_<rank>.log`` in
    ``work``; a worker that fails raises RuntimeError with the end of its log, and the others are killed."""
    import subprocess

    work = Path(work)
    procs, logs = [], []

    def check() -> None:
        for rank, p in enumerate(procs):
            if p.poll() not in (None, 0):
                text = (work / f"{tag}_{rank}.log").read_text()[-4000:]
                raise RuntimeError(f"{tag} worker {rank} exited with {p.returncode}:\n{text}")

    try:
        for rank, cmd in enumerate(commands):
            logs.append(open(work / f"{tag}_{rank}.log", "w"))
            procs.append(subprocess.Popen(list(cmd), env=dict(env), stdout=logs[-1], stderr=subprocess.STDOUT))
        while not all((work / f"ready_{tag}_{r}").exists() for r in range(len(procs))):
            check()
            time.sleep(poll_s)
        (work / f"go_{tag}").touch()
        for p in procs:
            p.wait()
        check()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()


# ------------------------------------------------------------------------------------ data, statistics


def synthetic_splits(seed: int, image_size: int = 32, num_classes: int = 10, **sizes: int):
    """``{name: (uint8 images (n, s, s, 3), int32 labels (n,))}`` for each ``name=n`` in ``sizes``: random
    pixels whose red channel encodes the label (learnable), from ``numpy.random.default_rng(seed)``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for name, n in sizes.items():
        y = rng.integers(0, num_classes, n).astype(np.int32)
        x = rng.integers(0, 256, (n, image_size, image_size, 3)).astype(np.uint8)
        x[..., 0] = (y * (255 // max(num_classes - 1, 1))).astype(np.uint8)[:, None, None]
        out[name] = (x, y)
    return out


def means_agree(a: Mapping[str, float], b: Mapping[str, float], floor: float) -> dict[str, Any]:
    """Do two :func:`mean_std` summaries agree within noise? ``|Δ mean| <= max(floor, 3 × SE of the
    difference)`` with ``SE = sqrt(s_a²/n_a + s_b²/n_b)``; the floor covers tiny or spread-free samples."""
    se = (a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"]) ** 0.5
    diff, tol = abs(a["mean"] - b["mean"]), max(floor, 3 * se)
    return {"abs_diff": diff, "tolerance": tol, "ok": bool(diff <= tol)}
