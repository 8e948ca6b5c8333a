"""``jax-unlearn`` sub-commands that run jobs: methods, train-original, unlearn, retrain, export, evaluate, sisa,
demo.

Each is an ``(name, add_arguments, run)`` triple in :data:`COMMANDS`; flags become frozen configs and
library calls here, at the edge — nothing below sees ``args``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from jax_unlearn.cli.args import (check_output, class_ids as _class_ids, fraction as _fraction,
                                  parse_set as _hyper, positive as _positive, seed as _seed)
from jax_unlearn.cli.model import arch_arg, build_model as _model, load_start, model_args as _model_args

DATASETS = ("fashion-mnist", "idx", "kaggle", "cifar10")


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    g.add_argument("--data-dir", default=None, help="data folder (default for fashion-mnist: the Debian package's)")
    g.add_argument("--forget", default=None, choices=("random", "classes", "groups", "index_file"),
                   help="forget-set selection for data sets that do not ship one (not kaggle: its forget set is "
                        "forget.csv) (default: random)")
    g.add_argument("--forget-fraction", type=_fraction, default=None,
                   help="share forgotten (--forget random; --forget groups without --forget-groups) (default: 0.1)")
    g.add_argument("--forget-classes", type=_class_ids, default=None, metavar="IDS",
                   help="comma-separated class ids, e.g. 3,5 (needs --forget classes)")
    g.add_argument("--forget-groups", type=_positive, default=None, help="number of subjects (needs --forget groups)")
    g.add_argument("--forget-index", default=None, help=".npy index file (needs --forget index_file; cifar10 "
                   "with --forget random: the starting kit's forget_idx.npy)")
    g.add_argument("--max-train", type=_positive, default=None, help="seeded subset of the training set (default: all)")
    g.add_argument("--max-eval", type=_positive, default=None,
                   help="limit validation and test to this many each (default: all)")
    g.add_argument("--data-seed", type=_seed, default=0, help="seed of the subsets and of the forget selection")


def load_data(args: argparse.Namespace):
    """Build the UnlearningData the flags describe."""
    from jax_unlearn.data import ForgetSpec, load_dataset

    options = {"seed": args.data_seed, "max_train": args.max_train, "max_eval": args.max_eval}
    given = [flag for flag, value in (("--forget", args.forget), ("--forget-fraction", args.forget_fraction),
                                      ("--forget-classes", args.forget_classes),
                                      ("--forget-groups", args.forget_groups),
                                      ("--forget-index", args.forget_index)) if value is not None]
    if args.dataset == "kaggle" and given:
        raise ValueError(f"{', '.join(given)}: the kaggle data set ships its forget set (forget.csv); "
                         f"drop the --forget* flags")
    kind = args.forget or "random"
    needs = {"--forget-classes": "classes", "--forget-groups": "groups",
             "--forget-index": "index_file" if args.dataset != "cifar10" or args.forget else None}
    for flag, wanted in needs.items():
        if wanted and flag in given and kind != wanted:
            raise ValueError(f"{flag} needs --forget {wanted} "
                             f"(--forget is {kind}{'' if args.forget else ' by default'})")
    if args.dataset != "kaggle":
        spec = ForgetSpec(kind=kind, fraction=0.1 if args.forget_fraction is None else args.forget_fraction,
                          classes=args.forget_classes or (), num_groups=args.forget_groups,
                          index_file=args.forget_index, seed=args.data_seed)
        if args.dataset == "cifar10" and args.forget_index and kind == "random":
            options["forget_idx"] = args.forget_index
        else:
            options["forget"] = spec
    return load_dataset(args.dataset, args.data_dir, **options)


def _run_args(p: argparse.ArgumentParser, n_default: int = 8) -> None:
    p.add_argument("--out", required=True, help="run folder (resumed when it holds the same config)")
    p.add_argument("--n-seeds", type=_positive, default=n_default, help="number of models (seeds 0..N-1)")
    p.add_argument("--base-seed", type=_seed, default=0, help="seed i runs with fold_in(key(base_seed), i)")
    p.add_argument("--chunk-size", type=_positive, default=None, help="lanes per compiled chunk (default: "
                   "from free device memory; 8 on CPU)")
    _set_arg(p, "method hyper-parameter; a JSON list sweeps it (n-seeds lanes per setting)")
    _model_args(p)
    p.add_argument("--no-track", action="store_true", help="skip per-epoch accuracy tracking")
    p.add_argument("--track-max", type=_positive, default=2000, help="examples per split for tracking")
    p.add_argument("--snapshot-every", type=_positive, default=None, help="keep a snapshot every k epochs")
    _device_arg(p)
    _data_args(p)


def _set_arg(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help=help)


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")


def select_device(device: str) -> str:
    """Pin JAX to ``cpu``/``gpu`` (before any computation) or keep its default, and join a multi-host job
    when the environment describes one (:func:`~jax_unlearn.engine.run.init_distributed`: every process
    runs the same command; lanes shard over all hosts' devices). Returns the platform."""
    import jax

    from jax_unlearn.engine.hosts import init_distributed

    if device != "auto":
        jax.config.update("jax_platforms", "cuda" if device == "gpu" else "cpu")
    init_distributed()
    try:
        return jax.devices()[0].platform
    except RuntimeError as e:
        raise ValueError(f"--device {device}: no such device available ({e})") from None


def _run_config(args):
    from jax_unlearn.engine.run import RunConfig

    return RunConfig(track=not args.no_track, track_max=args.track_max, snapshot_every=args.snapshot_every)


def _methods_args(p):
    p.add_argument("--markdown", action="store_true", help="print a Markdown table (docs/METHODS.md)")


def _methods(args) -> int:
    """List every method with its hyper-parameters and reference."""
    from jax_unlearn.methods import METHODS

    if args.markdown:
        print("| method | what it does | defaults | reference |\n|---|---|---|---|")
    for name in sorted(METHODS):
        info = METHODS[name]
        defaults = ", ".join(f"{k}={v}" for k, v in info.defaults.items())
        if args.markdown:
            print(f"| `{name}` | {info.summary} | {defaults} | {info.reference} |")
        else:
            print(f"{name:24s} {info.summary}\n{'':24s} defaults: {defaults}\n{'':24s} reference: {info.reference}")
    # SISA yields an ensemble of shard models, not one model per seed: its own job, listed here too.
    from jax_unlearn.methods import sisa

    defaults = ", ".join(f"{k}={v}" for k, v in sisa.DEFAULTS.items())
    summary = f"{sisa.SUMMARY} (an ensemble: run it with `jax-unlearn sisa`)"
    if args.markdown:
        print(f"| `sisa` | {summary} | {defaults} | {sisa.REFERENCE} |")
    else:
        print(f"{'sisa':24s} {summary}\n{'':24s} defaults: {defaults}\n{'':24s} reference: {sisa.REFERENCE}")
    return 0


def _train_original_args(p):
    p.add_argument("--out", required=True, help="output .pth (a .msgpack is written beside it); with a smaller "
                   "--arch, the .msgpack only")
    p.add_argument("--epochs", type=_positive, default=30, help="training epochs")
    p.add_argument("--seed", type=_seed, default=10_000, help="the model's seed (kept apart from run seeds)")
    arch_arg(p)
    _device_arg(p)
    _data_args(p)


def _train_original(args) -> int:
    """Train the original model on retain ∪ forget with the official recipe; write .pth + .msgpack (a smaller
    ``--arch``: the .msgpack only, which ``unlearn --arch`` takes as ``--original``)."""
    out = Path(args.out)
    wanted = ".pth" if args.arch is None else ".msgpack"
    if out.suffix != wanted:
        raise ValueError(f"--out must end in {wanted}" + ("" if args.arch is None else " (a smaller --arch is not a "
                         "torchvision ResNet-18, so no .pth)") + f", got {out}")
    check_output(out)  # before training, not after
    select_device(args.device)
    from converters import flax_to_torch, save_flax_variables, save_torch_checkpoint
    from jax_unlearn.jobs.populations import train_original
    from jax_unlearn.models import make_model

    data = load_data(args)
    model = None if args.arch is None else make_model(data.num_classes, arch=args.arch)
    variables, metrics = train_original(data, seed=args.seed, epochs=args.epochs, model=model)
    if args.arch is None:
        save_torch_checkpoint(flax_to_torch(variables), out)
    save_flax_variables(variables, out.with_suffix(".msgpack"))
    print(f"wrote {out}; final retain acc {float(metrics['retain_acc'][-1]):.4f}, "
          f"validation acc {float(metrics['validation_acc'][-1]):.4f}")
    return 0


def _unlearn_args(p):
    p.add_argument("--method", default="finetune", help="see `jax-unlearn methods`")
    p.add_argument("--original", required=True, help="original model: .pth or .msgpack")
    _run_args(p)


def _unlearn(args) -> int:
    """Run N seeds of an unlearning method from the original model into a run folder.

    Method hyper-parameters and their defaults: `jax-unlearn methods`. A seed whose loss or weights become
    NaN/inf ends the command with exit code 4, naming the seeds and epochs (`export` refuses them)."""
    hyper = _hyper(args.set, args.method)  # checked before anything is loaded or written
    check_output(args.out)
    select_device(args.device)
    from jax_unlearn.jobs.populations import run_population

    data = load_data(args)
    start = load_start(args.original, data.num_classes, args.arch)
    folder = run_population(args.out, args.method, data, start_variables=start, n_seeds=args.n_seeds,
                            base_seed=args.base_seed, chunk_size=args.chunk_size, hyper=hyper,
                            run_config=_run_config(args), dtype=args.dtype,
                            model=_model(args, data.num_classes), extra_config={"original": str(args.original)})
    print(f"wrote {folder.path} ({args.n_seeds} seeds); metrics in {folder.path / 'metrics.csv'}")
    return 0


def _retrain(args) -> int:
    """Train N models from scratch on the retain set: the reference population for the metric."""
    hyper = _hyper(args.set, "retrain")
    check_output(args.out)
    select_device(args.device)
    from jax_unlearn.jobs.populations import run_population

    data = load_data(args)
    folder = run_population(args.out, "retrain", data, n_seeds=args.n_seeds, base_seed=args.base_seed,
                            chunk_size=args.chunk_size, hyper=hyper, run_config=_run_config(args),
                            dtype=args.dtype, model=_model(args, data.num_classes))
    print(f"wrote {folder.path} ({args.n_seeds} retrained models)")
    return 0


def _export_args(p):
    p.add_argument("run_dir", help="a finished run folder (of `unlearn` or `retrain`)")
    p.add_argument("out_dir", help="folder for unlearned_checkpoint_{i}.pth and submission.zip (created; "
                   "checkpoints of an earlier, larger export there are removed)")
    p.add_argument("--n", type=_positive, default=None,
                   help="refuse unless the run holds exactly this many models (default: all of them)")
    p.add_argument("--stage", type=int, default=None, help="export the snapshot of stage K (counted from 0: 0 "
                   "is the first snapshot, after --snapshot-every epochs) instead of the final models")
    p.add_argument("--no-zip", action="store_true", help="write the .pth files only")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="export models with NaN/inf weights too (refused otherwise)")


