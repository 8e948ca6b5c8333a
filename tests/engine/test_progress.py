"""Per-epoch progress from inside the compiled program: once per epoch per call, results unchanged."""
import dataclasses
import io
import time

import jax
import numpy as np
import pytest

from jax_unlearn.engine import run as engine_run
from jax_unlearn.engine.progress import EpochProgress
from jax_unlearn.engine.run import RunConfig, context_for, device_data, make_run, run_seeds
from jax_unlearn.methods import build_method
from tiny import quick_init, synthetic_split  # tests/ is on sys.path


def _population(tiny_data, tiny_model, on_epoch, epoch_progress=None, n_seeds=5, chunk_size=3):
    ctx = context_for(tiny_data, tiny_model)
    method = build_method("finetune", ctx, epochs=3, batch_size=16)
    run = make_run(ctx, method, RunConfig(track=True, track_max=32), on_epoch=on_epoch)
    start = quick_init(tiny_model, jax.random.key(1))
    out = {}
    run_seeds(run, n_seeds, 0, start, device_data(tiny_data), chunk_size=chunk_size,
              on_chunk=lambda c, ids, o: out.update({c: o}), progress=False, epoch_progress=epoch_progress)
    return out


@pytest.mark.parametrize("vmapped", [True, False], ids=["vmapped-chunks", "one-lane-calls"])
def test_progress_hook_fires_once_per_epoch_per_call_and_changes_nothing(tiny_data, tiny_model, monkeypatch,
                                                                         vmapped):
    if vmapped:  # an accelerator's mode: a chunk's lanes in one vmapped call (on a CPU: one lane a call)
        monkeypatch.setattr(engine_run, "lanes_per_call", lambda n_lanes, n_devices=1: n_lanes)
    stream = io.StringIO()
    reporter = EpochProgress("finetune", 3, tiny_data.sizes()["retain"], bar=False, stream=stream)
    with_hook = _population(tiny_data, tiny_model, reporter, reporter)
    without = _population(tiny_data, tiny_model, None)
    # Bit-identical variables and metrics with and without the in-program hook.
    for c in without:
        for a, b in zip(jax.tree_util.tree_leaves(with_hook[c]), jax.tree_util.tree_leaves(without[c])):
            np.testing.assert_array_equal(a, b)
    # 5 seeds in chunks of 3 lanes, 3 epochs: vmapped, 2 chunks x 3 epochs = 6 reports, not one per lane or
    # per step; one lane a call, 5 seeds x 3 epochs (the last chunk's padding lane is not run).
    unit, calls = ("chunk", 2) if vmapped else ("seed", 5)
    lines = stream.getvalue().splitlines()
    assert lines == reporter.lines and len(lines) == 3 * calls
    assert [line.split(":")[0] for line in lines] == [f"[finetune] {unit} {c}/{calls} epoch {e}/3"
                                                      for c in range(1, calls + 1) for e in (1, 2, 3)]
    assert "img/s" in lines[0] and "ETA" in lines[0] and lines[-1].endswith("ETA 0s")


def test_each_report_waits_for_its_epoch(tiny_data, tiny_model):
    """The hook fires when its epoch is done, not when the epoch's loop iteration starts: the last epoch's
    report comes just before the call returns. (With the epoch index alone as the callback's operand, tied to
    the results by an optimization_barrier, XLA:CPU reported every epoch one epoch early: the last report
    came a whole epoch before the call returned.) Timed on a second seed, after compilation."""
    times = []

    class Clocked(EpochProgress):
        def start_chunk(self, chunk, lanes):
            times.append([time.perf_counter()])
            super().start_chunk(chunk, lanes)

        def __call__(self, epoch):
            times[-1].append(time.perf_counter())
            super().__call__(epoch)

        def end_chunk(self):
            times[-1].append(time.perf_counter())
            super().end_chunk()

    # 400 steps an epoch (400 images, batch 1): an epoch lasts far longer than a call's bookkeeping.
    data = dataclasses.replace(tiny_data, retain=synthetic_split(np.random.default_rng(1), 400))
    ctx = context_for(data, tiny_model)
    reporter = Clocked("retrain", 3, data.sizes()["retain"], bar=False, stream=io.StringIO())
    run = make_run(ctx, build_method("retrain", ctx, epochs=3, batch_size=1), RunConfig(track=False),
                   on_epoch=reporter)
    run_seeds(run, 2, 0, quick_init(tiny_model, jax.random.key(1)), device_data(data), chunk_size=1,
              on_chunk=lambda *a: None, progress=False, epoch_progress=reporter)
    start, *reports, end = times[1]
    assert len(reports) == 3
    epoch = (reports[-1] - reports[0]) / 2
    assert end - reports[-1] < epoch / 2, (times[1], epoch)
    assert reports[0] - start > epoch / 2, (times[1], epoch)


def test_reporter_counts_a_sharded_epoch_once():
    stream = io.StringIO()
    reporter = EpochProgress("x", 2, 10, bar=False, stream=stream)
    reporter.start(1)
    reporter.start_chunk(0, 4)
    for e in (0, 0, 1, 1):  # two devices report each epoch
        reporter(np.int32(e))
    reporter.end_chunk()
    reporter.close()
    assert len(reporter.lines) == 2


def test_bar_mode_writes_a_tqdm_bar():
    stream = io.StringIO()
    reporter = EpochProgress("x", 2, 10, bar=True, stream=stream)
    reporter.start(1)
    reporter.start_chunk(0, 1)
    reporter(0)
    reporter(1)
    reporter.close()
    assert reporter.lines == [] and "2/2" in stream.getvalue() and "epoch" in stream.getvalue()
