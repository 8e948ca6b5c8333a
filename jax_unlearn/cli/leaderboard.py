"""``jax-unlearn leaderboard``'s flags and entry (registered in :data:`jax_unlearn.cli.commands.COMMANDS`)."""
from __future__ import annotations

import argparse
import shlex


def add_args(p: argparse.ArgumentParser) -> None:
    """The ``leaderboard`` sub-command's flags (the data flags are the other commands')."""
    from jax_unlearn.cli.commands import _data_args, _device_arg
    from jax_unlearn.leaderboard.presets import PRESETS

    p.epilog = ("Protocol: docs/LEADERBOARD.md. Rerunning the same command resumes (nothing finished is "
                "recomputed); another config in the same --out is refused. Presets: "
                + "; ".join(f"{k}: N={v.n}, budget {v.budget} lane-epochs, "
                            f"{'ResNet-18' if v.arch is None else 'small ResNet ' + str(v.arch)}, "
                            f"max-train {v.max_train or 'all'}" for k, v in PRESETS.items()))
    p.add_argument("--out", required=True, help="study folder (LEADERBOARD.md, leaderboard.csv, tuning.csv, …)")
    p.add_argument("--methods", default=None, help="'all' or comma-separated names (default: the preset's; "
                   "ci: finetune; cpu/gpu: all)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="ci")
    p.add_argument("--original", default=None, help="original model (.pth/.msgpack, ResNet-18 presets only; "
                   "default: trained with the official recipe)")
    p.add_argument("--reference", action="append", default=[], metavar="ROLE=DIR",
                   help="reuse a `jax-unlearn retrain` run folder (same data flags) as the tuning, scoring or "
                        "retrain population")
    _device_arg(p)
    _data_args(p)


def command_line(args) -> str:
    """The command as a shell line, every flag explicit (defaults included): reruns the same study whether it
    came from a shell or from ``jax_unlearn.cli.main.main([...])``."""
    parts = ["jax-unlearn", "leaderboard"]
    for key, value in vars(args).items():
        if key in ("command", "debug") or callable(value) or value is None or value is False or value == []:
            continue
        flag = "--" + key.replace("_", "-")
        for v in value if isinstance(value, list) else [value]:
            parts += [flag] if v is True else [flag, ",".join(map(str, v)) if isinstance(v, tuple) else str(v)]
    return shlex.join(parts)


def run(args) -> int:
    """Tune every method on one budget, score it on fresh seeds with bootstrap intervals; write the table."""
    from jax_unlearn.cli.commands import check_output, load_data, select_device
    from jax_unlearn.leaderboard.study import resolve_methods
    from jax_unlearn.leaderboard.presets import get_preset

    preset = get_preset(args.preset)
    resolve_methods(args.methods, preset)  # names checked before data is loaded or anything is written
    references = {}
    for item in args.reference:
        role, sep, path = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--reference {item!r}: expected ROLE=DIR with ROLE tuning, scoring or retrain")
        references[role] = path
    if args.original is not None and preset.arch is not None:
        raise ValueError(f"--original: preset {preset.name} uses a small ResNet {preset.arch}, not ResNet-18; "
                         f"give --original with --preset gpu, or let the preset train its original")
    command = command_line(args)  # before the preset fills the data slice: the line the user gave
    check_output(args.out)
    select_device(args.device)
    if args.max_train is None:
        args.max_train = preset.max_train
    if args.max_eval is None:
        args.max_eval = preset.max_eval
    from jax_unlearn.leaderboard.study import leaderboard

    data = load_data(args)
    original = None
    if args.original is not None:
        from converters import load_model_variables

        original = load_model_variables(args.original, data.num_classes)
    table = leaderboard(args.out, data, preset=preset, methods=args.methods, original=original,
                        references=references, command=command)
    cols = ["method", "final_score", "score_lo", "score_hi", "forgetting_quality", "test_acc", "fraction_of_retrain"]
    print(table[cols].to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    note = table["note_small_n"].dropna()
    if len(note):
        print(f"note: {note.iloc[0]}")
    print(f"wrote {args.out}/LEADERBOARD.md, leaderboard.csv, tuning.csv, leaderboard.png")
    return 0