def _export(args) -> int:
    """Write unlearned_checkpoint_{i}.pth for every seed and submission.zip holding exactly N of them.

    All or nothing: nothing is written unless every model is exported (an incomplete run or a model with
    NaN/inf weights is refused). Identical runs give byte-identical files."""
    from jax_unlearn.jobs.folders import RunFolder, export_pth

    if args.stage is not None and args.stage < 0:
        raise ValueError(f"--stage counts from 0, got {args.stage}")
    check_output(args.out_dir, "out_dir")
    paths = export_pth(RunFolder(args.run_dir), args.out_dir, n=args.n, stage=args.stage,
                       zip_name=None if args.no_zip else "submission.zip", allow_nonfinite=args.allow_nonfinite)
    print(f"wrote {len(paths)} checkpoints to {args.out_dir}" + ("" if args.no_zip else " + submission.zip"))
    return 0


def _evaluate_args(p):
    p.epilog = ("The data flags must repeat the ones the runs were made with: the split contents are checked "
                "against each run folder's data.json and a mismatch is refused.")
    p.add_argument("run_dir", help="run folder of the unlearned population (`jax-unlearn unlearn`)")
    p.add_argument("--retrained", default=None, help="run folder of the reference population (`jax-unlearn "
                   "retrain`, same data flags); enables the competition score")
    p.add_argument("--report-dir", default=None, help="default: RUN_DIR/evaluation")
    _device_arg(p)
    _data_args(p)


