"""The leaderboard's outputs: LEADERBOARD.md, leaderboard.csv, tuning.csv and leaderboard.png.

``LEADERBOARD.md`` states what the numbers are: the rows sorted by final score with their bootstrap
95% intervals, then the budget, data, model, N, device, versions, date and the exact command, and the
small-N note every score at N < 405 carries (:func:`jax_unlearn.metrics.small_n_note`). The protocol
itself is docs/LEADERBOARD.md.
"""
from __future__ import annotations

import datetime
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from converters import atomic_write
from jax_unlearn.metrics import small_n_note

COLUMNS = ["method", "kind", "final_score", "score_lo", "score_hi", "forgetting_quality", "f_lo", "f_hi",
           "retain_acc", "forget_acc", "test_acc", "kit_mia", "svc_mia", "seconds_per_run", "compile_s",
           "fraction_of_retrain", "slow", "n", "tuning_lane_epochs", "setting", "bootstrap_B", "bootstrap_s",
           "note_small_n"]
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "jax-unlearn")


def versions() -> dict[str, str]:
    """Python's and the key packages' versions, for the table's header."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def device() -> str:
    """The devices JAX runs on, e.g. ``1 × cpu (cpu)``."""
    import jax

    d = jax.devices()
    return f"{len(d)} × {d[0].platform} ({d[0].device_kind})"


def _num(x, fmt: str = ".3f") -> str:
    return "–" if x is None or pd.isna(x) else format(float(x), fmt)


def _model_text(arch: Mapping[str, Any] | None) -> str:
    if arch is None:
        return "ResNet-18 (torchvision layout)"
    return (f"a small ResNet of BasicBlocks, stage sizes {list(arch['stage_sizes'])}, width {arch['width']} "
            f"(not ResNet-18: a preset sized for this machine)")


def markdown(table: pd.DataFrame, preset, data, config: Mapping[str, Any], command: str,
             timing: Mapping[str, Any]) -> str:
    """The LEADERBOARD.md text."""
    p = preset
    n = p.n
    lines = [f"# Unlearning leaderboard — preset `{p.name}`", "",
             f"Date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; device {device()}; "
             f"model {_model_text(config.get('arch'))}.", "",
             "| rank | method | final score | 95% CI | F | 95% CI | retain | forget | test | kit MIA | SVC-MIA "
             "| s / run | compile s | × retrain | tuned setting |",
             "|---:|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for i, r in table.iterrows():
        frac = _num(r.get("fraction_of_retrain"), ".2f") + (" ⚠" if r.get("slow") else "")
        setting = r.get("setting") if isinstance(r.get("setting"), str) and r.get("setting") != "{}" else ""
        name = f"**{r['method']}**" if r.get("kind") == "reference" else r["method"]
        lines.append(f"| {i + 1} | {name} | {_num(r['final_score'], '.4f')} | [{_num(r['score_lo'], '.4f')}, "
                     f"{_num(r['score_hi'], '.4f')}] | {_num(r['forgetting_quality'], '.4f')} | "
                     f"[{_num(r['f_lo'], '.4f')}, {_num(r['f_hi'], '.4f')}] | {_num(r['retain_acc'])} | "
                     f"{_num(r['forget_acc'])} | {_num(r['test_acc'])} | {_num(r['kit_mia'])} | "
                     f"{_num(r['svc_mia'])} | {_num(r['seconds_per_run'], '.2f')} | {_num(r['compile_s'], '.1f')} | "
                     f"{frac} | {setting} |")
    cost = float(pd.to_numeric(table["bootstrap_s"], errors="coerce").sum())
    sizes = config["data"]["sizes"]
    description = {k: v for k, v in config["data"].items() if k not in ("sizes", "digests")}
    lines += ["", "**Bold** rows are references: `original` (no unlearning: the floor), `retrain` (a third "
              "retrained population scored like a method: the ceiling F at this N) and the Kaggle baseline "
              "`finetune` untuned. ⚠: one unlearning run takes more than 20% of one retrain's time (the "
              "competition rejected such submissions).", "",
              f"- **N** = {n} models per scored population (each method's best setting on fresh seeds, the "
              f"scoring set, the `retrain` row); tuning set {p.n_tuning} retrained models.",
              f"- **Budget**: {p.budget} lane-epochs of tuning per method (lanes × engine epochs; column "
              f"`tuning_lane_epochs` in leaderboard.csv says what each used), successive halving over "
              f"{p.rounds} round(s), {p.seeds0} seeds per setting in round 0, the best 1/{p.eta} kept with "
              f"{p.eta}× the seeds; every setting tried is in tuning.csv.",
              f"- **Intervals**: bootstrap 95% percentile intervals, B = {p.bootstrap} resamples of both "
              f"populations' models; cost {cost:.1f} s for all rows on this machine.",
              "- **MIAs**: kit MIA (its logistic-regression attack) and SVC-MIA efficacy, mean over the first "
              "min(N, 16) models of each population.",
              f"- **Time**: seconds per unlearning run = (wall − compile) / models of the scoring run (N lanes "
              f"vmapped in chunks of {p.chunk_size or 'auto'}, checkpoint writes included); × retrain = that "
              f"over the same figure for the `retrain` population"
              + (f" ({_num(timing['retrain']['seconds_per_model'], '.2f')} s per retrained model)."
                 if "retrain" in timing else "."),
              f"- **Data**: {description}; split sizes {sizes}.",
              f"- **Original model**: {config['original']} ({p.original_epochs} epochs); retrain recipe: the "
              f"official one" + (f" with {p.recipe}" if p.recipe else "") + ".",
              f"- **Versions**: {', '.join(f'{k} {v}' for k, v in versions().items())}.",
              f"- **Command**: `{command or '(Python API)'}`"]
    note = small_n_note(n)
    if note:
        lines += ["", f"> **Small N.** {note}"]
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, path: Path) -> None:
    """Final score with its 95% interval per method (left); test accuracy against F (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table.iloc[::-1]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 0.4 * len(t) + 2))
    score = t["final_score"].astype(float)
    err = [(score - t["score_lo"].astype(float)).clip(lower=0), (t["score_hi"].astype(float) - score).clip(lower=0)]
    colors = ["tab:gray" if k == "reference" else "tab:blue" for k in t["kind"]]
    a.barh(t["method"], score, xerr=err, color=colors, capsize=3)
    a.set_xlabel("final score (95% bootstrap interval)")
    for _, r in t.iterrows():
        b.scatter(r["forgetting_quality"], r["test_acc"], color="tab:gray" if r["kind"] == "reference" else "tab:blue")
        b.annotate(r["method"], (r["forgetting_quality"], r["test_acc"]), fontsize=7)
    b.set_xlabel("forgetting quality F")
    b.set_ylabel("test accuracy")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def write_outputs(out: Path, table: pd.DataFrame, tried: pd.DataFrame, preset, data, config: Mapping[str, Any],
                  command: str, timing: Mapping[str, Any]) -> None:
    """Write leaderboard.csv, tuning.csv, LEADERBOARD.md and leaderboard.png into ``out`` (each atomically)."""
    frame = table.reindex(columns=COLUMNS)
    atomic_write(out / "leaderboard.csv", lambda tmp: frame.to_csv(tmp, index=False))
    atomic_write(out / "tuning.csv", lambda tmp: tried.to_csv(tmp, index=False))
    text = markdown(frame, preset, data, config, command, timing)
    atomic_write(out / "LEADERBOARD.md", lambda tmp: Path(tmp).write_text(text))
    plot(frame, out / "leaderboard.png")
