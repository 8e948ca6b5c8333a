"""The demonstration pipeline (``jax-unlearn demo``, ``make demo``): the whole product on the offline default.

Fashion-MNIST → an original model (the official recipe) → N unlearned models (the Kaggle ``finetune``
baseline) and N retrained models → the ``.pth`` submission → the evaluation report with the official score.
Sizes default to what a 2-core CPU finishes in minutes, or the competition's on an accelerator.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def demo(out: str | Path, model: Any, *, platform: str, n_seeds: int | None = None, epochs: int | None = None,
         chunk_size: int | None = None, data_dir: str | None = None, max_train: int | None = None,
         max_eval: int | None = None, dtype: str = "float32") -> dict:
    """Run the pipeline into ``out`` (resumable: a rerun reuses the original and every finished chunk).

    Args:
      model: the flax module to train (e.g. :func:`jax_unlearn.models.make_model` ``(10, conv='auto')``).
      platform: ``'cpu'`` picks the CPU defaults (8 seeds, 3 epochs, 768 training / 256 evaluation
        images); anything else the competition's (64 seeds, 30 epochs, all data).

    Returns the evaluation report (:func:`jax_unlearn.evaluation.report.evaluate`); prints its summary.
    """
    from converters import flax_to_torch, load_flax_variables, save_flax_variables, save_torch_checkpoint
    from jax_unlearn.data import load_dataset
    from jax_unlearn.evaluation.report import evaluate, format_summary
    from jax_unlearn.jobs.folders import RunFolder, export_pth
    from jax_unlearn.jobs.populations import run_population, train_original

    cpu = platform == "cpu"
    n = n_seeds or (8 if cpu else 64)
    epochs = epochs or (3 if cpu else 30)
    max_train = max_train or (768 if cpu else None)
    max_eval = max_eval or (256 if cpu else None)
    out = Path(out)
    t0 = time.perf_counter()
    data = load_dataset("fashion-mnist", data_dir, max_train=max_train, max_eval=max_eval)
    print(f"[demo] {platform}: Fashion-MNIST {data.sizes()}, {n} seeds, {epochs} epochs for original/retrain")
    original = out / "original.msgpack"
    if original.exists():
        variables = load_flax_variables(original)
        print(f"[demo] reusing {original}")
    else:
        variables, _ = train_original(data, epochs=epochs, model=model)
        save_flax_variables(variables, original)
        save_torch_checkpoint(flax_to_torch(variables), out / "original.pth")
    kw = {"chunk_size": chunk_size, "dtype": dtype, "model": model}
    unlearned = run_population(out / "unlearned", "finetune", data, start_variables=variables, n_seeds=n, **kw)
    retrained = run_population(out / "retrained", "retrain", data, n_seeds=n, hyper={"epochs": epochs}, **kw)
    export_pth(RunFolder(unlearned.path), out / "submission", n=n)
    report = evaluate(unlearned.path, data, retrained_dir=retrained.path, out_dir=out / "evaluation")
    print(format_summary(report))
    print(f"[demo] done in {time.perf_counter() - t0:.0f} s: checkpoints + submission.zip in {out / 'submission'}, "
          f"report in {out / 'evaluation'}")
    return report