def _evaluate(args) -> int:
    """Accuracies, kit/SVC MIA and (with --retrained) the official competition score; report + plots.

    A sweep run folder (``unlearn --set 'lr=[...]'``) is also scored setting by setting against the
    retrained population; the table (sweep.csv, report.json['sweep']) marks the best setting.
    """
    select_device(args.device)
    from jax_unlearn.evaluation.report import evaluate, format_summary

    report = evaluate(args.run_dir, load_data(args), retrained_dir=args.retrained, out_dir=args.report_dir)
    print(format_summary(report))
    return 0


def _demo_args(p):
    p.add_argument("--out", default="runs/demo", help="demo folder")
    p.add_argument("--n-seeds", type=_positive, default=None, help="default: 8 on CPU, 64 on GPU")
    p.add_argument("--epochs", type=_positive, default=None,
                   help="epochs of the original and retrained models (default: 3 on CPU, 30 on GPU)")
    p.add_argument("--chunk-size", type=_positive, default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--max-train", type=_positive, default=None, help="default: 768 on CPU, all on GPU")
    p.add_argument("--max-eval", type=_positive, default=None, help="default: 256 on CPU, all on GPU")
    _model_args(p, with_arch=False)  # the demo exports .pth files: ResNet-18 only
    _device_arg(p)


def _demo(args) -> int:
    """The main job on the offline default: original model, N unlearned + N retrained, export, report."""
    platform = select_device(args.device)
    from jax_unlearn.demo import demo

    demo(args.out, _model(args, 10), platform=platform, n_seeds=args.n_seeds, epochs=args.epochs,
         chunk_size=args.chunk_size, data_dir=args.data_dir, max_train=args.max_train, max_eval=args.max_eval,
         dtype=args.dtype)
    return 0


def _retrain_args(p):
    from jax_unlearn.methods import get_method

    defaults = ", ".join(f"{k}={v}" for k, v in get_method("retrain").defaults.items())
    p.epilog = f"retrain hyper-parameters (--set NAME=VALUE) and their defaults: {defaults}"
    _run_args(p)


def _sisa_args(p):
    p.add_argument("--out", required=True, help="run folder (resumed when it holds the same config)")
    p.add_argument("--shards", type=int, default=5, help="number of shards S, 2 <= S <= retain + forget")
    p.add_argument("--seed", type=_seed, default=0, help="key(seed): the partition and the shards' keys")
    _set_arg(p, "SISA hyper-parameter: epochs, batch_size, optimizer, lr, momentum, weight_decay, "
                "class_weighted, augment (defaults: the reference's)")
    _model_args(p)
    _device_arg(p)
    _data_args(p)


def _sisa(args) -> int:
    """SISA: S shard models on retain ∪ forget, unlearn by retraining only the shards that held forget data.

    Writes a run folder (both ensembles' shard checkpoints, shards.csv, losses.csv, report.json) and
    prints the ensembles' accuracy before / after, the shards retrained and the wall times.
    """
    select_device(args.device)
    from jax_unlearn.jobs.sisa import check_shards, format_sisa, run_sisa

    if args.shards < 2:  # fail before loading data
        check_shards(args.shards, args.shards)
    data = load_data(args)
    report = run_sisa(args.out, data, num_shards=args.shards, seed=args.seed, hyper=_hyper(args.set, "sisa"),
                      dtype=args.dtype, model=_model(args, data.num_classes), log=print)
    print(format_sisa(report))
    print(f"wrote {args.out}")
    return 0


from jax_unlearn.cli.leaderboard import add_args as _leaderboard_args, run as _leaderboard  # noqa: E402

COMMANDS = [
    ("methods", _methods_args, _methods),
    ("train-original", _train_original_args, _train_original),
    ("unlearn", _unlearn_args, _unlearn),
    ("retrain", _retrain_args, _retrain),
    ("export", _export_args, _export),
    ("evaluate", _evaluate_args, _evaluate),
    ("sisa", _sisa_args, _sisa),
    ("demo", _demo_args, _demo),
    ("leaderboard", _leaderboard_args, _leaderboard),
]
